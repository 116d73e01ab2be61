//! Our own metric and attribute names, in one place.

/// Failed OTLP export requests, by `signal`.
pub const EXPORT_FAILURES: &str = "otel_instrument.export.failures";
/// Spans that never reached the collector, by `reason`.
pub const SPANS_DROPPED: &str = "otel_instrument.spans.dropped";
/// Log records that never reached the collector, by `reason`.
pub const LOGS_DROPPED: &str = "otel_instrument.logs.dropped";
/// Durations measured with the clock going backwards (recorded as zero).
pub const CLOCK_BACKWARDS: &str = "otel_instrument.clock.backwards";
/// Traces the tail keeper decided on, by `decision` (`kept_error`, `kept_slow`, `kept_downstream`,
/// `dropped`, `refused`: over the rate limit).
pub const TAIL_TRACES: &str = "otel_instrument.tail.traces";
/// Spans the tail keeper recorded but could not keep, by `reason` (`root_cap`,
/// `held_cap`, `late`, `handoff_full`).
pub const TAIL_SPANS_DROPPED: &str = "otel_instrument.tail.spans.dropped";
/// What the W3C propagators dropped from incoming or outgoing headers, by `header`
/// (`traceparent`: invalid headers, each of which started a new trace;
/// `tracestate`: members; `baggage`: entries).
pub const PROPAGATION_REJECTED: &str = "otel_instrument.propagation.rejected";
/// Connections the Prometheus endpoint closed for one of its limits, by `reason`
/// (`write_timeout`, `http_error`: a head not sent in time, too large or malformed;
/// `request_body`).
pub const PROMETHEUS_CONNECTIONS_CLOSED: &str = "otel_instrument.prometheus.connections.closed";
/// Heap bytes the allocator has handed out and not had back (glibc `mallinfo2`:
/// `uordblks + hblkhd`), beside `process.memory.usage` (RSS). Not a semantic
/// conventions name: they define no heap metric for native processes, only
/// per-runtime ones (`jvm.memory.used`, `go.memory.used`). The receiver uses the
/// same name for its own.
pub const PROCESS_MEMORY_HEAP_USAGE: &str = "process.memory.heap.usage";
/// Error reports (log line and `exception` event) held back by the per-fingerprint
/// limit; each interval's count is said in one summary line.
pub const ERROR_REPORTS_SUPPRESSED: &str = "otel_instrument.error_reports.suppressed";
/// Errors counted in a function's `error.fingerprint="overflow"` series
/// because the function already had its cap of fingerprints.
pub const ERROR_GROUPS_OVERFLOWED: &str = "otel_instrument.error_groups.overflowed";
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

/// Runtime metric names. They are those of `opentelemetry-instrumentation-tokio`
/// (opentelemetry-rust-contrib), the OpenTelemetry community's tokio
/// instrumentation: `tokio.*`. The semantic conventions define none.
pub mod runtime {
    /// Worker threads of the runtime.
    pub const WORKERS: &str = "tokio.workers";
    /// Tasks alive in the runtime (spawned and not yet dropped).
    pub const ALIVE_TASKS: &str = "tokio.alive_tasks";
    /// Tasks waiting in the runtime's global (injection) queue.
    pub const GLOBAL_QUEUE_DEPTH: &str = "tokio.global_queue_depth";
    /// Time each worker has been busy, in seconds.
    pub const WORKER_BUSY_DURATION: &str = "tokio.worker.busy_duration";
    /// Times each worker has parked.
    pub const WORKER_PARK_COUNT: &str = "tokio.worker.park_count";
    /// Which worker of a runtime (0-based), on the per-worker metrics.
    pub const WORKER_INDEX: &str = "tokio.worker.index";
    /// Which of the runtimes this telemetry watches (0-based, in the order they
    /// were added; the runtime `build` ran inside, if any, is 0).
    pub const RUNTIME_INDEX: &str = "tokio.runtime.index";
}
