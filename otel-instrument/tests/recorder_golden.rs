//! The native recorder's spans against the SDK's: the same calls, once
//! recorded (the default) and once with SDK spans (the path taken without the
//! keeper's span sink), exported over the real OTLP wire to one sink, must
//! carry the same names, kinds, attributes, statuses, events, flags, trace
//! state, parents and scope. Ids and times differ by nature and are left out.

mod monitored_common;

use std::collections::{BTreeMap, BTreeSet};

use monitored_common::{Pipeline, flush_until};
use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt as _;
use otel_instrument::monitored;
use otel_instrument::monitored::TailSettings;
use otel_instrument::testing::{Received, SpanRecord, attributes};

thread_local! {
    /// Whether the last `golden_root` ran with an SDK span attached (the SDK
    /// path) rather than recorded: which path ran, seen from inside.
    static SDK_SPAN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[monitored]
fn golden_root(n: u64) -> Result<u64, std::io::Error> {
    SDK_SPAN.with(|s| s.set(opentelemetry::Context::current().has_active_span()));
    monitored::set_attribute(KeyValue::new("golden.custom", "v"));
    monitored::add_event("golden.checkpoint", vec![KeyValue::new("golden.k", 1)]);
    tracing::info!(answer = 42, "inside the golden root");
    let _ = golden_fails(n);
    let inner = tracing::info_span!("golden_plain").in_scope(|| golden_in_plain(n));
    Ok(golden_leaf(n) + inner)
}

#[monitored]
fn golden_leaf(x: u64) -> u64 {
    x + 1
}

#[monitored]
fn golden_in_plain(x: u64) -> u64 {
    x * 2
}

#[monitored]
fn golden_fails(_x: u64) -> Result<u64, std::io::Error> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "golden record missing",
    ))
}

const NAMES: [&str; 5] = [
    "golden_root",
    "golden_leaf",
    "golden_in_plain",
    "golden_fails",
    "golden_plain",
];

/// What must agree between the two paths, for one span.
#[derive(Debug, PartialEq)]
struct Shape {
    scope: String,
    resource: BTreeMap<String, String>,
    kind: i32,
    attributes: BTreeMap<String, String>,
    status: Option<(i32, String)>,
    events: Vec<(String, BTreeMap<String, String>)>,
    parent: Option<String>,
    sampled: bool,
    trace_state: String,
    links: usize,
}

/// The spans of the one trace of `golden_root` not in `seen`, by name.
fn trace_shapes(r: &Received, seen: &BTreeSet<Vec<u8>>) -> (Vec<u8>, BTreeMap<String, Shape>) {
    let all = r.spans();
    let root = all
        .iter()
        .find(|s| s.span.name == "golden_root" && !seen.contains(&s.span.trace_id))
        .expect("a new golden_root span");
    let trace_id = root.span.trace_id.clone();
    let ours: Vec<&SpanRecord> = all.iter().filter(|s| s.span.trace_id == trace_id).collect();
    let name_of = |id: &[u8]| {
        ours.iter()
            .find(|s| s.span.span_id == id)
            .map(|s| s.span.name.clone())
    };
    let mut shapes = BTreeMap::new();
    for s in &ours {
        let span = &s.span;
        let shape = Shape {
            scope: s.scope.clone(),
            resource: s.resource.clone(),
            kind: span.kind,
            // Times differ by nature: tracing-opentelemetry's own
            // busy and idle time on the plain span.
            attributes: s
                .attributes()
                .into_iter()
                .filter(|(k, _)| k != "busy_ns" && k != "idle_ns")
                .collect(),
            status: span.status.as_ref().map(|st| (st.code, st.message.clone())),
            events: span
                .events
                .iter()
                .map(|e| (e.name.clone(), attributes(&e.attributes)))
                .collect(),
            parent: if span.parent_span_id.is_empty() {
                None
            } else {
                Some(name_of(&span.parent_span_id).unwrap_or_else(|| "(not exported)".into()))
            },
            sampled: span.flags & 0x1 == 0x1,
            trace_state: span.trace_state.clone(),
            links: span.links.len(),
        };
        assert!(
            shapes.insert(span.name.clone(), shape).is_none(),
            "one {} span per trace",
            span.name
        );
    }
    (trace_id, shapes)
}

fn has_trace(r: &Received, seen: &BTreeSet<Vec<u8>>) -> bool {
    let all = r.spans();
    all.iter()
        .find(|s| s.span.name == "golden_root" && !seen.contains(&s.span.trace_id))
        .is_some_and(|root| {
            NAMES.iter().all(|n| {
                all.iter()
                    .any(|s| s.span.name == *n && s.span.trace_id == root.span.trace_id)
            })
        })
}

#[test]
fn a_recorded_trace_carries_what_the_sdk_spans_of_the_same_calls_carry() {
    // The defaults of `init!()`: `parentbased_always_on`, the keeper's span
    // sink installed, so sampled calls are recorded natively.
    let p = Pipeline::install(|b| {
        b.service_name("recorder-golden")
            .filter("recorder_golden=trace,info")
    });

    golden_root(3).unwrap();
    assert!(
        !SDK_SPAN.with(std::cell::Cell::get),
        "the first run is recorded"
    );
    let seen = BTreeSet::new();
    let r = flush_until(&p.sink, &p.guard, |r| has_trace(r, &seen));
    let (recorded_id, recorded) = trace_shapes(&r, &seen);

    // Without the keeper's sink, sampled calls start SDK spans on the
    // pipeline's tracer, into the same span processor and exporter.
    monitored::configure_tail(&TailSettings::default(), None);
    golden_root(3).unwrap();
    assert!(
        SDK_SPAN.with(std::cell::Cell::get),
        "the second run has SDK spans"
    );
    let seen = BTreeSet::from([recorded_id]);
    let r = flush_until(&p.sink, &p.guard, |r| has_trace(r, &seen));
    let (_, sdk) = trace_shapes(&r, &seen);

    let names: BTreeSet<&str> = NAMES.into_iter().collect();
    assert_eq!(
        recorded.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        names
    );
    assert_eq!(
        sdk.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        names
    );
    for name in NAMES {
        assert_eq!(
            recorded[name], sdk[name],
            "{name}: the recorded span (left) differs from the SDK's (right)"
        );
    }
    // The shapes hold what the test is about, so that agreement on empty
    // values cannot pass it.
    let root = &recorded["golden_root"];
    assert_eq!(
        root.attributes.get("golden.custom").map(String::as_str),
        Some("v")
    );
    assert!(root.events.iter().any(|(n, _)| n == "golden.checkpoint"));
    assert!(root.sampled);
    assert_eq!(
        recorded["golden_plain"].parent.as_deref(),
        Some("golden_root")
    );
    assert_eq!(
        recorded["golden_in_plain"].parent.as_deref(),
        Some("golden_plain")
    );
    assert_eq!(
        recorded["golden_fails"].status.as_ref().map(|s| s.0),
        Some(2)
    );
}
