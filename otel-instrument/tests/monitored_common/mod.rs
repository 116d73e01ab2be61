//! Helpers shared by the integration tests (`#[monitored]`, the builder, setup, process metrics).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
use otel_instrument::testing::{OtlpSink, Received, SpanRecord, attributes};
use otel_instrument::{Telemetry, TelemetryBuilder, TelemetryGuard};

pub const WAIT: Duration = Duration::from_secs(10);

/// A test binary's telemetry: an in-process sink and the global pipeline
/// exporting to it.
pub struct Pipeline {
    // Fields drop in order: the pipeline shuts down (and flushes) while its
    // sink still listens.
    pub guard: TelemetryGuard,
    pub sink: OtlpSink,
}

impl Pipeline {
    /// Starts a sink and installs the pipeline that `configure` makes of a
    /// builder already pointed at it. The pipeline is process-wide (global
    /// providers and subscriber): keep the result in a `OnceLock`.
    pub fn install(configure: impl FnOnce(TelemetryBuilder) -> TelemetryBuilder) -> Self {
        let sink = OtlpSink::start().unwrap();
        let guard = configure(Telemetry::builder().endpoint(sink.endpoint()))
            .install()
            .unwrap();
        Self { sink, guard }
    }
}

/// One exported data point: its attributes and value (histograms: count and bounds).
#[derive(Debug, Clone)]
pub struct Point {
    pub attrs: BTreeMap<String, String>,
    pub value: f64,
    pub bounds: Vec<f64>,
}

/// The data points of the latest report of `name` whose `function` label is `function`.
pub fn points(r: &Received, name: &str, function: &str) -> Vec<Point> {
    let Some(m) = r.last_metric(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match m.metric.data {
        Some(Data::Sum(s)) => {
            for p in s.data_points {
                let value = match p.value {
                    Some(Value::AsInt(i)) => i as f64,
                    Some(Value::AsDouble(d)) => d,
                    None => continue,
                };
                out.push(Point {
                    attrs: attributes(&p.attributes),
                    value,
                    bounds: Vec::new(),
                });
            }
        }
        Some(Data::Gauge(g)) => {
            for p in g.data_points {
                let value = match p.value {
                    Some(Value::AsInt(i)) => i as f64,
                    Some(Value::AsDouble(d)) => d,
                    None => continue,
                };
                out.push(Point {
                    attrs: attributes(&p.attributes),
                    value,
                    bounds: Vec::new(),
                });
            }
        }
        Some(Data::Histogram(h)) => {
            for p in h.data_points {
                out.push(Point {
                    attrs: attributes(&p.attributes),
                    value: p.count as f64,
                    bounds: p.explicit_bounds,
                });
            }
        }
        _ => {}
    }
    out.retain(|p| p.attrs.get("function").map(String::as_str) == Some(function));
    // Every function metric carries service.name (autometrics spec); the tests
    // check it once here and compare the other labels exactly.
    for p in &mut out {
        if name.starts_with("function.calls") {
            assert!(
                p.attrs
                    .remove("service.name")
                    .is_some_and(|s| s.starts_with("monitored")),
                "{name} lacks service.name: {:?}",
                p.attrs
            );
        }
    }
    out
}

/// Flushes, then waits until `done` holds for what the sink received.
pub fn flush_until(
    sink: &OtlpSink,
    guard: &TelemetryGuard,
    mut done: impl FnMut(&Received) -> bool,
) -> Received {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(guard.flush(), "flush timed out");
        if let Some(r) = sink.wait_until(Duration::from_millis(300), &mut done) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out; received: {:#?}",
            summary(&sink.received())
        );
    }
}

/// Names of received spans and metrics, for failure messages.
pub fn summary(r: &Received) -> (Vec<String>, Vec<String>) {
    (
        r.spans().into_iter().map(|s| s.span.name).collect(),
        r.metrics().into_iter().map(|m| m.metric.name).collect(),
    )
}

/// Received spans with the given name.
pub fn spans_named(r: &Received, name: &str) -> Vec<SpanRecord> {
    r.spans()
        .into_iter()
        .filter(|s| s.span.name == name)
        .collect()
}

/// A map literal for attribute comparisons.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The value of the point whose attributes are exactly `attrs`.
pub fn value_with(points: &[Point], attrs: &BTreeMap<String, String>) -> Option<f64> {
    points.iter().find(|p| &p.attrs == attrs).map(|p| p.value)
}

/// The OpenTelemetry globals are process-wide: tests that set them run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the test's turn at the process-wide globals.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An environment lookup holding exactly `vars` (tests never call `set_var`).
pub fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

/// An address nothing listens on (bound, then released).
pub fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
