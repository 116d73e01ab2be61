//! Exemplars on `function.calls.duration` over the real OTLP wire: each names
//! a span the sink received, at most one per bucket, sorted by value, and
//! their timestamps only move forward between exports.

mod monitored_common;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::Duration;

use monitored_common::{Pipeline, flush_until, serial};
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, exemplar, metric::Data};
use otel_instrument::monitored;
use otel_instrument::testing::{Received, attributes};

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        Pipeline::install(|b| {
            // The defaults (parentbased_always_on, trace_based exemplars).
            b.service_name("monitored-exemplars").logs_export(false)
        })
    })
}

#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

#[monitored]
fn timed(millis: u64, fail: bool) -> Result<(), Failed> {
    std::thread::sleep(Duration::from_millis(millis));
    if fail { Err(Failed) } else { Ok(()) }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every `function.calls.duration` point of `timed`, with its result, in arrival order.
fn timed_points(r: &Received) -> Vec<(String, HistogramDataPoint)> {
    let mut out = Vec::new();
    for m in r.metrics() {
        if m.metric.name != "function.calls.duration" {
            continue;
        }
        let Some(Data::Histogram(h)) = m.metric.data else {
            continue;
        };
        for p in h.data_points {
            let attrs = attributes(&p.attributes);
            if attrs.get("function").map(String::as_str) == Some("timed") {
                out.push((attrs["result"].clone(), p));
            }
        }
    }
    out
}

/// The latest points of `timed`, by result.
fn points(r: &Received) -> BTreeMap<String, HistogramDataPoint> {
    timed_points(r).into_iter().collect()
}

/// All exemplars of `timed` received so far, by result.
fn all_exemplars(r: &Received) -> Vec<(String, exemplar_row::Row)> {
    timed_points(r)
        .into_iter()
        .flat_map(|(result, p)| {
            p.exemplars
                .iter()
                .map(|e| (result.clone(), exemplar_row::of(e, &p.explicit_bounds)))
                .collect::<Vec<_>>()
        })
        .collect()
}

mod exemplar_row {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::Exemplar;

    #[derive(Debug, Clone)]
    pub struct Row {
        pub value: f64,
        pub bucket: usize,
        pub time: u64,
        pub trace: String,
        pub span: String,
    }

    pub fn of(e: &Exemplar, bounds: &[f64]) -> Row {
        let value = match e.value {
            Some(exemplar::Value::AsDouble(v)) => v,
            Some(exemplar::Value::AsInt(v)) => v as f64,
            None => f64::NAN,
        };
        Row {
            value,
            bucket: bounds.partition_point(|b| *b < value),
            time: e.time_unix_nano,
            trace: hex(&e.trace_id),
            span: hex(&e.span_id),
        }
    }
}

#[test]
fn latency_points_carry_exemplars_that_name_exported_spans() {
    let _serial = serial();
    let p = pipeline();
    // Calls in three buckets (<=5 ms, 10-25 ms, 50-75 ms), some failing.
    for (millis, fail) in [(0, false), (12, false), (60, false), (1, false), (15, true)] {
        let _ = timed(millis, fail);
    }
    let r = flush_until(&p.sink, &p.guard, |r| {
        let pts = points(r);
        ["ok", "error"]
            .iter()
            .all(|res| pts.get(*res).is_some_and(|p| !p.exemplars.is_empty()))
    });
    let spans: HashMap<(String, String), f64> = r
        .spans()
        .into_iter()
        .filter(|s| s.span.name == "timed")
        .map(|s| {
            let secs = (s.span.end_time_unix_nano - s.span.start_time_unix_nano) as f64 / 1e9;
            ((hex(&s.span.trace_id), hex(&s.span.span_id)), secs)
        })
        .collect();
    let pts = points(&r);
    for (result, point) in &pts {
        let rows: Vec<exemplar_row::Row> = point
            .exemplars
            .iter()
            .map(|e| exemplar_row::of(e, &point.explicit_bounds))
            .collect();
        assert!(!rows.is_empty(), "{result}: no exemplar");
        for w in rows.windows(2) {
            assert!(
                w[0].value <= w[1].value,
                "{result}: not sorted by value: {rows:?}"
            );
            assert_ne!(
                w[0].bucket, w[1].bucket,
                "{result}: two in one bucket: {rows:?}"
            );
        }
        for row in &rows {
            let secs = spans
                .get(&(row.trace.clone(), row.span.clone()))
                .unwrap_or_else(|| panic!("{result}: exemplar names no exported span: {row:?}"));
            assert!(
                (secs - row.value).abs() < 0.001,
                "{result}: {row:?} vs span {secs}s"
            );
            assert!(row.time > 0);
        }
    }
    // The ok calls slept 0, 1, 12 and 60 ms: at least the short, the 12 ms and
    // the 60 ms ones are in different buckets, however slow the machine.
    let ok = pts["ok"].exemplars.len();
    assert!((3..=4).contains(&ok), "{:?}", pts["ok"].exemplars);
    assert_eq!(pts["error"].exemplars.len(), 1);
}

#[test]
fn exemplar_timestamps_only_move_forward_between_exports() {
    let _serial = serial();
    let p = pipeline();
    for _ in 0..3 {
        let before = all_exemplars(&p.sink.received()).len();
        let _ = timed(2, false);
        flush_until(&p.sink, &p.guard, |r| all_exemplars(r).len() > before);
    }
    let rows = all_exemplars(&p.sink.received());
    let mut last: HashMap<(String, usize), u64> = HashMap::new();
    for (result, row) in rows {
        if let Some(prev) = last.insert((result.clone(), row.bucket), row.time) {
            assert!(
                row.time > prev,
                "{result} bucket {}: {} after {prev}",
                row.bucket,
                row.time
            );
        }
    }
}

#[monitored]
fn job(seconds: f64, queue: &'static str) {
    otel_instrument::histogram!("job.duration", seconds, "queue" => queue, "ok" => true);
}

/// The latest `job.duration` points, by their `queue` label.
fn job_points(r: &Received) -> BTreeMap<String, HistogramDataPoint> {
    let mut out = BTreeMap::new();
    for m in r.metrics() {
        if m.metric.name != "job.duration" {
            continue;
        }
        let Some(Data::Histogram(h)) = m.metric.data else {
            continue;
        };
        for p in h.data_points {
            out.insert(attributes(&p.attributes)["queue"].clone(), p);
        }
    }
    out
}

#[test]
fn histogram_points_in_a_sampled_call_carry_exemplars_that_name_its_span() {
    let _serial = serial();
    let p = pipeline();
    // Outside any span: a point with no trace to name.
    otel_instrument::histogram!("job.duration", 0.5, "queue" => "outside", "ok" => true);
    job(0.002, "emails");
    job(0.3, "emails");
    job(0.002, "sms");
    let r = flush_until(&p.sink, &p.guard, |r| {
        let pts = job_points(r);
        pts.get("emails").is_some_and(|p| p.exemplars.len() == 2)
            && pts.get("sms").is_some_and(|p| !p.exemplars.is_empty())
            && pts.contains_key("outside")
    });
    let spans: HashMap<(String, String), ()> = r
        .spans()
        .into_iter()
        .filter(|s| s.span.name == "job")
        .map(|s| ((hex(&s.span.trace_id), hex(&s.span.span_id)), ()))
        .collect();
    let pts = job_points(&r);
    let rows = |queue: &str| -> Vec<exemplar_row::Row> {
        let point = &pts[queue];
        point
            .exemplars
            .iter()
            .map(|e| exemplar_row::of(e, &point.explicit_bounds))
            .collect()
    };
    let emails = rows("emails");
    assert_eq!(
        emails.iter().map(|r| r.value).collect::<Vec<_>>(),
        [0.002, 0.3],
        "one per bucket, sorted by value: {emails:?}"
    );
    assert_ne!(emails[0].bucket, emails[1].bucket);
    let sms = rows("sms");
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert_eq!(sms[0].value, 0.002);
    for row in emails.iter().chain(&sms) {
        assert!(
            spans.contains_key(&(row.trace.clone(), row.span.clone())),
            "exemplar names no exported `job` span: {row:?}"
        );
        assert!(row.time > 0);
    }
    // Each call is its own span: the two e-mail jobs name different spans.
    assert_ne!(emails[0].span, emails[1].span);
    assert!(
        pts["outside"].exemplars.is_empty(),
        "a point outside any span has no trace to name: {:?}",
        pts["outside"].exemplars
    );
}
