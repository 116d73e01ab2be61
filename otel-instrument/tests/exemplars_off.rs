//! `OTEL_METRICS_EXEMPLAR_FILTER=always_off`: latency points carry no exemplars,
//! though the calls' spans are exported.

mod monitored_common;

use monitored_common::{Pipeline, flush_until};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use otel_instrument::monitored;
use otel_instrument::testing::{Received, attributes};

#[monitored]
fn unexemplified() {}

fn duration_points(r: &Received) -> Vec<usize> {
    r.metrics()
        .into_iter()
        .filter(|m| m.metric.name == "function.calls.duration")
        .filter_map(|m| match m.metric.data {
            Some(Data::Histogram(h)) => Some(h.data_points),
            _ => None,
        })
        .flatten()
        .filter(|p| {
            attributes(&p.attributes)
                .get("function")
                .map(String::as_str)
                == Some("unexemplified")
        })
        .map(|p| p.exemplars.len())
        .collect()
}

#[test]
fn always_off_sends_no_exemplars() {
    let p = Pipeline::install(|b| {
        b.service_name("monitored-exemplars-off")
            .env_lookup(|k| (k == "OTEL_METRICS_EXEMPLAR_FILTER").then(|| "always_off".to_owned()))
            .logs_export(false)
    });
    for _ in 0..5 {
        unexemplified();
    }
    let r = flush_until(&p.sink, &p.guard, |r| {
        !duration_points(r).is_empty() && r.spans().iter().any(|s| s.span.name == "unexemplified")
    });
    let points = duration_points(&r);
    assert!(points.iter().all(|&n| n == 0), "exemplars sent: {points:?}");
}
