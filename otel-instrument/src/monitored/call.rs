//! The guards a monitored call holds from start to finish: they set the
//! frame, start and end the span, and record the metrics.

use std::cell::Cell;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::trace::{Status, TraceContextExt as _};
use opentelemetry::{Context, ContextGuard, KeyValue};

use super::callsite::{Bound, Callsite};
use super::frame::{
    Frame, FrameGuard, PENDING_TRACE_ID, PollGuard, Trace, UNSAMPLED_TRACE_ID, from_words,
    set_current, to_words,
};
use super::sampling::decide_root;
use super::tail::TailCall;
use super::tracer::start_otel;
use opentelemetry_semantic_conventions::attribute::{EXCEPTION_MESSAGE, EXCEPTION_TYPE};

use super::{
    CancelledAs, ERROR_CATEGORY, ERROR_FINGERPRINT, ERROR_TYPE, FUNCTION, MODULE, OTHER_LAYERS,
    RESULT, RESULT_CANCELLED, SdkScope, cancelled_as, clock, service_name_label,
};
use crate::errors::ErrorCategory;

thread_local! {
    /// A sampled call's attributes between their evaluation and its guard.
    static ATTRIBUTES: std::cell::RefCell<Vec<KeyValue>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The recorder's part of a sampled call (out of line: the unsampled path
/// stays short).
#[inline(never)]
fn recorded(
    is_async: bool,
    trace_id: u128,
    root_parent: Option<(u64, super::tail::RootInfo)>,
) -> TailCall {
    let call = match root_parent {
        Some((parent, info)) => TailCall::root(is_async, trace_id, parent, info, true),
        None => TailCall::child(is_async, trace_id),
    };
    call.with_attributes(take_attributes())
}

/// Evaluates a sampled call's attributes and holds them aside for its
/// guard; says whether the span's level is enabled.
#[inline(never)]
fn evaluate_attributes(make_attributes: impl FnOnce(&mut Vec<KeyValue>) -> bool) -> bool {
    let mut attributes = Vec::new();
    let enabled = make_attributes(&mut attributes);
    if enabled {
        ATTRIBUTES.with(|a| *a.borrow_mut() = attributes);
    }
    enabled
}

#[inline(never)]
fn take_attributes() -> Vec<KeyValue> {
    ATTRIBUTES.with(|a| std::mem::take(&mut *a.borrow_mut()))
}

/// In a recorded trace, detaches the contexts that plain `tracing` spans
/// opened inside the call attached (the OTel filter makes a recorded call's
/// span context current for them).
#[inline(always)]
fn detach_if_recorded(trace: Trace) {
    if trace == Trace::Recorded {
        super::layers::detach_materialized();
    }
}

/// How a call ended, as the metrics and the span record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ok,
    Error(ErrorCategory, &'static str),
    Cancelled,
}

/// The outcome of a call: a panic is an internal error, a cancellation
/// counts as `mode` says (read only for a cancelled call), anything else as
/// its error (if any).
#[inline(always)]
fn outcome(
    error: Option<(ErrorCategory, &'static str)>,
    panicking: bool,
    cancelled: bool,
    mode: impl FnOnce() -> CancelledAs,
) -> Outcome {
    match (error, cancelled) {
        (Some((category, error_type)), _) => Outcome::Error(category, error_type),
        (None, _) if panicking => Outcome::Error(ErrorCategory::Internal, "panic"),
        (None, true) => match mode() {
            CancelledAs::Cancelled => Outcome::Cancelled,
            CancelledAs::Error => Outcome::Error(ErrorCategory::Cancelled, "Cancelled"),
            CancelledAs::Ok => Outcome::Ok,
        },
        (None, false) => Outcome::Ok,
    }
}

/// A sampled call's OTel span: its context, and the wall-clock start time it
/// was given, from which the end time is the measured duration later (the
/// wall-clock anchor of the thread that ends an async call may differ from the
/// one that started it by the clock's calibration error).
#[derive(Debug)]
struct Sampled {
    cx: Context,
    start: std::time::SystemTime,
}

/// The state a monitored call carries from start to finish.
#[derive(Debug)]
struct Core {
    callsite: &'static Callsite,
    bound: Option<&'static Bound>,
    caller: Option<&'static Callsite>,
    frame: Frame,
    start: clock::Stamp,
    error: Option<(ErrorCategory, &'static str)>,
    /// Dropped before it finished (async calls only).
    cancelled: bool,
    /// The OTel span of a sampled call, started directly on the SDK.
    /// Boxed: only sampled calls have one, and the guard stays small.
    /// Taken and dropped by [`close`](Self::close), which every guard runs
    /// once: no drop glue (an out-of-line call) on every call's end.
    otel: ManuallyDrop<Option<Box<Sampled>>>,
    /// The trace id of an unsampled call, for propagation (in two words,
    /// [`to_words`]).
    trace_id: [u64; 2],
    /// The tail keeper's record of an unsampled call. [`close`](Self::close)
    /// leaves it off and empty (`TailCall::close` takes what it holds), so it
    /// needs no drop glue either.
    tail: ManuallyDrop<TailCall>,
}

impl Core {
    /// Decides, sets the frame, starts the OTel span of a sampled call and
    /// makes a `tracing` span if some layer wants one.
    #[inline(always)]
    fn open(
        callsite: &'static Callsite,
        is_async: bool,
        make_span: impl FnOnce() -> tracing::Span,
        make_attributes: impl FnOnce(&mut Vec<KeyValue>) -> bool,
    ) -> (Self, FrameGuard, Option<tracing::Span>) {
        let start = clock::now();
        // Restores the caller's frame if anything below panics (user field
        // expressions run here), and when the call ends.
        let restore = FrameGuard::save();
        let prev = restore.frame;
        let mut root_parent = None;
        let (mut trace, trace_id) = if callsite.span && prev.trace == Trace::Free {
            let (trace, trace_id, parent) = decide_root(callsite);
            if trace != Trace::Delegated {
                root_parent = Some(parent);
            }
            (trace, trace_id)
        } else if prev.trace == Trace::Unsampled || prev.trace == Trace::Recorded {
            (prev.trace, UNSAMPLED_TRACE_ID.with(Cell::get))
        } else {
            (prev.trace, 0)
        };
        // A sampled call's attributes, evaluated once; `make_attributes` says
        // whether the span's level is enabled. Without it a recorded call has
        // no span of its own (calls made inside it are its caller's children),
        // and a sampled root has no span at all.
        // Out of line and held aside, not in a local that lives until the
        // guard is built: the unsampled path stays free of the vector, its
        // drop and the unwinding path that `make_span` would need for it.
        let enabled = callsite.span
            && matches!(trace, Trace::Sampled | Trace::Recorded)
            && evaluate_attributes(make_attributes);
        if enabled && trace == Trace::Sampled && root_parent.is_some() && super::tail::recording() {
            // The native recorder: no SDK span.
            trace = Trace::Recorded;
            // Drawn for an SDK root span that will not be started.
            PENDING_TRACE_ID.with(|p| p.set(0));
        }
        if root_parent.is_some() && matches!(trace, Trace::Unsampled | Trace::Recorded) {
            UNSAMPLED_TRACE_ID.with(|t| t.set(trace_id));
        }
        let frame = Frame {
            callsite: Some(callsite),
            trace,
        };
        // The frame must be current while spans start: the OTel filter and the
        // SDK sampler read it.
        set_current(frame);
        let mut otel = None;
        let wanted = match trace {
            Trace::Free => false,
            Trace::Unsampled => OTHER_LAYERS.load(Ordering::Relaxed),
            Trace::Recorded => {
                OTHER_LAYERS.load(Ordering::Relaxed) || (callsite.deferred_fields && enabled)
            }
            Trace::Sampled => {
                if enabled {
                    let start_time = start.system_time();
                    otel = Some(Box::new(Sampled {
                        cx: start_otel(callsite, start_time, take_attributes()),
                        start: start_time,
                    }));
                    // The SDK's id generator took the drawn trace id, if it wanted it.
                    PENDING_TRACE_ID.with(|p| p.set(0));
                }
                OTHER_LAYERS.load(Ordering::Relaxed) || callsite.deferred_fields
            }
            Trace::Delegated => true,
        };
        if trace == Trace::Sampled && otel.is_none() && trace_id != 0 {
            // A sampled root whose span the level filter turned off (say
            // `RUST_LOG=warn` and an info-level function): keep its trace id
            // for propagation, as for an unsampled one.
            UNSAMPLED_TRACE_ID.with(|t| t.set(trace_id));
        }
        let span = if callsite.span && wanted {
            let span = make_span();
            (!span.is_disabled()).then_some(span)
        } else {
            None
        };
        let bound = callsite.metrics.then(|| callsite.bound());
        if let Some(b) = bound {
            b.start_flight();
        }
        let core = |tail| Core {
            callsite,
            bound,
            caller: prev.callsite,
            frame,
            start,
            error: None,
            cancelled: false,
            otel: ManuallyDrop::new(otel),
            trace_id: to_words(trace_id),
            tail: ManuallyDrop::new(tail),
        };
        // Last: a sync call moves the keeper's cursor here, and nothing below
        // can panic before the guard that moves it back exists. Each branch
        // builds the guard itself, so that it is built in place rather than
        // assembled from a keeper's part made apart and copied.
        if trace == Trace::Unsampled && callsite.span && super::tail::on() {
            let tail = match root_parent {
                Some((parent, info)) => TailCall::root(is_async, trace_id, parent, info, false),
                None => TailCall::child(is_async, 0),
            };
            (core(tail), restore, span)
        } else if trace == Trace::Recorded && enabled {
            (
                core(recorded(is_async, trace_id, root_parent)),
                restore,
                span,
            )
        } else {
            (core(TailCall::OFF), restore, span)
        }
    }

    /// Marks the call as failed and reports the error (see [`report`]).
    #[cold]
    fn fail_with(
        &mut self,
        (category, error_type): (ErrorCategory, &'static str),
        message: Option<&str>,
    ) {
        self.error = Some((category, error_type));
        report(
            self.callsite,
            self.bound,
            self.frame.trace,
            category,
            error_type,
            message,
        );
    }

    #[inline]
    fn close(&mut self, span: Option<&tracing::Span>) {
        let outcome = outcome(
            self.error,
            std::thread::panicking(),
            self.cancelled,
            cancelled_as,
        );
        let error = match outcome {
            Outcome::Error(category, error_type) => Some((category, error_type)),
            Outcome::Ok | Outcome::Cancelled => None,
        };
        let end = clock::now();
        // Once: the metrics and the span's end share it (and a backwards
        // reading is counted once).
        let secs = self.start.secs_until(end);
        if self.tail.tracked() {
            self.tail.close(
                self.callsite,
                from_words(self.trace_id),
                self.start,
                end,
                outcome,
            );
        }
        if let Some(b) = self.bound {
            record(self.callsite, b, self.caller, outcome, secs);
        }
        debug_assert!(
            !self.tail.tracked(),
            "closed, the keeper's part holds nothing"
        );
        if let Some(sampled) = self.otel.take() {
            let cx = &sampled.cx;
            // Span end runs the processors under the span's lock.
            let _sdk = SdkScope::enter();
            let otel_span = cx.span();
            if let Some((category, error_type)) = error {
                otel_span.set_status(Status::error(""));
                otel_span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
                otel_span.set_attribute(KeyValue::new(ERROR_CATEGORY, category.as_str()));
            }
            if outcome == Outcome::Cancelled {
                otel_span.set_attribute(KeyValue::new(RESULT, RESULT_CANCELLED));
            }
            otel_span.end_with_timestamp(sampled.start + std::time::Duration::from_secs_f64(secs));
        }
        if let (Some(span), Some((category, error_type))) = (span, error) {
            span.record("otel.status_code", "error");
            span.record(ERROR_TYPE, error_type);
            span.record(ERROR_CATEGORY, category.as_str());
        }
    }
}

/// Fingerprints a returned error, counts it in `function.errors` and, within
/// the report limit, reports it: an `exception` event on the call's span
/// and a log line, both carrying `error.fingerprint`.
#[cold]
fn report(
    cs: &'static Callsite,
    bound: Option<&'static Bound>,
    trace: Trace,
    category: ErrorCategory,
    error_type: &'static str,
    message: Option<&str>,
) {
    use crate::errors::fingerprint as fpr;
    let fp = fpr::fingerprint(error_type, message, cs.module, cs.function);
    let fp_text = fp.to_string();
    if let Some(b) = bound {
        let own = cs.groups.admit(fp);
        let mut labels = vec![
            KeyValue::new(FUNCTION, cs.function),
            KeyValue::new(MODULE, cs.module),
            KeyValue::new(ERROR_TYPE, error_type),
            KeyValue::new(
                ERROR_FINGERPRINT,
                if own {
                    fp_text.clone()
                } else {
                    fpr::OVERFLOW.to_owned()
                },
            ),
        ];
        labels.extend(service_name_label());
        b.errors.add(1, &labels);
    }
    if trace == Trace::Free {
        // Not integrated (no `configure`): nothing of ours to report into.
        return;
    }
    super::enrich::set_attribute(KeyValue::new(ERROR_FINGERPRINT, fp_text.clone()));
    let admission = fpr::admit(fp, cs.function, error_type);
    if admission.summary > 0 {
        fpr::summary_line(fp, cs.function, error_type, admission.summary);
    }
    if !admission.report {
        return;
    }
    let message = message.unwrap_or("");
    super::enrich::add_event(
        "exception",
        vec![
            KeyValue::new(EXCEPTION_TYPE, error_type),
            KeyValue::new(EXCEPTION_MESSAGE, message.to_owned()),
            KeyValue::new(ERROR_FINGERPRINT, fp_text.clone()),
        ],
    );
    tracing::event!(
        target: "otel_instrument::errors",
        tracing::Level::ERROR,
        function = cs.function,
        error.fingerprint = %fp_text,
        error.type = error_type,
        error.category = category.as_str(),
        "{}",
        message,
    );
}

/// Records a finished call's metrics: `function.calls`, its duration, and
/// the end of its time in flight.
#[inline(always)]
fn record(
    callsite: &'static Callsite,
    b: &'static Bound,
    caller: Option<&'static Callsite>,
    outcome: Outcome,
    secs: f64,
) {
    match outcome {
        Outcome::Ok => {
            callsite.count_ok(b, caller);
            b.duration[0].record(secs);
        }
        Outcome::Error(category, error_type) => {
            let mut labels = callsite.labels(caller, "error");
            labels.push(KeyValue::new(ERROR_CATEGORY, category.as_str()));
            labels.push(KeyValue::new(ERROR_TYPE, error_type));
            b.calls.add(1, &labels);
            b.duration[1].record(secs);
        }
        Outcome::Cancelled => {
            let labels = callsite.labels(caller, RESULT_CANCELLED);
            b.calls.add(1, &labels);
            let mut histogram_labels = vec![
                KeyValue::new(FUNCTION, callsite.function),
                KeyValue::new(MODULE, callsite.module),
                KeyValue::new(RESULT, RESULT_CANCELLED),
            ];
            histogram_labels.extend(service_name_label());
            b.any_duration.record(secs, &histogram_labels);
        }
    }
    b.end_flight();
}

/// The guard of a sync monitored call: the frame (and, when sampled, the OTel
/// context) is current and the span entered until it drops, which records the
/// metrics.
#[derive(Debug)]
#[must_use = "the call is measured until the guard drops"]
pub struct Call {
    core: Core,
    /// Taken in `drop` (wrapped: no second, out-of-line drop of the `None`
    /// left behind).
    span: ManuallyDrop<Option<tracing::span::EnteredSpan>>,
    attached: ManuallyDrop<Option<ContextGuard>>,
    /// Dropped after the rest: the caller's frame comes back last.
    _restore: FrameGuard,
}

impl Call {
    /// Starts a sync call. `make_span` runs only when a `tracing` span is
    /// wanted, `make_attributes` only when the call is sampled; it returns
    /// whether the span's level is enabled.
    #[inline(always)]
    pub fn enter(
        callsite: &'static Callsite,
        make_span: impl FnOnce() -> tracing::Span,
        make_attributes: impl FnOnce(&mut Vec<KeyValue>) -> bool,
    ) -> Self {
        let (core, restore, span) = Core::open(callsite, false, make_span, make_attributes);
        let attached = core.otel.as_ref().map(|s| Context::clone(&s.cx).attach());
        Self {
            core,
            span: ManuallyDrop::new(span.map(tracing::Span::entered)),
            attached: ManuallyDrop::new(attached),
            _restore: restore,
        }
    }

    /// Marks the call as failed with the given category and `error.type`.
    #[inline]
    pub fn fail(&mut self, error: (ErrorCategory, &'static str)) {
        self.core.error = Some(error);
    }

    /// Marks the call as failed, and fingerprints, counts and (within the
    /// report limit) reports the error with its `message`. Runs with the
    /// call's span current, so the report joins its trace.
    #[inline]
    pub fn fail_with(&mut self, error: (ErrorCategory, &'static str), message: Option<String>) {
        self.core.fail_with(error, message.as_deref());
    }
}

impl Drop for Call {
    #[inline(always)]
    fn drop(&mut self) {
        detach_if_recorded(self.core.frame.trace);
        self.core.close(self.span.as_deref());
        if let Some(span) = self.span.take() {
            drop(span);
        }
        if let Some(attached) = self.attached.take() {
            drop(attached);
        }
        // `_restore` drops next and brings back the caller's frame.
    }
}

/// The state of an async monitored call. It makes its frame (and OTel context)
/// current and enters its span on every poll, on whichever thread polls it, and
/// records the metrics when it finishes (or as `cancelled` when dropped
/// unfinished).
#[derive(Debug)]
#[must_use = "the call is measured until it finishes"]
pub struct AsyncCall {
    core: Core,
    span: Option<tracing::Span>,
    done: bool,
}

impl AsyncCall {
    /// Starts an async call (on its first poll). `make_span` runs only when a
    /// `tracing` span is wanted, `make_attributes` only when it is sampled.
    #[inline]
    pub fn start(
        callsite: &'static Callsite,
        make_span: impl FnOnce() -> tracing::Span,
        make_attributes: impl FnOnce(&mut Vec<KeyValue>) -> bool,
    ) -> Self {
        let (core, restore, span) = Core::open(callsite, true, make_span, make_attributes);
        drop(restore);
        Self {
            core,
            span,
            done: false,
        }
    }

    /// Polls the body with this call's frame current and its span entered.
    #[inline]
    pub fn poll<F: Future>(
        &mut self,
        fut: Pin<&mut F>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<F::Output> {
        // Every piece of per-thread state is restored by a guard, so a body
        // that panics (and a runtime that catches it) leaves the thread clean.
        let _current = Current::enter(&self.core, self.span.as_ref());
        // The runtime drops the future only after it has caught the panic, when
        // `thread::panicking()` no longer tells; mark the call here.
        let _panic = PanicMark(&mut self.core.error);
        fut.poll(cx)
    }

    /// Marks the call as failed with the given category and `error.type`.
    #[inline]
    pub fn fail(&mut self, error: (ErrorCategory, &'static str)) {
        self.core.error = Some(error);
    }

    /// As [`Call::fail_with`]: with this call's frame, trace and span current
    /// while the error is reported, as during a poll.
    pub fn fail_with(&mut self, error: (ErrorCategory, &'static str), message: Option<String>) {
        let _current = Current::enter(&self.core, self.span.as_ref());
        self.core.fail_with(error, message.as_deref());
    }

    /// Records the finished call.
    #[inline]
    pub fn finish(mut self) {
        self.done = true;
        self.core.close(self.span.as_ref());
    }
}

impl Drop for AsyncCall {
    fn drop(&mut self) {
        if !self.done {
            self.core.cancelled = true;
            self.core.close(self.span.as_ref());
        }
    }
}

/// The state of a metrics-only call (`span = false`): no span, no trace of
/// its own and no tail-keeper record, so a guard a third the size of
/// [`Call`]'s, moved and dropped without their checks.
#[derive(Debug)]
struct Lean {
    callsite: &'static Callsite,
    bound: Option<&'static Bound>,
    caller: Option<&'static Callsite>,
    /// The caller's trace state, which this call's frame carries on.
    trace: Trace,
    cancelled: bool,
    start: clock::Stamp,
    error: Option<(ErrorCategory, &'static str)>,
}

impl Lean {
    /// Sets this call's frame (the caller's trace, this callsite) and counts
    /// it in flight; returns it with the frame it replaced.
    #[inline(always)]
    fn open(callsite: &'static Callsite) -> (Self, FrameGuard) {
        let start = clock::now();
        let restore = FrameGuard::save();
        let prev = restore.frame;
        set_current(Frame {
            callsite: Some(callsite),
            trace: prev.trace,
        });
        let bound = callsite.metrics.then(|| callsite.bound());
        if let Some(b) = bound {
            b.start_flight();
        }
        let lean = Self {
            callsite,
            bound,
            caller: prev.callsite,
            trace: prev.trace,
            cancelled: false,
            start,
            error: None,
        };
        (lean, restore)
    }

    #[inline]
    fn close(&mut self) {
        let outcome = outcome(
            self.error,
            std::thread::panicking(),
            self.cancelled,
            cancelled_as,
        );
        let secs = self.start.secs_until(clock::now());
        if let Some(b) = self.bound {
            record(self.callsite, b, self.caller, outcome, secs);
        }
    }

    /// As [`Core::fail_with`].
    #[cold]
    fn fail_with(
        &mut self,
        (category, error_type): (ErrorCategory, &'static str),
        message: Option<&str>,
    ) {
        self.error = Some((category, error_type));
        report(
            self.callsite,
            self.bound,
            self.trace,
            category,
            error_type,
            message,
        );
    }
}

/// The guard of a sync metrics-only call (`#[monitored(span = false)]`): its
/// frame is current until it drops, which records the metrics.
#[derive(Debug)]
#[must_use = "the call is measured until the guard drops"]
pub struct MetricsCall {
    lean: Lean,
    /// Dropped after the rest: the caller's frame comes back last.
    _restore: FrameGuard,
}

impl MetricsCall {
    /// Starts a sync metrics-only call.
    #[inline(always)]
    pub fn enter(callsite: &'static Callsite) -> Self {
        let (lean, restore) = Lean::open(callsite);
        Self {
            lean,
            _restore: restore,
        }
    }

    /// As [`Call::fail`].
    #[inline]
    pub fn fail(&mut self, error: (ErrorCategory, &'static str)) {
        self.lean.error = Some(error);
    }

    /// As [`Call::fail_with`]; the report joins the caller's span, if any.
    #[inline]
    pub fn fail_with(&mut self, error: (ErrorCategory, &'static str), message: Option<String>) {
        self.lean.fail_with(error, message.as_deref());
    }
}

impl Drop for MetricsCall {
    #[inline(always)]
    fn drop(&mut self) {
        detach_if_recorded(self.lean.trace);
        self.lean.close();
        // `_restore` drops next and brings back the caller's frame.
    }
}

/// The state of an async metrics-only call: its frame is current on every
/// poll, and it records the metrics when it finishes (or as `cancelled`
/// when dropped unfinished).
#[derive(Debug)]
#[must_use = "the call is measured until it finishes"]
pub struct AsyncMetricsCall {
    lean: Lean,
    /// The caller's unsampled or recorded trace id, made current on every
    /// poll, as the caller's own polls do (in two words, [`to_words`]).
    trace_id: [u64; 2],
    done: bool,
}

impl AsyncMetricsCall {
    /// Starts an async metrics-only call (on its first poll).
    #[inline]
    pub fn start(callsite: &'static Callsite) -> Self {
        let (lean, restore) = Lean::open(callsite);
        drop(restore);
        let trace_id = if matches!(lean.trace, Trace::Unsampled | Trace::Recorded) {
            UNSAMPLED_TRACE_ID.with(Cell::get)
        } else {
            0
        };
        Self {
            lean,
            trace_id: to_words(trace_id),
            done: false,
        }
    }

    #[inline]
    fn current(&self) -> LeanCurrent {
        let restore = PollGuard::save();
        set_current(Frame {
            callsite: Some(self.lean.callsite),
            trace: self.lean.trace,
        });
        if matches!(self.lean.trace, Trace::Unsampled | Trace::Recorded) {
            let id = from_words(self.trace_id);
            UNSAMPLED_TRACE_ID.with(|t| t.set(id));
        }
        LeanCurrent { _restore: restore }
    }

    /// Polls the body with this call's frame current.
    #[inline]
    pub fn poll<F: Future>(
        &mut self,
        fut: Pin<&mut F>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<F::Output> {
        let _current = self.current();
        let _panic = PanicMark(&mut self.lean.error);
        fut.poll(cx)
    }

    /// As [`AsyncCall::fail`].
    #[inline]
    pub fn fail(&mut self, error: (ErrorCategory, &'static str)) {
        self.lean.error = Some(error);
    }

    /// As [`AsyncCall::fail_with`]: with this call's frame current.
    pub fn fail_with(&mut self, error: (ErrorCategory, &'static str), message: Option<String>) {
        let _current = self.current();
        self.lean.fail_with(error, message.as_deref());
    }

    /// Records the finished call.
    #[inline]
    pub fn finish(mut self) {
        self.done = true;
        self.lean.close();
    }
}

impl Drop for AsyncMetricsCall {
    fn drop(&mut self) {
        if !self.done {
            self.lean.cancelled = true;
            self.lean.close();
        }
    }
}

/// An async metrics-only call made current for a poll; restores the
/// thread's own frame and trace id when it drops.
struct LeanCurrent {
    _restore: PollGuard,
}

impl Drop for LeanCurrent {
    #[inline]
    fn drop(&mut self) {
        detach_if_recorded(super::frame::current().trace);
    }
}

/// An async call made current on this thread for a while (a poll, or the
/// report of its error): its frame, its trace id, its tail-keeper scope, its
/// OTel context and its `tracing` span. Dropping it restores the thread's own,
/// in reverse order (fields drop in declaration order).
struct Current<'a> {
    _entered: Option<tracing::span::Entered<'a>>,
    _attached: Option<ContextGuard>,
    _tail: Option<super::tail::PollScope>,
    _restore: PollGuard,
}

impl<'a> Current<'a> {
    #[inline]
    fn enter(core: &Core, span: Option<&'a tracing::Span>) -> Self {
        let restore = PollGuard::save();
        set_current(core.frame);
        let spanless_root =
            core.frame.trace == Trace::Sampled && core.otel.is_none() && core.trace_id != [0, 0];
        if matches!(core.frame.trace, Trace::Unsampled | Trace::Recorded) || spanless_root {
            let id = from_words(core.trace_id);
            UNSAMPLED_TRACE_ID.with(|t| t.set(id));
        }
        let tail = core
            .tail
            .tracked()
            .then(|| core.tail.poll_scope(from_words(core.trace_id)));
        let attached = core.otel.as_ref().map(|s| Context::clone(&s.cx).attach());
        Self {
            _entered: span.map(tracing::Span::enter),
            _attached: attached,
            _tail: tail,
            _restore: restore,
        }
    }
}

impl Drop for Current<'_> {
    #[inline]
    fn drop(&mut self) {
        // Before the fields: contexts attached for plain spans inside a
        // recorded call are the last attached.
        detach_if_recorded(super::frame::current().trace);
    }
}

/// Marks a call as failed with `error.type="panic"` if its body unwinds.
struct PanicMark<'a>(&'a mut Option<(ErrorCategory, &'static str)>);

impl Drop for PanicMark<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_none() && std::thread::panicking() {
            *self.0 = Some((ErrorCategory::Internal, "panic"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_call_counts_as_configured_and_errors_and_panics_win() {
        use CancelledAs::*;
        let cancelled = |mode| outcome(None, false, true, || mode);
        assert_eq!(cancelled(Cancelled), Outcome::Cancelled);
        assert_eq!(
            cancelled(Error),
            Outcome::Error(ErrorCategory::Cancelled, "Cancelled")
        );
        assert_eq!(cancelled(Ok), Outcome::Ok);
        // An error the body returned before the drop, or a panic, is what it is.
        let e = Some((ErrorCategory::Unavailable, "Unavailable"));
        assert_eq!(
            outcome(e, false, true, || Cancelled),
            Outcome::Error(ErrorCategory::Unavailable, "Unavailable")
        );
        assert_eq!(
            outcome(None, true, true, || Cancelled),
            Outcome::Error(ErrorCategory::Internal, "panic")
        );
        assert_eq!(outcome(None, false, false, || Error), Outcome::Ok);
    }
}
