//! Our own metric and attribute names, in one place.

/// Failed OTLP export requests, by `signal`.
pub const EXPORT_FAILURES: &str = "otel_instrument.export.failures";
/// Spans that never reached the collector, by `reason`.
pub const SPANS_DROPPED: &str = "otel_instrument.spans.dropped";
/// Log records that never reached the collector, by `reason`.
pub const LOGS_DROPPED: &str = "otel_instrument.logs.dropped";
/// Durations measured with the clock going backwards (recorded as zero).
pub const CLOCK_BACKWARDS: &str = "otel_instrument.clock.backwards";
/// The instrumentation scope of everything this crate records.
pub const SCOPE: &str = "otel-instrument";
