//! The sampling decision at a local root, and the SDK sampler and id
//! generator that follow it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use opentelemetry::trace::{Link, SpanId, SpanKind, TraceContextExt as _, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, SamplingDecision, SamplingResult, ShouldSample};

use super::INTEGRATED;
use super::callsite::Callsite;
use super::frame::{PENDING_TRACE_ID, Trace, current, next_u64};
use super::tail::RootInfo;

/// Whether a sampled parent context decides for its children.
pub(super) static PARENT_BASED: AtomicBool = AtomicBool::new(true);
/// The root sampler, as a threshold on the trace id's low 63 bits.
pub(super) static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(ALWAYS);
static CUSTOM_IDS: AtomicBool = AtomicBool::new(false);
#[allow(clippy::type_complexity)]
static ID_GENERATOR: RwLock<Option<Box<dyn IdGenerator>>> = RwLock::new(None);

const ALWAYS: u64 = u64::MAX;

/// Most new traces sampled per second (0: no limit).
static ROOT_RATE: AtomicU64 = AtomicU64::new(0);
/// The second (since `EPOCH`) the count is for, and the count.
static RATE_WINDOW: AtomicU64 = AtomicU64::new(0);
static RATE_COUNT: AtomicU64 = AtomicU64::new(0);
static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Samples at most `per_second` new traces a second in this process, on top of
/// the configured sampler, so tracing costs stay fixed as traffic grows. A
/// trace that arrives with a parent keeps its parent's decision. `None`: no limit.
pub fn set_root_rate_limit(per_second: Option<u32>) {
    EPOCH.get_or_init(std::time::Instant::now);
    ROOT_RATE.store(
        per_second.map_or(0, |n| u64::from(n).max(1)),
        Ordering::Relaxed,
    );
}

/// Whether the rate limit lets one more new trace be sampled this second.
/// Only sampled roots ask, so the unsampled path never pays for it.
fn rate_allows() -> bool {
    let limit = ROOT_RATE.load(Ordering::Relaxed);
    if limit == 0 {
        return true;
    }
    let second = EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1;
    let window = RATE_WINDOW.load(Ordering::Relaxed);
    if window != second
        && RATE_WINDOW
            .compare_exchange(window, second, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        RATE_COUNT.store(0, Ordering::Relaxed);
    }
    RATE_COUNT.fetch_add(1, Ordering::Relaxed) < limit
}

/// Sets the root sampler: whether a parent decides, and the ratio for roots.
pub(super) fn set_root(parent_based: bool, ratio: f64) {
    PARENT_BASED.store(parent_based, Ordering::Relaxed);
    ROOT_THRESHOLD.store(threshold(ratio), Ordering::Relaxed);
}

/// Replaces the source of trace ids that `#[monitored]` draws at a local root
/// to make its sampling decision (tests use a fixed one for exact counts).
pub fn set_id_generator(generator: impl IdGenerator + 'static) {
    *ID_GENERATOR.write().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(generator));
    CUSTOM_IDS.store(true, Ordering::Release);
}

/// The `TraceIdRatioBased` threshold, computed the way opentelemetry_sdk does.
pub(super) fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        ALWAYS
    } else {
        (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

fn sampled_by(threshold: u64, trace_id: u128) -> bool {
    threshold == ALWAYS || ((trace_id as u64) >> 1) < threshold
}

fn new_trace_id() -> u128 {
    if CUSTOM_IDS.load(Ordering::Acquire)
        && let Some(g) = ID_GENERATOR
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
    {
        return u128::from_be_bytes(g.new_trace_id().to_bytes());
    }
    let id = (u128::from(next_u64()) << 64) | u128::from(next_u64());
    if id == 0 { 1 } else { id }
}

/// Decides a local root: from the current OTel context's span if there is one
/// (an incoming traceparent, or a plain `tracing` span with the OTel layer),
/// else by drawing a trace id. Also gives the parent's span id (0 if none)
/// and where it came from, for the tail keeper.
pub(super) fn decide_root(callsite: &Callsite) -> (Trace, u128, (u64, RootInfo)) {
    if !INTEGRATED.load(Ordering::Acquire) {
        return (Trace::Delegated, 0, (0, RootInfo::default()));
    }
    let (parent, info) = Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        let parent = sc.is_valid().then(|| {
            (
                u128::from_be_bytes(sc.trace_id().to_bytes()),
                sc.is_sampled(),
            )
        });
        (parent, RootInfo::of(cx))
    });
    let (trace_id, sampled) = match parent {
        Some((trace_id, parent_sampled)) if PARENT_BASED.load(Ordering::Relaxed) => {
            (trace_id, parent_sampled)
        }
        Some((trace_id, _)) => (
            trace_id,
            sampled_by(ROOT_THRESHOLD.load(Ordering::Relaxed), trace_id),
        ),
        None => {
            let trace_id = new_trace_id();
            let threshold = match callsite.sample {
                Some(r) => threshold(r),
                None => ROOT_THRESHOLD.load(Ordering::Relaxed),
            };
            let sampled = sampled_by(threshold, trace_id) && rate_allows();
            if sampled {
                PENDING_TRACE_ID.with(|p| p.set(trace_id));
            }
            (trace_id, sampled)
        }
    };
    if sampled {
        (Trace::Sampled, trace_id, info)
    } else {
        (Trace::Unsampled, trace_id, info)
    }
}

/// An SDK sampler that follows `#[monitored]`'s decision for spans created
/// inside a monitored call, and `inner` everywhere else. Install it in the
/// `SdkTracerProvider` so a root that `#[monitored]` sampled is not sampled a
/// second time by the SDK's ratio.
#[derive(Debug, Clone)]
pub struct MonitoredSampler<S> {
    inner: S,
}

/// Wraps the configured SDK sampler; see [`MonitoredSampler`].
pub fn sampler<S: ShouldSample + Clone + 'static>(inner: S) -> MonitoredSampler<S> {
    MonitoredSampler { inner }
}

impl<S: ShouldSample + Clone + 'static> ShouldSample for MonitoredSampler<S> {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let decision = match current().trace {
            Trace::Sampled | Trace::Recorded => SamplingDecision::RecordAndSample,
            Trace::Unsampled => SamplingDecision::Drop,
            Trace::Free | Trace::Delegated => {
                let mut result = self.inner.should_sample(
                    parent_context,
                    trace_id,
                    name,
                    span_kind,
                    attributes,
                    links,
                );
                let is_root = parent_context.is_none_or(|cx| !cx.span().span_context().is_valid());
                if is_root && result.decision == SamplingDecision::RecordAndSample && !rate_allows()
                {
                    result.decision = SamplingDecision::Drop;
                }
                return result;
            }
        };
        SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state: parent_context
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// An SDK id generator that gives a root span started by `#[monitored]` the
/// trace id `#[monitored]` drew to decide it, and asks `inner` otherwise. With
/// it, the exported trace id is the one the ratio was applied to, so samplers
/// downstream agree, and a fixed generator gives exact, predictable counts.
#[derive(Debug, Clone)]
pub struct MonitoredIdGenerator<G> {
    inner: G,
}

/// Wraps the SDK's id generator; see [`MonitoredIdGenerator`].
pub fn id_generator<G: IdGenerator>(inner: G) -> MonitoredIdGenerator<G> {
    MonitoredIdGenerator { inner }
}

impl<G: IdGenerator> IdGenerator for MonitoredIdGenerator<G> {
    fn new_trace_id(&self) -> TraceId {
        match PENDING_TRACE_ID.with(|p| p.replace(0)) {
            0 => self.inner.new_trace_id(),
            id => TraceId::from(id),
        }
    }

    fn new_span_id(&self) -> SpanId {
        self.inner.new_span_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_matches_the_sdk_ratio_sampler() {
        assert!(sampled_by(threshold(1.0), 0));
        assert!(!sampled_by(threshold(0.0), 0));
        let half = threshold(0.5);
        assert!(sampled_by(half, (1u128 << 64) | 2));
        assert!(!sampled_by(half, u128::from(u64::MAX)));
    }

    #[test]
    fn the_root_rate_limit_admits_its_number_per_second() {
        set_root_rate_limit(Some(5));
        // Start at a fresh second, so the window cannot roll over mid-count.
        let epoch = *EPOCH.get().unwrap();
        let next = epoch.elapsed().as_secs() + 1;
        while epoch.elapsed().as_secs() < next {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let admitted = (0..50).filter(|_| rate_allows()).count();
        set_root_rate_limit(None);
        assert_eq!(admitted, 5);
        assert!(rate_allows());
    }

    #[test]
    fn generated_trace_ids_are_never_zero_and_differ() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}
