//! `#[monitored]`'s sampling fast path against the real OTLP wire, with
//! `parentbased_traceidratio` at 0.25 and a fixed id generator, so every
//! decision is known in advance.

mod monitored_common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use monitored_common::{flush_until, map, points, spans_named, value_with};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::IdGenerator;
use otel_instrument::testing::OtlpSink;
use otel_instrument::{ParentRoot, SamplerConfig, Telemetry, TelemetryGuard, monitored};

/// The n-th trace id has `n % 64` in its top 6 low-word bits, so with a ratio of
/// 0.25 exactly the ids with `n % 64 < 16` are sampled.
#[derive(Debug)]
struct Fixed;

static NEXT_TRACE: AtomicU64 = AtomicU64::new(0);
static NEXT_SPAN: AtomicU64 = AtomicU64::new(1);

fn nth_trace_id(n: u64) -> u128 {
    ((0xabcd_u128 + u128::from(n)) << 64) | u128::from((n % 64) << 58)
}

impl IdGenerator for Fixed {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from(nth_trace_id(NEXT_TRACE.fetch_add(1, Ordering::SeqCst)))
    }

    fn new_span_id(&self) -> SpanId {
        SpanId::from(NEXT_SPAN.fetch_add(1, Ordering::SeqCst))
    }
}

struct Pipeline {
    sink: OtlpSink,
    guard: TelemetryGuard,
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Installs the pipeline once; tests run one at a time, each starting its ids at `first_trace`.
fn pipeline(first_trace: u64) -> (MutexGuard<'static, ()>, &'static Pipeline) {
    static P: OnceLock<Pipeline> = OnceLock::new();
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = P.get_or_init(|| {
        let sink = OtlpSink::start().unwrap();
        let guard = Telemetry::builder()
            .service_name("monitored-sampling-tests")
            .endpoint(sink.endpoint())
            .sampler(SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.25)))
            .id_generator(Fixed)
            .fmt(false)
            .filter("monitored_sampling=trace")
            .install()
            .unwrap();
        Pipeline { sink, guard }
    });
    assert!(p.guard.flush());
    p.sink.clear();
    NEXT_TRACE.store(first_trace, Ordering::SeqCst);
    (serial, p)
}

#[monitored]
fn ratio_root() {}

#[test]
fn the_sampled_ratio_is_exact_with_a_fixed_id_generator_and_every_call_is_counted() {
    let (_serial, p) = pipeline(0);
    for _ in 0..64 {
        ratio_root();
    }
    let r = flush_until(&p.sink, &p.guard, |r| {
        value_with(
            &points(r, "function.calls", "ratio_root"),
            &map(&[
                ("function", "ratio_root"),
                ("module", "monitored_sampling"),
                ("result", "ok"),
            ]),
        ) == Some(64.0)
    });
    let spans = spans_named(&r, "ratio_root");
    assert_eq!(spans.len(), 16, "exactly a quarter of 64 roots is sampled");
    // The exported trace ids are the ones the decision was made on.
    let mut got: Vec<u128> = spans
        .iter()
        .map(|s| u128::from_be_bytes(s.span.trace_id.as_slice().try_into().unwrap()))
        .collect();
    got.sort_unstable();
    let want: Vec<u128> = (0..16).map(nth_trace_id).collect();
    assert_eq!(got, want);
}

static SAW_TRACING_SPAN: AtomicBool = AtomicBool::new(true);

#[monitored]
fn unsampled_root() {
    unsampled_child();
    tracing::info_span!("plain_inside_unsampled").in_scope(|| {});
}

#[monitored]
fn unsampled_child() {
    SAW_TRACING_SPAN.store(!tracing::Span::current().is_none(), Ordering::SeqCst);
}

#[test]
fn children_of_an_unsampled_root_export_nothing_but_are_counted() {
    let (_serial, p) = pipeline(32);
    unsampled_root();
    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", "unsampled_child").is_empty()
    });
    for name in [
        "unsampled_root",
        "unsampled_child",
        "plain_inside_unsampled",
    ] {
        assert!(
            spans_named(&r, name).is_empty(),
            "{name} must not be exported"
        );
    }
    assert!(
        !SAW_TRACING_SPAN.load(Ordering::SeqCst),
        "with only the OTel layer, an unsampled call creates no tracing span"
    );
    let pts = points(&r, "function.calls", "unsampled_child");
    let want = map(&[
        ("function", "unsampled_child"),
        ("module", "monitored_sampling"),
        ("result", "ok"),
        ("caller.function", "unsampled_root"),
        ("caller.module", "monitored_sampling"),
    ]);
    assert_eq!(value_with(&pts, &want), Some(1.0), "{pts:#?}");
}

#[monitored]
fn sampled_parent() {
    sampled_kid();
}

#[monitored]
fn sampled_kid() {}

#[test]
fn children_of_a_sampled_root_export_with_the_roots_ids() {
    let (_serial, p) = pipeline(3);
    sampled_parent();
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "sampled_parent").is_empty() && !spans_named(r, "sampled_kid").is_empty()
    });
    let root = &spans_named(&r, "sampled_parent")[0].span;
    let kid = &spans_named(&r, "sampled_kid")[0].span;
    assert_eq!(root.trace_id, nth_trace_id(3).to_be_bytes().to_vec());
    assert!(root.parent_span_id.is_empty());
    assert_eq!(kid.trace_id, root.trace_id);
    assert_eq!(kid.parent_span_id, root.span_id);
}

#[monitored]
fn remote_child() {}

#[monitored]
fn remote_child_unsampled() {}

fn extract(traceparent: &str) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    TraceContextPropagator::new().extract(&carrier)
}

#[test]
fn an_incoming_traceparent_is_honoured_by_parent_based_sampling() {
    let (_serial, p) = pipeline(50);
    // Its trace id alone would not be sampled at 0.25: the parent's flag decides.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    {
        let _cx = extract(&format!("00-{trace}-00f067aa0ba902b7-01")).attach();
        remote_child();
    }
    {
        let _cx = extract(&format!("00-{trace}-00f067aa0ba902b8-00")).attach();
        remote_child_unsampled();
    }
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "remote_child").is_empty()
            && !points(r, "function.calls", "remote_child_unsampled").is_empty()
    });
    let span = &spans_named(&r, "remote_child")[0].span;
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert!(spans_named(&r, "remote_child_unsampled").is_empty());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

static INJECTED: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

#[monitored]
fn propagating_root() {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new()
        .inject_context(&otel_instrument::monitored::current_context(), &mut carrier);
    *INJECTED.lock().unwrap() = Some(carrier);
}

#[test]
fn outgoing_context_from_an_unsampled_trace_carries_sampled_0() {
    let (_serial, p) = pipeline(40);
    propagating_root();
    let carrier = INJECTED.lock().unwrap().take().unwrap();
    let traceparent = carrier
        .get("traceparent")
        .expect("a traceparent is injected");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], format!("{:032x}", nth_trace_id(40)));
    assert_ne!(parts[2], "0000000000000000");
    assert_eq!(parts[3], "00", "sampled=0 travels downstream");
    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", "propagating_root").is_empty()
    });
    assert!(spans_named(&r, "propagating_root").is_empty());
}

/// Returns Pending once, so the test can move the future to another thread.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[monitored]
async fn migrating_root() {
    migrating_before();
    YieldOnce(false).await;
    migrating_after();
}

#[monitored]
fn migrating_before() {}

#[monitored]
fn migrating_after() {}

/// Polls once on one thread, then to completion on another.
fn run_across_threads(fut: impl Future<Output = ()> + Send + 'static) {
    let mut fut = Box::pin(fut);
    let mut fut = std::thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(
            otel_instrument::monitored::current_function().is_none(),
            "the frame does not leak out of a poll"
        );
        fut
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert!(otel_instrument::monitored::current_function().is_none());
    })
    .join()
    .unwrap();
}

#[test]
fn an_async_fn_that_migrates_between_threads_keeps_its_decision() {
    // Sampled: both children, before and after the move, hang under the root.
    let (serial, p) = pipeline(5);
    run_across_threads(migrating_root());
    let r = flush_until(&p.sink, &p.guard, |r| {
        ["migrating_root", "migrating_before", "migrating_after"]
            .iter()
            .all(|n| !spans_named(r, n).is_empty())
    });
    let root = &spans_named(&r, "migrating_root")[0].span;
    for child in ["migrating_before", "migrating_after"] {
        let c = &spans_named(&r, child)[0].span;
        assert_eq!(c.parent_span_id, root.span_id, "{child}");
        assert_eq!(c.trace_id, root.trace_id, "{child}");
    }
    drop(serial);

    // Unsampled: nothing is exported on either thread, and the caller label survives the move.
    let (_serial, p) = pipeline(20);
    run_across_threads(migrating_root());
    let want = map(&[
        ("function", "migrating_after"),
        ("module", "monitored_sampling"),
        ("result", "ok"),
        ("caller.function", "migrating_root"),
        ("caller.module", "monitored_sampling"),
    ]);
    let r = flush_until(&p.sink, &p.guard, |r| {
        value_with(&points(r, "function.calls", "migrating_after"), &want) == Some(2.0)
    });
    for name in ["migrating_root", "migrating_before", "migrating_after"] {
        assert!(
            spans_named(&r, name).is_empty(),
            "{name} must not be exported"
        );
    }
}
