//! `counter!`, `histogram!`, `gauge!` and `up_down!`: one-line metrics whose
//! instrument is created once per callsite (a `static`) and re-created only
//! when a new meter provider is installed.
//!
//! ```
//! let queue = "emails";
//! otel_instrument::counter!("jobs.done", 1, "queue" => queue);
//! otel_instrument::histogram!("job.duration", 0.25, "queue" => queue, "ok" => true);
//! otel_instrument::gauge!("queue.depth", 12.0);
//! otel_instrument::up_down!("jobs.running", -1, "queue" => queue);
//! ```

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, PoisonError};

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry::{InstrumentationScope, KeyValue, Value};

/// The instrument kinds the macros create.
pub trait Instrument: Sized + Send + Sync + 'static {
    /// Creates the instrument named `name` on `meter`.
    fn create(meter: &Meter, name: &'static str) -> Self;
}

impl Instrument for Counter<u64> {
    fn create(meter: &Meter, name: &'static str) -> Self {
        meter.u64_counter(name).build()
    }
}

impl Instrument for Histogram<f64> {
    fn create(meter: &Meter, name: &'static str) -> Self {
        meter.f64_histogram(name).build()
    }
}

impl Instrument for Gauge<f64> {
    fn create(meter: &Meter, name: &'static str) -> Self {
        meter.f64_gauge(name).build()
    }
}

impl Instrument for UpDownCounter<i64> {
    fn create(meter: &Meter, name: &'static str) -> Self {
        meter.i64_up_down_counter(name).build()
    }
}

/// A per-callsite cache of one instrument; the macros put one in a `static`.
#[derive(Debug)]
pub struct InstrumentSite<T> {
    name: &'static str,
    cached: AtomicPtr<(u64, T)>,
}

static CREATING: Mutex<()> = Mutex::new(());

impl<T: Instrument> InstrumentSite<T> {
    /// An empty site for the instrument `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            cached: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The instrument, created on first use and after each provider change.
    #[inline]
    pub fn get(&'static self) -> &'static T {
        let generation = crate::monitored::generation();
        let p = self.cached.load(Ordering::Acquire);
        // SAFETY: `cached` holds null or a pointer from `Box::leak`, valid forever.
        if let Some((g, instrument)) = unsafe { p.as_ref() }
            && *g == generation
        {
            return instrument;
        }
        self.create(generation)
    }

    #[cold]
    fn create(&'static self, generation: u64) -> &'static T {
        let _lock = CREATING.lock().unwrap_or_else(PoisonError::into_inner);
        let p = self.cached.load(Ordering::Acquire);
        // SAFETY: as in `get`.
        if let Some((g, instrument)) = unsafe { p.as_ref() }
            && *g == generation
        {
            return instrument;
        }
        let meter = opentelemetry::global::meter_with_scope(
            InstrumentationScope::builder(crate::monitored::SCOPE_NAME)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        let leaked: &'static (u64, T) =
            Box::leak(Box::new((generation, T::create(&meter, self.name))));
        self.cached.store(
            leaked as *const (u64, T) as *mut (u64, T),
            Ordering::Release,
        );
        &leaked.1
    }
}

/// Converts a label value given to the metric macros.
pub trait LabelValue {
    /// The OpenTelemetry value.
    fn into_value(self) -> Value;
}

impl LabelValue for &str {
    fn into_value(self) -> Value {
        Value::from(self.to_owned())
    }
}
impl LabelValue for String {
    fn into_value(self) -> Value {
        Value::from(self)
    }
}
impl LabelValue for &String {
    fn into_value(self) -> Value {
        Value::from(self.clone())
    }
}
impl LabelValue for bool {
    fn into_value(self) -> Value {
        Value::from(self)
    }
}
impl LabelValue for i64 {
    fn into_value(self) -> Value {
        Value::from(self)
    }
}
impl LabelValue for f64 {
    fn into_value(self) -> Value {
        Value::from(self)
    }
}
impl LabelValue for Value {
    fn into_value(self) -> Value {
        self
    }
}

/// Builds one label; used by the macros.
#[doc(hidden)]
pub fn label(key: &'static str, value: impl LabelValue) -> KeyValue {
    KeyValue::new(key, value.into_value())
}

/// Adds to a `u64` counter: `counter!("jobs.done", 1, "queue" => name)`.
#[macro_export]
macro_rules! counter {
    ($name:literal, $value:expr $(, $k:literal => $v:expr)* $(,)?) => {{
        static __OTEL_SITE: $crate::metrics::InstrumentSite<
            $crate::__opentelemetry::metrics::Counter<u64>,
        > = $crate::metrics::InstrumentSite::new($name);
        __OTEL_SITE.get().add($value, &[$($crate::metrics::label($k, $v)),*]);
    }};
}

/// Records into an `f64` histogram: `histogram!("job.duration", 0.25, "queue" => name)`.
#[macro_export]
macro_rules! histogram {
    ($name:literal, $value:expr $(, $k:literal => $v:expr)* $(,)?) => {{
        static __OTEL_SITE: $crate::metrics::InstrumentSite<
            $crate::__opentelemetry::metrics::Histogram<f64>,
        > = $crate::metrics::InstrumentSite::new($name);
        __OTEL_SITE.get().record($value, &[$($crate::metrics::label($k, $v)),*]);
    }};
}

/// Sets an `f64` gauge: `gauge!("queue.depth", 12.0, "queue" => name)`.
#[macro_export]
macro_rules! gauge {
    ($name:literal, $value:expr $(, $k:literal => $v:expr)* $(,)?) => {{
        static __OTEL_SITE: $crate::metrics::InstrumentSite<
            $crate::__opentelemetry::metrics::Gauge<f64>,
        > = $crate::metrics::InstrumentSite::new($name);
        __OTEL_SITE.get().record($value, &[$($crate::metrics::label($k, $v)),*]);
    }};
}

/// Adds to an `i64` up-down counter: `up_down!("jobs.running", 1, "queue" => name)`.
#[macro_export]
macro_rules! up_down {
    ($name:literal, $value:expr $(, $k:literal => $v:expr)* $(,)?) => {{
        static __OTEL_SITE: $crate::metrics::InstrumentSite<
            $crate::__opentelemetry::metrics::UpDownCounter<i64>,
        > = $crate::metrics::InstrumentSite::new($name);
        __OTEL_SITE.get().add($value, &[$($crate::metrics::label($k, $v)),*]);
    }};
}
