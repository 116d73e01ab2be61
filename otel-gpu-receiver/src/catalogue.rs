//! The static catalogue of every metric the agent can emit: name, instrument, unit,
//! description and the family that produces it. One observable instrument is
//! registered per entry; it reads its points from the latest [`Snapshot`](crate::snapshot::Snapshot).
//!
//! The catalogue is a leaf: it uses only the name modules ([`crate::names`],
//! [`crate::gpu::names`]) and the semantic conventions, so every family can depend on
//! it without a cycle.

use std::fmt;
use std::str::FromStr;

use opentelemetry_semantic_conventions::attribute as a;
use opentelemetry_semantic_conventions::metric as sc;

use crate::names;

/// The kind of OpenTelemetry instrument a metric is reported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Instrument {
    /// Monotonic cumulative sum (reports totals).
    Counter,
    /// Non-monotonic sum.
    UpDownCounter,
    /// Last value.
    Gauge,
}

impl Instrument {
    /// The name used in the catalogue and in `--format json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "Counter",
            Self::UpDownCounter => "UpDownCounter",
            Self::Gauge => "Gauge",
        }
    }
}

impl fmt::Display for Instrument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a metric's values are integers or floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    /// Reported as `i64` (`u64` for counters).
    Int,
    /// Reported as `f64`.
    Float,
}

/// A group of metrics read by one source. Families can be enabled and disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
#[value(rename_all = "lower")]
pub enum Family {
    /// `system.cpu.*`: time per mode, utilization, frequency, counts.
    Cpu,
    /// `system.memory.*`.
    Memory,
    /// `system.paging.*`: swap usage, faults, operations.
    Paging,
    /// `system.disk.*` from /proc/diskstats.
    Disk,
    /// `system.filesystem.*` via statvfs.
    Filesystem,
    /// `system.network.*` from /proc/net/dev.
    Network,
    /// Load averages.
    Load,
    /// `system.process.count` by status.
    Processes,
    /// `system.uptime`.
    Uptime,
    /// `process.*` for the agent itself.
    Process,
    /// NVIDIA GPUs through NVML (`hw.gpu.*`, `hw.*`, `nvidia.gpu.*`): see [`crate::gpu`].
    Gpu,
}

impl Family {
    /// Every host family, in catalogue order.
    pub const ALL: [Family; 11] = [
        Family::Cpu,
        Family::Memory,
        Family::Paging,
        Family::Disk,
        Family::Filesystem,
        Family::Network,
        Family::Load,
        Family::Processes,
        Family::Uptime,
        Family::Process,
        Family::Gpu,
    ];

    /// The family's name in flags, env, TOML and the `source` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Paging => "paging",
            Self::Disk => "disk",
            Self::Filesystem => "filesystem",
            Self::Network => "network",
            Self::Load => "load",
            Self::Processes => "processes",
            Self::Uptime => "uptime",
            Self::Process => "process",
            Self::Gpu => "gpu",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Family::ALL
            .into_iter()
            .find(|f| f.as_str() == s.trim())
            .ok_or(())
    }
}

/// Who produces a metric: a host family, or the agent's self-monitoring (always on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A host family.
    Host(Family),
    /// The agent's own health.
    SelfMonitoring,
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy)]
pub struct MetricDesc {
    /// Metric name (semantic conventions, or one of [`names`]).
    pub name: &'static str,
    /// Instrument kind.
    pub instrument: Instrument,
    /// Integer or float values.
    pub number: Number,
    /// UCUM unit.
    pub unit: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Who produces it.
    pub origin: Origin,
    /// The attribute keys of its series.
    pub attributes: &'static [&'static str],
}

const fn m(
    name: &'static str,
    instrument: Instrument,
    number: Number,
    unit: &'static str,
    description: &'static str,
    origin: Origin,
    attributes: &'static [&'static str],
) -> MetricDesc {
    MetricDesc {
        name,
        instrument,
        number,
        unit,
        description,
        origin,
        attributes,
    }
}

const DISK_DIR: &[&str] = &[a::SYSTEM_DEVICE, a::DISK_IO_DIRECTION];
const FS: &[&str] = &[
    a::SYSTEM_DEVICE,
    a::SYSTEM_FILESYSTEM_MODE,
    a::SYSTEM_FILESYSTEM_MOUNTPOINT,
    a::SYSTEM_FILESYSTEM_TYPE,
];
const FS_STATE: &[&str] = &[
    a::SYSTEM_DEVICE,
    a::SYSTEM_FILESYSTEM_MODE,
    a::SYSTEM_FILESYSTEM_MOUNTPOINT,
    a::SYSTEM_FILESYSTEM_TYPE,
    a::SYSTEM_FILESYSTEM_STATE,
];
const NET: &[&str] = &[a::NETWORK_INTERFACE_NAME, a::NETWORK_IO_DIRECTION];

use Instrument::{Counter, Gauge, UpDownCounter};
use Number::{Float, Int};

const CPU: Origin = Origin::Host(Family::Cpu);
const MEMORY: Origin = Origin::Host(Family::Memory);
const PAGING: Origin = Origin::Host(Family::Paging);
const DISK: Origin = Origin::Host(Family::Disk);
const FILESYSTEM: Origin = Origin::Host(Family::Filesystem);
const NETWORK: Origin = Origin::Host(Family::Network);
const LOAD: Origin = Origin::Host(Family::Load);
const PROCESSES: Origin = Origin::Host(Family::Processes);
const UPTIME: Origin = Origin::Host(Family::Uptime);
const PROCESS: Origin = Origin::Host(Family::Process);
const SELF: Origin = Origin::SelfMonitoring;
const GPU: Origin = Origin::Host(Family::Gpu);

// GPU series: the identity of the GPU (or MIG instance), then the metric's own keys.
// `hw.parent` is set on MIG instances only.
use crate::gpu::names as g;
const GPU_ID: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_PARENT,
];
const GPU_TASK: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_GPU_TASK,
];
const GPU_TYPE: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_TYPE,
];
const GPU_DIR: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::NETWORK_IO_DIRECTION,
];
const GPU_SENSOR: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_SENSOR_LOCATION,
];
const GPU_LIMIT: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_SENSOR_LOCATION,
    a::HW_LIMIT_TYPE,
];
// `nvidia.gpu.ecc.counter` on the ECC series only.
const GPU_ERRORS: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_TYPE,
    a::ERROR_TYPE,
    g::ATTR_ECC_COUNTER,
];
const GPU_STATUS: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_PARENT,
    a::HW_TYPE,
    a::HW_STATE,
    a::HW_DRIVER_VERSION,
    a::HW_FIRMWARE_VERSION,
    a::HW_SERIAL_NUMBER,
];
const GPU_CLOCK: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_CLOCK,
];
const GPU_THROTTLE: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_THROTTLE_REASON,
];
const GPU_NVLINK: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_NVLINK,
    a::NETWORK_IO_DIRECTION,
];
const GPU_XID: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_XID_CODE,
];
const GPU_REMAP: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_REMAP_KIND,
];
// A fan is a component of its own (`hw.id` = `<gpu uuid>:fan<i>`), its GPU the `hw.parent`.
const GPU_FAN: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_PARENT,
];
const GPU_RETIRED: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_RETIREMENT_CAUSE,
];
const GPU_BASE: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
];
const GPU_NVLINK_ERRORS: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_NVLINK,
    a::ERROR_TYPE,
];
const GPU_PCIE: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    g::ATTR_PCIE_LINK_STATE,
];
const GPU_MIG: &[&str] = &[
    a::HW_ID,
    a::HW_NAME,
    a::HW_VENDOR,
    a::HW_MODEL,
    g::ATTR_GPU_INDEX,
    a::HW_PARENT,
    g::ATTR_MIG_PROFILE,
    g::ATTR_MIG_GPU_INSTANCE,
    g::ATTR_MIG_COMPUTE_INSTANCE,
];
// Attribution (issue 6): per-pod sums drop process.*; container.id and k8s.* are there
// when the process runs in a container or pod.
const GPU_PROC: &[&str] = &[
    a::PROCESS_PID,
    a::PROCESS_EXECUTABLE_NAME,
    a::HW_ID,
    g::ATTR_GPU_INDEX,
    a::CONTAINER_ID,
    a::K8S_NAMESPACE_NAME,
    a::K8S_POD_NAME,
    a::K8S_CONTAINER_NAME,
];
const GPU_PROC_TASK: &[&str] = &[
    a::PROCESS_PID,
    a::PROCESS_EXECUTABLE_NAME,
    a::HW_ID,
    g::ATTR_GPU_INDEX,
    a::CONTAINER_ID,
    a::K8S_NAMESPACE_NAME,
    a::K8S_POD_NAME,
    a::K8S_CONTAINER_NAME,
    a::HW_GPU_TASK,
];
const GPU_ALLOCATION: &[&str] = &[
    a::HW_ID,
    g::ATTR_GPU_INDEX,
    a::K8S_NAMESPACE_NAME,
    a::K8S_POD_NAME,
    a::K8S_CONTAINER_NAME,
];

/// Every metric the agent can emit.
#[rustfmt::skip]
pub static CATALOGUE: &[MetricDesc] = &[
    m(sc::SYSTEM_CPU_TIME, Counter, Float, "s", "CPU time per logical CPU and mode (/proc/stat)", CPU, &[a::CPU_MODE, a::CPU_LOGICAL_NUMBER]),
    m(sc::SYSTEM_CPU_UTILIZATION, Gauge, Float, "1", "Share of all CPU time spent in each mode over the last cycle", CPU, &[a::CPU_MODE]),
    m(sc::SYSTEM_CPU_FREQUENCY, Gauge, Float, "Hz", "Current frequency per logical CPU (where supported)", CPU, &[a::CPU_LOGICAL_NUMBER]),
    m(sc::SYSTEM_CPU_LOGICAL_COUNT, UpDownCounter, Int, "{cpu}", "Logical CPUs online", CPU, &[]),
    m(sc::SYSTEM_CPU_PHYSICAL_COUNT, UpDownCounter, Int, "{cpu}", "Physical CPU cores (where supported)", CPU, &[]),
    m(sc::SYSTEM_MEMORY_USAGE, UpDownCounter, Int, "By", "Memory in use per state", MEMORY, &[a::SYSTEM_MEMORY_STATE]),
    m(sc::SYSTEM_MEMORY_LIMIT, UpDownCounter, Int, "By", "Total memory", MEMORY, &[]),
    m(sc::SYSTEM_MEMORY_UTILIZATION, Gauge, Float, "1", "Share of memory per state", MEMORY, &[a::SYSTEM_MEMORY_STATE]),
    m(sc::SYSTEM_MEMORY_LINUX_AVAILABLE, UpDownCounter, Int, "By", "Memory available to new applications without swapping (MemAvailable)", MEMORY, &[]),
    m(sc::SYSTEM_PAGING_USAGE, UpDownCounter, Int, "By", "Swap space used and free", PAGING, &[a::SYSTEM_PAGING_STATE]),
    m(sc::SYSTEM_PAGING_UTILIZATION, Gauge, Float, "1", "Share of swap space used and free", PAGING, &[a::SYSTEM_PAGING_STATE]),
    m(sc::SYSTEM_PAGING_FAULTS, Counter, Int, "{fault}", "Page faults by type (/proc/vmstat)", PAGING, &[a::SYSTEM_PAGING_FAULT_TYPE]),
    m(sc::SYSTEM_PAGING_OPERATIONS, Counter, Int, "{operation}", "Pages swapped in and out (/proc/vmstat)", PAGING, &[a::SYSTEM_PAGING_DIRECTION]),
    m(sc::SYSTEM_DISK_IO, Counter, Int, "By", "Bytes read and written per disk", DISK, DISK_DIR),
    m(sc::SYSTEM_DISK_OPERATIONS, Counter, Int, "{operation}", "Completed reads and writes per disk", DISK, DISK_DIR),
    m(sc::SYSTEM_DISK_IO_TIME, Counter, Float, "s", "Time the disk had I/O in flight", DISK, &[a::SYSTEM_DEVICE]),
    m(sc::SYSTEM_DISK_OPERATION_TIME, Counter, Float, "s", "Time spent on reads and writes", DISK, DISK_DIR),
    m(sc::SYSTEM_DISK_MERGED, Counter, Int, "{operation}", "Adjacent requests merged", DISK, DISK_DIR),
    m(sc::SYSTEM_FILESYSTEM_USAGE, UpDownCounter, Int, "By", "Filesystem space used, free and reserved", FILESYSTEM, FS_STATE),
    m(sc::SYSTEM_FILESYSTEM_LIMIT, UpDownCounter, Int, "By", "Filesystem size", FILESYSTEM, FS),
    m(sc::SYSTEM_FILESYSTEM_UTILIZATION, Gauge, Float, "1", "Share of the filesystem in use", FILESYSTEM, FS),
    m(names::SYSTEM_FILESYSTEM_INODES_USAGE, UpDownCounter, Int, "{inode}", "Inodes used and free per filesystem with an inode table, from statvfs (where supported)", FILESYSTEM, FS_STATE),
    m(names::FILESYSTEM_STUCK, UpDownCounter, Int, "{mount}", "1 per mount whose statvfs is hung; it is skipped, without a call, until it answers (from the first error)", FILESYSTEM, &[a::SYSTEM_FILESYSTEM_MOUNTPOINT]),
    m(names::FILESYSTEM_TIMEOUTS, Counter, Int, "{call}", "statvfs calls abandoned past --statvfs-timeout (from the first error)", FILESYSTEM, &[]),
    m(names::FILESYSTEM_SKIPPED, Counter, Int, "{mount}", "Mounts not read in a cycle: stuck, budget (the family's time ran out), hung_limit (too many calls still hung) (from the first error)", FILESYSTEM, &[a::ERROR_TYPE]),
    m(sc::SYSTEM_NETWORK_IO, Counter, Int, "By", "Bytes received and sent per interface", NETWORK, NET),
    m(sc::SYSTEM_NETWORK_PACKET_COUNT, Counter, Int, "{packet}", "Packets received and sent per interface", NETWORK, NET),
    m(sc::SYSTEM_NETWORK_ERRORS, Counter, Int, "{error}", "Receive and transmit errors per interface", NETWORK, NET),
    m(sc::SYSTEM_NETWORK_PACKET_DROPPED, Counter, Int, "{packet}", "Packets dropped per interface", NETWORK, NET),
    m(names::SYSTEM_CPU_LOAD_AVERAGE_1M, Gauge, Float, "{thread}", "Load average over 1 minute", LOAD, &[]),
    m(names::SYSTEM_CPU_LOAD_AVERAGE_5M, Gauge, Float, "{thread}", "Load average over 5 minutes", LOAD, &[]),
    m(names::SYSTEM_CPU_LOAD_AVERAGE_15M, Gauge, Float, "{thread}", "Load average over 15 minutes", LOAD, &[]),
    m(sc::SYSTEM_PROCESS_COUNT, UpDownCounter, Int, "{process}", "Processes by status", PROCESSES, &[a::PROCESS_STATE]),
    m(sc::SYSTEM_PROCESS_CREATED, Counter, Int, "{process}", "Processes created since boot", PROCESSES, &[]),
    m(sc::SYSTEM_UPTIME, Gauge, Float, "s", "Time since boot", UPTIME, &[]),
    m(sc::PROCESS_CPU_TIME, Counter, Float, "s", "CPU time of the agent by mode", PROCESS, &[a::CPU_MODE]),
    m(sc::PROCESS_MEMORY_USAGE, UpDownCounter, Int, "By", "Resident memory of the agent", PROCESS, &[]),
    m(names::PROCESS_MEMORY_HEAP_USAGE, UpDownCounter, Int, "By", "Heap bytes the agent allocated and has not freed, as the allocator counts them (glibc mallinfo2; where supported)", PROCESS, &[]),
    m(sc::PROCESS_MEMORY_VIRTUAL, UpDownCounter, Int, "By", "Virtual memory of the agent", PROCESS, &[]),
    m(sc::PROCESS_THREAD_COUNT, UpDownCounter, Int, "{thread}", "Threads of the agent", PROCESS, &[]),
    m(sc::PROCESS_UNIX_FILE_DESCRIPTOR_COUNT, UpDownCounter, Int, "{file_descriptor}", "Open file descriptors of the agent (where supported)", PROCESS, &[]),
    m(sc::PROCESS_UPTIME, Gauge, Float, "s", "Time since the agent started", PROCESS, &[]),
    m(names::CYCLE_DURATION, Gauge, Float, "s", "Duration of the last collection cycle", SELF, &[]),
    m(names::CYCLES, Counter, Int, "{cycle}", "Collection cycles completed", SELF, &[]),
    m(names::ERRORS, Counter, Int, "{error}", "Source failures by source and error type; a failing source is skipped (from the first error)", SELF, &[names::ATTR_SOURCE, a::ERROR_TYPE]),
    m(names::EXPORT_FAILURES, Counter, Int, "{request}", "OTLP export requests that failed", SELF, &[names::ATTR_SIGNAL]),
    m(names::EXPORT_REJECTED, Counter, Int, "{point}", "Data points the collector rejected in partial_success answers (from the first error)", SELF, &[]),
    m(names::HTTP_CONNECTIONS_CLOSED, Counter, Int, "{connection}", "Connections the /metrics and /healthz endpoint closed for a limit: write_timeout (a client that does not read), http_error (a request head too slow, too large or malformed), request_body (from the first error)", SELF, &[names::ATTR_REASON]),
    m(names::SERIES, Gauge, Int, "{series}", "Series in the last snapshot", SELF, &[]),
    m(names::SERIES_OVERFLOW, Counter, Int, "{series}", "Series beyond their instrument's cardinality limit, which the SDK folds into `otel.metric.overflow`, summed over cycles (from the first error)", SELF, &[names::ATTR_METRIC_NAME]),
    m(names::SERIES_NON_FINITE, Counter, Int, "{series}", "Readings dropped because their value was NaN or infinite (neither exporter can carry them), summed over cycles (from the first error)", SELF, &[names::ATTR_METRIC_NAME]),
    m(sc::HW_GPU_UTILIZATION, Gauge, Float, "1", "GPU busy share per task: general (utilization_rates().gpu), encoder, decoder", GPU, GPU_TASK),
    m(sc::HW_GPU_MEMORY_USAGE, UpDownCounter, Int, "By", "GPU memory in use (memory_info().used), per GPU and MIG instance", GPU, GPU_ID),
    m(sc::HW_GPU_MEMORY_LIMIT, UpDownCounter, Int, "By", "GPU memory size (memory_info().total), per GPU and MIG instance", GPU, GPU_ID),
    m(sc::HW_GPU_MEMORY_UTILIZATION, Gauge, Float, "1", "GPU memory used ÷ total (not the memory controller's busy share)", GPU, GPU_ID),
    m(sc::HW_GPU_IO, Counter, Int, "By", "PCIe bytes per direction (field values; where supported)", GPU, GPU_DIR),
    m(sc::HW_POWER, Gauge, Float, "W", "GPU power draw (power_usage() mW ÷ 1000)", GPU, GPU_TYPE),
    m(sc::HW_ENERGY, Counter, Float, "J", "GPU energy since driver load (total_energy_consumption() mJ ÷ 1000)", GPU, GPU_TYPE),
    m(sc::HW_TEMPERATURE, Gauge, Float, "Cel", "GPU die and memory temperature (memory: where supported)", GPU, GPU_SENSOR),
    m(sc::HW_TEMPERATURE_LIMIT, Gauge, Float, "Cel", "Slowdown (throttled) and shutdown (high.critical) temperatures", GPU, GPU_LIMIT),
    m(sc::HW_ERRORS, Counter, Int, "{error}", "ECC corrected/uncorrected (volatile and aggregate, nvidia.gpu.ecc.counter), PCIe replays, Xid events (from 0 at discovery) per GPU", GPU, GPU_ERRORS),
    m(sc::HW_STATUS, UpDownCounter, Int, "1", "1 for the GPU's state (ok, degraded, failed, predicted_failure), 0 for the others; driver, VBIOS and serial on whole GPUs", GPU, GPU_STATUS),
    m(g::NVIDIA_GPU_CLOCK_FREQUENCY, Gauge, Float, "Hz", "Graphics, SM, memory and video clocks (clock_info() MHz × 1e6)", GPU, GPU_CLOCK),
    m(g::NVIDIA_GPU_POWER_LIMIT, Gauge, Float, "W", "Enforced power limit (enforced_power_limit() mW ÷ 1000)", GPU, GPU_ID),
    m(g::NVIDIA_GPU_MEMORY_CONTROLLER_UTILIZATION, Gauge, Float, "1", "Memory controller busy share (utilization_rates().memory ÷ 100)", GPU, GPU_ID),
    m(g::NVIDIA_GPU_THROTTLE_ACTIVE, Gauge, Int, "1", "1 while a clock throttle reason is active; one series per reason of a fixed set", GPU, GPU_THROTTLE),
    m(g::NVIDIA_GPU_THROTTLE_TIME, Counter, Float, "s", "Time throttled per reason (violation_status() ns ÷ 1e9)", GPU, GPU_THROTTLE),
    m(g::NVIDIA_GPU_NVLINK_IO, Counter, Int, "By", "NVLink data bytes per link and direction (where supported)", GPU, GPU_NVLINK),
    m(g::NVIDIA_GPU_XID_EVENTS, Counter, Int, "{event}", "Critical Xid events per code, from an NVML event set; the codes to act on start at 0 at discovery, others at their first event", GPU, GPU_XID),
    m(g::NVIDIA_GPU_XID_LAST_TIME, Gauge, Float, "s", "Unix time of the last Xid event per code (from the first error)", GPU, GPU_XID),
    m(g::NVIDIA_GPU_MEMORY_REMAPPED_ROWS, UpDownCounter, Int, "{row}", "Remapped memory rows per kind (where supported)", GPU, GPU_REMAP),
    m(g::NVIDIA_GPU_SM_ACTIVITY, Gauge, Float, "1", "GPM: share of time SMs were active, per GPU and MIG instance (where supported)", GPU, GPU_ID),
    m(g::NVIDIA_GPU_SM_OCCUPANCY, Gauge, Float, "1", "GPM: SM occupancy (where supported)", GPU, GPU_ID),
    m(g::NVIDIA_GPU_TENSOR_ACTIVITY, Gauge, Float, "1", "GPM: share of time a tensor pipe was active (where supported)", GPU, GPU_ID),
    m(g::NVIDIA_GPU_DRAM_ACTIVITY, Gauge, Float, "1", "GPM: DRAM bandwidth used ÷ peak (where supported)", GPU, GPU_ID),
    m(sc::HW_FAN_SPEED_RATIO, Gauge, Float, "1", "Fan speed ÷ its maximum, per fan of a GPU (fan_speed(); where supported)", GPU, GPU_FAN),
    m(g::NVIDIA_GPU_PERFORMANCE_STATE, Gauge, Int, "1", "Performance state, 0 (P0, fastest) to 15", GPU, GPU_ID),
    m(g::NVIDIA_GPU_MIG_INFO, UpDownCounter, Int, "1", "1 per MIG instance, with its parent, profile and instance ids (where supported)", GPU, GPU_MIG),
    m(g::PROCESS_GPU_MEMORY_USAGE, UpDownCounter, Int, "By", "GPU memory per pod and container (sums, the default), or per process with --per-process (running_compute_processes())", GPU, GPU_PROC),
    m(g::PROCESS_GPU_UTILIZATION, Gauge, Float, "1", "GPU use per pod and container (sums, at most 1), or per process with --per-process, by task (process_utilization_stats())", GPU, GPU_PROC_TASK),
    m(names::GPU_ALLOCATION, UpDownCounter, Int, "1", "1 per GPU and container the kubelet gave it to, busy or idle; needs the kubelet pod-resources socket (where supported)", GPU, GPU_ALLOCATION),
    m(names::ATTRIBUTION_OVERFLOW, Counter, Int, "{series}", "Attributed GPU series folded into `otel.metric.overflow` series by the cap (from the first error)", GPU, &[]),
    m(names::ATTRIBUTION_ERRORS, Counter, Int, "{error}", "Attribution problems: malformed cgroup files, kubelet timeouts and errors, unknown device IDs (from the first error)", GPU, &[a::ERROR_TYPE]),
    m(g::NVML_TIMEOUTS, Counter, Int, "{call}", "NVML calls abandoned past their deadline; the cycle went on without them (from the first error)", GPU, &[g::ATTR_NVML_CALL]),
    m(g::NVML_ERRORS, Counter, Int, "{error}", "NVML calls that failed, NOT_SUPPORTED excluded (from the first error)", GPU, &[g::ATTR_NVML_CALL, a::ERROR_TYPE]),
    m(g::GPU_DEVICES, UpDownCounter, Int, "{device}", "GPUs and MIG instances known to the NVML session", GPU, &[]),
    m(g::NVIDIA_GPU_MEMORY_RETIRED_PAGES, UpDownCounter, Int, "{page}", "Memory pages retired after single- and double-bit ECC errors (RETIRED_SBE/DBE field values; where supported)", GPU, GPU_RETIRED),
    m(g::NVIDIA_GPU_MEMORY_REMAP_FAILURE, Gauge, Int, "1", "1 when a row remapping failed and the GPU needs servicing (REMAPPED_FAILURE field value; where supported)", GPU, GPU_BASE),
    m(g::NVIDIA_GPU_NVLINK_ERRORS, Counter, Int, "{error}", "NVLink data-link errors per link: crc_flit, crc_data, replay, recovery (error_counter(); where supported)", GPU, GPU_NVLINK_ERRORS),
    m(g::NVIDIA_GPU_PCIE_LINK_GENERATION, Gauge, Int, "1", "PCIe link generation, current and max (where supported)", GPU, GPU_PCIE),
    m(g::NVIDIA_GPU_PCIE_LINK_WIDTH, Gauge, Int, "1", "PCIe link width in lanes, current and max (where supported)", GPU, GPU_PCIE),
    m(g::NVIDIA_GPU_CLOCK_FREQUENCY_MAX, Gauge, Float, "Hz", "Highest graphics, SM, memory and video clocks (max_clock_info() MHz × 1e6; where supported)", GPU, GPU_CLOCK),
    m(g::NVIDIA_GPU_CLOCK_FREQUENCY_APPLICATION, Gauge, Float, "Hz", "Application clocks (applications_clock() MHz × 1e6; where supported)", GPU, GPU_CLOCK),
    m(g::GPU_SOURCE_STATE, UpDownCounter, Int, "{state}", "1 for the GPU source's state (up, no_library, no_driver, init_failed, hung), 0 for the others", GPU, &[g::ATTR_SOURCE_STATE]),
];

/// Marks entries that a platform may not provide; the catalogue test tolerates their absence.
pub const WHERE_SUPPORTED: &str = "(where supported)";

/// Marks entries whose series only appear once something happened.
pub const FROM_THE_FIRST_ERROR: &str = "(from the first error)";

/// The catalogue as a markdown table, as published in `CATALOGUE.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "| name | instrument | unit | attributes | family | description |\n|---|---|---|---|---|---|\n",
    );
    for d in CATALOGUE {
        let attrs = d
            .attributes
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let family = match d.origin {
            Origin::Host(f) => f.as_str(),
            Origin::SelfMonitoring => "self",
        };
        out.push_str(&format!(
            "| `{}` | {} | `{}` | {} | {} | {} |\n",
            d.name, d.instrument, d.unit, attrs, family, d.description
        ));
    }
    out
}

/// The catalogue entry for `name`.
pub fn find(name: &str) -> Option<&'static MetricDesc> {
    CATALOGUE.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_are_unique() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|d| d.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
    }

    #[test]
    fn catalogue_md_carries_the_static_catalogue() {
        let doc = include_str!("../CATALOGUE.md");
        assert!(
            doc.contains(&markdown()),
            "CATALOGUE.md is stale: replace its table with the output of \
             `cargo run -p otel-gpu-receiver -- --catalogue`"
        );
    }

    #[test]
    fn every_family_has_at_least_one_metric() {
        for f in Family::ALL {
            assert!(
                CATALOGUE.iter().any(|d| d.origin == Origin::Host(f)),
                "{f} has no metric"
            );
        }
    }
}
