//! The NVML calls the GPU source makes, one bit each in a device's memo.

/// Every per-device NVML call the session makes in a cycle, in the order it makes them
/// (the health calls of every device come first, see [`Call::is_health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Call {
    Utilization,
    Encoder,
    Decoder,
    Memory,
    Power,
    Energy,
    Temperature,
    TemperatureSlowdown,
    TemperatureShutdown,
    EccCorrected,
    EccUncorrected,
    PcieReplay,
    ClockGraphics,
    ClockSm,
    ClockMemory,
    ClockVideo,
    PowerLimit,
    Throttle,
    ViolationPower,
    ViolationThermal,
    ViolationSyncBoost,
    ViolationBoardLimit,
    ViolationLowUtilization,
    ViolationReliability,
    ViolationAppClocks,
    ViolationBaseClocks,
    Fans,
    PerformanceState,
    Fields,
    NvLink,
    PagesPending,
    Gpm,
    Processes,
    ProcessUtilization,
    EccCorrectedAggregate,
    EccUncorrectedAggregate,
    ClockMax,
    ClockApplication,
    PcieLink,
    /// Not a step of its own: the MPS client list, made inside [`Call::Processes`]. Its
    /// bit remembers a NOT_SUPPORTED answer.
    MpsProcesses,
    /// Not a step of its own: the NVLink error counters, read inside [`Call::NvLink`].
    NvLinkErrors,
}

impl Call {
    /// The calls made for a whole GPU.
    pub(crate) const GPU: &[Call] = &[
        Call::Utilization,
        Call::Encoder,
        Call::Decoder,
        Call::Memory,
        Call::Power,
        Call::Energy,
        Call::Temperature,
        Call::TemperatureSlowdown,
        Call::TemperatureShutdown,
        Call::EccCorrected,
        Call::EccUncorrected,
        Call::EccCorrectedAggregate,
        Call::EccUncorrectedAggregate,
        Call::PcieReplay,
        Call::PcieLink,
        Call::ClockGraphics,
        Call::ClockSm,
        Call::ClockMemory,
        Call::ClockVideo,
        Call::ClockMax,
        Call::ClockApplication,
        Call::PowerLimit,
        Call::Throttle,
        Call::ViolationPower,
        Call::ViolationThermal,
        Call::ViolationSyncBoost,
        Call::ViolationBoardLimit,
        Call::ViolationLowUtilization,
        Call::ViolationReliability,
        Call::ViolationAppClocks,
        Call::ViolationBaseClocks,
        Call::Fans,
        Call::PerformanceState,
        Call::Fields,
        Call::NvLink,
        Call::PagesPending,
        Call::Gpm,
        Call::Processes,
        Call::ProcessUtilization,
    ];

    /// The calls made for a MIG instance: its memory and its GPM activity.
    pub(crate) const MIG: &[Call] = &[Call::Memory, Call::Gpm];

    /// Bit of this call in a device's memo masks.
    pub(crate) fn bit(self) -> u64 {
        1u64 << (self as u8)
    }

    /// Whether the call reads per-process data (made only with `--per-process`).
    pub(crate) fn per_process(self) -> bool {
        matches!(self, Call::Processes | Call::ProcessUtilization)
    }

    /// The calls that decide `hw.status` (lost, degraded, predicted failure): a cycle
    /// makes them for every device before any other call, so that a cycle cut short by
    /// its budget still reports every device's health.
    pub(crate) fn is_health(self, mig: bool) -> bool {
        if mig {
            self == Call::Memory
        } else {
            matches!(self, Call::Throttle | Call::Fields | Call::PagesPending)
        }
    }

    /// The NVML function behind the call: the `nvml.call` attribute of self-metrics.
    pub(crate) fn nvml_name(self) -> &'static str {
        match self {
            Call::Utilization => "nvmlDeviceGetUtilizationRates",
            Call::Encoder => "nvmlDeviceGetEncoderUtilization",
            Call::Decoder => "nvmlDeviceGetDecoderUtilization",
            Call::Memory => "nvmlDeviceGetMemoryInfo_v2",
            Call::Power => "nvmlDeviceGetPowerUsage",
            Call::Energy => "nvmlDeviceGetTotalEnergyConsumption",
            Call::Temperature => "nvmlDeviceGetTemperature",
            Call::TemperatureSlowdown | Call::TemperatureShutdown => {
                "nvmlDeviceGetTemperatureThreshold"
            }
            Call::EccCorrected
            | Call::EccUncorrected
            | Call::EccCorrectedAggregate
            | Call::EccUncorrectedAggregate => "nvmlDeviceGetTotalEccErrors",
            Call::PcieReplay => "nvmlDeviceGetPcieReplayCounter",
            Call::PcieLink => "nvmlDeviceGetCurrPcieLinkGeneration",
            Call::ClockGraphics | Call::ClockSm | Call::ClockMemory | Call::ClockVideo => {
                "nvmlDeviceGetClockInfo"
            }
            Call::ClockMax => "nvmlDeviceGetMaxClockInfo",
            Call::ClockApplication => "nvmlDeviceGetApplicationsClock",
            Call::PowerLimit => "nvmlDeviceGetEnforcedPowerLimit",
            Call::Throttle => "nvmlDeviceGetCurrentClocksThrottleReasons",
            Call::ViolationPower
            | Call::ViolationThermal
            | Call::ViolationSyncBoost
            | Call::ViolationBoardLimit
            | Call::ViolationLowUtilization
            | Call::ViolationReliability
            | Call::ViolationAppClocks
            | Call::ViolationBaseClocks => "nvmlDeviceGetViolationStatus",
            Call::Fans => "nvmlDeviceGetFanSpeed_v2",
            Call::PerformanceState => "nvmlDeviceGetPerformanceState",
            Call::Fields | Call::NvLink => FIELD_VALUES,
            Call::PagesPending => "nvmlDeviceGetRetiredPagesPendingStatus",
            Call::Gpm => "nvmlGpmSampleGet",
            Call::Processes => "nvmlDeviceGetComputeRunningProcesses_v3",
            Call::ProcessUtilization => "nvmlDeviceGetProcessUtilization",
            Call::MpsProcesses => "nvmlDeviceGetMPSComputeRunningProcesses_v3",
            Call::NvLinkErrors => NVLINK_ERROR_COUNTER,
        }
    }
}

pub(super) const FIELD_VALUES: &str = "nvmlDeviceGetFieldValues";
pub(super) const NVLINK_ERROR_COUNTER: &str = "nvmlDeviceGetNvLinkErrorCounter";
