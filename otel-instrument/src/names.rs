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

/// RPC attributes as Jaeger, Grafana and the Collector's span metrics read
/// them today (semantic conventions 1.2x). opentelemetry-semantic-conventions
/// 0.33 marks them deprecated in favour of `rpc.system.name` and
/// `rpc.response.status_code`, which no backend we ship reads yet.
pub mod rpc {
    /// `grpc`.
    pub const SYSTEM: &str = "rpc.system";
    /// The full service name, `package.Service`.
    pub const SERVICE: &str = "rpc.service";
    /// The method name.
    pub const METHOD: &str = "rpc.method";
    /// The numeric gRPC status code.
    pub const GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
}
