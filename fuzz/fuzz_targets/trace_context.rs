//! `traceparent`, `tracestate` and `baggage` through the propagators `ServerLayer`
//! uses: lines of input become headers (`name: value`, or a bare value for each of
//! the three). Checks the bounds hold on what comes out and goes back out.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use otel_instrument::propagation::w3c::{
    BaggagePropagator, MAX_BAGGAGE_BYTES, MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS,
    TraceContextPropagator, parse_traceparent,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_traceparent(text);
    let mut headers = HeaderMap::new();
    for (i, line) in text.lines().enumerate() {
        let (name, value) = match line.split_once(':') {
            Some((n, v)) if HeaderName::from_bytes(n.as_bytes()).is_ok() => (n.to_owned(), v),
            _ => (
                ["traceparent", "tracestate", "baggage"][i % 3].to_owned(),
                line,
            ),
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let cx = TraceContextPropagator.extract(&HeaderExtractor(&headers));
    let cx = BaggagePropagator.extract_with_context(&cx, &HeaderExtractor(&headers));
    let mut out = HeaderMap::new();
    TraceContextPropagator.inject_context(&cx, &mut HeaderInjector(&mut out));
    BaggagePropagator.inject_context(&cx, &mut HeaderInjector(&mut out));
    if let Some(ts) = out.get("tracestate") {
        assert!(ts.len() <= MAX_TRACESTATE_LEN);
        assert!(ts.as_bytes().split(|b| *b == b',').count() <= MAX_TRACESTATE_MEMBERS);
    }
    if let Some(b) = out.get("baggage") {
        assert!(b.len() <= MAX_BAGGAGE_BYTES);
    }
    if cx.span().span_context().is_valid() {
        assert!(out.contains_key("traceparent"));
    }
    assert!(cx.baggage().len() <= 180);
});
