//! A `#[monitored]` function's static identity and the instruments bound to it.

use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram, Meter};
use opentelemetry::trace::SpanKind;
use opentelemetry::{InstrumentationScope, KeyValue};

use super::{
    BOUNDARIES, CALLER_FUNCTION, CALLER_MODULE, DEFAULT_HISTOGRAM_BOUNDARIES, FUNCTION,
    FUNCTION_CALLS, FUNCTION_CALLS_CONCURRENT, FUNCTION_CALLS_DURATION, FUNCTION_ERRORS, MODULE,
    RESULT, SCOPE_NAME, generation, service_name_label,
};

/// Serialises the (rare) binding of a callsite's instruments (and the tracer).
pub(super) static BINDING: Mutex<()> = Mutex::new(());

const CALLER_SLOTS: usize = 8;

/// Every callsite's bound instruments, for the in-flight callback: `function.calls.concurrent`
/// is an observable up-down counter that reads [`Bound::in_flight`], so a call pays
/// two plain stores for it ([`inflight`](super::inflight)) instead of two calls into
/// the SDK's bound instrument (about 56 of a metrics-only call's 623 instructions,
/// callgrind) or two locked adds on a shared atomic.
static BOUNDS: Mutex<Vec<&'static Bound>> = Mutex::new(Vec::new());
/// The generation whose in-flight callback is registered (0: none). Written under
/// [`BINDING`].
static CONCURRENT_GENERATION: AtomicU64 = AtomicU64::new(0);

/// A `#[monitored]` function's static identity and cached instruments.
#[derive(Debug)]
pub struct Callsite {
    pub(super) function: &'static str,
    pub(super) module: &'static str,
    pub(super) file: &'static str,
    pub(super) line: u32,
    pub(super) kind: &'static str,
    pub(super) sample: Option<f64>,
    pub(super) metrics: bool,
    pub(super) span: bool,
    /// Declares `fields(k)` without a value, to be recorded later through
    /// `tracing::Span::current().record(k, v)`.
    pub(super) deferred_fields: bool,
    /// `slow = ".."`: a root slower than this (ns) keeps its trace; 0: the
    /// global rule.
    pub(super) slow_ns: u64,
    /// Recent root latencies, for the tail keeper's p99 rule.
    pub(super) latency: super::tail::Latency,
    /// The error fingerprints with their own `function.errors` series.
    pub(super) groups: crate::errors::fingerprint::Groups,
    bound: AtomicPtr<Bound>,
}

/// Instruments bound to one callsite's constant labels, for one generation.
#[derive(Debug)]
pub(super) struct Bound {
    generation: u64,
    pub(super) calls: Counter<u64>,
    /// `[ok, error]`.
    pub(super) duration: [BoundHistogram<f64>; 2],
    /// For the rare cancelled call, recorded with its labels (a bound series
    /// would export an empty one for every function).
    pub(super) any_duration: Histogram<f64>,
    /// Calls in flight (`function.calls.concurrent`, read by the callback):
    /// counted per thread in this slot ([`inflight`](super::inflight)), or,
    /// past its capacity, in `concurrent`.
    slot: Option<u32>,
    /// Calls in flight of a callsite without a slot.
    concurrent: AtomicI64,
    /// The labels of its `function.calls.concurrent` series.
    concurrent_labels: Vec<KeyValue>,
    /// `function.errors`, by function, `error.type` and `error.fingerprint`.
    pub(super) errors: Counter<u64>,
    /// The ok-call counter per caller, bound on first use.
    ok_by_caller: [AtomicPtr<CallerCounter>; CALLER_SLOTS],
}

impl Bound {
    /// Counts a call that starts.
    #[inline(always)]
    pub(super) fn start_flight(&self) {
        match self.slot {
            Some(slot) => super::inflight::add(slot, 1),
            None => {
                self.concurrent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a call that ends (on any thread).
    #[inline(always)]
    pub(super) fn end_flight(&self) {
        match self.slot {
            Some(slot) => super::inflight::add(slot, -1),
            None => {
                self.concurrent.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Calls in flight, from the per-thread `sums` by slot. A call that moved
    /// between threads while they were read can make the sum dip below 0 for
    /// that reading: it is read as 0.
    fn in_flight(&self, sums: &[i64]) -> i64 {
        let counted = self.slot.map_or(0, |s| sums[s as usize]);
        (counted + self.concurrent.load(Ordering::Relaxed)).max(0)
    }
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
            deferred_fields: false,
            slow_ns: 0,
            latency: super::tail::Latency::new(),
            groups: crate::errors::fingerprint::Groups::new(),
            bound: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Marks a callsite that declares fields recorded later: a sampled call
    /// then makes a `tracing` span (even with no other layer), so that
    /// `Span::current().record(..)` reaches the exported span.
    pub const fn with_deferred_fields(self) -> Self {
        Self {
            deferred_fields: true,
            ..self
        }
    }

    /// Sets this function's own slow threshold, in nanoseconds
    /// (`#[monitored(slow = "250ms")]`): a root slower than it keeps its trace
    /// even when the head sampler did not pick it.
    pub const fn with_slow(self, nanos: u64) -> Self {
        Self {
            slow_ns: nanos,
            ..self
        }
    }

    pub(super) fn span_kind(&self) -> SpanKind {
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
    pub(super) fn bound(&'static self) -> &'static Bound {
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
        if CONCURRENT_GENERATION.load(Ordering::Relaxed) != generation {
            // One callback per meter provider, for every callsite bound under it.
            // Built without holding `BOUNDS`: the SDK may hold its own lock while it
            // runs the callback, which takes `BOUNDS`.
            let _ = meter
                .i64_observable_up_down_counter(FUNCTION_CALLS_CONCURRENT)
                .with_unit("{call}")
                .with_description("#[monitored] function calls in flight")
                .with_callback(move |observer| {
                    // Summed before `BOUNDS` is taken: one lock at a time.
                    let sums = super::inflight::sums();
                    let bounds = BOUNDS.lock().unwrap_or_else(PoisonError::into_inner);
                    for b in bounds.iter().filter(|b| b.generation == generation) {
                        observer.observe(b.in_flight(&sums), &b.concurrent_labels);
                    }
                })
                .build();
            CONCURRENT_GENERATION.store(generation, Ordering::Relaxed);
        }
        let errors = meter
            .u64_counter(FUNCTION_ERRORS)
            .with_unit("{error}")
            .with_description(
                "Errors returned by #[monitored] functions, by error.type and error.fingerprint (the first N fingerprints per function; the rest as \"overflow\")",
            )
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
            slot: super::inflight::claim(),
            concurrent: AtomicI64::new(0),
            concurrent_labels: fm,
            errors,
            calls,
            ok_by_caller: Default::default(),
        }));
        // Kept for every generation: an earlier provider's callback still reads the
        // calls that started under it (the bounds are leaked and live anyway).
        BOUNDS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(bound);
        self.bound
            .store(bound as *const Bound as *mut Bound, Ordering::Release);
        bound
    }

    pub(super) fn labels(
        &self,
        caller: Option<&'static Callsite>,
        result: &'static str,
    ) -> Vec<KeyValue> {
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
    /// (Always inlined: out of line, its call costs the unsampled path about
    /// 14 instructions, callgrind.)
    #[inline(always)]
    pub(super) fn count_ok(
        &'static self,
        bound: &'static Bound,
        caller: Option<&'static Callsite>,
    ) {
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
