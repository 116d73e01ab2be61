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
//!   (`BoundCounter`, `BoundHistogram`; the in-flight count is a per-thread
//!   counter that one observable up-down counter sums), never a hash lookup;
//! - leaves a fixed-size record for the tail keeper, which keeps its trace if
//!   it fails or is slow;
//! - allocates nothing.
//!
//! A sampled call is recorded the same way, and the keeper's thread builds its
//! OTLP span. Without a trace exporter (or without [`configure_tail`]) it
//! starts its OTel span directly on the SDK tracer ([`set_tracer`]) and
//! attaches its context. Its `tracing` span, if any layer wants one, is kept
//! away from the OTel layer so nothing is exported twice.
//!
//! A metrics-only call (`span = false`) has a smaller guard of its own
//! ([`MetricsCall`], [`AsyncMetricsCall`]): its frame, its in-flight count and
//! its metrics, and no sampling decision.
//!
//! Outgoing propagation from an unsampled trace still carries the trace id with
//! `sampled=0`: inject [`current_context`] rather than the tracing span's context.
//!
//! Until [`configure`] is called (by `Telemetry` at install, or by you when you
//! build your own pipeline), `#[monitored]` makes no sampling decision of its
//! own: it creates a `tracing` span for every call, like `#[tracing::instrument]`,
//! and the SDK's sampler decides.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use opentelemetry::KeyValue;

mod call;
mod callsite;
mod clock;
mod enrich;
mod frame;
mod inflight;
mod layers;
mod sampling;
mod spawn;
mod tail;
mod tracer;

pub use call::{AsyncCall, AsyncMetricsCall, Call, MetricsCall};
pub use callsite::Callsite;
pub use enrich::{add_event, record_error, set_attribute};
pub use frame::{current_context, current_function, is_unsampled};
pub(crate) use frame::{sampled_span, spanless_trace};
pub(crate) use layers::SdkScope;
pub use layers::{
    EventLayer, LogFilter, MONITORED_MARKER, MonitoredFormat, OtelFilter, event_layer, fmt_format,
    log_filter, otel_filter,
};
pub use sampling::{
    MonitoredIdGenerator, MonitoredSampler, id_generator, sampler, set_id_generator,
    set_root_rate_limit,
};
pub use spawn::{FutureExt, InTrace, TraceHandle, spawn};
pub use tail::{
    SAMPLING_KEPT, TailSettings, TailStats, configure as configure_tail, flush as flush_tail,
    stats as tail_stats,
};
pub(crate) use tail::{keep_for_downstream, kept_root, set_admission as set_tail_admission};
pub use tracer::set_tracer;
pub(crate) use tracer::{end_span, start_span};

use crate::config::{ParentRoot, SamplerConfig};

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
/// Label: the [`ErrorCategory`](crate::errors::ErrorCategory) of a failed call.
pub const ERROR_CATEGORY: &str = "error.category";
/// Label and span attribute: the error's variant or type name.
pub const ERROR_TYPE: &str = "error.type";
/// Label, span, event and log attribute: the error's fingerprint
/// ([`errors::fingerprint`](fn@crate::errors::fingerprint)).
pub const ERROR_FINGERPRINT: &str = "error.fingerprint";
/// Name of the bounded error-group counter: failed calls by function,
/// `error.type` and `error.fingerprint`.
pub const FUNCTION_ERRORS: &str = "function.errors";

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

static CANCELLED_AS: AtomicU8 = AtomicU8::new(0);

fn cancelled_as() -> CancelledAs {
    match CANCELLED_AS.load(Ordering::Relaxed) {
        1 => CancelledAs::Error,
        2 => CancelledAs::Ok,
        _ => CancelledAs::Cancelled,
    }
}

/// Bumped by [`configure`]: a callsite whose instruments are from an older
/// generation rebinds them, so calls made before the global meter provider was
/// installed do not keep no-op instruments forever.
static GENERATION: AtomicU64 = AtomicU64::new(1);
/// Whether `configure` ran, so that `#[monitored]` makes its own decisions.
static INTEGRATED: AtomicBool = AtomicBool::new(false);
static BOUNDARIES: RwLock<Vec<f64>> = RwLock::new(Vec::new());
/// Whether a layer other than OpenTelemetry (fmt, ...) may want the spans of
/// unsampled calls.
static OTHER_LAYERS: AtomicBool = AtomicBool::new(true);

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
    sampling::set_root(parent_based, root);
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

/// Runs `f` with the boundaries of `function.calls.duration`, in seconds.
pub(crate) fn with_histogram_boundaries<R>(f: impl FnOnce(&[f64]) -> R) -> R {
    let b = BOUNDARIES.read().unwrap_or_else(PoisonError::into_inner);
    if b.is_empty() {
        f(DEFAULT_HISTOGRAM_BOUNDARIES)
    } else {
        f(&b)
    }
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

/// (recorded as zero): cross-core TSC skew shows here.
pub fn clock_backwards() -> u64 {
    clock::backwards()
}

/// Whether the latency clock reads the TSC (false: `Instant`).
pub fn clock_uses_tsc() -> bool {
    clock::uses_tsc()
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
    pub use crate::errors::probe::{
        Message, Probe, ViaAny, ViaCategorize, ViaDisplay, ViaError, ViaNoDisplay,
    };
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
    fn a_configured_cancel_mode_is_read_back() {
        for mode in [CancelledAs::Error, CancelledAs::Ok, CancelledAs::Cancelled] {
            CANCELLED_AS.store(mode as u8, Ordering::Relaxed);
            assert_eq!(cancelled_as(), mode);
        }
    }
}
