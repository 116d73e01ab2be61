//! The tail keeper against the real OTLP wire: at 1% head sampling, failing
//! and slow calls still have their traces at the sink; an error storm is held
//! to the rate limit; async roots, spawned children and propagation keep
//! their parent links.

mod monitored_common;

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use monitored_common::{Pipeline, flush_until, serial};
use opentelemetry::KeyValue;
use otel_instrument::testing::{Received, SpanRecord};
use otel_instrument::{ParentRoot, SamplerConfig, monitored};

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        Pipeline::install(|b| {
            b.service_name("monitored-tail")
                .sampler(SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.01)))
                // The default queue, batching and rate limit: what a user gets.
                .logs_export(false)
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
fn step(fail: bool) -> Result<(), Failed> {
    if fail { Err(Failed) } else { Ok(()) }
}

/// A request: one nested call; fails (through the nested call) or sleeps as told.
#[monitored]
fn request(id: i64, fail: bool, slow: bool) -> Result<(), Failed> {
    monitored::set_attribute(KeyValue::new("request.id", id));
    if slow {
        std::thread::sleep(Duration::from_millis(25));
    }
    step(fail)
}

/// A full rate-limit bucket, and nothing at the sink from earlier tests.
fn fresh() -> &'static Pipeline {
    let p = pipeline();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(p.guard.flush());
    p.sink.clear();
    p
}

fn request_ids(spans: &[SpanRecord]) -> HashMap<String, SpanRecord> {
    spans
        .iter()
        .filter(|s| s.span.name == "request")
        .filter_map(|s| Some((s.attributes().get("request.id")?.clone(), s.clone())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span of the traces whose request span matches `pred` has its parent
/// in the same trace (or is the root), and carries `sampling.kept`.
fn assert_linked(r: &Received, trace: &[u8]) {
    let spans: Vec<SpanRecord> = r
        .spans()
        .into_iter()
        .filter(|s| s.span.trace_id == trace)
        .collect();
    let ids: BTreeSet<Vec<u8>> = spans.iter().map(|s| s.span.span_id.clone()).collect();
    for s in &spans {
        if s.span.name != "request" {
            assert!(
                ids.contains(&s.span.parent_span_id),
                "{} has no parent in its trace {}: {spans:#?}",
                s.span.name,
                hex(trace)
            );
        }
    }
}

#[test]
fn at_one_percent_sampling_failing_and_slow_calls_keep_their_traces() {
    let _serial = serial();
    let p = fresh();
    let before = monitored::tail_stats();
    const CALLS: i64 = 100_000;
    let mut failing = Vec::new();
    let mut slow = Vec::new();
    let started = Instant::now();
    for id in 0..CALLS {
        // 0.1% fail, 0.1% are slow; spread out, after the p99 has samples.
        let fail = id % 1000 == 999;
        let is_slow = id % 1000 == 499;
        if fail {
            failing.push(id.to_string());
        }
        if is_slow {
            slow.push(id.to_string());
        }
        let _ = request(id, fail, is_slow);
    }
    let elapsed = started.elapsed();
    let r = flush_until(&p.sink, &p.guard, |r| {
        let got = request_ids(&r.spans());
        failing.iter().chain(&slow).all(|id| got.contains_key(id))
    });
    let spans = r.spans();
    let requests = request_ids(&spans);
    let kept = |ids: &[String]| ids.iter().filter(|id| requests.contains_key(*id)).count();
    assert!(
        kept(&failing) * 100 >= failing.len() * 99,
        "failing kept: {}/{}",
        kept(&failing),
        failing.len()
    );
    assert!(
        kept(&slow) * 100 >= slow.len() * 99,
        "slow kept: {}/{}",
        kept(&slow),
        slow.len()
    );

    // Why each was kept, on every span of the trace, and parent links intact.
    for id in &failing {
        let s = &requests[id];
        let attrs = s.attributes();
        let reason = attrs.get("sampling.kept").map(String::as_str);
        // A failing call the head sampler picked has no reason: it was sampled.
        assert!(matches!(reason, Some("error") | None), "{attrs:?}");
        assert_eq!(attrs.get("error.type").map(String::as_str), Some("Failed"));
        assert_linked(&r, &s.span.trace_id);
    }
    for id in &slow {
        let attrs = requests[id].attributes();
        assert!(
            matches!(
                attrs.get("sampling.kept").map(String::as_str),
                Some("slow") | None
            ),
            "{attrs:?}"
        );
    }

    // The total: the head-sampled 1% plus the kept traces, two spans each.
    let head: Vec<&SpanRecord> = requests
        .values()
        .filter(|s| !s.attributes().contains_key("sampling.kept"))
        .collect();
    let tail: Vec<&SpanRecord> = requests
        .values()
        .filter(|s| s.attributes().contains_key("sampling.kept"))
        .collect();
    assert!(
        (700..=1300).contains(&head.len()),
        "head-sampled roots: {} of {CALLS} at 1%",
        head.len()
    );
    assert_eq!(
        spans.len(),
        2 * (head.len() + tail.len()),
        "two spans per exported trace and nothing else"
    );

    // The counters add up: every unsampled root was decided once.
    let after = monitored::tail_stats();
    let decided = (after.kept_error - before.kept_error)
        + (after.kept_slow - before.kept_slow)
        + (after.dropped - before.dropped)
        + (after.refused - before.refused);
    assert_eq!(decided, CALLS as u64 - head.len() as u64, "{after:?}");
    assert_eq!(
        (after.kept_error - before.kept_error) + (after.kept_slow - before.kept_slow),
        tail.len() as u64,
        "kept counts match the kept traces at the sink: {after:?}"
    );
    assert_eq!(after.spans_queue_full, before.spans_queue_full);
    eprintln!(
        "{CALLS} calls in {elapsed:?}: {} head-sampled, {} kept ({} failing, {} slow of {} and {}), {} spans",
        head.len(),
        tail.len(),
        kept(&failing),
        kept(&slow),
        failing.len(),
        slow.len(),
        spans.len()
    );
}

#[monitored(sample = 0.0)]
fn storm() -> Result<(), Failed> {
    Err(Failed)
}

#[test]
fn an_error_storm_is_held_to_the_rate_limit_and_the_rest_is_counted() {
    let _serial = serial();
    let p = fresh();
    let before = monitored::tail_stats();
    let started = Instant::now();
    const CALLS: u64 = 5_000;
    for _ in 0..CALLS {
        let _ = storm();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = monitored::tail_stats();
    let kept = after.kept_error - before.kept_error;
    let refused = after.refused - before.refused;
    // A second's burst, then 100 per second.
    let allowed = 100 + (100.0 * elapsed).ceil() as u64;
    assert!(
        kept <= allowed,
        "kept {kept} in {elapsed:.2}s, limit {allowed}"
    );
    assert!(kept >= 100, "the burst is kept: {kept}");
    assert_eq!(
        kept + refused,
        CALLS,
        "every failing root is kept or refused, and counted"
    );
    assert!(refused > 0, "{CALLS} failures in {elapsed:.2}s");
    let head = 0;
    // What was kept is what arrives, and the head-sampled ones beside it.
    let r = flush_until(&p.sink, &p.guard, |r| {
        r.spans().iter().filter(|s| s.span.name == "storm").count() as u64 >= kept + head
    });
    let kept_at_sink = r
        .spans()
        .iter()
        .filter(|s| s.span.name == "storm" && s.attributes().contains_key("sampling.kept"))
        .count() as u64;
    assert_eq!(kept_at_sink, kept);
}

#[monitored]
async fn async_child(fail: bool) -> Result<(), Failed> {
    tokio::task::yield_now().await;
    if fail { Err(Failed) } else { Ok(()) }
}

#[monitored(sample = 0.0)]
async fn async_root(id: i64, fail: bool) -> Result<(), Failed> {
    monitored::set_attribute(KeyValue::new("request.id", id));
    // Inline, then in a spawned task on another worker, then a sync call.
    async_child(false).await?;
    let spawned = monitored::spawn(async move { async_child(fail).await });
    let _ = spawned.await;
    step(false)?;
    Ok(())
}

#[test]
fn async_roots_keep_their_spawned_children_with_parent_links() {
    let _serial = serial();
    let p = fresh();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The spawned child fails; the root succeeds: the trace is kept (an error
    // in any of its calls).
    let ids: Vec<i64> = (1_000_000..1_000_050).collect();
    rt.block_on(async {
        for &id in &ids {
            let _ = async_root(id, true).await;
        }
    });
    let r = flush_until(&p.sink, &p.guard, |r| {
        let got = request_ids_of(r, "async_root");
        ids.iter().all(|id| got.contains_key(&id.to_string()))
    });
    let roots = request_ids_of(&r, "async_root");
    for id in &ids {
        let root = &roots[&id.to_string()];
        let trace: Vec<SpanRecord> = r
            .spans()
            .into_iter()
            .filter(|s| s.span.trace_id == root.span.trace_id)
            .collect();
        let names: Vec<&str> = trace.iter().map(|s| s.span.name.as_str()).collect();
        assert_eq!(
            trace.len(),
            4,
            "root, two async children and a step: {names:?}"
        );
        for s in &trace {
            if s.span.span_id != root.span.span_id {
                assert_eq!(
                    s.span.parent_span_id, root.span.span_id,
                    "{} is the root's child",
                    s.span.name
                );
            }
        }
        let failed = trace
            .iter()
            .filter(|s| s.attributes().get("error.type").map(String::as_str) == Some("Failed"))
            .count();
        assert_eq!(failed, 1, "{names:?}");
    }
}

fn request_ids_of(r: &Received, name: &str) -> HashMap<String, SpanRecord> {
    r.spans()
        .into_iter()
        .filter(|s| s.span.name == name)
        .filter_map(|s| Some((s.attributes().get("request.id")?.clone(), s)))
        .collect()
}

#[monitored(sample = 0.0)]
fn fanout(id: i64, children: usize) -> Result<(), Failed> {
    monitored::set_attribute(KeyValue::new("request.id", id));
    for _ in 0..children {
        let _ = step(false);
    }
    step(true)
}

#[test]
fn a_root_with_more_spans_than_its_cap_is_kept_up_to_the_cap_and_the_rest_counted() {
    let _serial = serial();
    let p = fresh();
    let before = monitored::tail_stats();
    let id = 2_000_000;
    let _ = fanout(id, 600);
    let after = monitored::tail_stats();
    assert_eq!(after.kept_error - before.kept_error, 1);
    let r = flush_until(&p.sink, &p.guard, |r| {
        !request_ids_of(r, "fanout").is_empty()
    });
    let root = &request_ids_of(&r, "fanout")[&id.to_string()];
    let n = r
        .spans()
        .iter()
        .filter(|s| s.span.trace_id == root.span.trace_id)
        .count();
    // The first 512 children and the root (the failing step is over the cap;
    // the root failed too).
    assert_eq!(n, 513);
    assert_eq!(
        after.spans_over_root_cap - before.spans_over_root_cap,
        601 - 512
    );
}

#[test]
fn outgoing_context_in_a_tracked_call_names_the_call_span() {
    let _serial = serial();
    let p = fresh();
    let mut traceparent = String::new();
    #[monitored(sample = 0.0)]
    fn outer(id: i64, out: &mut String) -> Result<(), Failed> {
        monitored::set_attribute(KeyValue::new("request.id", id));
        let mut headers = http::HeaderMap::new();
        otel_instrument::propagation::inject(&mut headers);
        *out = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Err(Failed)
    }
    let _ = outer(3_000_000, &mut traceparent);
    let r = flush_until(&p.sink, &p.guard, |r| {
        request_ids_of(r, "outer").contains_key("3000000")
    });
    let span = &request_ids_of(&r, "outer")["3000000"];
    assert_eq!(
        span.attributes().get("sampling.kept").map(String::as_str),
        Some("error")
    );
    // Unsampled by the head sampler: the callee is told so, and its own kept
    // part of the trace names our exported span as its parent.
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-00",
            hex(&span.span.trace_id),
            hex(&span.span.span_id)
        ),
        "the propagated parent is the exported span"
    );
}

#[monitored(sample = 0.0)]
fn failing_during_outage(id: i64) -> Result<(), Failed> {
    monitored::set_attribute(KeyValue::new("request.id", id));
    Err(Failed)
}

/// With the collector refusing, the keeper never holds the application up: kept
/// traces wait in the span queue (bounded, like head-sampled spans) and arrive
/// once the collector takes data again.
#[test]
fn traces_kept_while_the_collector_refuses_arrive_after_it_returns() {
    let _serial = serial();
    let p = fresh();
    p.sink
        .set_behaviour(otel_instrument::testing::Behaviour::Refuse);
    let before = monitored::tail_stats();
    let dropped_before = p.guard.stats().spans_dropped();
    let ids: Vec<i64> = (4_000_000..4_000_050).collect();
    for &id in &ids {
        let _ = failing_during_outage(id);
    }
    let after = monitored::tail_stats();
    assert_eq!(after.kept_error - before.kept_error, ids.len() as u64);
    // An export runs into the refusing collector and retries; while it does,
    // the application goes on (more failing calls, each kept or refused at once).
    let flushing = std::thread::spawn(|| pipeline().guard.flush());
    std::thread::sleep(Duration::from_millis(1500));
    let decided = |t: monitored::TailStats| t.kept_error + t.refused;
    let mid = monitored::tail_stats();
    let _ = failing_during_outage(4_000_100);
    assert_eq!(decided(monitored::tail_stats()), decided(mid) + 1);
    p.sink
        .set_behaviour(otel_instrument::testing::Behaviour::Accept);
    let _ = flushing.join();
    let r = flush_until(&p.sink, &p.guard, |r| {
        let got = request_ids_of(r, "failing_during_outage");
        ids.iter().all(|id| got.contains_key(&id.to_string()))
    });
    assert!(
        r.refused > 0,
        "the collector refused while the traces were kept"
    );
    assert_eq!(p.guard.stats().spans_dropped(), dropped_before);
    assert_eq!(
        monitored::tail_stats().spans_queue_full,
        before.spans_queue_full
    );
}
