//! What `#[monitored]` expands to call: the per-callsite guard, the RED
//! instruments and the sampling fast path.
//!
//! # The fast path
//! Sampling is decided once, at the *local root*: the first monitored call on a
//! thread or task with no monitored caller. The decision goes into a
//! thread-local frame that nested monitored calls inherit and that async
//! fns carry across polls (and threads). An unsampled call therefore:
//! - creates no OpenTelemetry span (the [`otel_filter`] keeps its `tracing` span,
//!   if some other layer such as fmt wants one, away from the OTel layer, and the
//!   [`sampler`] wrapper drops anything that still reaches the SDK);
//! - records its metrics through instruments bound once per callsite
//!   (`BoundCounter`, `BoundHistogram`, `BoundUpDownCounter`), never a hash
//!   lookup;
//! - allocates nothing.
//!
//! A sampled call starts its OTel span directly on the SDK tracer
//! ([`set_tracer`]) and attaches its context; its `tracing` span, if any layer
//! wants one, is kept away from the OTel layer so nothing is exported twice.
//!
//! Outgoing propagation from an unsampled trace still carries the trace id with
//! `sampled=0`: inject [`current_context`] rather than the tracing span's context.
//!
//! Until [`configure`] is called (by `Telemetry` at install, or by you when you
//! build your own pipeline), `#[monitored]` makes no sampling decision of its
//! own: it creates a `tracing` span for every call, like `#[tracing::instrument]`,
//! and the SDK's sampler decides.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll};

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, BoundUpDownCounter, Counter, Histogram, Meter,
};
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState,
};
use opentelemetry::{Context, ContextGuard, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator, SamplingDecision, SamplingResult, SdkTracer, ShouldSample,
};
mod clock;
mod layers;

pub(crate) use layers::SdkScope;
pub use layers::{
    EventLayer, LogFilter, MONITORED_MARKER, MonitoredFormat, OtelFilter, event_layer, fmt_format,
    log_filter, otel_filter,
};

use crate::config::{ParentRoot, SamplerConfig};
use crate::errors::ErrorCategory;

/// Name of the call counter (autometrics spec v1.0.0).
pub const FUNCTION_CALLS: &str = "function.calls";
/// Name of the latency histogram, in seconds.
pub const FUNCTION_CALLS_DURATION: &str = "function.calls.duration";
/// Name of the in-flight calls up-down counter.
pub const FUNCTION_CALLS_CONCURRENT: &str = "function.calls.concurrent";
/// Name of autometrics' build information gauge (always 1; the labels matter).
pub const BUILD_INFO: &str = "build_info";

/// Label: the function's name as written in the source.
pub const FUNCTION: &str = "function";
/// Label: the function's module path.
pub const MODULE: &str = "module";
/// Label: `ok` or `error`.
pub const RESULT: &str = "result";
/// Label: the service, on all three metrics (the resource's `service.name`).
pub const SERVICE_NAME_LABEL: &str = "service.name";
/// Label: the calling monitored function (absent at a root).
pub const CALLER_FUNCTION: &str = "caller.function";
/// Label: the calling monitored function's module (absent at a root).
pub const CALLER_MODULE: &str = "caller.module";
/// Label: the [`ErrorCategory`] of a failed call.
pub const ERROR_CATEGORY: &str = "error.category";
/// Label and span attribute: the error's variant or type name.
pub const ERROR_TYPE: &str = "error.type";

/// The instrumentation scope of every `#[monitored]` instrument.
pub const SCOPE_NAME: &str = "otel-instrument";

/// Autometrics' latency buckets, in seconds.
pub const DEFAULT_HISTOGRAM_BOUNDARIES: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Settings that `Telemetry` hands to `#[monitored]` at install time.
#[derive(Debug, Clone)]
pub struct MonitoredSettings {
    /// The configured head sampler.
    pub sampler: SamplerConfig,
    /// Boundaries of `function.calls.duration`, in seconds.
    pub histogram_boundaries: Vec<f64>,
    /// What a cancelled call counts as. Default: [`CancelledAs::Cancelled`].
    pub cancelled: CancelledAs,
}

impl Default for MonitoredSettings {
    fn default() -> Self {
        Self {
            sampler: SamplerConfig::default(),
            histogram_boundaries: DEFAULT_HISTOGRAM_BOUNDARIES.to_vec(),
            cancelled: CancelledAs::default(),
        }
    }
}

/// `result` of a cancelled call under the default [`CancelledAs::Cancelled`].
pub const RESULT_CANCELLED: &str = "cancelled";

/// What a cancelled call counts as: an async monitored call whose future was
/// dropped before it finished (a `select!` loser, a timeout, a client that
/// went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CancelledAs {
    /// Its own `result="cancelled"`, with its own latency series. Error ratios
    /// (autometrics' dashboards count `result="error"`) stay right, and the
    /// span's status stays unset. The default.
    #[default]
    Cancelled,
    /// `result="error"`, `error.category="cancelled"`, `error.type="Cancelled"`,
    /// and an error span.
    Error,
    /// `result="ok"`.
    Ok,
}

static CANCELLED_AS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn cancelled_as() -> CancelledAs {
    match CANCELLED_AS.load(Ordering::Relaxed) {
        1 => CancelledAs::Error,
        2 => CancelledAs::Ok,
        _ => CancelledAs::Cancelled,
    }
}

/// How a call ended, as the metrics and the span record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error(ErrorCategory, &'static str),
    Cancelled,
}

/// The outcome of a call: a panic is an internal error, a cancellation
/// counts as `mode` says, anything else as its error (if any).
fn outcome(
    error: Option<(ErrorCategory, &'static str)>,
    panicking: bool,
    cancelled: bool,
    mode: CancelledAs,
) -> Outcome {
    match (error, cancelled) {
        (Some((category, error_type)), _) => Outcome::Error(category, error_type),
        (None, _) if panicking => Outcome::Error(ErrorCategory::Internal, "panic"),
        (None, true) => match mode {
            CancelledAs::Cancelled => Outcome::Cancelled,
            CancelledAs::Error => Outcome::Error(ErrorCategory::Cancelled, "Cancelled"),
            CancelledAs::Ok => Outcome::Ok,
        },
        (None, false) => Outcome::Ok,
    }
}

/// Bumped by [`configure`]: a callsite whose instruments are from an older
/// generation rebinds them, so calls made before the global meter provider was
/// installed do not keep no-op instruments forever.
static GENERATION: AtomicU64 = AtomicU64::new(1);
/// Whether `configure` ran, so that `#[monitored]` makes its own decisions.
static INTEGRATED: AtomicBool = AtomicBool::new(false);
/// Whether a sampled parent context decides for its children.
static PARENT_BASED: AtomicBool = AtomicBool::new(true);
/// The root sampler, as a threshold on the trace id's low 63 bits.
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(ALWAYS);
static BOUNDARIES: RwLock<Vec<f64>> = RwLock::new(Vec::new());
/// Whether a layer other than OpenTelemetry (fmt, ...) may want the spans of
/// unsampled calls.
static OTHER_LAYERS: AtomicBool = AtomicBool::new(true);
static CUSTOM_IDS: AtomicBool = AtomicBool::new(false);
#[allow(clippy::type_complexity)]
static ID_GENERATOR: RwLock<Option<Box<dyn IdGenerator>>> = RwLock::new(None);
/// Serialises the (rare) binding of a callsite's instruments.
static BINDING: Mutex<()> = Mutex::new(());

const ALWAYS: u64 = u64::MAX;

/// Hands the configured sampler and histogram boundaries to `#[monitored]`.
///
/// `Telemetry` calls this once, after it has set the global tracer and meter
/// providers. Call it yourself only when you build the pipeline by hand; then
/// also install [`sampler`] and [`otel_filter`].
pub fn configure(settings: MonitoredSettings) {
    let (parent_based, root) = match settings.sampler {
        SamplerConfig::AlwaysOn => (false, 1.0),
        SamplerConfig::AlwaysOff => (false, 0.0),
        SamplerConfig::TraceIdRatio(r) => (false, r),
        SamplerConfig::ParentBased(ParentRoot::AlwaysOn) => (true, 1.0),
        SamplerConfig::ParentBased(ParentRoot::AlwaysOff) => (true, 0.0),
        SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(r)) => (true, r),
    };
    PARENT_BASED.store(parent_based, Ordering::Relaxed);
    ROOT_THRESHOLD.store(threshold(root), Ordering::Relaxed);
    CANCELLED_AS.store(
        match settings.cancelled {
            CancelledAs::Cancelled => 0,
            CancelledAs::Error => 1,
            CancelledAs::Ok => 2,
        },
        Ordering::Relaxed,
    );
    let mut boundaries = settings.histogram_boundaries;
    if boundaries.is_empty() {
        boundaries = DEFAULT_HISTOGRAM_BOUNDARIES.to_vec();
    }
    *BOUNDARIES.write().unwrap_or_else(PoisonError::into_inner) = boundaries;
    clock::init();
    INTEGRATED.store(true, Ordering::Release);
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Makes `#[monitored]` rebind its instruments, for example after a new global
/// meter provider was installed. [`configure`] does this too.
pub fn refresh_instruments() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Tells `#[monitored]` whether any `tracing` layer other than OpenTelemetry
/// is installed. When none is, an unsampled call creates no `tracing` span at
/// all. `Telemetry::install` sets it; the default, `true`, is always correct.
pub fn set_other_layers(present: bool) {
    OTHER_LAYERS.store(present, Ordering::Relaxed);
}

/// The `service.name` that autometrics' spec puts on every function metric.
static SERVICE_NAME: RwLock<Option<opentelemetry::StringValue>> = RwLock::new(None);

/// Sets the `service.name` label of the function metrics (autometrics spec
/// v1.0.0 requires it on all three). `Telemetry` sets it from the resource.
pub fn set_service_name(name: impl Into<String>) {
    *SERVICE_NAME.write().unwrap_or_else(PoisonError::into_inner) = Some(name.into().into());
    refresh_instruments();
}

fn service_name_label() -> Option<KeyValue> {
    SERVICE_NAME
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .map(|name| KeyValue::new(SERVICE_NAME_LABEL, name))
}

/// The current instrument generation; cached instruments older than it are
/// re-created.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Replaces the source of trace ids that `#[monitored]` draws at a local root
/// to make its sampling decision (tests use a fixed one for exact counts).
pub fn set_id_generator(generator: impl IdGenerator + 'static) {
    *ID_GENERATOR.write().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(generator));
    CUSTOM_IDS.store(true, Ordering::Release);
}

/// The `TraceIdRatioBased` threshold, computed the way opentelemetry_sdk does.
fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        ALWAYS
    } else {
        (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

fn sampled_by(threshold: u64, trace_id: u128) -> bool {
    threshold == ALWAYS || ((trace_id as u64) >> 1) < threshold
}

// ---------------------------------------------------------------------------
// The thread/task-local frame.

/// The trace state a monitored call runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trace {
    /// No monitored call above: the next one is a local root.
    Free,
    /// `#[monitored]` does not decide; every call gets a span and the SDK decides.
    Delegated,
    /// Sampled: spans are created and exported.
    Sampled,
    /// Not sampled: no OTel span. The trace id, kept for propagation, is in
    /// `UNSAMPLED_TRACE_ID` (not here: the frame is copied on every call and
    /// stays two words).
    Unsampled,
}

/// The current monitored call: the caller of the next one, and its trace state.
#[derive(Debug, Clone, Copy)]
struct Frame {
    callsite: Option<&'static Callsite>,
    trace: Trace,
}

impl Frame {
    const ROOT: Frame = Frame {
        callsite: None,
        trace: Trace::Free,
    };
}

thread_local! {
    static CURRENT: Cell<Frame> = const { Cell::new(Frame::ROOT) };
    static RNG: Cell<u64> = const { Cell::new(0) };
    /// The trace id a sampled local root drew, for the SDK to use (see
    /// [`MonitoredIdGenerator`]), so the exported trace id is the one decided on.
    static PENDING_TRACE_ID: Cell<u128> = const { Cell::new(0) };
    /// The trace id of the unsampled trace running on this thread, if any.
    static UNSAMPLED_TRACE_ID: Cell<u128> = const { Cell::new(0) };
}

#[inline(always)]
fn current() -> Frame {
    CURRENT.with(Cell::get)
}

#[inline(always)]
fn set_current(frame: Frame) {
    CURRENT.with(|c| c.set(frame));
}

/// Restores this thread's frame when it drops, on every path: a panic that
/// the runtime catches (tokio does, per task) must not leave a dead call's
/// frame on the worker thread for the next task to inherit.
#[derive(Debug)]
struct FrameGuard {
    frame: Frame,
}

impl FrameGuard {
    #[inline(always)]
    fn save() -> Self {
        Self { frame: current() }
    }
}

impl Drop for FrameGuard {
    #[inline(always)]
    fn drop(&mut self) {
        set_current(self.frame);
    }
}

/// A [`FrameGuard`] that also restores the unsampled trace id, which a poll
/// overwrites with its call's. (A sync call needs no such restore: it only sets
/// the id when it is a new root, and then the frame it restores is free, so
/// nobody reads the id.)
#[derive(Debug)]
struct PollGuard {
    _frame: FrameGuard,
    /// `UNSAMPLED_TRACE_ID` as it was, in two words (see `Core::trace_id`).
    unsampled: [u64; 2],
}

impl PollGuard {
    #[inline(always)]
    fn save() -> Self {
        let id = UNSAMPLED_TRACE_ID.with(Cell::get);
        Self {
            _frame: FrameGuard::save(),
            unsampled: [(id >> 64) as u64, id as u64],
        }
    }
}

impl Drop for PollGuard {
    #[inline(always)]
    fn drop(&mut self) {
        let [hi, lo] = self.unsampled;
        UNSAMPLED_TRACE_ID.with(|t| t.set((u128::from(hi) << 64) | u128::from(lo)));
    }
}

/// Durations the latency clock measured with the end before the start
/// (recorded as zero): cross-core TSC skew shows here.
pub fn clock_backwards() -> u64 {
    clock::backwards()
}

/// Whether the latency clock reads the TSC (false: `Instant`).
pub fn clock_uses_tsc() -> bool {
    clock::uses_tsc()
}

/// The trace id of the unsampled trace running on this thread (0 if none).
fn unsampled_trace_id() -> u128 {
    UNSAMPLED_TRACE_ID.with(Cell::get)
}

/// The trace id of the current monitored call, when it is not sampled.
pub(crate) fn unsampled_trace() -> Option<TraceId> {
    (current().trace == Trace::Unsampled).then(|| TraceId::from(unsampled_trace_id()))
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

/// A fast per-thread generator (wyrand), seeded once from std's random keys.
fn next_u64() -> u64 {
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

/// The OpenTelemetry context to propagate from here: inside an unsampled
/// monitored call it carries the trace id with `sampled=0`; inside a sampled one
/// it holds the call's span; elsewhere it is the current `tracing` span's context.
pub fn current_context() -> Context {
    match current().trace {
        Trace::Unsampled => {
            let trace_id = UNSAMPLED_TRACE_ID.with(Cell::get);
            let span_id = next_u64().max(1);
            Context::current().with_remote_span_context(SpanContext::new(
                TraceId::from(trace_id),
                SpanId::from(span_id),
                TraceFlags::default(),
                true,
                TraceState::NONE,
            ))
        }
        // A sampled monitored call attached its span's context.
        Trace::Sampled => Context::current(),
        Trace::Free | Trace::Delegated => {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            tracing::Span::current().context()
        }
    }
}

/// Decides a local root: from the current OTel context's span if there is one
/// (an incoming traceparent, or a plain `tracing` span with the OTel layer),
/// else by drawing a trace id.
fn decide_root(callsite: &Callsite) -> (Trace, u128) {
    if !INTEGRATED.load(Ordering::Acquire) {
        return (Trace::Delegated, 0);
    }
    let parent = Context::map_current(|cx| {
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| {
            (
                u128::from_be_bytes(sc.trace_id().to_bytes()),
                sc.is_sampled(),
            )
        })
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
            let sampled = sampled_by(threshold, trace_id);
            if sampled {
                PENDING_TRACE_ID.with(|p| p.set(trace_id));
            }
            (trace_id, sampled)
        }
    };
    if sampled {
        (Trace::Sampled, trace_id)
    } else {
        (Trace::Unsampled, trace_id)
    }
}

// ---------------------------------------------------------------------------
// SDK integration.

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
            Trace::Sampled => SamplingDecision::RecordAndSample,
            Trace::Unsampled => SamplingDecision::Drop,
            Trace::Free | Trace::Delegated => {
                return self.inner.should_sample(
                    parent_context,
                    trace_id,
                    name,
                    span_kind,
                    attributes,
                    links,
                );
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

// ---------------------------------------------------------------------------
// Per-callsite instruments.

const CALLER_SLOTS: usize = 8;

/// A `#[monitored]` function's static identity and cached instruments.
#[derive(Debug)]
pub struct Callsite {
    function: &'static str,
    module: &'static str,
    file: &'static str,
    line: u32,
    kind: &'static str,
    sample: Option<f64>,
    metrics: bool,
    span: bool,
    bound: AtomicPtr<Bound>,
}

/// Instruments bound to one callsite's constant labels, for one generation.
#[derive(Debug)]
struct Bound {
    generation: u64,
    calls: Counter<u64>,
    /// `[ok, error]`.
    duration: [BoundHistogram<f64>; 2],
    /// For the rare cancelled call, recorded with its labels (a bound series
    /// would export an empty one for every function).
    any_duration: Histogram<f64>,
    concurrent: BoundUpDownCounter<i64>,
    /// The ok-call counter per caller, bound on first use.
    ok_by_caller: [AtomicPtr<CallerCounter>; CALLER_SLOTS],
}

#[derive(Debug)]
struct CallerCounter {
    caller: Option<&'static Callsite>,
    counter: BoundCounter<u64>,
}

fn same(a: Option<&'static Callsite>, b: Option<&'static Callsite>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}

impl Callsite {
    /// A callsite; `#[monitored]` puts one in a `static` per function.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        function: &'static str,
        module: &'static str,
        file: &'static str,
        line: u32,
        kind: &'static str,
        sample: Option<f64>,
        metrics: bool,
        span: bool,
    ) -> Self {
        Self {
            function,
            module,
            file,
            line,
            kind,
            sample,
            metrics,
            span,
            bound: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    fn span_kind(&self) -> SpanKind {
        match self.kind {
            "server" => SpanKind::Server,
            "client" => SpanKind::Client,
            "producer" => SpanKind::Producer,
            "consumer" => SpanKind::Consumer,
            _ => SpanKind::Internal,
        }
    }

    /// The function's name.
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// The function's module path.
    pub fn module(&self) -> &'static str {
        self.module
    }

    #[inline]
    fn bound(&'static self) -> &'static Bound {
        let generation = generation();
        let p = self.bound.load(Ordering::Acquire);
        // SAFETY: `bound` only ever holds null or a pointer from `Box::leak`,
        // which is valid for the rest of the program.
        if let Some(b) = unsafe { p.as_ref() }
            && b.generation == generation
        {
            return b;
        }
        self.bind(generation)
    }

    #[cold]
    fn bind(&'static self, generation: u64) -> &'static Bound {
        let _lock = BINDING.lock().unwrap_or_else(PoisonError::into_inner);
        let p = self.bound.load(Ordering::Acquire);
        // SAFETY: as in `bound`.
        if let Some(b) = unsafe { p.as_ref() }
            && b.generation == generation
        {
            return b;
        }
        let meter = meter();
        let boundaries = {
            let b = BOUNDARIES.read().unwrap_or_else(PoisonError::into_inner);
            if b.is_empty() {
                DEFAULT_HISTOGRAM_BOUNDARIES.to_vec()
            } else {
                b.clone()
            }
        };
        let calls = meter
            .u64_counter(FUNCTION_CALLS)
            .with_unit("{call}")
            .with_description("Calls of #[monitored] functions (autometrics function.calls)")
            .build();
        let duration = meter
            .f64_histogram(FUNCTION_CALLS_DURATION)
            .with_unit("s")
            .with_description("Duration of #[monitored] function calls")
            .with_boundaries(boundaries)
            .build();
        let concurrent = meter
            .i64_up_down_counter(FUNCTION_CALLS_CONCURRENT)
            .with_unit("{call}")
            .with_description("#[monitored] function calls in flight")
            .build();
        let mut fm = vec![
            KeyValue::new(FUNCTION, self.function),
            KeyValue::new(MODULE, self.module),
        ];
        fm.extend(service_name_label());
        let with_result = |result: &'static str| {
            let mut labels = fm.clone();
            labels.push(KeyValue::new(RESULT, result));
            labels
        };
        let bound: &'static Bound = Box::leak(Box::new(Bound {
            generation,
            duration: [
                duration.bind(&with_result("ok")),
                duration.bind(&with_result("error")),
            ],
            any_duration: duration.clone(),
            concurrent: concurrent.bind(&fm),
            calls,
            ok_by_caller: Default::default(),
        }));
        self.bound
            .store(bound as *const Bound as *mut Bound, Ordering::Release);
        bound
    }

    fn labels(&self, caller: Option<&'static Callsite>, result: &'static str) -> Vec<KeyValue> {
        let mut labels = Vec::with_capacity(8);
        labels.push(KeyValue::new(FUNCTION, self.function));
        labels.push(KeyValue::new(MODULE, self.module));
        labels.push(KeyValue::new(RESULT, result));
        labels.extend(service_name_label());
        if let Some(c) = caller {
            labels.push(KeyValue::new(CALLER_FUNCTION, c.function));
            labels.push(KeyValue::new(CALLER_MODULE, c.module));
        }
        labels
    }

    /// Counts one ok call from `caller` through a counter bound to its labels.
    #[inline]
    fn count_ok(&'static self, bound: &'static Bound, caller: Option<&'static Callsite>) {
        for slot in &bound.ok_by_caller {
            let p = slot.load(Ordering::Acquire);
            // SAFETY: slots hold null or pointers from `Box::leak`.
            match unsafe { p.as_ref() } {
                Some(entry) if same(entry.caller, caller) => {
                    entry.counter.add(1);
                    return;
                }
                Some(_) => continue,
                None => {
                    if let Some(entry) = self.claim(bound, slot, caller) {
                        entry.counter.add(1);
                        return;
                    }
                }
            }
        }
        // More distinct callers than slots: fall back to an attribute lookup.
        bound.calls.add(1, &self.labels(caller, "ok"));
    }

    #[cold]
    fn claim(
        &'static self,
        bound: &'static Bound,
        slot: &AtomicPtr<CallerCounter>,
        caller: Option<&'static Callsite>,
    ) -> Option<&'static CallerCounter> {
        let entry = Box::new(CallerCounter {
            caller,
            counter: bound.calls.bind(&self.labels(caller, "ok")),
        });
        let raw = Box::into_raw(entry);
        match slot.compare_exchange(
            std::ptr::null_mut(),
            raw,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: we just published `raw` and never free it.
            Ok(_) => Some(unsafe { &*raw }),
            Err(existing) => {
                // SAFETY: `raw` was never shared; `existing` is a leaked box.
                drop(unsafe { Box::from_raw(raw) });
                let existing = unsafe { &*existing };
                same(existing.caller, caller).then_some(existing)
            }
        }
    }
}

fn meter() -> Meter {
    opentelemetry::global::meter_with_scope(
        InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    )
}

// ---------------------------------------------------------------------------
// The tracer for sampled calls.

/// The SDK tracer that `Telemetry` hands over; without one, the global tracer.
static SDK_TRACER: RwLock<Option<SdkTracer>> = RwLock::new(None);

/// The tracer sampled calls start their spans on.
#[derive(Debug)]
enum MonitoredTracer {
    /// Spans are `SdkSpan`s, with no boxing or dynamic dispatch.
    Sdk(SdkTracer),
    /// Whatever provider is global.
    Global(BoxedTracer),
}

static TRACER: AtomicPtr<(u64, MonitoredTracer)> = AtomicPtr::new(std::ptr::null_mut());

/// Gives `#[monitored]` the SDK tracer to start sampled spans on. `Telemetry`
/// calls this; without it, the global tracer provider is used, which costs a
/// box and dynamic dispatch per span.
pub fn set_tracer(tracer: SdkTracer) {
    *SDK_TRACER.write().unwrap_or_else(PoisonError::into_inner) = Some(tracer);
    refresh_instruments();
}

/// The tracer, re-fetched when the generation changes.
fn tracer() -> &'static MonitoredTracer {
    let generation = generation();
    let p = TRACER.load(Ordering::Acquire);
    // SAFETY: `TRACER` holds null or a pointer from `Box::leak`, valid forever.
    if let Some((g, t)) = unsafe { p.as_ref() }
        && *g == generation
    {
        return t;
    }
    let _lock = BINDING.lock().unwrap_or_else(PoisonError::into_inner);
    let tracer = match SDK_TRACER
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    {
        Some(t) => MonitoredTracer::Sdk(t),
        None => MonitoredTracer::Global(opentelemetry::global::tracer_with_scope(
            InstrumentationScope::builder(SCOPE_NAME)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        )),
    };
    let fresh: &'static (u64, MonitoredTracer) = Box::leak(Box::new((generation, tracer)));
    TRACER.store(fresh as *const _ as *mut _, Ordering::Release);
    &fresh.1
}

/// Starts the OpenTelemetry span of a sampled call directly on the SDK, as a
/// child of the current OTel context, and returns the context that holds it.
#[cold]
fn start_otel(
    callsite: &'static Callsite,
    start: clock::Stamp,
    mut attributes: Vec<KeyValue>,
) -> Context {
    attributes.extend([
        KeyValue::new("code.function.name", callsite.function),
        KeyValue::new("code.module.name", callsite.module),
        KeyValue::new("code.file.path", callsite.file),
        KeyValue::new("code.line.number", i64::from(callsite.line)),
    ]);
    // Fields are set directly: `with_attributes` would collect into a new Vec.
    let mut builder = opentelemetry::trace::SpanBuilder::from_name(callsite.function);
    builder.span_kind = Some(callsite.span_kind());
    builder.attributes = Some(attributes);
    builder.start_time = Some(start.system_time());
    let _sdk = SdkScope::enter();
    Context::map_current(|parent| match tracer() {
        MonitoredTracer::Sdk(t) => parent.with_span(builder.start_with_context(t, parent)),
        MonitoredTracer::Global(t) => parent.with_span(builder.start_with_context(t, parent)),
    })
}

// ---------------------------------------------------------------------------
// The guards.

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
    otel: Option<Box<Context>>,
    /// The trace id of an unsampled call, for propagation (two words, not a
    /// `u128`, to keep the guard 8-byte aligned: cheaper to move).
    trace_id: [u64; 2],
}

impl Core {
    /// Decides, sets the frame, starts the OTel span of a sampled call and
    /// makes a `tracing` span if some layer wants one.
    #[inline(always)]
    fn open(
        callsite: &'static Callsite,
        make_span: impl FnOnce() -> tracing::Span,
        make_attributes: impl FnOnce(&mut Vec<KeyValue>) -> bool,
    ) -> (Self, FrameGuard, Option<tracing::Span>) {
        let start = clock::now();
        // Restores the caller's frame if anything below panics (user field
        // expressions run here), and when the call ends.
        let restore = FrameGuard::save();
        let prev = restore.frame;
        let (trace, trace_id) = if callsite.span && prev.trace == Trace::Free {
            let (trace, trace_id) = decide_root(callsite);
            if trace == Trace::Unsampled {
                UNSAMPLED_TRACE_ID.with(|t| t.set(trace_id));
            }
            (trace, trace_id)
        } else if prev.trace == Trace::Unsampled {
            (Trace::Unsampled, UNSAMPLED_TRACE_ID.with(Cell::get))
        } else {
            (prev.trace, 0)
        };
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
            Trace::Sampled => {
                let mut attributes = Vec::new();
                // `make_attributes` says whether the span's level is enabled.
                if callsite.span && make_attributes(&mut attributes) {
                    otel = Some(Box::new(start_otel(callsite, start, attributes)));
                    // The SDK's id generator took the drawn trace id, if it wanted it.
                    PENDING_TRACE_ID.with(|p| p.set(0));
                }
                OTHER_LAYERS.load(Ordering::Relaxed)
            }
            Trace::Delegated => true,
        };
        let span = if callsite.span && wanted {
            let span = make_span();
            (!span.is_disabled()).then_some(span)
        } else {
            None
        };
        let bound = callsite.metrics.then(|| callsite.bound());
        if let Some(b) = bound {
            b.concurrent.add(1);
        }
        let core = Core {
            callsite,
            bound,
            caller: prev.callsite,
            frame,
            start,
            error: None,
            cancelled: false,
            otel,
            trace_id: [(trace_id >> 64) as u64, trace_id as u64],
        };
        (core, restore, span)
    }

    #[inline]
    fn close(&self, span: Option<&tracing::Span>) {
        let outcome = outcome(
            self.error,
            std::thread::panicking(),
            self.cancelled,
            cancelled_as(),
        );
        let error = match outcome {
            Outcome::Error(category, error_type) => Some((category, error_type)),
            Outcome::Ok | Outcome::Cancelled => None,
        };
        let end = clock::now();
        if let Some(b) = self.bound {
            let secs = self.start.secs_until(end);
            match outcome {
                Outcome::Ok => {
                    self.callsite.count_ok(b, self.caller);
                    b.duration[0].record(secs);
                }
                Outcome::Error(category, error_type) => {
                    let mut labels = self.callsite.labels(self.caller, "error");
                    labels.push(KeyValue::new(ERROR_CATEGORY, category.as_str()));
                    labels.push(KeyValue::new(ERROR_TYPE, error_type));
                    b.calls.add(1, &labels);
                    b.duration[1].record(secs);
                }
                Outcome::Cancelled => {
                    let labels = self.callsite.labels(self.caller, RESULT_CANCELLED);
                    b.calls.add(1, &labels);
                    let mut histogram_labels = vec![
                        KeyValue::new(FUNCTION, self.callsite.function),
                        KeyValue::new(MODULE, self.callsite.module),
                        KeyValue::new(RESULT, RESULT_CANCELLED),
                    ];
                    histogram_labels.extend(service_name_label());
                    b.any_duration.record(secs, &histogram_labels);
                }
            }
            b.concurrent.add(-1);
        }
        if let Some(cx) = &self.otel {
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
            otel_span.end_with_timestamp(end.system_time());
        }
        if let (Some(span), Some((category, error_type))) = (span, error) {
            span.record("otel.status_code", "error");
            span.record(ERROR_TYPE, error_type);
            span.record(ERROR_CATEGORY, category.as_str());
        }
    }
}

/// The guard of a sync monitored call: the frame (and, when sampled, the OTel
/// context) is current and the span entered until it drops, which records the
/// metrics.
#[derive(Debug)]
#[must_use = "the call is measured until the guard drops"]
pub struct Call {
    core: Core,
    span: Option<tracing::span::EnteredSpan>,
    attached: Option<ContextGuard>,
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
        let (core, restore, span) = Core::open(callsite, make_span, make_attributes);
        let attached = core.otel.as_ref().map(|cx| Context::clone(cx).attach());
        Self {
            core,
            span: span.map(tracing::Span::entered),
            attached,
            _restore: restore,
        }
    }

    /// Marks the call as failed with the given category and `error.type`.
    #[inline]
    pub fn fail(&mut self, (category, error_type): (ErrorCategory, &'static str)) {
        self.core.error = Some((category, error_type));
    }
}

impl Drop for Call {
    #[inline(always)]
    fn drop(&mut self) {
        self.core.close(self.span.as_deref());
        drop(self.span.take());
        drop(self.attached.take());
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
        let (core, restore, span) = Core::open(callsite, make_span, make_attributes);
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
        let _restore = PollGuard::save();
        set_current(self.core.frame);
        if self.core.frame.trace == Trace::Unsampled {
            let [hi, lo] = self.core.trace_id;
            UNSAMPLED_TRACE_ID.with(|t| t.set((u128::from(hi) << 64) | u128::from(lo)));
        }
        let _attached = self.core.otel.as_ref().map(|c| Context::clone(c).attach());
        let _entered = self.span.as_ref().map(tracing::Span::enter);
        // The runtime drops the future only after it has caught the panic, when
        // `thread::panicking()` no longer tells; mark the call here.
        let _panic = PanicMark(&mut self.core.error);
        fut.poll(cx)
    }

    /// Marks the call as failed with the given category and `error.type`.
    #[inline]
    pub fn fail(&mut self, (category, error_type): (ErrorCategory, &'static str)) {
        self.core.error = Some((category, error_type));
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

/// Converts a `fields(..)` value into an OpenTelemetry attribute value.
pub trait FieldValue {
    /// The attribute value.
    fn into_otel_value(self) -> opentelemetry::Value;
}

macro_rules! field_value_as {
    ($as:ty => $($t:ty),*) => {$(
        impl FieldValue for $t {
            fn into_otel_value(self) -> opentelemetry::Value {
                opentelemetry::Value::from(self as $as)
            }
        }
    )*};
}
field_value_as!(i64 => i8, i16, i32, i64, u8, u16, u32, isize);

macro_rules! field_value_wide {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            /// As an integer where it fits, else as text (never wrapped).
            fn into_otel_value(self) -> opentelemetry::Value {
                match i64::try_from(self) {
                    Ok(v) => opentelemetry::Value::from(v),
                    Err(_) => opentelemetry::Value::from(self.to_string()),
                }
            }
        }
    )*};
}
field_value_wide!(u64, usize);
field_value_as!(f64 => f32, f64);

impl FieldValue for bool {
    fn into_otel_value(self) -> opentelemetry::Value {
        opentelemetry::Value::from(self)
    }
}
impl FieldValue for &str {
    fn into_otel_value(self) -> opentelemetry::Value {
        opentelemetry::Value::from(self.to_owned())
    }
}
impl FieldValue for String {
    fn into_otel_value(self) -> opentelemetry::Value {
        opentelemetry::Value::from(self)
    }
}
impl FieldValue for &String {
    fn into_otel_value(self) -> opentelemetry::Value {
        opentelemetry::Value::from(self.clone())
    }
}

/// Re-exports for the code `#[monitored]` generates. Not public API.
#[doc(hidden)]
pub mod __macro_support {
    pub use crate::errors::probe::{Probe, ViaAny, ViaCategorize, ViaError};
    pub use crate::outcome::probe::*;
    pub use opentelemetry::KeyValue;
    pub use tracing;

    /// A `fields(..)` value as an attribute value.
    pub fn value(v: impl super::FieldValue) -> opentelemetry::Value {
        v.into_otel_value()
    }

    /// Wraps a parameter so that [`ViaFieldValue`] (a typed attribute, for
    /// numbers, bools and strings) is picked over [`ViaDebug`].
    #[derive(Debug)]
    pub struct ParamProbe<'a, T: ?Sized>(pub &'a T);

    /// Parameters whose type has a typed attribute value.
    pub trait ViaFieldValue {
        /// The attribute value.
        fn param_value(&self) -> opentelemetry::Value;
    }
    impl<T: Copy + super::FieldValue> ViaFieldValue for &ParamProbe<'_, T> {
        fn param_value(&self) -> opentelemetry::Value {
            (*self.0).into_otel_value()
        }
    }

    /// Any other parameter, by its `Debug` text (as `#[tracing::instrument]`).
    pub trait ViaDebug {
        /// The attribute value.
        fn param_value(&self) -> opentelemetry::Value;
    }
    impl<T: std::fmt::Debug + ?Sized> ViaDebug for ParamProbe<'_, T> {
        fn param_value(&self) -> opentelemetry::Value {
            opentelemetry::Value::from(format!("{:?}", self.0))
        }
    }

    /// A `?value` as its `Debug` text.
    pub fn debug_value(v: &(impl std::fmt::Debug + ?Sized)) -> opentelemetry::Value {
        opentelemetry::Value::from(format!("{v:?}"))
    }

    /// A `%value` as its `Display` text.
    pub fn display_value(v: &(impl std::fmt::Display + ?Sized)) -> opentelemetry::Value {
        opentelemetry::Value::from(v.to_string())
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
    fn a_cancelled_call_counts_as_configured_and_errors_and_panics_win() {
        use CancelledAs::*;
        let cancelled = |mode| outcome(None, false, true, mode);
        assert_eq!(cancelled(Cancelled), Outcome::Cancelled);
        assert_eq!(
            cancelled(Error),
            Outcome::Error(ErrorCategory::Cancelled, "Cancelled")
        );
        assert_eq!(cancelled(Ok), Outcome::Ok);
        // An error the body returned before the drop, or a panic, is what it is.
        let e = Some((ErrorCategory::Unavailable, "Unavailable"));
        assert_eq!(
            outcome(e, false, true, Cancelled),
            Outcome::Error(ErrorCategory::Unavailable, "Unavailable")
        );
        assert_eq!(
            outcome(None, true, true, Cancelled),
            Outcome::Error(ErrorCategory::Internal, "panic")
        );
        assert_eq!(outcome(None, false, false, Error), Outcome::Ok);
    }

    #[test]
    fn generated_trace_ids_are_never_zero_and_differ() {
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }
}
