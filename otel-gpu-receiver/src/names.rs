//! Our own metric and attribute names: everything the semantic conventions do not define.
//!
//! Names that the conventions do define come from `opentelemetry-semantic-conventions`
//! where they are used; only these are ours, and they live here alone.

/// `service.name` of the agent.
pub const SERVICE_NAME: &str = "otel-gpu-receiver";

/// 1-minute load average. Not in the conventions; the Collector's hostmetrics receiver name.
pub const SYSTEM_CPU_LOAD_AVERAGE_1M: &str = "system.cpu.load_average.1m";
/// 5-minute load average (hostmetrics receiver name).
pub const SYSTEM_CPU_LOAD_AVERAGE_5M: &str = "system.cpu.load_average.5m";
/// 15-minute load average (hostmetrics receiver name).
pub const SYSTEM_CPU_LOAD_AVERAGE_15M: &str = "system.cpu.load_average.15m";

/// Inodes used and free per filesystem. Not in the semantic conventions: the
/// Collector hostmetrics receiver's name, with `system.filesystem.state` (used, free).
pub const SYSTEM_FILESYSTEM_INODES_USAGE: &str = "system.filesystem.inodes.usage";

/// Heap bytes the agent has allocated and not freed (glibc `mallinfo2`), beside
/// `process.memory.usage` (RSS), so a leak (both grow) can be told from fragmentation
/// or pages the allocator keeps (only RSS grows). Not a semantic conventions name: they
/// define no heap metric for native processes. otel-instrument's services use the same.
pub const PROCESS_MEMORY_HEAP_USAGE: &str = "process.memory.heap.usage";

/// Duration of the last collection cycle.
pub const CYCLE_DURATION: &str = "otel_gpu_receiver.cycle.duration";
/// Collection cycles completed.
pub const CYCLES: &str = "otel_gpu_receiver.cycles";
/// Source failures, by source and error type.
pub const ERRORS: &str = "otel_gpu_receiver.errors";
/// OTLP export requests that failed.
pub const EXPORT_FAILURES: &str = "otel_gpu_receiver.export.failures";
/// Data points that collectors rejected in `partial_success` answers.
pub const EXPORT_REJECTED: &str = "otel_gpu_receiver.export.rejected";
/// Connections the pull endpoint closed for one of its limits, by `reason`.
pub const HTTP_CONNECTIONS_CLOSED: &str = "otel_gpu_receiver.http.connections.closed";
/// Series (points) in the last snapshot.
pub const SERIES: &str = "otel_gpu_receiver.series";

/// Filesystem family: 1 per mount whose `statvfs` is hung now (skipped until it answers).
pub const FILESYSTEM_STUCK: &str = "otel_gpu_receiver.filesystem.stuck";
/// Filesystem family: `statvfs` calls abandoned past their deadline.
pub const FILESYSTEM_TIMEOUTS: &str = "otel_gpu_receiver.filesystem.timeouts";
/// Filesystem family: mounts not asked in a cycle, by why (stuck, budget, hung_limit).
pub const FILESYSTEM_SKIPPED: &str = "otel_gpu_receiver.filesystem.skipped";

/// `nvidia.gpu.allocation`: 1 per GPU and container that the kubelet gave it to.
pub const GPU_ALLOCATION: &str = "nvidia.gpu.allocation";
/// Self-metric: attributed series folded into overflow series because of the cap.
pub const ATTRIBUTION_OVERFLOW: &str = "otel_gpu_receiver.attribution.overflow";
/// Self-metric: attribution problems by `error.type` (malformed cgroup file, kubelet timeout…).
pub const ATTRIBUTION_ERRORS: &str = "otel_gpu_receiver.attribution.errors";

/// The attribute that marks an overflow series (the OpenTelemetry SDK's own convention).
pub const ATTR_OVERFLOW: &str = "otel.metric.overflow";
/// Series folded into `otel.metric.overflow` by the SDK's per-instrument cardinality
/// limit, per metric.
pub const SERIES_OVERFLOW: &str = "otel_gpu_receiver.series.overflow";
/// Self-metric: readings dropped because their value was NaN or infinite, per metric.
pub const SERIES_NON_FINITE: &str = "otel_gpu_receiver.series.non_finite";
/// Attribute: the metric a self-metric is about.
pub const ATTR_METRIC_NAME: &str = "metric.name";
/// Attribute: the source (family) a self-metric is about.
pub const ATTR_SOURCE: &str = "source";
/// Attribute: the signal of an export failure.
pub const ATTR_SIGNAL: &str = "signal";
/// Why the pull endpoint closed a connection: `write_timeout`, `http_error`, `request_body`.
pub const ATTR_REASON: &str = "reason";
