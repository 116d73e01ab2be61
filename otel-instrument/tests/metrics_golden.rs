//! The golden test of the metrics export: the same measurements, recorded on two
//! meter providers, exported once by opentelemetry-otlp's exporter and once by
//! ours (`exemplars::WireMetricExporter`, the OTLP wire client), into the same
//! in-process sink. The decoded requests must be equal once the timestamps,
//! which differ between the two providers, are cleared: resource, scope,
//! names, units, descriptions, kinds, temporality, attributes, values and
//! buckets.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use otel_instrument::config::{Config, Overrides, Signal};
use otel_instrument::exemplars::WireMetricExporter;
use otel_instrument::export::{ExportRuntime, ExportStats, metric_exporter_with};
use otel_instrument::otlp::OtlpClient;
use otel_instrument::testing::OtlpSink;

fn record(provider: &SdkMeterProvider) {
    let meter = provider.meter("golden");
    let calls = meter
        .u64_counter("golden.calls")
        .with_unit("{call}")
        .with_description("calls")
        .build();
    let latency = meter
        .f64_histogram("golden.duration")
        .with_unit("s")
        .with_boundaries(vec![0.01, 0.1, 1.0])
        .build();
    let inflight = meter.i64_up_down_counter("golden.inflight").build();
    for (i, route) in ["/a", "/b", "/a", "/c"].iter().enumerate() {
        let attrs = [
            KeyValue::new("route", *route),
            KeyValue::new("ok", i % 2 == 0),
        ];
        calls.add(1, &attrs);
        latency.record(0.005 * (i as f64 + 1.0) * 10.0, &attrs);
        inflight.add(i as i64 - 1, &attrs[..1]);
    }
}

/// The request with every timestamp cleared.
fn normalised(mut r: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
    for rm in &mut r.resource_metrics {
        for sm in &mut rm.scope_metrics {
            for m in &mut sm.metrics {
                match &mut m.data {
                    Some(Data::Sum(s)) => s.data_points.iter_mut().for_each(|p| {
                        p.start_time_unix_nano = 0;
                        p.time_unix_nano = 0;
                    }),
                    Some(Data::Gauge(g)) => g.data_points.iter_mut().for_each(|p| {
                        p.start_time_unix_nano = 0;
                        p.time_unix_nano = 0;
                    }),
                    Some(Data::Histogram(h)) => h.data_points.iter_mut().for_each(|p| {
                        p.start_time_unix_nano = 0;
                        p.time_unix_nano = 0;
                    }),
                    _ => {}
                }
                // Attribute order is the SDK's own (a hash set's): compare sorted.
                let sort = |a: &mut Vec<opentelemetry_proto::tonic::common::v1::KeyValue>| {
                    a.sort_by(|x, y| x.key.cmp(&y.key))
                };
                match &mut m.data {
                    Some(Data::Sum(s)) => {
                        s.data_points
                            .iter_mut()
                            .for_each(|p| sort(&mut p.attributes));
                        s.data_points.sort_by_key(|p| format!("{:?}", p.attributes));
                    }
                    Some(Data::Histogram(h)) => {
                        h.data_points
                            .iter_mut()
                            .for_each(|p| sort(&mut p.attributes));
                        h.data_points.sort_by_key(|p| format!("{:?}", p.attributes));
                    }
                    _ => {}
                }
            }
            sm.metrics.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    r
}

#[test]
fn our_metrics_request_equals_the_sdk_exporters() {
    let sink = OtlpSink::start().unwrap();
    let config = Config::from_lookup(
        &|_| None,
        &Overrides {
            endpoint: Some(sink.endpoint()),
            ..Overrides::default()
        },
    )
    .unwrap();
    let rt = ExportRuntime::new().unwrap();
    let resource = Resource::builder_empty()
        .with_attribute(KeyValue::new("service.name", "golden"))
        .build();
    let mut requests = Vec::new();
    for ours in [false, true] {
        sink.clear();
        let stats = Arc::new(ExportStats::default());
        let provider = |builder: opentelemetry_sdk::metrics::MeterProviderBuilder| {
            builder.with_resource(resource.clone()).build()
        };
        let provider = if ours {
            let client = rt
                .enter(|| OtlpClient::new(Signal::Metrics, &config.metrics, stats.clone()))
                .unwrap();
            let exporter =
                WireMetricExporter::new(client, rt.handle().clone(), Temporality::Cumulative);
            provider(
                SdkMeterProvider::builder().with_reader(
                    PeriodicReader::builder(exporter)
                        .with_interval(Duration::from_secs(3600))
                        .build(),
                ),
            )
        } else {
            let exporter =
                metric_exporter_with(&rt, &config.metrics, stats, Temporality::Cumulative).unwrap();
            provider(
                SdkMeterProvider::builder().with_reader(
                    PeriodicReader::builder(exporter)
                        .with_interval(Duration::from_secs(3600))
                        .build(),
                ),
            )
        };
        record(&provider);
        provider.force_flush().unwrap();
        let got = sink
            .wait_until(Duration::from_secs(10), |r| !r.metrics.is_empty())
            .expect("an export");
        assert_eq!(got.metrics.len(), 1);
        requests.push(normalised(got.metrics[0].clone()));
        provider.shutdown().unwrap();
    }
    assert!(!requests[0].resource_metrics.is_empty());
    assert_eq!(requests[0], requests[1]);
}
