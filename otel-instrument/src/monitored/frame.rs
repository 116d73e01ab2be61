//! The thread/task-local frame: which monitored call is running, and in which
//! trace state, so that nested calls know their caller and inherit the
//! sampling decision.

use std::cell::Cell;

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};

use super::callsite::Callsite;

/// The trace state a monitored call runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trace {
    /// No monitored call above: the next one is a local root.
    Free,
    /// `#[monitored]` does not decide; every call gets a span and the SDK decides.
    Delegated,
    /// Sampled, with an SDK span per call (the context is attached): when the
    /// native recorder is off, or for a root whose level is filtered out.
    Sampled,
    /// Sampled and recorded natively: no SDK span, no attached context. The
    /// trace id is in `UNSAMPLED_TRACE_ID`, the running call's span id in the
    /// tail keeper's cursor; the keeper's thread exports the spans.
    Recorded,
    /// Not sampled: no OTel span. The trace id, kept for propagation, is in
    /// `UNSAMPLED_TRACE_ID` (not here: the frame is copied on every call and
    /// stays two words).
    Unsampled,
}

/// The current monitored call: the caller of the next one, and its trace state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frame {
    pub(super) callsite: Option<&'static Callsite>,
    pub(super) trace: Trace,
}

impl Frame {
    pub(super) const ROOT: Frame = Frame {
        callsite: None,
        trace: Trace::Free,
    };
}

thread_local! {
    pub(super) static CURRENT: Cell<Frame> = const { Cell::new(Frame::ROOT) };
    pub(super) static RNG: Cell<u64> = const { Cell::new(0) };
    /// The trace id a sampled local root drew, for the SDK to use (see
    /// [`MonitoredIdGenerator`]), so the exported trace id is the one decided on.
    pub(super) static PENDING_TRACE_ID: Cell<u128> = const { Cell::new(0) };
    /// The trace id of the spanless trace running on this thread, if any: an
    /// unsampled one, or a sampled root whose span the level filter turned off.
    pub(super) static UNSAMPLED_TRACE_ID: Cell<u128> = const { Cell::new(0) };
}

#[inline(always)]
pub(super) fn current() -> Frame {
    CURRENT.with(Cell::get)
}

#[inline(always)]
pub(super) fn set_current(frame: Frame) {
    CURRENT.with(|c| c.set(frame));
}

/// Restores this thread's frame when it drops, on every path: a panic that
/// the runtime catches (tokio does, per task) must not leave a dead call's
/// frame on the worker thread for the next task to inherit.
#[derive(Debug)]
pub(super) struct FrameGuard {
    pub(super) frame: Frame,
}

impl FrameGuard {
    #[inline(always)]
    pub(super) fn save() -> Self {
        Self { frame: current() }
    }
}

impl Drop for FrameGuard {
    #[inline(always)]
    fn drop(&mut self) {
        set_current(self.frame);
    }
}

/// A trace id in two words: a guard that holds one stays 8-byte aligned,
/// which is cheaper to move than a 16-byte aligned `u128`.
#[inline(always)]
pub(super) fn to_words(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

/// The trace id that [`to_words`] split.
#[inline(always)]
pub(super) fn from_words([hi, lo]: [u64; 2]) -> u128 {
    (u128::from(hi) << 64) | u128::from(lo)
}

/// A [`FrameGuard`] that also restores the unsampled trace id, which a poll
/// overwrites with its call's. (A sync call needs no such restore: it only sets
/// the id when it is a new root, and then the frame it restores is free, so
/// nobody reads the id.)
#[derive(Debug)]
pub(super) struct PollGuard {
    _frame: FrameGuard,
    /// `UNSAMPLED_TRACE_ID` as it was, in two words ([`to_words`]).
    unsampled: [u64; 2],
}

impl PollGuard {
    #[inline(always)]
    pub(super) fn save() -> Self {
        let id = UNSAMPLED_TRACE_ID.with(Cell::get);
        Self {
            _frame: FrameGuard::save(),
            unsampled: to_words(id),
        }
    }
}

impl Drop for PollGuard {
    #[inline(always)]
    fn drop(&mut self) {
        let id = from_words(self.unsampled);
        UNSAMPLED_TRACE_ID.with(|t| t.set(id));
    }
}

/// Durations the latency clock measured with the end before the start
/// The trace id of the unsampled trace running on this thread (0 if none).
pub(super) fn unsampled_trace_id() -> u128 {
    UNSAMPLED_TRACE_ID.with(Cell::get)
}

/// The ids of the current monitored call when it has no SDK span (not
/// sampled, or recorded natively), with its trace flags: the trace id, and
/// the span id when the tail keeper records the call (else invalid).
pub(crate) fn spanless_trace() -> Option<(TraceId, SpanId, TraceFlags)> {
    let flags = match current().trace {
        Trace::Unsampled => TraceFlags::default(),
        Trace::Recorded => TraceFlags::SAMPLED,
        _ => return None,
    };
    Some((
        TraceId::from(unsampled_trace_id()),
        SpanId::from(super::tail::current_span()),
        flags,
    ))
}

/// The span context of the natively recorded call running here, for the
/// OTel context that a plain `tracing` span started inside it needs as its
/// parent (see `layers::OtelFilter`).
pub(super) fn recorded_span_context() -> Option<SpanContext> {
    if current().trace != Trace::Recorded {
        return None;
    }
    let span = super::tail::current_span();
    (span != 0).then(|| {
        SpanContext::new(
            TraceId::from(unsampled_trace_id()),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    })
}

/// The span id of the current OTel context's span, if it is valid and of
/// trace `trace_id` (else 0). Inside a natively recorded call it tells whether
/// a plain `tracing` span was entered since the call started.
pub(super) fn context_span(trace_id: u128) -> u64 {
    Context::map_current(|cx| {
        if !cx.has_active_span() {
            return 0;
        }
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() && u128::from_be_bytes(sc.trace_id().to_bytes()) == trace_id {
            u64::from_be_bytes(sc.span_id().to_bytes())
        } else {
            0
        }
    })
}

/// The trace and span id of the span that is current here, if it is a local
/// span that will be exported when sampled: a sampled (or delegated)
/// `#[monitored]` call's, or, outside any, the current `tracing` span's. An
/// unsampled call has none: its trace is decided only after it ends.
pub(crate) fn sampled_span() -> Option<(u128, u64)> {
    fn of(cx: &Context) -> Option<(u128, u64)> {
        let span = cx.span();
        let sc = span.span_context();
        (sc.is_valid() && sc.is_sampled() && !sc.is_remote()).then(|| {
            (
                u128::from_be_bytes(sc.trace_id().to_bytes()),
                u64::from_be_bytes(sc.span_id().to_bytes()),
            )
        })
    }
    match current().trace {
        Trace::Unsampled => None,
        Trace::Recorded => match super::tail::current_span() {
            0 => None,
            span => Some((unsampled_trace_id(), span)),
        },
        Trace::Sampled | Trace::Delegated => Context::map_current(of),
        Trace::Free => {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let span = tracing::Span::current();
            if span.is_none() {
                return None;
            }
            of(&span.context())
        }
    }
}

/// The name and module of the monitored function running on this thread or
/// task, if any.
pub fn current_function() -> Option<(&'static str, &'static str)> {
    current().callsite.map(|c| (c.function, c.module))
}

/// Whether the current monitored call is in a trace that is not sampled.
pub fn is_unsampled() -> bool {
    current().trace == Trace::Unsampled
}

/// The OpenTelemetry context to propagate from here: inside an unsampled
/// monitored call it carries the trace id with `sampled=0`; inside a sampled one
/// it holds the call's span; elsewhere it is the current `tracing` span's context.
pub fn current_context() -> Context {
    let trace = current().trace;
    match trace {
        Trace::Unsampled | Trace::Recorded => {
            let trace_id = UNSAMPLED_TRACE_ID.with(Cell::get);
            // The tracked call's own span, so that a callee's kept part of the
            // trace joins ours; a fresh id when nothing is tracked.
            let span_id = match super::tail::current_span() {
                0 => next_u64().max(1),
                tracked => tracked,
            };
            let cx = Context::current();
            // The caller's tracestate travels on (its vendors' entries are
            // theirs to keep), when the unsampled trace came from there.
            let state = {
                let parent = cx.span();
                let parent = parent.span_context();
                if parent.trace_id() == TraceId::from(trace_id) {
                    parent.trace_state().clone()
                } else {
                    TraceState::NONE
                }
            };
            // A recorded call is a local span of a sampled trace.
            let recorded = trace == Trace::Recorded;
            cx.with_remote_span_context(SpanContext::new(
                TraceId::from(trace_id),
                SpanId::from(span_id),
                if recorded {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                !recorded,
                state,
            ))
        }
        Trace::Sampled => {
            // A sampled monitored call attached its span's context, unless the
            // level filter turned its span off: then the root's trace id goes
            // on, sampled, so downstream services stay in the trace.
            let cx = Context::current();
            let trace_id = UNSAMPLED_TRACE_ID.with(Cell::get);
            if cx.span().span_context().is_valid() || trace_id == 0 {
                return cx;
            }
            cx.with_remote_span_context(SpanContext::new(
                TraceId::from(trace_id),
                SpanId::from(next_u64().max(1)),
                TraceFlags::SAMPLED,
                true,
                TraceState::NONE,
            ))
        }
        Trace::Free | Trace::Delegated => {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            tracing::Span::current().context()
        }
    }
}

/// A fast per-thread generator (wyrand), seeded once from std's random keys.
pub(super) fn next_u64() -> u64 {
    RNG.with(|s| {
        let mut state = s.get();
        if state == 0 {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(s as *const _ as usize);
            state = h.finish() | 1;
        }
        state = state.wrapping_add(0xa076_1d64_78bd_642f);
        s.set(state);
        let t = u128::from(state) * u128::from(state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}
