//! One NVML call per [`Call`]: it reads a device and turns the reading into points,
//! converted to the catalogue's units (mW → W, mJ → J, MHz → Hz, % → ratio).
//!
//! A call that fails adds nothing: the cycle omits what failed and never emits 0 for it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformancePolicy, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::{FieldValueSample, ProcessUtilizationSample};
use nvml_wrapper::structs::device::FieldId;
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as attr;
use opentelemetry_semantic_conventions::metric as sc;

use super::names::*;
use super::session::{Ctx, DeviceEntry};
use crate::snapshot::Points;

/// Every per-device NVML call the session makes in a cycle, in the order it makes them.
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
}

impl Call {
    /// The calls made for a whole GPU.
    pub(crate) const GPU: [Call; 34] = [
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
        Call::PcieReplay,
        Call::ClockGraphics,
        Call::ClockSm,
        Call::ClockMemory,
        Call::ClockVideo,
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
    pub(crate) const MIG: [Call; 2] = [Call::Memory, Call::Gpm];

    /// Bit of this call in a device's memo masks.
    pub(crate) fn bit(self) -> u64 {
        1u64 << (self as u8)
    }

    /// Whether the call reads per-process data (made only with `--per-process`).
    pub(crate) fn per_process(self) -> bool {
        matches!(self, Call::Processes | Call::ProcessUtilization)
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
            Call::EccCorrected | Call::EccUncorrected => "nvmlDeviceGetTotalEccErrors",
            Call::PcieReplay => "nvmlDeviceGetPcieReplayCounter",
            Call::ClockGraphics | Call::ClockSm | Call::ClockMemory | Call::ClockVideo => {
                "nvmlDeviceGetClockInfo"
            }
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
            Call::Fields | Call::NvLink => "nvmlDeviceGetFieldValues",
            Call::PagesPending => "nvmlDeviceGetRetiredPagesPendingStatus",
            Call::Gpm => "nvmlGpmSampleGet",
            Call::Processes => "nvmlDeviceGetComputeRunningProcesses_v3",
            Call::ProcessUtilization => "nvmlDeviceGetProcessUtilization",
        }
    }
}

/// What one call produced: points, plus the health hints it saw.
#[derive(Debug, Default)]
pub(crate) struct StepOut {
    pub(crate) points: Points,
    /// Pending page retirement or row remap: `predicted_failure`.
    pub(crate) predicted_failure: bool,
    /// Hardware slowdown is active: `degraded`.
    pub(crate) degraded: bool,
}

/// The fixed set of throttle reasons: one `nvidia.gpu.throttle.active` series each.
const THROTTLE_REASONS: [(ThrottleReasons, &str); 9] = [
    (ThrottleReasons::GPU_IDLE, "gpu_idle"),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        "applications_clocks_setting",
    ),
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        "hw_power_brake_slowdown",
    ),
    (
        ThrottleReasons::DISPLAY_CLOCK_SETTING,
        "display_clock_setting",
    ),
];

// Field ids (nvml-wrapper-sys bindings, canonical v12 numbering).
const FI_MEMORY_TEMP: u32 = 82;
const FI_NVLINK_LINK_COUNT: u32 = 91;
const FI_NVLINK_THROUGHPUT_DATA_TX: u32 = 138;
const FI_NVLINK_THROUGHPUT_DATA_RX: u32 = 139;
const FI_REMAPPED_COR: u32 = 142;
const FI_REMAPPED_UNC: u32 = 143;
const FI_REMAPPED_PENDING: u32 = 144;
const FI_PCIE_COUNT_TX_BYTES: u32 = 197;
const FI_PCIE_COUNT_RX_BYTES: u32 = 198;

fn pct(v: u32) -> f64 {
    f64::from(v) / 100.0
}

fn sample_u64(s: &Result<FieldValueSample, NvmlError>) -> Option<u64> {
    match s.as_ref().ok()?.value.as_ref().ok()? {
        SampleValue::U32(v) => Some(u64::from(*v)),
        SampleValue::U64(v) => Some(*v),
        SampleValue::I64(v) => u64::try_from(*v).ok(),
        SampleValue::F64(v) if *v >= 0.0 => Some(*v as u64),
        SampleValue::F64(_) => None,
    }
}

/// Runs `call` on `dev` and appends what it read to `out`.
///
/// # Errors
/// The NVML error of the call; `out` then holds nothing from it.
pub(crate) fn run(
    call: Call,
    dev: &DeviceEntry,
    ctx: &Ctx,
    out: &mut StepOut,
) -> Result<(), NvmlError> {
    let d = &dev.handle;
    let p = &mut out.points;
    match call {
        Call::Utilization => {
            let u = d.utilization_rates()?;
            p.push(
                sc::HW_GPU_UTILIZATION,
                dev.attrs(&[KeyValue::new(attr::HW_GPU_TASK, "general")]),
                pct(u.gpu),
            );
            p.push(
                NVIDIA_GPU_MEMORY_CONTROLLER_UTILIZATION,
                dev.attrs(&[]),
                pct(u.memory),
            );
        }
        Call::Encoder => {
            let u = d.encoder_utilization()?;
            p.push(
                sc::HW_GPU_UTILIZATION,
                dev.attrs(&[KeyValue::new(attr::HW_GPU_TASK, "encoder")]),
                pct(u.utilization),
            );
        }
        Call::Decoder => {
            let u = d.decoder_utilization()?;
            p.push(
                sc::HW_GPU_UTILIZATION,
                dev.attrs(&[KeyValue::new(attr::HW_GPU_TASK, "decoder")]),
                pct(u.utilization),
            );
        }
        Call::Memory => {
            let m = d.memory_info()?;
            p.push(sc::HW_GPU_MEMORY_USAGE, dev.attrs(&[]), m.used);
            p.push(sc::HW_GPU_MEMORY_LIMIT, dev.attrs(&[]), m.total);
            if m.total > 0 {
                p.push(
                    sc::HW_GPU_MEMORY_UTILIZATION,
                    dev.attrs(&[]),
                    m.used as f64 / m.total as f64,
                );
            }
        }
        Call::Power => {
            let mw = d.power_usage()?;
            p.push(
                sc::HW_POWER,
                dev.attrs(&[KeyValue::new(attr::HW_TYPE, "gpu")]),
                f64::from(mw) / 1000.0,
            );
        }
        Call::Energy => {
            let mj = d.total_energy_consumption()?;
            p.push(
                sc::HW_ENERGY,
                dev.attrs(&[KeyValue::new(attr::HW_TYPE, "gpu")]),
                mj as f64 / 1000.0,
            );
        }
        Call::Temperature => {
            let t = d.temperature(TemperatureSensor::Gpu)?;
            p.push(
                sc::HW_TEMPERATURE,
                dev.attrs(&[KeyValue::new(attr::HW_SENSOR_LOCATION, "gpu")]),
                f64::from(t),
            );
        }
        Call::TemperatureSlowdown | Call::TemperatureShutdown => {
            let (which, limit) = if call == Call::TemperatureSlowdown {
                (TemperatureThreshold::Slowdown, "throttled")
            } else {
                (TemperatureThreshold::Shutdown, "high.critical")
            };
            let t = d.temperature_threshold(which)?;
            p.push(
                sc::HW_TEMPERATURE_LIMIT,
                dev.attrs(&[
                    KeyValue::new(attr::HW_SENSOR_LOCATION, "gpu"),
                    KeyValue::new(attr::HW_LIMIT_TYPE, limit),
                ]),
                f64::from(t),
            );
        }
        Call::EccCorrected | Call::EccUncorrected => {
            let (kind, name) = if call == Call::EccCorrected {
                (MemoryError::Corrected, "corrected")
            } else {
                (MemoryError::Uncorrected, "uncorrected")
            };
            let n = d.total_ecc_errors(kind, EccCounter::Volatile)?;
            p.push(sc::HW_ERRORS, dev.error_attrs(name), n);
        }
        Call::PcieReplay => {
            let n = d.pcie_replay_counter()?;
            p.push(sc::HW_ERRORS, dev.error_attrs("pcie_replay"), u64::from(n));
        }
        Call::ClockGraphics | Call::ClockSm | Call::ClockMemory | Call::ClockVideo => {
            let (clock, name) = match call {
                Call::ClockGraphics => (Clock::Graphics, "graphics"),
                Call::ClockSm => (Clock::SM, "sm"),
                Call::ClockMemory => (Clock::Memory, "memory"),
                _ => (Clock::Video, "video"),
            };
            let mhz = d.clock_info(clock)?;
            p.push(
                NVIDIA_GPU_CLOCK_FREQUENCY,
                dev.attrs(&[KeyValue::new(ATTR_CLOCK, name)]),
                f64::from(mhz) * 1e6,
            );
        }
        Call::PowerLimit => {
            let mw = d.enforced_power_limit()?;
            p.push(
                NVIDIA_GPU_POWER_LIMIT,
                dev.attrs(&[]),
                f64::from(mw) / 1000.0,
            );
        }
        Call::Throttle => {
            let r = d.current_throttle_reasons()?;
            for (flag, name) in THROTTLE_REASONS {
                p.push(
                    NVIDIA_GPU_THROTTLE_ACTIVE,
                    dev.attrs(&[KeyValue::new(ATTR_THROTTLE_REASON, name)]),
                    i64::from(r.contains(flag)),
                );
            }
            out.degraded = r.intersects(
                ThrottleReasons::HW_SLOWDOWN
                    | ThrottleReasons::HW_THERMAL_SLOWDOWN
                    | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            );
        }
        Call::ViolationPower
        | Call::ViolationThermal
        | Call::ViolationSyncBoost
        | Call::ViolationBoardLimit
        | Call::ViolationLowUtilization
        | Call::ViolationReliability
        | Call::ViolationAppClocks
        | Call::ViolationBaseClocks => {
            let (policy, name) = match call {
                Call::ViolationPower => (PerformancePolicy::Power, "power"),
                Call::ViolationThermal => (PerformancePolicy::Thermal, "thermal"),
                Call::ViolationSyncBoost => (PerformancePolicy::SyncBoost, "sync_boost"),
                Call::ViolationBoardLimit => (PerformancePolicy::BoardLimit, "board_limit"),
                Call::ViolationLowUtilization => {
                    (PerformancePolicy::LowUtilization, "low_utilization")
                }
                Call::ViolationReliability => (PerformancePolicy::Reliability, "reliability"),
                Call::ViolationAppClocks => (PerformancePolicy::TotalAppClocks, "total_app_clocks"),
                _ => (PerformancePolicy::TotalBaseClocks, "total_base_clocks"),
            };
            let v = d.violation_status(policy)?;
            p.push(
                NVIDIA_GPU_THROTTLE_TIME,
                dev.attrs(&[KeyValue::new(ATTR_THROTTLE_REASON, name)]),
                v.violation_time as f64 / 1e9,
            );
        }
        Call::Fans => {
            let n = d.num_fans()?;
            for i in 0..n {
                // One fan failing does not hide the others.
                if let Ok(s) = d.fan_speed(i) {
                    p.push(
                        NVIDIA_GPU_FAN_SPEED,
                        dev.attrs(&[KeyValue::new(ATTR_FAN, i64::from(i))]),
                        pct(s),
                    );
                }
            }
        }
        Call::PerformanceState => {
            let s = d.performance_state()?;
            let n = s.as_c();
            // 32 is NVML's "unknown": omit it rather than report a made-up state.
            if n <= 15 {
                p.push(NVIDIA_GPU_PERFORMANCE_STATE, dev.attrs(&[]), i64::from(n));
            }
        }
        Call::Fields => {
            let ids = [
                FI_MEMORY_TEMP,
                FI_PCIE_COUNT_TX_BYTES,
                FI_PCIE_COUNT_RX_BYTES,
                FI_REMAPPED_COR,
                FI_REMAPPED_UNC,
                FI_REMAPPED_PENDING,
            ]
            .map(FieldId);
            let v = d.field_values_for(&ids)?;
            if v.iter().all(|s| sample_u64(s).is_none()) {
                return Err(NvmlError::NotSupported);
            }
            if let Some(t) = v.first().and_then(sample_u64) {
                p.push(
                    sc::HW_TEMPERATURE,
                    dev.attrs(&[KeyValue::new(attr::HW_SENSOR_LOCATION, "memory")]),
                    t as f64,
                );
            }
            for (i, dir) in [(1, "transmit"), (2, "receive")] {
                if let Some(b) = v.get(i).and_then(sample_u64) {
                    p.push(
                        sc::HW_GPU_IO,
                        dev.attrs(&[KeyValue::new(attr::NETWORK_IO_DIRECTION, dir)]),
                        b,
                    );
                }
            }
            for (i, kind) in [(3, "correctable"), (4, "uncorrectable")] {
                if let Some(n) = v.get(i).and_then(sample_u64) {
                    p.push(
                        NVIDIA_GPU_MEMORY_REMAPPED_ROWS,
                        dev.attrs(&[KeyValue::new(ATTR_REMAP_KIND, kind)]),
                        n,
                    );
                }
            }
            if v.get(5).and_then(sample_u64).unwrap_or(0) > 0 {
                out.predicted_failure = true;
            }
        }
        Call::NvLink => nvlink(dev, ctx, p)?,
        Call::PagesPending => {
            if d.are_pages_pending_retired()? {
                out.predicted_failure = true;
            }
        }
        Call::Gpm => gpm(dev, ctx, p)?,
        Call::Processes => {
            // One series per pid: a process in several MIG instances is listed once each.
            let mut by_pid: BTreeMap<u32, u64> = BTreeMap::new();
            for proc in d.running_compute_processes()? {
                if let UsedGpuMemory::Used(bytes) = proc.used_gpu_memory {
                    *by_pid.entry(proc.pid).or_default() += bytes;
                }
            }
            for (pid, bytes) in by_pid {
                let name = ctx.process_name(pid);
                p.push(
                    PROCESS_GPU_MEMORY_USAGE,
                    dev.process_attrs(pid, name, None),
                    bytes,
                );
            }
        }
        Call::ProcessUtilization => {
            let since = dev.process_last_seen.load(Ordering::Relaxed);
            let samples = match d.process_utilization_stats(since) {
                // The driver's answer when no process ran since `since`.
                Err(NvmlError::NotFound) => Vec::new(),
                r => r?,
            };
            let mut newest = since;
            // The driver may return several samples of a pid since `since`: keep its latest.
            let mut latest: BTreeMap<u32, ProcessUtilizationSample> = BTreeMap::new();
            for s in samples {
                newest = newest.max(s.timestamp);
                match latest.get(&s.pid) {
                    Some(l) if l.timestamp >= s.timestamp => {}
                    _ => {
                        latest.insert(s.pid, s);
                    }
                }
            }
            for s in latest.into_values() {
                let name = ctx.process_name(s.pid);
                for (task, v) in [
                    ("general", s.sm_util),
                    ("encoder", s.enc_util),
                    ("decoder", s.dec_util),
                ] {
                    p.push(
                        PROCESS_GPU_UTILIZATION,
                        dev.process_attrs(s.pid, name.clone(), Some(task)),
                        pct(v),
                    );
                }
            }
            dev.process_last_seen.store(newest, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// NVLink data throughput per link. nvml-wrapper's `field_values_for` cannot set the
/// scope (the link), so this one call goes through the raw symbol.
fn nvlink(dev: &DeviceEntry, ctx: &Ctx, p: &mut Points) -> Result<(), NvmlError> {
    let links = dev
        .handle
        .field_values_for(&[FieldId(FI_NVLINK_LINK_COUNT)])?
        .first()
        .and_then(sample_u64)
        .unwrap_or(0);
    if links == 0 {
        return Err(NvmlError::NotSupported);
    }
    let sym = ctx
        .nvml
        .lib()
        .nvmlDeviceGetFieldValues
        .as_ref()
        .map_err(|_| NvmlError::NotSupported)?;
    let links = links.min(32) as u32;
    let mut values: Vec<nvml_wrapper_sys::bindings::nvmlFieldValue_t> = Vec::new();
    for link in 0..links {
        for id in [FI_NVLINK_THROUGHPUT_DATA_TX, FI_NVLINK_THROUGHPUT_DATA_RX] {
            // SAFETY: nvmlFieldValue_t is plain data; all-zero is a valid value.
            let mut v: nvml_wrapper_sys::bindings::nvmlFieldValue_t = unsafe { std::mem::zeroed() };
            v.fieldId = id;
            v.scopeId = link;
            values.push(v);
        }
    }
    // SAFETY: the handle comes from this library instance and is kept alive by the
    // session; `values` holds `len` initialised entries that NVML fills in place.
    let rc = unsafe {
        sym(
            dev.handle.handle(),
            values.len() as i32,
            values.as_mut_ptr(),
        )
    };
    nvml_wrapper::error::nvml_try(rc)?;
    for v in values {
        if v.nvmlReturn != 0 {
            continue;
        }
        // SAFETY: NVML reports these two fields as unsigned long long.
        let kib = unsafe { v.value.ullVal };
        let dir = if v.fieldId == FI_NVLINK_THROUGHPUT_DATA_TX {
            "transmit"
        } else {
            "receive"
        };
        p.push(
            NVIDIA_GPU_NVLINK_IO,
            dev.attrs(&[
                KeyValue::new(ATTR_NVLINK, i64::from(v.scopeId)),
                KeyValue::new(attr::NETWORK_IO_DIRECTION, dir),
            ]),
            kib.saturating_mul(1024),
        );
    }
    Ok(())
}

/// GPM: a sample per cycle; the metrics compare it with the previous cycle's.
fn gpm(dev: &DeviceEntry, ctx: &Ctx, p: &mut Points) -> Result<(), NvmlError> {
    if !dev.gpm_supported.load(Ordering::Relaxed) {
        return Err(NvmlError::NotSupported);
    }
    let sample = match (&dev.parent_handle, dev.gpu_instance) {
        (Some(parent), Some(gi)) => parent.gpm_mig_sample(gi)?,
        _ => dev.handle.gpm_sample()?,
    };
    let prev = dev
        .gpm_prev
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(prev) = prev {
        let ids = [
            GpmMetricId::SmUtil,
            GpmMetricId::SmOccupancy,
            GpmMetricId::AnyTensorUtil,
            GpmMetricId::DramBwUtil,
        ];
        let names = [
            NVIDIA_GPU_SM_ACTIVITY,
            NVIDIA_GPU_SM_OCCUPANCY,
            NVIDIA_GPU_TENSOR_ACTIVITY,
            NVIDIA_GPU_DRAM_ACTIVITY,
        ];
        let results = nvml_wrapper::gpm::gpm_metrics_get(ctx.nvml, &prev, &sample, &ids)?;
        for (r, name) in results.into_iter().zip(names) {
            if let Ok(r) = r {
                p.push(name, dev.attrs(&[]), r.value / 100.0);
            }
        }
    }
    *dev.gpm_prev.lock().unwrap_or_else(|e| e.into_inner()) = Some(sample);
    Ok(())
}
