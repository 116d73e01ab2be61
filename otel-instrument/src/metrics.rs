//! `counter!`, `histogram!`, `gauge!` and `up_down!`: one-line metrics whose
//! instrument is created once per callsite (a `static`) and re-created only
//! when a new meter provider is installed.
//!
//! ```
//! let queue = "emails";
//! otel_instrument::counter!("jobs.done", 1, "queue" => queue);
//! otel_instrument::histogram!("job.duration", 0.25, "queue" => queue, "ok" => true);
//! otel_instrument::histogram!("payload.size", unit = "By", 4096.0);
//! otel_instrument::gauge!("queue.depth", 12.0);
//! otel_instrument::up_down!("jobs.running", -1, "queue" => queue);
//! ```
//!
//! # Histogram units and buckets
//! The SDK's default buckets (0, 5, 10 … 10,000) suit milliseconds. A
//! histogram gets buckets that suit its unit: `unit = "s"` (and, when no unit
//! is given, any name ending in `.duration`, the semantic conventions' way to
//! name a duration in seconds) gets [`SECONDS`], `unit = "ms"` [`MILLISECONDS`],
//! `unit = "By"` [`BYTES`]; any other unit keeps the SDK's defaults.
//!
//! # Label values
//! A label value is a `&str`, `&String`, `String`, `bool`, `f64`, an
//! [`opentelemetry::Value`], or any integer type (`i8` to `i128`, `u8` to
//! `u128`, `isize`, `usize`). Integers are exported as OpenTelemetry `i64`
//! values; a `u64`, `usize`, `u128` or `i128` outside the `i64` range is
//! exported as its decimal digits (a string), so it is never wrapped or
//! clamped. A Prometheus label shows both forms as the same digits.
//!
//! ```
//! let shard: usize = 3;
//! let port: u16 = 8080;
//! otel_instrument::counter!("jobs.done", 1, "shard" => shard, "port" => port, "retry" => 2);
//! ```
//!
//! A `&str` label value does not allocate per call: each thread keeps the
//! values it has seen (at most 256; the set is cleared when full, so memory
//! stays bounded whatever the cardinality).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue, Value};

/// Buckets for durations in seconds (autometrics', and `function.calls.duration`'s).
pub const SECONDS: &[f64] = crate::monitored::DEFAULT_HISTOGRAM_BOUNDARIES;
/// Buckets for durations in milliseconds.
pub const MILLISECONDS: &[f64] = &[
    5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];
/// Buckets for sizes in bytes: powers of four from 64 B to 1 GiB.
pub const BYTES: &[f64] = &[
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

/// The unit a histogram named `name` gets when none is given.
pub const fn default_unit(name: &str) -> Option<&'static str> {
    let (n, suffix) = (name.as_bytes(), b".duration");
    if n.len() < suffix.len() {
        return None;
    }
    let mut i = 0;
    while i < suffix.len() {
        if n[n.len() - suffix.len() + i] != suffix[i] {
            return None;
        }
        i += 1;
    }
    Some("s")
}

/// The buckets that suit `unit`; `None`: the SDK's defaults.
pub fn boundaries_for(unit: &str) -> Option<&'static [f64]> {
    match unit {
        "s" => Some(SECONDS),
        "ms" => Some(MILLISECONDS),
        "By" => Some(BYTES),
        _ => None,
    }
}

/// The instrument kinds the macros create.
pub trait Instrument: Sized + Send + Sync + 'static {
    /// Creates the instrument named `name` on `meter`, in `unit` if given.
    fn create(meter: &Meter, name: &'static str, unit: Option<&'static str>) -> Self;
}

impl Instrument for Counter<u64> {
    fn create(meter: &Meter, name: &'static str, unit: Option<&'static str>) -> Self {
        let b = meter.u64_counter(name);
        match unit {
            Some(u) => b.with_unit(u).build(),
            None => b.build(),
        }
    }
}

impl Instrument for Histogram<f64> {
    fn create(meter: &Meter, name: &'static str, unit: Option<&'static str>) -> Self {
        let mut b = meter.f64_histogram(name);
        if let Some(u) = unit {
            b = b.with_unit(u);
            if let Some(bounds) = boundaries_for(u) {
                b = b.with_boundaries(bounds.to_vec());
            }
        }
        b.build()
    }
}

impl Instrument for Gauge<f64> {
    fn create(meter: &Meter, name: &'static str, unit: Option<&'static str>) -> Self {
        let b = meter.f64_gauge(name);
        match unit {
            Some(u) => b.with_unit(u).build(),
            None => b.build(),
        }
    }
}

impl Instrument for UpDownCounter<i64> {
    fn create(meter: &Meter, name: &'static str, unit: Option<&'static str>) -> Self {
        let b = meter.i64_up_down_counter(name);
        match unit {
            Some(u) => b.with_unit(u).build(),
            None => b.build(),
        }
    }
}

/// A per-callsite cache of one instrument; the macros put one in a `static`.
#[derive(Debug)]
pub struct InstrumentSite<T> {
    name: &'static str,
    unit: Option<&'static str>,
    cached: AtomicPtr<(u64, T)>,
}

static CREATING: Mutex<()> = Mutex::new(());

impl<T: Instrument> InstrumentSite<T> {
    /// An empty site for the instrument `name`.
    pub const fn new(name: &'static str) -> Self {
        Self::with_unit(name, None)
    }

    /// An empty site for the instrument `name` in `unit`.
    pub const fn with_unit(name: &'static str, unit: Option<&'static str>) -> Self {
        Self {
            name,
            unit,
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
        let leaked: &'static (u64, T) = Box::leak(Box::new((
            generation,
            T::create(&meter, self.name, self.unit),
        )));
        self.cached.store(
            leaked as *const (u64, T) as *mut (u64, T),
            Ordering::Release,
        );
        &leaked.1
    }
}

impl InstrumentSite<Histogram<f64>> {
    /// Records `value`, and offers it as an exemplar when a sampled span is
    /// current (see [`crate::exemplars`]'s rules: it becomes one only once
    /// that span is exported).
    #[inline]
    pub fn record(&'static self, value: f64, attributes: &[KeyValue]) {
        self.get().record(value, attributes);
        if crate::exemplars::feeding() {
            crate::exemplars::offer_point(self.name, self.unit, value, attributes);
        }
    }
}

/// Converts a label value given to the metric macros: strings, `bool`, `f64`,
/// [`Value`] and every integer type (see the [module docs](crate::metrics#label-values)
/// for integers beyond `i64`).
pub trait LabelValue {
    /// The OpenTelemetry value.
    fn into_value(self) -> Value;
}

/// How many distinct `&str` label values a thread keeps before it starts over.
const INTERNED_MAX: usize = 256;

thread_local! {
    static INTERNED: RefCell<HashMap<Box<str>, StringValue>> = RefCell::new(HashMap::new());
}

impl LabelValue for &str {
    /// A shared copy of the string, made once per thread and value.
    fn into_value(self) -> Value {
        INTERNED.with(|cell| {
            let mut seen = cell.borrow_mut();
            if let Some(v) = seen.get(self) {
                return Value::String(v.clone());
            }
            if seen.len() >= INTERNED_MAX {
                seen.clear();
            }
            let v = StringValue::from(Arc::<str>::from(self));
            seen.insert(self.into(), v.clone());
            Value::String(v)
        })
    }
}
impl LabelValue for String {
    fn into_value(self) -> Value {
        Value::from(self)
    }
}
impl LabelValue for &String {
    fn into_value(self) -> Value {
        self.as_str().into_value()
    }
}
impl LabelValue for bool {
    fn into_value(self) -> Value {
        Value::from(self)
    }
}
/// Integers that always fit an OpenTelemetry `i64`.
macro_rules! int_label_value {
    ($($t:ty),*) => {$(
        impl LabelValue for $t {
            fn into_value(self) -> Value {
                Value::I64(i64::from(self))
            }
        }
    )*};
}
int_label_value!(i8, i16, i32, i64, u8, u16, u32);

/// Integers that may not fit an `i64`: an `i64` when they do, and otherwise
/// their decimal digits as a string, so the value stays exact (never wrapped
/// or clamped to `i64::MAX`). Prometheus shows both as the same digits.
macro_rules! wide_int_label_value {
    ($($t:ty),*) => {$(
        impl LabelValue for $t {
            fn into_value(self) -> Value {
                match i64::try_from(self) {
                    Ok(v) => Value::I64(v),
                    Err(_) => Value::from(self.to_string()),
                }
            }
        }
    )*};
}
wide_int_label_value!(u64, usize, isize, i128, u128);
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

/// Records into an `f64` histogram: `histogram!("job.duration", 0.25, "queue" => name)`,
/// or with a unit, `histogram!("payload.size", unit = "By", 4096.0)`. The
/// buckets suit the unit (see the [module docs](crate::metrics)).
#[macro_export]
macro_rules! histogram {
    ($name:literal, unit = $unit:literal, $value:expr $(, $k:literal => $v:expr)* $(,)?) => {{
        static __OTEL_SITE: $crate::metrics::InstrumentSite<
            $crate::__opentelemetry::metrics::Histogram<f64>,
        > = $crate::metrics::InstrumentSite::with_unit($name, Some($unit));
        __OTEL_SITE.record($value, &[$($crate::metrics::label($k, $v)),*]);
    }};
    ($name:literal, $value:expr $(, $k:literal => $v:expr)* $(,)?) => {{
        static __OTEL_SITE: $crate::metrics::InstrumentSite<
            $crate::__opentelemetry::metrics::Histogram<f64>,
        > = $crate::metrics::InstrumentSite::with_unit(
            $name,
            $crate::metrics::default_unit($name),
        );
        __OTEL_SITE.record($value, &[$($crate::metrics::label($k, $v)),*]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_default_to_seconds_and_units_pick_their_buckets() {
        assert_eq!(default_unit("job.duration"), Some("s"));
        assert_eq!(default_unit("http.server.request.duration"), Some("s"));
        assert_eq!(default_unit("job.size"), None);
        assert_eq!(default_unit("duration"), None);
        assert_eq!(boundaries_for("s"), Some(SECONDS));
        assert_eq!(boundaries_for("ms"), Some(MILLISECONDS));
        assert_eq!(boundaries_for("By"), Some(BYTES));
        assert_eq!(boundaries_for("{request}"), None);
        for b in [SECONDS, MILLISECONDS, BYTES] {
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn every_integer_type_is_an_i64_label_and_one_beyond_i64_keeps_its_digits() {
        let int = |v: Value| match v {
            Value::I64(i) => i,
            other => panic!("an i64 value expected, got {other:?}"),
        };
        assert_eq!(int((-8i8).into_value()), -8);
        assert_eq!(int(i16::MIN.into_value()), i64::from(i16::MIN));
        assert_eq!(int((-32i32).into_value()), -32);
        assert_eq!(int(i64::MIN.into_value()), i64::MIN);
        assert_eq!(int(u8::MAX.into_value()), 255);
        assert_eq!(int(u16::MAX.into_value()), 65_535);
        assert_eq!(int(u32::MAX.into_value()), 4_294_967_295);
        assert_eq!(int(7usize.into_value()), 7);
        assert_eq!(int((-7isize).into_value()), -7);
        assert_eq!(int((i64::MAX as u64).into_value()), i64::MAX);
        assert_eq!(int((i64::MIN as i128).into_value()), i64::MIN);
        assert_eq!(int(42u128.into_value()), 42);
        // Beyond i64: the exact digits, never a wrapped (negative) or clamped number.
        let digits = |v: Value| match v {
            Value::String(s) => s.as_str().to_owned(),
            other => panic!("a string value expected, got {other:?}"),
        };
        assert_eq!(digits(u64::MAX.into_value()), "18446744073709551615");
        assert_eq!(
            digits((i64::MAX as u64 + 1).into_value()),
            "9223372036854775808"
        );
        #[cfg(target_pointer_width = "64")]
        assert_eq!(digits(usize::MAX.into_value()), usize::MAX.to_string());
        assert_eq!(digits(u128::MAX.into_value()), u128::MAX.to_string());
        assert_eq!(digits(i128::MIN.into_value()), i128::MIN.to_string());
        // An unsuffixed literal still works (it becomes an i32).
        assert_eq!(label("n", 3).value, Value::I64(3));
    }

    #[test]
    fn a_str_label_value_is_shared_after_its_first_use_and_the_cache_is_bounded() {
        let owned = String::from("emails");
        let (Value::String(a), Value::String(b)) =
            (owned.as_str().into_value(), owned.as_str().into_value())
        else {
            panic!("string values expected");
        };
        assert_eq!(a.as_str(), "emails");
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "the same shared copy");
        for i in 0..(INTERNED_MAX * 3) {
            let _ = format!("v{i}").as_str().into_value();
        }
        assert!(INTERNED.with(|c| c.borrow().len()) <= INTERNED_MAX);
    }
}
