//! Adding to the current monitored call's span from inside its body.
//!
//! In an unsampled call they add to the tail keeper's record of the call, which
//! is exported if the call's trace is kept (a failing or slow call), and are a
//! thread-local read when the keeper does not track it. Outside any monitored
//! call they act on the current `tracing` span's OpenTelemetry span.

use std::borrow::Cow;
use std::error::Error;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute::{EXCEPTION_MESSAGE, EXCEPTION_TYPE};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::frame::{Trace, current};

/// Which span the current code adds to.
fn with_span(
    monitored: impl FnOnce(&opentelemetry::trace::SpanRef<'_>),
    plain: impl FnOnce(&tracing::Span),
    tracked: impl FnOnce(),
) {
    match current().trace {
        // A sampled call attached its span's context.
        Trace::Sampled => Context::map_current(|cx| monitored(&cx.span())),
        // Kept for the tail keeper, if it tracks the call; a recorded call's
        // additions always join its span.
        Trace::Unsampled | Trace::Recorded => tracked(),
        Trace::Free | Trace::Delegated => plain(&tracing::Span::current()),
    }
}

/// Sets an attribute on the current call's span.
pub fn set_attribute(attribute: KeyValue) {
    with_span(
        |s| s.set_attribute(attribute.clone()),
        |s| s.set_attribute(attribute.key.clone(), attribute.value.clone()),
        || {
            super::tail::set_attribute(attribute.clone());
        },
    );
}

/// Adds an event to the current call's span.
pub fn add_event(name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
    let name = name.into();
    with_span(
        |s| s.add_event(name.clone(), attributes.clone()),
        |s| s.add_event(name.clone(), attributes.clone()),
        || {
            super::tail::add_event(name.clone(), attributes.clone());
        },
    );
}

/// Records `error` on the current call's span as an `exception` event with
/// `exception.type` and `exception.message` (OpenTelemetry semantic
/// conventions), and inside a monitored call its `error.fingerprint`. It does not decide the call's outcome: the returned `Err`
/// (or a panic) does.
pub fn record_error<E: Error + ?Sized>(error: &E) {
    if current().trace == Trace::Unsampled && super::tail::current_span() == 0 {
        return;
    }
    let error_type = crate::errors::short_type_name::<E>();
    let message = error.to_string();
    let mut attributes = Vec::with_capacity(3);
    // Inside a monitored call, the same fingerprint as if the call had returned it.
    if let Some(cs) = current().callsite {
        let fp = crate::errors::fingerprint(error_type, Some(&message), cs.module, cs.function);
        attributes.push(KeyValue::new(super::ERROR_FINGERPRINT, fp.to_string()));
    }
    attributes.push(KeyValue::new(EXCEPTION_TYPE, error_type));
    attributes.push(KeyValue::new(EXCEPTION_MESSAGE, message));
    add_event("exception", attributes);
}
