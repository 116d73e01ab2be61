//! The tracer that sampled calls start their spans on.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{PoisonError, RwLock};

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

use super::callsite::{BINDING, Callsite};
use super::{SCOPE_NAME, SdkScope, generation, refresh_instruments};

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
pub(super) fn start_otel(
    callsite: &'static Callsite,
    start: std::time::SystemTime,
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
    builder.attributes = Some(attributes);
    builder.start_time = Some(start);
    let _sdk = SdkScope::enter();
    Context::map_current(|parent| {
        builder.span_kind = Some(effective_kind(callsite.span_kind(), parent));
        match tracer() {
            MonitoredTracer::Sdk(t) => parent.with_span(builder.start_with_context(t, parent)),
            MonitoredTracer::Global(t) => parent.with_span(builder.start_with_context(t, parent)),
        }
    })
}

/// `kind = server` marks where a request enters the process. Under a local
/// parent span (`propagation::ServerLayer`'s server span, or any other layer's)
/// the request has already entered, and a second SERVER span would count every
/// request twice in span-derived metrics: the handler's span is INTERNAL then.
/// With no parent, or a remote one (an extracted `traceparent`), it stays SERVER.
fn effective_kind(kind: SpanKind, parent: &Context) -> SpanKind {
    if kind == SpanKind::Server && parent.has_active_span() {
        let sc = parent.span().span_context().clone();
        if sc.is_valid() && !sc.is_remote() {
            return SpanKind::Internal;
        }
    }
    kind
}

/// Starts a span (a server or client span of the propagation layers) on the
/// same tracer as a child of `parent`, and returns the context that holds it.
/// The SDK's sampler decides, following `#[monitored]`'s frame if one is
/// current.
pub(crate) fn start_span(builder: opentelemetry::trace::SpanBuilder, parent: &Context) -> Context {
    let _sdk = SdkScope::enter();
    match tracer() {
        MonitoredTracer::Sdk(t) => parent.with_span(builder.start_with_context(t, parent)),
        MonitoredTracer::Global(t) => parent.with_span(builder.start_with_context(t, parent)),
    }
}

/// Ends the span in `cx` (with the SDK's processors kept away from our layers).
pub(crate) fn end_span(cx: &Context) {
    let _sdk = SdkScope::enter();
    cx.span().end();
}
