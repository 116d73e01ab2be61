//! The native recorder: sampled `#[monitored]` calls are recorded without an
//! SDK span and exported by the keeper's thread. These tests hold the shapes
//! of the traces it exports, over the real OTLP wire, where plain `tracing`
//! spans, spawned tasks and long roots mix with recorded calls.

mod monitored_common;

use std::collections::HashMap;
use std::sync::OnceLock;

use monitored_common::{Pipeline, flush_until, spans_named};
use opentelemetry_proto::tonic::trace::v1::Span;
use otel_instrument::monitored;

/// The defaults of `init!()` (`parentbased_always_on`, fmt on), installed once.
fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        Pipeline::install(|b| {
            b.service_name("recorder-tests")
                .filter("recorder=trace,info")
        })
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn one(r: &otel_instrument::testing::Received, name: &str) -> Span {
    let all = spans_named(r, name);
    assert_eq!(all.len(), 1, "exactly one {name} span: {all:#?}");
    all[0].span.clone()
}

/// Flushes until each of `names` has been exported, and gives the one span
/// of each name.
fn exported<'a>(p: &Pipeline, names: &[&'a str]) -> HashMap<&'a str, Span> {
    let r = flush_until(&p.sink, &p.guard, |r| {
        names.iter().all(|n| !spans_named(r, n).is_empty())
    });
    names.iter().map(|n| (*n, one(&r, n))).collect()
}

#[monitored]
fn outer_recorded() {
    tracing::info_span!("plain_between").in_scope(|| {
        inner_recorded();
    });
    after_the_plain_span();
}

#[monitored]
fn inner_recorded() {
    innermost_recorded();
    tracing::info_span!("plain_inside_inner").in_scope(|| {});
}

#[monitored]
fn innermost_recorded() {}

#[monitored]
fn after_the_plain_span() {}

#[test]
fn plain_spans_and_recorded_calls_nest_in_the_order_they_ran() {
    let p = pipeline();
    outer_recorded();
    let names = [
        "outer_recorded",
        "plain_between",
        "inner_recorded",
        "innermost_recorded",
        "plain_inside_inner",
        "after_the_plain_span",
    ];
    let s = exported(p, &names);
    let parent = |n: &str| hex(&s[n].parent_span_id);
    let id = |n: &str| hex(&s[n].span_id);
    assert!(s["outer_recorded"].parent_span_id.is_empty());
    // A plain span inside a recorded call is its child ...
    assert_eq!(parent("plain_between"), id("outer_recorded"));
    // ... a monitored call inside that plain span is the plain span's child ...
    assert_eq!(parent("inner_recorded"), id("plain_between"));
    // ... and what runs inside that call is that call's, not the plain span's.
    assert_eq!(parent("innermost_recorded"), id("inner_recorded"));
    assert_eq!(parent("plain_inside_inner"), id("inner_recorded"));
    // Once the plain span is left, the caller is the parent again.
    assert_eq!(parent("after_the_plain_span"), id("outer_recorded"));
    let trace = hex(&s["outer_recorded"].trace_id);
    for n in names {
        assert_eq!(hex(&s[n].trace_id), trace, "{n} in the root's trace");
        assert_eq!(s[n].flags & 0x200, 0, "{n}: a local parent, not remote");
    }
}

#[monitored]
async fn async_outer() -> u32 {
    let plain = tracing::info_span!("async_plain");
    let v = {
        let _e = plain.enter();
        async_leaf_sync()
    };
    tokio::task::yield_now().await;
    v + async_inner().await
}

#[monitored]
fn async_leaf_sync() -> u32 {
    1
}

#[monitored]
async fn async_inner() -> u32 {
    tokio::task::yield_now().await;
    otel_instrument::monitored::set_attribute(opentelemetry::KeyValue::new("added", 7));
    2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_recorded_root_keeps_its_children_across_polls_and_threads() {
    let p = pipeline();
    assert_eq!(tokio::spawn(async_outer()).await.unwrap(), 3);
    let names = [
        "async_outer",
        "async_plain",
        "async_leaf_sync",
        "async_inner",
    ];
    let s = exported(p, &names);
    let id = |n: &str| hex(&s[n].span_id);
    assert_eq!(hex(&s["async_plain"].parent_span_id), id("async_outer"));
    assert_eq!(hex(&s["async_leaf_sync"].parent_span_id), id("async_plain"));
    assert_eq!(hex(&s["async_inner"].parent_span_id), id("async_outer"));
    let added = s["async_inner"]
        .attributes
        .iter()
        .any(|kv| kv.key == "added");
    assert!(added, "set_attribute reached the recorded call's span");
}

#[monitored]
fn sync_root_that_spawns(rt: &tokio::runtime::Runtime) {
    let handle = rt.spawn(otel_instrument::monitored::FutureExt::in_current_trace(
        spawned_child(),
    ));
    rt.block_on(handle).unwrap();
}

#[monitored]
async fn spawned_child() {
    tokio::task::yield_now().await;
    spawned_grandchild();
}

#[monitored]
fn spawned_grandchild() {}

#[test]
fn a_task_spawned_from_a_sync_recorded_root_is_part_of_its_trace() {
    let p = pipeline();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    sync_root_that_spawns(&rt);
    let names = [
        "sync_root_that_spawns",
        "spawned_child",
        "spawned_grandchild",
    ];
    let s = exported(p, &names);
    assert_eq!(
        s["spawned_child"].parent_span_id,
        s["sync_root_that_spawns"].span_id
    );
    assert_eq!(
        s["spawned_grandchild"].parent_span_id,
        s["spawned_child"].span_id
    );
    assert_eq!(
        s["spawned_child"].trace_id,
        s["sync_root_that_spawns"].trace_id
    );
}

#[monitored]
fn long_root(n: u32) {
    for _ in 0..n {
        long_root_child();
    }
}

#[monitored]
fn long_root_child() {}

#[test]
fn a_recorded_root_longer_than_the_per_root_cap_is_exported_whole() {
    let p = pipeline();
    // The per-root cap (512 by default) bounds what a thread holds; a sampled
    // root sends what it holds early instead of dropping the rest.
    long_root(2_000);
    let r = flush_until(&p.sink, &p.guard, |r| {
        spans_named(r, "long_root").len() == 1 && spans_named(r, "long_root_child").len() >= 2_000
    });
    let root = one(&r, "long_root");
    let children = spans_named(&r, "long_root_child");
    assert_eq!(children.len(), 2_000);
    assert!(
        children
            .iter()
            .all(|c| c.span.parent_span_id == root.span_id && c.span.trace_id == root.trace_id)
    );
    assert_eq!(
        otel_instrument::monitored::tail_stats().spans_over_root_cap,
        0,
        "nothing dropped at the cap"
    );
}

#[monitored]
fn logs_with_ids() {
    tracing::info!("inside a recorded call");
}

#[test]
fn events_and_outgoing_context_carry_the_recorded_calls_ids() {
    let p = pipeline();
    let (cx_trace, cx_span, sampled) = {
        #[monitored]
        fn capture() -> (String, String, bool) {
            use opentelemetry::trace::TraceContextExt as _;
            let cx = otel_instrument::monitored::current_context();
            let sc = cx.span().span_context().clone();
            logs_with_ids();
            (
                sc.trace_id().to_string(),
                sc.span_id().to_string(),
                sc.is_sampled(),
            )
        }
        capture()
    };
    assert!(sampled, "the outgoing context is sampled");
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "capture").is_empty() && !spans_named(r, "logs_with_ids").is_empty()
    });
    let capture = one(&r, "capture");
    assert_eq!(hex(&capture.trace_id), cx_trace);
    assert_eq!(
        hex(&capture.span_id),
        cx_span,
        "propagation names the call's own span"
    );
    let logs = one(&r, "logs_with_ids");
    let events: Vec<&str> = logs.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["inside a recorded call"]);
}
