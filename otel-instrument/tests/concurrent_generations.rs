//! `function.calls.concurrent` across a change of meter provider, over the real wire.
//!
//! The in-flight count is kept per thread, for each callsite under each provider, and
//! summed by one observable callback per provider (see `monitored::refresh_instruments`). A provider installed later counts
//! the calls that start under it. The earlier provider keeps counting its own calls
//! until they end, as the SDK's bound up-down counter did before.

use std::sync::mpsc;
use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use otel_instrument::config::{Config, Overrides};
use otel_instrument::export::{ExportRuntime, metric_exporter_with};
use otel_instrument::monitored;
use otel_instrument::testing::{OtlpSink, Received, attributes};

#[monitored(span = false)]
fn waits(release: mpsc::Receiver<()>) {
    let _ = release.recv();
}

/// A global meter provider exporting to its own sink, only when flushed.
fn install(rt: &ExportRuntime) -> (SdkMeterProvider, OtlpSink) {
    let sink = OtlpSink::start().unwrap();
    let config = Config::from_lookup(
        &|_| None,
        &Overrides {
            endpoint: Some(sink.endpoint()),
            ..Overrides::default()
        },
    )
    .unwrap();
    let exporter = metric_exporter_with(
        rt,
        &config.metrics,
        Default::default(),
        Temporality::Cumulative,
    )
    .unwrap();
    let provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    monitored::refresh_instruments();
    (provider, sink)
}

/// Starts a call of `waits` on its own thread and returns what ends it.
fn start_call() -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    (tx, std::thread::spawn(move || waits(rx)))
}

/// `waits`' in-flight count in the provider's next export (none: no export, as
/// before the first call binds its instruments).
fn in_flight(provider: &SdkMeterProvider, sink: &OtlpSink) -> Option<f64> {
    sink.clear();
    provider.force_flush().unwrap();
    let r: Received = sink.wait_until(Duration::from_secs(2), |r| !r.metrics.is_empty())?;
    let Some(Data::Sum(sum)) = r.last_metric("function.calls.concurrent")?.metric.data else {
        panic!("function.calls.concurrent is not a sum");
    };
    assert!(!sum.is_monotonic);
    let mine: Vec<_> = sum
        .data_points
        .iter()
        .filter(|p| {
            attributes(&p.attributes)
                .get("function")
                .map(String::as_str)
                == Some("waits")
        })
        .collect();
    assert!(mine.len() <= 1, "one series per function: {mine:?}");
    mine.first().map(|p| match p.value {
        Some(Value::AsInt(i)) => i as f64,
        Some(Value::AsDouble(d)) => d,
        None => f64::NAN,
    })
}

#[test]
fn each_meter_provider_counts_the_calls_that_started_under_it() {
    let rt = ExportRuntime::new().unwrap();
    let (a, sink_a) = install(&rt);
    let first = [start_call(), start_call()];
    // The calls are in flight once the count says so (the threads start in their time).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_flight(&a, &sink_a) != Some(2.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "A never read 2 in flight"
        );
    }

    let (b, sink_b) = install(&rt);
    let second = start_call();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_flight(&b, &sink_b) != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "B never read 1 in flight"
        );
    }
    // A's callback still reads A's calls, and only those.
    assert_eq!(in_flight(&a, &sink_a), Some(2.0));

    for (tx, t) in first {
        tx.send(()).unwrap();
        t.join().unwrap();
    }
    assert_eq!(in_flight(&a, &sink_a), Some(0.0));
    assert_eq!(in_flight(&b, &sink_b), Some(1.0));
    second.0.send(()).unwrap();
    second.1.join().unwrap();
    assert_eq!(in_flight(&b, &sink_b), Some(0.0));
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}
