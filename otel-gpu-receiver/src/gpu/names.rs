//! GPU metric and attribute names that the semantic conventions do not define.
//!
//! Names the conventions do define (`hw.gpu.*`, `hw.*`, `process.pid`, ...) come from
//! `opentelemetry-semantic-conventions`; only these are ours, and they live here alone.

/// SM, memory, graphics and video clocks, in Hz.
pub const NVIDIA_GPU_CLOCK_FREQUENCY: &str = "nvidia.gpu.clock.frequency";
/// The enforced power limit, in W.
pub const NVIDIA_GPU_POWER_LIMIT: &str = "nvidia.gpu.power.limit";
/// NVML's memory-controller busy share (not the share of memory in use).
pub const NVIDIA_GPU_MEMORY_CONTROLLER_UTILIZATION: &str =
    "nvidia.gpu.memory_controller.utilization";
/// 1 while a clock throttle reason is active, one series per reason.
pub const NVIDIA_GPU_THROTTLE_ACTIVE: &str = "nvidia.gpu.throttle.active";
/// Time spent throttled per reason (NVML violation counters), in s.
pub const NVIDIA_GPU_THROTTLE_TIME: &str = "nvidia.gpu.throttle.time";
/// NVLink data bytes per link and direction.
pub const NVIDIA_GPU_NVLINK_IO: &str = "nvidia.gpu.nvlink.io";
/// Critical Xid events per code.
pub const NVIDIA_GPU_XID_EVENTS: &str = "nvidia.gpu.xid.events";
/// Unix time of the last Xid event per code, in s.
pub const NVIDIA_GPU_XID_LAST_TIME: &str = "nvidia.gpu.xid.last_time";
/// Remapped memory rows per kind.
pub const NVIDIA_GPU_MEMORY_REMAPPED_ROWS: &str = "nvidia.gpu.memory.remapped_rows";
/// GPM: share of time SMs were active.
pub const NVIDIA_GPU_SM_ACTIVITY: &str = "nvidia.gpu.sm.activity";
/// GPM: SM occupancy (resident warps over the maximum).
pub const NVIDIA_GPU_SM_OCCUPANCY: &str = "nvidia.gpu.sm.occupancy";
/// GPM: share of time any tensor pipe was active.
pub const NVIDIA_GPU_TENSOR_ACTIVITY: &str = "nvidia.gpu.tensor.activity";
/// GPM: DRAM bandwidth used over the peak.
pub const NVIDIA_GPU_DRAM_ACTIVITY: &str = "nvidia.gpu.dram.activity";
/// Performance state (P0 = 0 is the fastest).
pub const NVIDIA_GPU_PERFORMANCE_STATE: &str = "nvidia.gpu.performance_state";
/// 1 per MIG instance, with its profile and instance ids.
pub const NVIDIA_GPU_MIG_INFO: &str = "nvidia.gpu.mig.info";
/// GPU memory used by a process.
pub const PROCESS_GPU_MEMORY_USAGE: &str = "process.gpu.memory.usage";
/// GPU utilisation of a process.
pub const PROCESS_GPU_UTILIZATION: &str = "process.gpu.utilization";

/// Self-metric: NVML calls that ran past their deadline and were abandoned.
pub const NVML_TIMEOUTS: &str = "otel_gpu_receiver.nvml.timeouts";
/// Self-metric: NVML calls that failed (NOT_SUPPORTED excluded: it is remembered, not an error).
pub const NVML_ERRORS: &str = "otel_gpu_receiver.nvml.errors";
/// Self-metric: GPUs (and MIG instances) known to the session.
pub const GPU_DEVICES: &str = "otel_gpu_receiver.gpu.devices";

/// Attribute: the NVML index of a GPU (the parent's index for a MIG instance).
pub const ATTR_GPU_INDEX: &str = "gpu.index";
/// Attribute: which clock (`graphics`, `sm`, `memory`, `video`).
pub const ATTR_CLOCK: &str = "nvidia.gpu.clock";
/// Attribute: a throttle reason from a fixed set.
pub const ATTR_THROTTLE_REASON: &str = "nvidia.gpu.throttle.reason";
/// Attribute: an NVLink link number.
pub const ATTR_NVLINK: &str = "nvidia.gpu.nvlink.link";
/// Attribute: an Xid code.
pub const ATTR_XID_CODE: &str = "nvidia.gpu.xid.code";
/// Attribute: remapped-row kind (`correctable`, `uncorrectable`).
pub const ATTR_REMAP_KIND: &str = "nvidia.gpu.memory.remap.kind";
/// Attribute: MIG profile, such as `3g.40gb`.
pub const ATTR_MIG_PROFILE: &str = "nvidia.gpu.mig.profile";
/// Attribute: MIG GPU instance id.
pub const ATTR_MIG_GPU_INSTANCE: &str = "nvidia.gpu.mig.gpu_instance_id";
/// Attribute: MIG compute instance id.
pub const ATTR_MIG_COMPUTE_INSTANCE: &str = "nvidia.gpu.mig.compute_instance_id";
/// Attribute: the NVML function a self-metric is about.
pub const ATTR_NVML_CALL: &str = "nvml.call";

/// Pages retired (blacklisted) after ECC errors, per cause.
pub const NVIDIA_GPU_MEMORY_RETIRED_PAGES: &str = "nvidia.gpu.memory.retired_pages";
/// 1 when a row remapping failed (the GPU needs servicing), else 0.
pub const NVIDIA_GPU_MEMORY_REMAP_FAILURE: &str = "nvidia.gpu.memory.remap_failure";
/// NVLink data-link errors per link and kind.
pub const NVIDIA_GPU_NVLINK_ERRORS: &str = "nvidia.gpu.nvlink.errors";
/// Self-metric: the GPU source's state, 1 for the current one and 0 for the others.
pub const GPU_SOURCE_STATE: &str = "otel_gpu_receiver.gpu.source.state";

/// Attribute: why pages were retired (`single_bit`, `double_bit`).
pub const ATTR_RETIREMENT_CAUSE: &str = "nvidia.gpu.memory.retirement.cause";
/// Attribute: which ECC counter (`volatile`: since the driver loaded; `aggregate`: the
/// GPU's lifetime, kept in its infoROM).
pub const ATTR_ECC_COUNTER: &str = "nvidia.gpu.ecc.counter";
/// Attribute: the GPU source's state (`up`, `no_library`, `no_driver`, `init_failed`, `hung`).
pub const ATTR_SOURCE_STATE: &str = "state";
/// PCIe link generation, current and maximum.
pub const NVIDIA_GPU_PCIE_LINK_GENERATION: &str = "nvidia.gpu.pcie.link.generation";
/// PCIe link width in lanes, current and maximum.
pub const NVIDIA_GPU_PCIE_LINK_WIDTH: &str = "nvidia.gpu.pcie.link.width";
/// The highest clocks the GPU can run at, in Hz.
pub const NVIDIA_GPU_CLOCK_FREQUENCY_MAX: &str = "nvidia.gpu.clock.frequency.max";
/// The application (target) clocks, in Hz.
pub const NVIDIA_GPU_CLOCK_FREQUENCY_APPLICATION: &str = "nvidia.gpu.clock.frequency.application";
/// Attribute: which PCIe link value (`current`, `max`).
pub const ATTR_PCIE_LINK_STATE: &str = "nvidia.gpu.pcie.link.state";
