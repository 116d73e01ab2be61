//! One NVML call per [`Call`]: it reads a device and turns the reading into points,
//! converted to the catalogue's units (mW → W, mJ → J, MHz → Hz, % → ratio).
//!
//! A call that fails adds nothing: the cycle omits what failed and never emits 0 for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PerformancePolicy, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::{
    FieldValueSample, ProcessInfo, ProcessUtilizationSample,
};
use nvml_wrapper::structs::device::FieldId;
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as attr;
use opentelemetry_semantic_conventions::metric as sc;

pub(crate) use super::call::Call;
use super::call::{FIELD_VALUES, NVLINK_ERROR_COUNTER};
use super::device::{Ctx, DeviceEntry, error_type};
use super::names::*;
use crate::snapshot::Points;

/// What one call produced: points, plus the health hints it saw.
#[derive(Debug, Default)]
pub(crate) struct StepOut {
    pub(crate) points: Points,
    /// Pending page retirement, row remap, or a failed remap: `predicted_failure`.
    pub(crate) predicted_failure: bool,
    /// Hardware slowdown is active: `degraded`.
    pub(crate) degraded: bool,
    /// Parts of the call that failed while the rest answered (one field, one link, one
    /// fan): (NVML function, `error.type`), counted in `otel_gpu_receiver.nvml.errors`.
    /// A part that answers NOT_SUPPORTED is left out and not counted, and never
    /// remembered: only a whole call's NOT_SUPPORTED is.
    pub(crate) errors: Vec<(&'static str, &'static str)>,
    /// MIG instances (gpu, compute instance id) that processes run in but the session does
    /// not know yet.
    pub(crate) unknown_instances: Vec<(u32, Option<u32>)>,
}

impl StepOut {
    /// Notes a part of the call that failed.
    fn partial(&mut self, function: &'static str, e: &NvmlError) {
        if !matches!(
            e,
            NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)
        ) {
            self.errors.push((function, error_type(e)));
        }
    }
}

/// The one vocabulary of `nvidia.gpu.throttle.reason`, shared by `throttle.active` (NVML's
/// clock event reasons) and `throttle.time` (NVML's violation counters): where both report
/// the same reason, they use the same value.
pub(crate) mod throttle {
    /// The GPU is idle and clocks are lowered (`throttle.active`); time held below the
    /// application clocks for low utilisation (`throttle.time`).
    pub(crate) const GPU_IDLE: &str = "gpu_idle";
    /// Clocks limited by the application clock setting.
    pub(crate) const APPLICATIONS_CLOCKS_SETTING: &str = "applications_clocks_setting";
    /// The software power cap (both metrics: NVML's power violation counter).
    pub(crate) const SW_POWER_CAP: &str = "sw_power_cap";
    /// Hardware slowdown (external signal, power brake or temperature).
    pub(crate) const HW_SLOWDOWN: &str = "hw_slowdown";
    /// Sync boost (both metrics).
    pub(crate) const SYNC_BOOST: &str = "sync_boost";
    /// Software thermal slowdown.
    pub(crate) const SW_THERMAL_SLOWDOWN: &str = "sw_thermal_slowdown";
    /// Hardware thermal slowdown.
    pub(crate) const HW_THERMAL_SLOWDOWN: &str = "hw_thermal_slowdown";
    /// Hardware power brake slowdown.
    pub(crate) const HW_POWER_BRAKE_SLOWDOWN: &str = "hw_power_brake_slowdown";
    /// Clocks limited by the display clock setting.
    pub(crate) const DISPLAY_CLOCK_SETTING: &str = "display_clock_setting";
    /// Thermal slowdown, software or hardware: NVML's thermal violation counter does not
    /// tell them apart (`throttle.time` only).
    pub(crate) const THERMAL: &str = "thermal";
    /// The board's limit (`throttle.time` only).
    pub(crate) const BOARD_LIMIT: &str = "board_limit";
    /// Reliability (`throttle.time` only).
    pub(crate) const RELIABILITY: &str = "reliability";
    /// Time below the application clocks, any reason (`throttle.time` only).
    pub(crate) const TOTAL_APP_CLOCKS: &str = "total_app_clocks";
    /// Time below the base clocks, any reason (`throttle.time` only).
    pub(crate) const TOTAL_BASE_CLOCKS: &str = "total_base_clocks";

    /// Every value, for the test that they are one set.
    #[cfg(test)]
    pub(crate) const ALL: [&str; 14] = [
        GPU_IDLE,
        APPLICATIONS_CLOCKS_SETTING,
        SW_POWER_CAP,
        HW_SLOWDOWN,
        SYNC_BOOST,
        SW_THERMAL_SLOWDOWN,
        HW_THERMAL_SLOWDOWN,
        HW_POWER_BRAKE_SLOWDOWN,
        DISPLAY_CLOCK_SETTING,
        THERMAL,
        BOARD_LIMIT,
        RELIABILITY,
        TOTAL_APP_CLOCKS,
        TOTAL_BASE_CLOCKS,
    ];
}

/// The fixed set of throttle reasons: one `nvidia.gpu.throttle.active` series each.
const THROTTLE_REASONS: [(ThrottleReasons, &str); 9] = [
    (ThrottleReasons::GPU_IDLE, throttle::GPU_IDLE),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        throttle::APPLICATIONS_CLOCKS_SETTING,
    ),
    (ThrottleReasons::SW_POWER_CAP, throttle::SW_POWER_CAP),
    (ThrottleReasons::HW_SLOWDOWN, throttle::HW_SLOWDOWN),
    (ThrottleReasons::SYNC_BOOST, throttle::SYNC_BOOST),
    (
        ThrottleReasons::SW_THERMAL_SLOWDOWN,
        throttle::SW_THERMAL_SLOWDOWN,
    ),
    (
        ThrottleReasons::HW_THERMAL_SLOWDOWN,
        throttle::HW_THERMAL_SLOWDOWN,
    ),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        throttle::HW_POWER_BRAKE_SLOWDOWN,
    ),
    (
        ThrottleReasons::DISPLAY_CLOCK_SETTING,
        throttle::DISPLAY_CLOCK_SETTING,
    ),
];

// Field ids (nvml-wrapper-sys bindings, canonical v12 numbering).
const FI_RETIRED_SBE: u32 = 29;
const FI_RETIRED_DBE: u32 = 30;
const FI_MEMORY_TEMP: u32 = 82;
const FI_NVLINK_LINK_COUNT: u32 = 91;
const FI_NVLINK_THROUGHPUT_DATA_TX: u32 = 138;
const FI_NVLINK_THROUGHPUT_DATA_RX: u32 = 139;
const FI_REMAPPED_COR: u32 = 142;
const FI_REMAPPED_UNC: u32 = 143;
const FI_REMAPPED_PENDING: u32 = 144;
const FI_REMAPPED_FAILURE: u32 = 145;
const FI_PCIE_COUNT_TX_BYTES: u32 = 197;
const FI_PCIE_COUNT_RX_BYTES: u32 = 198;

/// The fields of [`Call::Fields`], in the order `run` reads them.
const FIELDS: [u32; 9] = [
    FI_MEMORY_TEMP,
    FI_PCIE_COUNT_TX_BYTES,
    FI_PCIE_COUNT_RX_BYTES,
    FI_REMAPPED_COR,
    FI_REMAPPED_UNC,
    FI_REMAPPED_PENDING,
    FI_REMAPPED_FAILURE,
    FI_RETIRED_SBE,
    FI_RETIRED_DBE,
];

fn pct(v: u32) -> f64 {
    f64::from(v) / 100.0
}

fn value_u64(v: &SampleValue) -> Option<u64> {
    match v {
        SampleValue::U32(v) => Some(u64::from(*v)),
        SampleValue::U64(v) => Some(*v),
        SampleValue::I64(v) => u64::try_from(*v).ok(),
        SampleValue::F64(v) if *v >= 0.0 && v.is_finite() => Some(*v as u64),
        SampleValue::F64(_) => None,
    }
}

/// One field's value; a field that failed on its own is noted in `out` (unless it is
/// not supported) and gives `None`.
fn field(s: Option<&Result<FieldValueSample, NvmlError>>, out: &mut StepOut) -> Option<u64> {
    match s? {
        Ok(sample) => match &sample.value {
            Ok(v) => value_u64(v),
            Err(e) => {
                out.partial(FIELD_VALUES, e);
                None
            }
        },
        Err(e) => {
            out.partial(FIELD_VALUES, e);
            None
        }
    }
}

/// Runs `f` for each of `parts`; what fails is noted in `out`. When every part fails, the
/// first error is returned as the call's: all NOT_SUPPORTED is then a whole call's answer.
fn each_part<T: Copy>(
    parts: &[T],
    function: &'static str,
    out: &mut StepOut,
    mut f: impl FnMut(T, &mut StepOut) -> Result<(), NvmlError>,
) -> Result<(), NvmlError> {
    let mut first = None;
    let mut failed = Vec::new();
    for &part in parts {
        if let Err(e) = f(part, out) {
            failed.push(error_type(&e));
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) if failed.len() == parts.len() => Err(e),
        Some(_) => {
            for kind in failed {
                if kind != "not_supported" && kind != "missing_symbol" {
                    out.errors.push((function, kind));
                }
            }
            Ok(())
        }
        None => Ok(()),
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
    match call {
        Call::Utilization => {
            let u = d.utilization_rates()?;
            out.points.push(
                sc::HW_GPU_UTILIZATION,
                dev.attrs(&[KeyValue::new(attr::HW_GPU_TASK, "general")]),
                pct(u.gpu),
            );
            out.points.push(
                NVIDIA_GPU_MEMORY_CONTROLLER_UTILIZATION,
                dev.attrs(&[]),
                pct(u.memory),
            );
        }
        Call::Encoder => {
            let u = d.encoder_utilization()?;
            out.points.push(
                sc::HW_GPU_UTILIZATION,
                dev.attrs(&[KeyValue::new(attr::HW_GPU_TASK, "encoder")]),
                pct(u.utilization),
            );
        }
        Call::Decoder => {
            let u = d.decoder_utilization()?;
            out.points.push(
                sc::HW_GPU_UTILIZATION,
                dev.attrs(&[KeyValue::new(attr::HW_GPU_TASK, "decoder")]),
                pct(u.utilization),
            );
        }
        Call::Memory => {
            let m = d.memory_info()?;
            let p = &mut out.points;
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
            out.points.push(
                sc::HW_POWER,
                dev.attrs(&[KeyValue::new(attr::HW_TYPE, "gpu")]),
                f64::from(mw) / 1000.0,
            );
        }
        Call::Energy => {
            let mj = d.total_energy_consumption()?;
            out.points.push(
                sc::HW_ENERGY,
                dev.attrs(&[KeyValue::new(attr::HW_TYPE, "gpu")]),
                mj as f64 / 1000.0,
            );
        }
        Call::Temperature => {
            let t = d.temperature(TemperatureSensor::Gpu)?;
            out.points.push(
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
            out.points.push(
                sc::HW_TEMPERATURE_LIMIT,
                dev.attrs(&[
                    KeyValue::new(attr::HW_SENSOR_LOCATION, "gpu"),
                    KeyValue::new(attr::HW_LIMIT_TYPE, limit),
                ]),
                f64::from(t),
            );
        }
        Call::EccCorrected
        | Call::EccUncorrected
        | Call::EccCorrectedAggregate
        | Call::EccUncorrectedAggregate => {
            let (kind, name) = match call {
                Call::EccCorrected | Call::EccCorrectedAggregate => {
                    (MemoryError::Corrected, "corrected")
                }
                _ => (MemoryError::Uncorrected, "uncorrected"),
            };
            let (counter, counter_name) = match call {
                Call::EccCorrected | Call::EccUncorrected => (EccCounter::Volatile, "volatile"),
                _ => (EccCounter::Aggregate, "aggregate"),
            };
            let n = d.total_ecc_errors(kind, counter)?;
            out.points
                .push(sc::HW_ERRORS, dev.ecc_attrs(name, counter_name), n);
        }
        Call::PcieReplay => {
            let n = d.pcie_replay_counter()?;
            out.points
                .push(sc::HW_ERRORS, dev.error_attrs("pcie_replay"), u64::from(n));
        }
        Call::PcieLink => {
            type Read = fn(&nvml_wrapper::Device<'static>) -> Result<u32, NvmlError>;
            let parts: [(Read, &'static str, &'static str, &'static str); 4] = [
                (
                    |d| d.current_pcie_link_gen(),
                    NVIDIA_GPU_PCIE_LINK_GENERATION,
                    "current",
                    "nvmlDeviceGetCurrPcieLinkGeneration",
                ),
                (
                    |d| d.max_pcie_link_gen(),
                    NVIDIA_GPU_PCIE_LINK_GENERATION,
                    "max",
                    "nvmlDeviceGetMaxPcieLinkGeneration",
                ),
                (
                    |d| d.current_pcie_link_width(),
                    NVIDIA_GPU_PCIE_LINK_WIDTH,
                    "current",
                    "nvmlDeviceGetCurrPcieLinkWidth",
                ),
                (
                    |d| d.max_pcie_link_width(),
                    NVIDIA_GPU_PCIE_LINK_WIDTH,
                    "max",
                    "nvmlDeviceGetMaxPcieLinkWidth",
                ),
            ];
            each_part(
                &parts,
                call.nvml_name(),
                out,
                |(read, name, state, _), out| {
                    let v = read(d)?;
                    out.points.push(
                        name,
                        dev.attrs(&[KeyValue::new(ATTR_PCIE_LINK_STATE, state)]),
                        i64::from(v),
                    );
                    Ok(())
                },
            )?;
        }
        Call::ClockGraphics | Call::ClockSm | Call::ClockMemory | Call::ClockVideo => {
            let (clock, name) = match call {
                Call::ClockGraphics => (Clock::Graphics, "graphics"),
                Call::ClockSm => (Clock::SM, "sm"),
                Call::ClockMemory => (Clock::Memory, "memory"),
                _ => (Clock::Video, "video"),
            };
            let mhz = d.clock_info(clock)?;
            out.points.push(
                NVIDIA_GPU_CLOCK_FREQUENCY,
                dev.attrs(&[KeyValue::new(ATTR_CLOCK, name)]),
                f64::from(mhz) * 1e6,
            );
        }
        Call::ClockMax | Call::ClockApplication => {
            let clocks = [
                (Clock::Graphics, "graphics"),
                (Clock::SM, "sm"),
                (Clock::Memory, "memory"),
                (Clock::Video, "video"),
            ];
            let metric = if call == Call::ClockMax {
                NVIDIA_GPU_CLOCK_FREQUENCY_MAX
            } else {
                NVIDIA_GPU_CLOCK_FREQUENCY_APPLICATION
            };
            each_part(&clocks, call.nvml_name(), out, |(clock, name), out| {
                let mhz = if call == Call::ClockMax {
                    d.max_clock_info(clock)?
                } else {
                    d.applications_clock(clock)?
                };
                out.points.push(
                    metric,
                    dev.attrs(&[KeyValue::new(ATTR_CLOCK, name)]),
                    f64::from(mhz) * 1e6,
                );
                Ok(())
            })?;
        }
        Call::PowerLimit => {
            let mw = d.enforced_power_limit()?;
            out.points.push(
                NVIDIA_GPU_POWER_LIMIT,
                dev.attrs(&[]),
                f64::from(mw) / 1000.0,
            );
        }
        Call::Throttle => {
            let r = d.current_throttle_reasons()?;
            for (flag, name) in THROTTLE_REASONS {
                out.points.push(
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
                Call::ViolationPower => (PerformancePolicy::Power, throttle::SW_POWER_CAP),
                Call::ViolationThermal => (PerformancePolicy::Thermal, throttle::THERMAL),
                Call::ViolationSyncBoost => (PerformancePolicy::SyncBoost, throttle::SYNC_BOOST),
                Call::ViolationBoardLimit => (PerformancePolicy::BoardLimit, throttle::BOARD_LIMIT),
                Call::ViolationLowUtilization => {
                    (PerformancePolicy::LowUtilization, throttle::GPU_IDLE)
                }
                Call::ViolationReliability => {
                    (PerformancePolicy::Reliability, throttle::RELIABILITY)
                }
                Call::ViolationAppClocks => (
                    PerformancePolicy::TotalAppClocks,
                    throttle::TOTAL_APP_CLOCKS,
                ),
                _ => (
                    PerformancePolicy::TotalBaseClocks,
                    throttle::TOTAL_BASE_CLOCKS,
                ),
            };
            let v = d.violation_status(policy)?;
            out.points.push(
                NVIDIA_GPU_THROTTLE_TIME,
                dev.attrs(&[KeyValue::new(ATTR_THROTTLE_REASON, name)]),
                v.violation_time as f64 / 1e9,
            );
        }
        Call::Fans => {
            let n = d.num_fans()?;
            for i in 0..n.min(64) {
                // One fan failing does not hide the others; it is counted.
                match d.fan_speed(i) {
                    Ok(s) => out
                        .points
                        .push(sc::HW_FAN_SPEED_RATIO, dev.fan_attrs(i), pct(s)),
                    Err(e) => out.partial(call.nvml_name(), &e),
                }
            }
        }
        Call::PerformanceState => {
            let s = d.performance_state()?;
            let n = s.as_c();
            // 32 is NVML's "unknown": omit it rather than report a made-up state.
            if n <= 15 {
                out.points
                    .push(NVIDIA_GPU_PERFORMANCE_STATE, dev.attrs(&[]), i64::from(n));
            }
        }
        Call::Fields => fields(dev, out)?,
        Call::NvLink => nvlink(dev, ctx, out)?,
        Call::PagesPending => {
            if d.are_pages_pending_retired()? {
                out.predicted_failure = true;
            }
        }
        Call::Gpm => gpm(dev, ctx, &mut out.points)?,
        Call::Processes => processes(dev, ctx, out)?,
        Call::ProcessUtilization => {
            let since = dev.process_last_seen.load(Ordering::Relaxed);
            let samples = match d.process_utilization_stats(since) {
                // The driver's answer when no sample is newer than `since`.
                Err(NvmlError::NotFound) => Vec::new(),
                r => r?,
            };
            let mut newest = since;
            // The driver returns every sample it keeps that is newer than `since`, so a
            // pid may come several times: keep its latest.
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
                    out.points.push(
                        PROCESS_GPU_UTILIZATION,
                        dev.process_attrs(s.pid, name.clone(), Some(task)),
                        pct(v),
                    );
                }
            }
            dev.process_last_seen.store(newest, Ordering::Relaxed);
        }
        // Made inside Processes and NvLink; never steps of their own.
        Call::MpsProcesses | Call::NvLinkErrors => {}
    }
    Ok(())
}

/// Memory temperature, PCIe bytes, row remapping and retired pages, in one field-values
/// call. A field that fails on its own (all of them do while a GPU resets) is left out
/// this cycle and asked again the next: only the call's own NOT_SUPPORTED is remembered.
fn fields(dev: &DeviceEntry, out: &mut StepOut) -> Result<(), NvmlError> {
    let v = dev.handle.field_values_for(&FIELDS.map(FieldId))?;
    let mut vals = [None; FIELDS.len()];
    for (i, slot) in vals.iter_mut().enumerate() {
        *slot = field(v.get(i), out);
    }
    let [temp, tx, rx, cor, unc, pending, failure, sbe, dbe] = vals;
    let p = &mut out.points;
    if let Some(t) = temp {
        p.push(
            sc::HW_TEMPERATURE,
            dev.attrs(&[KeyValue::new(attr::HW_SENSOR_LOCATION, "memory")]),
            t as f64,
        );
    }
    for (b, dir) in [(tx, "transmit"), (rx, "receive")] {
        if let Some(b) = b {
            p.push(
                sc::HW_GPU_IO,
                dev.attrs(&[KeyValue::new(attr::NETWORK_IO_DIRECTION, dir)]),
                b,
            );
        }
    }
    for (n, kind) in [(cor, "correctable"), (unc, "uncorrectable")] {
        if let Some(n) = n {
            p.push(
                NVIDIA_GPU_MEMORY_REMAPPED_ROWS,
                dev.attrs(&[KeyValue::new(ATTR_REMAP_KIND, kind)]),
                n,
            );
        }
    }
    if let Some(f) = failure {
        p.push(
            NVIDIA_GPU_MEMORY_REMAP_FAILURE,
            dev.attrs(&[]),
            i64::from(f > 0),
        );
    }
    for (n, cause) in [(sbe, "single_bit"), (dbe, "double_bit")] {
        if let Some(n) = n {
            p.push(
                NVIDIA_GPU_MEMORY_RETIRED_PAGES,
                dev.attrs(&[KeyValue::new(ATTR_RETIREMENT_CAUSE, cause)]),
                n,
            );
        }
    }
    // A pending remap or a failed one: the GPU needs a reset, or servicing.
    if pending.unwrap_or(0) > 0 || failure.unwrap_or(0) > 0 {
        out.predicted_failure = true;
    }
    Ok(())
}

/// NVLink data throughput and data-link errors per link. nvml-wrapper's
/// `field_values_for` cannot set the scope (the link), so the throughput goes through
/// the raw symbol.
///
/// Only the link-count call's own error fails the step (and only its NOT_SUPPORTED is
/// remembered). A link count that fails on its own, as during a GPU reset, is counted
/// and asked again next cycle; zero links is a GPU without NVLink, also asked again
/// (one cheap call), so a transient answer never hides NVLink for good.
fn nvlink(dev: &DeviceEntry, ctx: &Ctx, out: &mut StepOut) -> Result<(), NvmlError> {
    let count = dev
        .handle
        .field_values_for(&[FieldId(FI_NVLINK_LINK_COUNT)])?;
    let Some(links) = field(count.first(), out) else {
        return Ok(());
    };
    if links == 0 {
        return Ok(());
    }
    let links = links.min(32) as u32;
    if let Err(e) = nvlink_throughput(dev, ctx, links, &mut out.points) {
        out.partial(FIELD_VALUES, &e);
    }
    if dev.not_supported.load(Ordering::Relaxed) & Call::NvLinkErrors.bit() != 0 {
        return Ok(());
    }
    let counters = [
        (ErrorCounter::DlReplay, "replay"),
        (ErrorCounter::DlRecovery, "recovery"),
        (ErrorCounter::DlCrcFlit, "crc_flit"),
        (ErrorCounter::DlCrcData, "crc_data"),
    ];
    let mut answered = false;
    let mut unsupported = 0;
    for link in 0..links {
        let l = dev.handle.link_wrapper_for(link);
        for (counter, kind) in counters {
            match l.error_counter(counter) {
                Ok(n) => {
                    answered = true;
                    out.points.push(
                        NVIDIA_GPU_NVLINK_ERRORS,
                        dev.attrs(&[
                            KeyValue::new(ATTR_NVLINK, i64::from(link)),
                            KeyValue::new(attr::ERROR_TYPE, kind),
                        ]),
                        n,
                    );
                }
                Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => {
                    unsupported += 1;
                }
                Err(e) => out.partial(NVLINK_ERROR_COUNTER, &e),
            }
        }
        // The function itself is not supported on this GPU (every counter of the first
        // link said so): remembered until the next scheduled rediscovery.
        if link == 0 && !answered && unsupported == counters.len() {
            dev.not_supported
                .fetch_or(Call::NvLinkErrors.bit(), Ordering::Relaxed);
            return Ok(());
        }
    }
    Ok(())
}

fn nvlink_throughput(
    dev: &DeviceEntry,
    ctx: &Ctx,
    links: u32,
    p: &mut Points,
) -> Result<(), NvmlError> {
    let sym = ctx
        .nvml
        .lib()
        .nvmlDeviceGetFieldValues
        .as_ref()
        .map_err(|_| NvmlError::NotSupported)?;
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

/// GPU memory per process: compute processes and MPS clients. On a GPU in MIG mode each
/// process is given to its MIG instance (by its GPU and compute instance ids), so that
/// its `hw.id` is the `MIG-…` UUID the kubelet allocates.
fn processes(dev: &DeviceEntry, ctx: &Ctx, out: &mut StepOut) -> Result<(), NvmlError> {
    let children: Vec<Arc<DeviceEntry>> = dev.mig.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // (MIG instance, or None for the GPU itself; pid) → bytes.
    let mut by: BTreeMap<(Option<usize>, u32), u64> = BTreeMap::new();
    let place = |p: &ProcessInfo, out: &mut StepOut| -> Option<usize> {
        let gi = p.gpu_instance_id?;
        let found = children.iter().position(|c| {
            c.gpu_instance == Some(gi)
                && (p.compute_instance_id.is_none() || c.compute_instance == p.compute_instance_id)
        });
        if found.is_none() {
            // An instance created since the last discovery.
            out.unknown_instances.push((gi, p.compute_instance_id));
        }
        found
    };
    match dev.handle.running_compute_processes() {
        Ok(list) => {
            for p in list {
                if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                    let k = place(&p, out);
                    // A pid listed twice for one instance is one series, summed.
                    *by.entry((k, p.pid)).or_default() += bytes;
                }
            }
        }
        // In MIG mode the GPU's own list needs privileges the agent may lack; each
        // instance then lists its own processes.
        Err(NvmlError::NoPermission) if !children.is_empty() => {
            for (k, c) in children.iter().enumerate() {
                match c.handle.running_compute_processes() {
                    Ok(list) => {
                        for p in list {
                            if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                                *by.entry((Some(k), p.pid)).or_default() += bytes;
                            }
                        }
                    }
                    Err(e) => out.partial(Call::Processes.nvml_name(), &e),
                }
            }
        }
        Err(e) => return Err(e),
    }
    // MPS clients: the list above shows only the MPS server.
    if dev.not_supported.load(Ordering::Relaxed) & Call::MpsProcesses.bit() == 0 {
        match dev.handle.mps_running_compute_processes() {
            Ok(list) => {
                for p in list {
                    if let UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                        let k = place(&p, out);
                        by.entry((k, p.pid)).or_insert(bytes);
                    }
                }
            }
            Err(NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_)) => {
                dev.not_supported
                    .fetch_or(Call::MpsProcesses.bit(), Ordering::Relaxed);
            }
            Err(e) => out.partial(Call::MpsProcesses.nvml_name(), &e),
        }
    }
    for ((k, pid), bytes) in by {
        let target = k.and_then(|k| children.get(k)).map_or(dev, |c| c.as_ref());
        let name = ctx.process_name(pid);
        out.points.push(
            PROCESS_GPU_MEMORY_USAGE,
            target.process_attrs(pid, name, None),
            bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_vocabulary_is_one_set_that_both_metrics_draw_from() {
        for (_, name) in THROTTLE_REASONS {
            assert!(throttle::ALL.contains(&name), "{name}");
        }
        let mut all = throttle::ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), throttle::ALL.len());
    }

    #[test]
    fn every_call_fits_in_the_memo_mask() {
        assert!((Call::NvLinkErrors as u8) < 63);
        for c in Call::GPU.iter().chain(Call::MIG) {
            assert_eq!(c.bit().count_ones(), 1);
        }
    }

    #[test]
    fn negative_or_non_finite_field_values_are_no_reading() {
        assert_eq!(value_u64(&SampleValue::F64(-1.0)), None);
        assert_eq!(value_u64(&SampleValue::F64(f64::NAN)), None);
        assert_eq!(value_u64(&SampleValue::I64(-3)), None);
        assert_eq!(value_u64(&SampleValue::U32(7)), Some(7));
    }
}
