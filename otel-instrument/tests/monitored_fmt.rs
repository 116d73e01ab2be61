//! With the default fmt layer installed, a `#[monitored]` call creates no
//! `tracing` span (fmt names the call from the monitored frame), nothing of an
//! unsampled trace is exported, and a sampled call is exported once.

mod monitored_common;

use std::sync::atomic::{AtomicBool, Ordering};

use monitored_common::{flush_until, map, points, spans_named, value_with};
use otel_instrument::testing::OtlpSink;
use otel_instrument::{ParentRoot, SamplerConfig, Telemetry, monitored};

static SAW_SPAN: AtomicBool = AtomicBool::new(false);

#[monitored]
fn logged_but_unsampled() {
    SAW_SPAN.store(!tracing::Span::current().is_none(), Ordering::SeqCst);
    tracing::info!("inside an unsampled call");
}

#[monitored(sample = 1.0)]
fn always_sampled_here() {
    tracing::info!("inside a sampled call");
}

#[monitored(sample = 1.0, level = "debug")]
fn sampled_but_below_the_level_filter() {}

#[test]
fn with_the_default_fmt_layer_calls_create_no_tracing_span_and_unsampled_export_nothing() {
    let sink = OtlpSink::start().unwrap();
    let guard = Telemetry::builder()
        .service_name("monitored-fmt-tests")
        .endpoint(sink.endpoint())
        .sampler(SamplerConfig::ParentBased(ParentRoot::AlwaysOff))
        .fmt(true)
        .filter("monitored_fmt=info")
        .install()
        .unwrap();
    logged_but_unsampled();
    assert!(
        !SAW_SPAN.load(Ordering::SeqCst),
        "the default fmt format reads the monitored frame: no tracing span per call"
    );
    let want = map(&[
        ("function", "logged_but_unsampled"),
        ("module", "monitored_fmt"),
        ("result", "ok"),
    ]);
    let r = flush_until(&sink, &guard, |r| {
        value_with(&points(r, "function.calls", "logged_but_unsampled"), &want) == Some(1.0)
    });
    assert!(spans_named(&r, "logged_but_unsampled").is_empty());
    assert!(
        r.spans().is_empty(),
        "nothing of an unsampled trace is exported"
    );

    // `sample = 1.0` overrides the root sampler for this function; its span is
    // exported once, not a second time through the OTel layer that fmt's span
    // reaches. A debug-level one is filtered out by `monitored_fmt=info`, sampled
    // or not, while its call is still counted.
    sampled_but_below_the_level_filter();
    always_sampled_here();
    let r = flush_until(&sink, &guard, |r| {
        !spans_named(r, "always_sampled_here").is_empty()
            && !points(r, "function.calls", "sampled_but_below_the_level_filter").is_empty()
    });
    assert_eq!(spans_named(&r, "always_sampled_here").len(), 1);
    assert_eq!(r.spans().len(), 1, "{:?}", monitored_common::summary(&r));
}
