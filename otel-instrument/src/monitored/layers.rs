//! The `tracing` layers that `#[monitored]` installs next to the OpenTelemetry
//! layer, and the rule that keeps them from re-entering the SDK.
//!
//! # Re-entrancy
//! The SDK runs callbacks while it holds a span's lock: a span processor's
//! `on_end` runs inside `Span::end`, under the lock of the span that ends. Any
//! `tracing` event emitted there (the SDK's own internal logs, ours, or a
//! user's exporter) is dispatched synchronously on the same thread. A layer
//! that then touches span or context state (adds the event to the current OTel
//! span, say) waits on a lock its own thread holds, and the application
//! freezes. So:
//! - everything we call into the SDK from (starting and ending a monitored
//!   call's span, our span processor) runs inside an [`SdkScope`]; while one is
//!   open on a thread, [`EventLayer`] and the OTel layer (through
//!   [`OtelFilter`]) ignore events;
//! - events from the SDK's own crates (targets `opentelemetry*`) never reach
//!   span state at all: they describe the pipeline, not the application, and
//!   the fmt layer still prints them.

use std::cell::{Cell, RefCell};

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, ContextGuard, KeyValue};
use tracing_subscriber::layer::Filter;

use super::frame::{Trace, current, recorded_span_context, unsampled_trace_id};

thread_local! {
    static IN_SDK: Cell<bool> = const { Cell::new(false) };
    /// The contexts attached for plain spans started inside natively recorded
    /// calls (see [`OtelFilter`]); detached right after, or when the call ends.
    static MATERIALIZED: RefCell<Vec<ContextGuard>> = const { RefCell::new(Vec::new()) };
}

/// Detaches the contexts [`OtelFilter`] attached on this thread, if any: a
/// recorded call's end or poll calls it, in case no [`EventLayer`] did.
#[inline]
pub(super) fn detach_materialized() {
    MATERIALIZED.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut()
            && !m.is_empty()
        {
            // Last attached first.
            while m.pop().is_some() {}
        }
    });
}

/// Marks the current thread as inside an SDK call until it drops, so that
/// events emitted from SDK callbacks are not recorded onto spans.
#[derive(Debug)]
#[must_use = "the scope ends when the guard drops"]
pub(crate) struct SdkScope {
    prev: bool,
}

impl SdkScope {
    /// Opens the scope (nestable).
    #[inline]
    pub(crate) fn enter() -> Self {
        Self {
            prev: IN_SDK.with(|c| c.replace(true)),
        }
    }
}

impl Drop for SdkScope {
    #[inline]
    fn drop(&mut self) {
        IN_SDK.with(|c| c.set(self.prev));
    }
}

/// Whether this thread is inside an [`SdkScope`].
#[inline]
fn in_sdk() -> bool {
    IN_SDK.with(Cell::get)
}

/// Whether an event comes from the OpenTelemetry crates' internal logging
/// (their targets are their package names: `opentelemetry_sdk`,
/// `opentelemetry-otlp`, ...).
#[inline]
fn is_sdk_target(target: &str) -> bool {
    target.starts_with("opentelemetry")
}

/// A per-layer filter for the `tracing-opentelemetry` layer. It skips the
/// `tracing` spans of monitored calls (they exist only for other layers such as
/// fmt: a sampled call records its span natively, or starts its OTel span
/// directly on the SDK, which costs far less), and every span inside an
/// unsampled monitored call.
///
/// A plain span started inside a natively recorded call needs that call as
/// its parent, and the OTel layer finds its parent in the current OTel
/// context: the filter attaches the call's span context just before the
/// layer sees the new span, and [`EventLayer`] (next in line) or the call's
/// end detaches it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtelFilter;

/// The filter to put on the OTel layer; see [`OtelFilter`].
pub fn otel_filter() -> OtelFilter {
    OtelFilter
}

/// The (never recorded) field that marks the `tracing` span of a `#[monitored]` call.
pub const MONITORED_MARKER: &str = "otel_instrument.monitored";

impl<S> Filter<S> for OtelFilter {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if !meta.is_span() {
            // An event from inside an SDK callback must not touch span state.
            return !in_sdk();
        }
        let trace = current().trace;
        if meta.fields().field(MONITORED_MARKER).is_some() {
            // Sampled monitored calls start their OTel span themselves; only
            // when #[monitored] does not decide does the OTel layer see them.
            trace == Trace::Delegated
        } else {
            trace != Trace::Unsampled
        }
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing_core::Interest {
        if meta.is_span() {
            tracing_core::Interest::sometimes()
        } else if is_sdk_target(meta.target()) {
            // The SDK's internal logs never become span events.
            tracing_core::Interest::never()
        } else {
            tracing_core::Interest::sometimes()
        }
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        // Only a contextual span looks for its parent in the current context.
        if !attrs.is_contextual() {
            return;
        }
        if let Some(sc) = recorded_span_context() {
            let guard = Context::current().with_remote_span_context(sc).attach();
            MATERIALIZED.with(|m| m.borrow_mut().push(guard));
        }
    }
}

/// A layer that records `tracing` events inside a sampled monitored call as
/// events of its OTel span. The tracing-opentelemetry layer only attaches
/// events to spans it created, and a sampled monitored call's span is started
/// on the SDK directly; events inside a plain `tracing` span are left to it.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventLayer;

/// The layer to add next to the OTel layer; see [`EventLayer`].
pub fn event_layer() -> EventLayer {
    EventLayer
}

impl<S> tracing_subscriber::Layer<S> for EventLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    /// The OTel layer has read its parent by now: detach the context
    /// [`OtelFilter`] attached for it.
    fn on_new_span(
        &self,
        _attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if current().trace == Trace::Recorded {
            detach_materialized();
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let trace = current().trace;
        if !matches!(trace, Trace::Sampled | Trace::Recorded)
            || in_sdk()
            || is_sdk_target(event.metadata().target())
        {
            return;
        }
        let current_span = if event.is_contextual() {
            ctx.lookup_current()
        } else {
            event.parent().and_then(|id| ctx.span(id))
        };
        if current_span.is_some_and(|s| s.metadata().fields().field(MONITORED_MARKER).is_none()) {
            return; // a plain span: the OTel layer records the event on it
        }
        let meta = event.metadata();
        let mut visitor = EventVisitor {
            attributes: vec![
                KeyValue::new("level", meta.level().as_str()),
                KeyValue::new("target", meta.target().to_owned()),
            ],
            message: None,
        };
        event.record(&mut visitor);
        let name = visitor
            .message
            .take()
            .unwrap_or_else(|| meta.name().to_owned());
        if trace == Trace::Recorded {
            super::tail::add_event(name.into(), visitor.attributes);
            return;
        }
        Context::map_current(|cx| {
            let span = cx.span();
            if span.span_context().is_sampled() {
                span.add_event(name, visitor.attributes);
            }
        });
    }

    /// `Span::current().record(k, v)` on a sampled monitored call's `tracing`
    /// span (the declared `fields(k)`): the OTel layer never sees that span,
    /// so the value goes to the call's OTel span here.
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let frame = current();
        if !matches!(frame.trace, Trace::Sampled | Trace::Recorded) || in_sdk() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let meta = span.metadata();
        // Only the running call's own span holds the current OTel context.
        if meta.fields().field(MONITORED_MARKER).is_none()
            || frame.callsite.map(|c| c.function) != Some(meta.name())
        {
            return;
        }
        let mut visitor = EventVisitor {
            attributes: Vec::new(),
            message: None,
        };
        values.record(&mut visitor);
        // Status and error fields are ours: the call's end sets them.
        visitor.attributes.retain(|kv| {
            let k = kv.key.as_str();
            !k.starts_with("otel.") && k != "error.type" && k != "error.category"
        });
        if visitor.attributes.is_empty() {
            return;
        }
        if frame.trace == Trace::Recorded {
            for kv in visitor.attributes {
                super::tail::set_attribute(kv);
            }
            return;
        }
        Context::map_current(|cx| {
            let span = cx.span();
            if span.span_context().is_sampled() {
                span.set_attributes(visitor.attributes);
            }
        });
    }
}

struct EventVisitor {
    attributes: Vec<KeyValue>,
    message: Option<String>,
}

impl tracing::field::Visit for EventVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.attributes
                .push(KeyValue::new(field.name(), value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.attributes
            .push(KeyValue::new(field.name(), value as i64));
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = Some(format!("{value:?}"));
        } else {
            self.attributes
                .push(KeyValue::new(field.name(), format!("{value:?}")));
        }
    }
}

/// The fmt layer's event format that `Telemetry::install` uses: tracing's
/// default (`Full`) line, followed by the monitored call the event comes from
/// and its trace context, `function=… trace_id=… span_id=…`.
///
/// The call is read from `#[monitored]`'s frame, so fmt needs no `tracing`
/// span per monitored call: with this format installed, calls create none
/// (see [`set_other_layers`](super::set_other_layers)), and logs still say
/// where they came from and join up with the trace in Jaeger. An unsampled
/// call shows its trace id (propagated with the sampled flag off) and no span
/// id. Events outside any monitored call show the current OpenTelemetry
/// context, if one is attached.
#[derive(Debug, Clone)]
pub struct MonitoredFormat {
    plain: tracing_subscriber::fmt::format::Format,
    ansi: tracing_subscriber::fmt::format::Format,
}

impl Default for MonitoredFormat {
    fn default() -> Self {
        let base = tracing_subscriber::fmt::format::Format::default().with_target(true);
        Self {
            plain: base.clone().with_ansi(false),
            ansi: base.with_ansi(true),
        }
    }
}

/// The event format to give a fmt layer; see [`MonitoredFormat`].
pub fn fmt_format() -> MonitoredFormat {
    MonitoredFormat::default()
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for MonitoredFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let inner = if writer.has_ansi_escapes() {
            &self.ansi
        } else {
            &self.plain
        };
        let mut line = String::new();
        inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        writer.write_str(line.strip_suffix('\n').unwrap_or(&line))?;

        let frame = current();
        // A monitored call whose own `tracing` span is in the line already
        // (when some layer asked for spans) is not named twice.
        let named = ctx
            .lookup_current()
            .is_some_and(|s| s.metadata().fields().field(MONITORED_MARKER).is_some());
        if let Some(callsite) = frame.callsite
            && !named
        {
            write!(writer, " function={}", callsite.function())?;
        }
        match frame.trace {
            Trace::Unsampled => {
                write!(
                    writer,
                    " trace_id={}",
                    opentelemetry::trace::TraceId::from(unsampled_trace_id())
                )?;
            }
            Trace::Recorded => {
                write!(
                    writer,
                    " trace_id={}",
                    opentelemetry::trace::TraceId::from(unsampled_trace_id())
                )?;
                match super::tail::current_span() {
                    0 => {}
                    span => write!(
                        writer,
                        " span_id={}",
                        opentelemetry::trace::SpanId::from(span)
                    )?,
                }
            }
            _ => {
                let sc = Context::map_current(|cx| cx.span().span_context().clone());
                if sc.is_valid() {
                    write!(
                        writer,
                        " trace_id={} span_id={}",
                        sc.trace_id(),
                        sc.span_id()
                    )?;
                }
            }
        }
        writeln!(writer)
    }
}

/// A per-layer filter for the OTLP logs bridge: events only, never the SDK's
/// own (targets `opentelemetry*`, which would feed back into the pipeline that
/// logs them) and never one emitted from inside an SDK callback.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFilter;

/// The filter to put on the OTLP logs layer; see [`LogFilter`].
pub fn log_filter() -> LogFilter {
    LogFilter
}

impl<S> Filter<S> for LogFilter {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        meta.is_event() && !in_sdk()
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing_core::Interest {
        if meta.is_span() || is_sdk_target(meta.target()) {
            tracing_core::Interest::never()
        } else {
            tracing_core::Interest::sometimes()
        }
    }
}
