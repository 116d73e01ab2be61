//! `tracing` events as OTLP log records, over the real wire, with the setup
//! `init!()` installs: a warning inside a sampled monitored call carries that
//! call's trace and span ids; one inside an unsampled call carries its trace id.

use std::time::Duration;

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use otel_instrument::monitored;
use otel_instrument::testing::{OtlpSink, log_body};

#[monitored]
fn sampled_work() {
    tracing::warn!(free_gib = 3, "disk almost full");
}

#[monitored(sample = 0.0)]
fn unsampled_work() {
    tracing::warn!("unsampled but logged");
}

fn find<'a>(records: &'a [LogRecord], text: &str) -> Option<&'a LogRecord> {
    records.iter().find(|r| log_body(r) == text)
}

#[test]
fn events_are_exported_as_logs_with_the_trace_context_of_their_call() {
    let sink = OtlpSink::start().unwrap();
    let guard = otel_instrument::builder!()
        .endpoint(sink.endpoint())
        .install()
        .unwrap();
    sampled_work();
    unsampled_work();
    tracing::info!("outside any call");
    assert!(guard.flush(), "flush timed out");
    let got = sink
        .wait_until(Duration::from_secs(10), |r| {
            let recs = r.log_records();
            [
                "disk almost full",
                "unsampled but logged",
                "outside any call",
            ]
            .iter()
            .all(|t| find(&recs, t).is_some())
                && r.spans().iter().any(|s| s.span.name == "sampled_work")
        })
        .unwrap_or_else(|| panic!("logs did not arrive: {:?}", sink.received().log_records()));
    let recs = got.log_records();

    let span = got
        .spans()
        .into_iter()
        .find(|s| s.span.name == "sampled_work")
        .unwrap()
        .span;
    let warning = find(&recs, "disk almost full").unwrap();
    assert_eq!(warning.trace_id, span.trace_id, "the call's trace id");
    assert_eq!(warning.span_id, span.span_id, "the call's span id");
    assert_eq!(warning.severity_text, "WARN");
    let attrs = otel_instrument::testing::attributes(&warning.attributes);
    assert_eq!(attrs.get("free_gib").map(String::as_str), Some("3"));

    let unsampled = find(&recs, "unsampled but logged").unwrap();
    assert_eq!(unsampled.trace_id.len(), 16, "an unsampled call's trace id");
    assert!(unsampled.trace_id.iter().any(|b| *b != 0));
    // The tail keeper tracks the unsampled call: its log names the call's span,
    // which is exported only if the trace is kept (it is not: nothing failed).
    assert_eq!(unsampled.span_id.len(), 8, "the tracked call's span id");
    assert!(
        unsampled.span_id.iter().any(|b| *b != 0),
        "the tracked call's span id"
    );
    assert!(
        !got.spans().iter().any(|s| s.span.name == "unsampled_work"),
        "nothing of an unsampled call is exported but its log"
    );

    let outside = find(&recs, "outside any call").unwrap();
    assert!(outside.trace_id.iter().all(|b| *b == 0), "no trace context");

    // Records are grouped by their event's target: ours only, never the SDK's
    // own logging (which would feed the pipeline that exports it).
    let scopes: Vec<String> = got
        .logs
        .iter()
        .flat_map(|req| &req.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| {
            sl.scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default()
        })
        .collect();
    assert!(scopes.iter().all(|s| s == "logs"), "{scopes:?}");
    drop(guard);
}
