//! OTLP over HTTP with protobuf bodies (feature `http-proto`), end to end
//! against the sink's HTTP side: endpoint paths, headers, gzip, and a
//! throttling collector (429 with Retry-After) whose export is retried.
#![cfg(feature = "http-proto")]

use std::sync::Mutex;
use std::time::Duration;

use otel_instrument::config::Signal;
use otel_instrument::testing::{Behaviour, OtlpSink};
use otel_instrument::{Compression, Protocol, Telemetry};
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(10);

/// The OpenTelemetry globals are process-wide: tests that set them run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn spans_metrics_and_logs_arrive_over_http_with_headers_and_gzip() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sink = OtlpSink::start_http().unwrap();
    let t = Telemetry::builder()
        .env_lookup(|k| match k {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_owned()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=secret".to_owned()),
            "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("gzip".to_owned()),
            _ => None,
        })
        .endpoint(sink.endpoint())
        .build()
        .unwrap();
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("over_http").in_scope(|| tracing::warn!("logged over http"));
    });
    opentelemetry::global::meter("http-test")
        .u64_counter("http_test.ticks")
        .build()
        .add(2, &[]);
    assert!(guard.flush());
    let got = sink
        .wait_until(WAIT, |r| {
            !r.traces.is_empty() && !r.logs.is_empty() && r.last_metric("http_test.ticks").is_some()
        })
        .unwrap_or_else(|| panic!("not everything arrived: {:?}", sink.received().headers));
    assert!(got.spans().iter().any(|s| s.span.name == "over_http"));
    for h in &got.headers {
        assert_eq!(
            h.get("api-key").map(String::as_str),
            Some("secret"),
            "{h:?}"
        );
        assert_eq!(
            h.get("content-encoding").map(String::as_str),
            Some("gzip"),
            "{h:?}"
        );
        assert_eq!(
            h.get("content-type").map(String::as_str),
            Some("application/x-protobuf"),
            "{h:?}"
        );
    }
    assert_eq!(guard.stats().failures(Signal::Traces), 0);
}

#[test]
fn a_throttled_http_export_waits_for_retry_after_and_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sink = OtlpSink::start_http().unwrap();
    sink.set_behaviour(Behaviour::Throttle(Duration::from_secs(1)));
    let t = Telemetry::builder()
        .env_lookup(|_| None)
        .protocol(Protocol::HttpProtobuf)
        .compression(Some(Compression::Gzip))
        .endpoint(sink.endpoint())
        .build()
        .unwrap();
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("throttled_over_http").in_scope(|| {});
    });
    let flusher = std::thread::spawn({
        let tp = guard.tracer_provider().cloned();
        move || tp.map(|tp| tp.force_flush())
    });
    let first = sink
        .wait_until(WAIT, |r| r.attempts.iter().any(|(s, _)| *s == "traces"))
        .expect("a first attempt");
    let first_at = first
        .attempts
        .iter()
        .find(|(s, _)| *s == "traces")
        .unwrap()
        .1;
    sink.set_behaviour(Behaviour::Accept);
    let _ = flusher.join();
    let got = sink
        .wait_until(WAIT, |r| !r.traces.is_empty())
        .expect("the throttled export is retried and arrives");
    let retry_at = got
        .attempts
        .iter()
        .filter(|(s, _)| *s == "traces")
        .nth(1)
        .expect("a retry")
        .1;
    let gap = retry_at.duration_since(first_at);
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured: retried after {gap:?}"
    );
    assert!(
        got.spans()
            .iter()
            .any(|s| s.span.name == "throttled_over_http")
    );
    assert_eq!(guard.stats().failures(Signal::Traces), 0);
}
