//! The NVML session: the library loaded once, the device table (GPUs and MIG
//! instances, rediscovered periodically), the per-device memo of calls that are not
//! supported, and the cycle that reads them all under the watchdog.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, GpmSample, Nvml};
use opentelemetry::{KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as attr;
use opentelemetry_semantic_conventions::metric as sc;

use super::calls::Call;
use super::names::*;
use super::watchdog::{CycleReport, Watchdog};
use super::xid::XidWatcher;
use super::{GpuConfig, GpuInfo, Inventory};
use crate::quiet::RateLimit;
use crate::snapshot::Points;

/// What every NVML call needs besides its device.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) nvml: &'static Nvml,
    names: Mutex<HashMap<u32, Arc<str>>>,
    proc_root: std::path::PathBuf,
}

impl Ctx {
    /// The executable name of `pid`: /proc/<pid>/comm, else NVML's process name.
    pub(crate) fn process_name(&self, pid: u32) -> Arc<str> {
        if let Some(n) = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
        {
            return n.clone();
        }
        let name = std::fs::read_to_string(self.proc_root.join(format!("{pid}/comm")))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| {
                self.nvml.sys_process_name(pid, 256).ok().map(|s| {
                    Path::new(&s)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or(s)
                })
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let name: Arc<str> = name.into();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        // pids churn: keep the cache bounded.
        if names.len() > 4096 {
            names.clear();
        }
        names.insert(pid, name.clone());
        name
    }

    fn forget_processes(&self) {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// One GPU or MIG instance, with what the session remembers about it.
#[derive(Debug)]
pub(crate) struct DeviceEntry {
    pub(crate) handle: Device<'static>,
    /// For a MIG instance: the parent GPU's handle (GPM samples go through it).
    pub(crate) parent_handle: Option<Device<'static>>,
    pub(crate) info: GpuInfo,
    pub(crate) gpu_instance: Option<u32>,
    compute_instance: Option<u32>,
    profile: Option<String>,
    serial: Option<String>,
    vbios: Option<String>,
    base: Vec<KeyValue>,
    /// Calls that answered NOT_SUPPORTED: never made again for this device.
    pub(crate) not_supported: AtomicU64,
    /// Calls whose (other) error was already logged.
    pub(crate) logged: AtomicU64,
    /// Calls skipped while a worker is still stuck in them, with that worker's flag.
    pub(crate) stuck: Mutex<Vec<(Call, Arc<AtomicBool>)>>,
    pub(crate) gpm_supported: AtomicBool,
    pub(crate) gpm_prev: Mutex<Option<GpmSample<'static>>>,
    pub(crate) process_last_seen: AtomicU64,
    /// No longer enumerated by NVML: reported as failed until it comes back.
    missing: AtomicBool,
    /// Since when (discovery's count) it is missing, to evict the oldest first.
    missing_since: AtomicU64,
    /// Losses of this GPU (lost, or no longer enumerated) that reach the log: a GPU
    /// that flaps gets one line per [`crate::quiet::SUMMARY_EVERY`], not one per flap.
    pub(crate) losses: Mutex<RateLimit>,
}

impl DeviceEntry {
    /// The identity attributes plus `extra`.
    pub(crate) fn attrs(&self, extra: &[KeyValue]) -> Vec<KeyValue> {
        let mut v = Vec::with_capacity(self.base.len() + extra.len());
        v.extend_from_slice(&self.base);
        v.extend_from_slice(extra);
        v
    }

    pub(crate) fn error_attrs(&self, kind: &'static str) -> Vec<KeyValue> {
        self.attrs(&[
            KeyValue::new(attr::HW_TYPE, "gpu"),
            KeyValue::new(attr::ERROR_TYPE, kind),
        ])
    }

    pub(crate) fn process_attrs(
        &self,
        pid: u32,
        name: Arc<str>,
        task: Option<&'static str>,
    ) -> Vec<KeyValue> {
        let mut v = vec![
            KeyValue::new(attr::PROCESS_PID, i64::from(pid)),
            KeyValue::new(attr::PROCESS_EXECUTABLE_NAME, Value::from(name)),
            self.base[0].clone(),
            KeyValue::new(ATTR_GPU_INDEX, i64::from(self.info.index)),
        ];
        if let Some(t) = task {
            v.push(KeyValue::new(attr::HW_GPU_TASK, t));
        }
        v
    }

    /// Whether `call` is skipped on this device: unsupported, or a worker is still stuck in it.
    pub(crate) fn skips(&self, call: Call) -> bool {
        if self.not_supported.load(Ordering::Relaxed) & call.bit() != 0 {
            return true;
        }
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        stuck.retain(|(_, still)| still.load(Ordering::Acquire));
        stuck.iter().any(|(c, _)| *c == call)
    }

    fn is_mig(&self) -> bool {
        self.info.parent_uuid.is_some()
    }
}

/// Cumulative self-monitoring counts of the GPU source.
#[derive(Debug, Default)]
pub(crate) struct GpuStats {
    pub(crate) timeouts: HashMap<&'static str, u64>,
    pub(crate) errors: HashMap<(&'static str, &'static str), u64>,
}

/// The loaded library and its devices. Created with [`GpuSession::open`]; never fails:
/// without NVML it reads nothing.
#[derive(Debug)]
pub struct GpuSession {
    cfg: GpuConfig,
    ctx: Option<Arc<Ctx>>,
    driver_version: String,
    devices: Vec<Arc<DeviceEntry>>,
    gpu_count: Option<u32>,
    cycle: u64,
    watchdog: Watchdog,
    xid: Option<XidWatcher>,
    /// The GPUs the Xid thread watches.
    watched: Vec<String>,
    stats: GpuStats,
    inventory: Inventory,
}

impl GpuSession {
    /// Loads NVML (from `cfg.nvml_lib` when given). A missing library or driver is
    /// logged once as a warning, and the session then reads nothing: the agent runs
    /// host-only.
    pub fn open(cfg: GpuConfig, inventory: Inventory) -> Self {
        let mut builder = Nvml::builder();
        if let Some(p) = &cfg.nvml_lib {
            builder.lib_path(OsStr::new(p.as_os_str()));
        }
        let (ctx, driver_version) = match builder.init() {
            Ok(nvml) => {
                // Loaded once for the life of the process: device handles, event sets and
                // GPM samples borrow it from worker threads that may outlive a cycle.
                let nvml: &'static Nvml = Box::leak(Box::new(nvml));
                let driver = nvml.sys_driver_version().unwrap_or_default();
                tracing::info!(driver_version = %driver, "NVML loaded");
                (
                    Some(Arc::new(Ctx {
                        nvml,
                        names: Mutex::new(HashMap::new()),
                        proc_root: cfg.proc_root.clone(),
                    })),
                    driver,
                )
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    library = %cfg.nvml_lib.as_deref().map_or("libnvidia-ml.so.1 (default)".into(), |p| p.display().to_string()),
                    "NVML is not available; GPU metrics are off and the agent runs host-only"
                );
                (None, String::new())
            }
        };
        let xid = ctx.as_ref().and_then(|c| XidWatcher::start(c.nvml));
        let watchdog = Watchdog::new(cfg.call_timeout, cfg.budget);
        Self {
            cfg,
            ctx,
            driver_version,
            devices: Vec::new(),
            gpu_count: None,
            cycle: 0,
            watchdog,
            xid,
            watched: Vec::new(),
            stats: GpuStats::default(),
            inventory,
        }
    }

    /// Whether NVML was loaded.
    pub fn is_loaded(&self) -> bool {
        self.ctx.is_some()
    }

    /// The driver version NVML reports (empty without NVML).
    pub fn driver_version(&self) -> &str {
        &self.driver_version
    }

    /// Reads every device once and appends the points to `out`.
    pub fn collect(&mut self, out: &mut Points) {
        let Some(ctx) = self.ctx.clone() else {
            return;
        };
        self.cycle += 1;
        self.rediscover(&ctx);

        let steps: Vec<(usize, Call)> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.missing.load(Ordering::Relaxed))
            .flat_map(|(i, d)| {
                let calls: &[Call] = if d.is_mig() { &Call::MIG } else { &Call::GPU };
                calls
                    .iter()
                    .filter(|c| self.cfg.per_process || !c.per_process())
                    .map(move |c| (i, *c))
            })
            .collect();
        let report = self.watchdog.run(&ctx, &self.devices, steps);
        self.finish(report, out);
    }

    /// Runs [`discover`] on the NVML worker under a deadline and applies what it found.
    /// When it hangs, the cycle goes on with the devices already known.
    fn rediscover(&mut self, ctx: &Arc<Ctx>) {
        let input = Discovery {
            ctx: ctx.clone(),
            old: self.devices.clone(),
            gpu_count: self.gpu_count,
            scheduled: self.cfg.rediscover_every > 0
                && self.cycle.is_multiple_of(self.cfg.rediscover_every),
            driver_version: self.driver_version.clone(),
        };
        let found = match self.watchdog.call(move || discover(input)) {
            Ok(found) => found,
            // "skipped" is counted once, by the readings that are skipped too.
            Err("skipped") => return,
            Err(why) => {
                *self.stats.timeouts.entry(why).or_default() += 1;
                return;
            }
        };
        for (call, kind) in found.errors {
            *self.stats.errors.entry((call, kind)).or_default() += 1;
        }
        if found.count.is_some() {
            self.gpu_count = found.count;
        }
        let Some(devices) = found.devices else {
            return;
        };
        self.devices = devices;
        if let Some(x) = &self.xid {
            let known: HashSet<&str> = self.devices.iter().map(|d| d.info.uuid.as_str()).collect();
            x.retain(&known);
        }
        // A new event set only when the GPUs to watch change: replacing the set would
        // drop the events still queued on the old one.
        let watch: Vec<&Arc<DeviceEntry>> = self
            .devices
            .iter()
            .filter(|d| !d.is_mig() && !d.missing.load(Ordering::Relaxed))
            .collect();
        let uuids: Vec<String> = watch.iter().map(|d| d.info.uuid.clone()).collect();
        if let Some(x) = &self.xid
            && uuids != self.watched
        {
            x.watch(watch.iter().map(|d| (dup(&d.handle), d.info.uuid.clone())));
            self.watched = uuids;
        }
        if self.cfg.per_process {
            ctx.forget_processes();
        }
        let list: Vec<GpuInfo> = self.devices.iter().map(|d| d.info.clone()).collect();
        *self.inventory.0.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// Health per device, Xid counts and self-metrics, after the calls.
    fn finish(&mut self, report: CycleReport, out: &mut Points) {
        let CycleReport {
            mut points,
            flags,
            timeouts,
            errors,
        } = report;
        for c in timeouts {
            *self.stats.timeouts.entry(c).or_default() += 1;
        }
        for (c, e) in errors {
            *self.stats.errors.entry((c, e)).or_default() += 1;
        }
        let xid = self.xid.as_ref().map(|x| x.take_state());
        for (i, d) in self.devices.iter().enumerate() {
            let f = flags.get(i).copied().unwrap_or_default();
            let missing = d.missing.load(Ordering::Relaxed);
            let xid79 = xid.as_ref().is_some_and(|x| x.fatal.contains(&d.info.uuid));
            let failed = f.lost || missing || xid79;
            // No call reached it this cycle (NVML hung, or the budget ran out first): its
            // state is unknown, so hw.status is left out rather than guessed.
            let known = failed || f.reached;
            let states = [
                ("ok", !failed && !f.predicted_failure && !f.degraded),
                ("degraded", !failed && f.degraded),
                ("failed", failed),
                ("predicted_failure", !failed && f.predicted_failure),
            ];
            let mut status_attrs = d.attrs(&[KeyValue::new(attr::HW_TYPE, "gpu")]);
            if !d.is_mig() {
                status_attrs.push(KeyValue::new(
                    attr::HW_DRIVER_VERSION,
                    self.driver_version.clone(),
                ));
                if let Some(v) = &d.vbios {
                    status_attrs.push(KeyValue::new(attr::HW_FIRMWARE_VERSION, v.clone()));
                }
                if let Some(s) = &d.serial {
                    status_attrs.push(KeyValue::new(attr::HW_SERIAL_NUMBER, s.clone()));
                }
            }
            if known {
                for (state, on) in states {
                    let mut a = status_attrs.clone();
                    a.push(KeyValue::new(attr::HW_STATE, state));
                    points.push(sc::HW_STATUS, a, i64::from(on));
                }
            }
            if d.is_mig() {
                let mut a = d.attrs(&[]);
                if let Some(p) = &d.profile {
                    a.push(KeyValue::new(ATTR_MIG_PROFILE, p.clone()));
                }
                if let Some(g) = d.gpu_instance {
                    a.push(KeyValue::new(ATTR_MIG_GPU_INSTANCE, i64::from(g)));
                }
                if let Some(c) = d.compute_instance {
                    a.push(KeyValue::new(ATTR_MIG_COMPUTE_INSTANCE, i64::from(c)));
                }
                points.push(NVIDIA_GPU_MIG_INFO, a, 1i64);
            }
            if let Some(x) = &xid {
                let mut total = 0u64;
                let mut any = false;
                for ((uuid, code), (n, last)) in &x.counts {
                    if *uuid != d.info.uuid {
                        continue;
                    }
                    any = true;
                    total += n;
                    let code = i64::try_from(*code).unwrap_or(i64::MAX);
                    points.push(
                        NVIDIA_GPU_XID_EVENTS,
                        d.attrs(&[KeyValue::new(ATTR_XID_CODE, code)]),
                        *n,
                    );
                    points.push(
                        NVIDIA_GPU_XID_LAST_TIME,
                        d.attrs(&[KeyValue::new(ATTR_XID_CODE, code)]),
                        *last,
                    );
                }
                if any {
                    points.push(sc::HW_ERRORS, d.error_attrs("xid"), total);
                }
            }
        }
        for (call, n) in &self.stats.timeouts {
            points.push(
                NVML_TIMEOUTS,
                vec![KeyValue::new(ATTR_NVML_CALL, *call)],
                *n,
            );
        }
        for ((call, kind), n) in &self.stats.errors {
            points.push(
                NVML_ERRORS,
                vec![
                    KeyValue::new(ATTR_NVML_CALL, *call),
                    KeyValue::new(attr::ERROR_TYPE, *kind),
                ],
                *n,
            );
        }
        points.push(GPU_DEVICES, vec![], self.devices.len() as u64);
        out.append(&mut points);
    }

    /// Cumulative NVML call timeouts, by NVML function (for tests and `--once`).
    pub fn timeouts(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self.stats.timeouts.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_unstable();
        v
    }

    /// NVML worker threads started so far: 1, plus one per call abandoned past its deadline.
    pub fn workers_started(&self) -> u64 {
        self.watchdog.started
    }

    /// Cycles the session has run.
    pub fn cycles(&self) -> u64 {
        self.cycle
    }
}

impl Drop for GpuSession {
    fn drop(&mut self) {
        if let Some(x) = self.xid.take() {
            x.stop();
        }
    }
}

/// A second wrapper for the same device handle.
pub(crate) fn dup(d: &Device<'static>) -> Device<'static> {
    // SAFETY: the handle stays valid for the life of the library, which is never unloaded.
    unsafe { Device::new(d.handle(), d.nvml()) }
}

/// Low-cardinality `error.type` of an NVML error.
pub(crate) fn error_type(e: &NvmlError) -> &'static str {
    match e {
        NvmlError::NotSupported => "not_supported",
        NvmlError::GpuLost => "gpu_lost",
        NvmlError::Timeout => "timeout",
        NvmlError::NoPermission => "no_permission",
        NvmlError::NotFound => "not_found",
        NvmlError::InvalidArg => "invalid_argument",
        NvmlError::Uninitialized => "uninitialized",
        NvmlError::DriverNotLoaded => "driver_not_loaded",
        NvmlError::FailedToLoadSymbol(_) => "missing_symbol",
        NvmlError::InsufficientPower => "insufficient_power",
        NvmlError::ResetRequired => "reset_required",
        NvmlError::Unknown => "unknown",
        _ => "other",
    }
}

/// Unix time now, in seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn new_entry(
    ctx: &Ctx,
    driver_version: &str,
    handle: Device<'static>,
    uuid: String,
    index: u32,
    parent: Option<&DeviceEntry>,
) -> DeviceEntry {
    let model = handle.name().unwrap_or_else(|_| "unknown".to_owned());
    let serial = if parent.is_none() {
        handle.serial().ok()
    } else {
        None
    };
    let vbios = if parent.is_none() {
        handle.vbios_version().ok()
    } else {
        None
    };
    let lib = Some(ctx.nvml.lib());
    let (gpu_instance, compute_instance) = match (parent, lib) {
        (Some(_), Some(lib)) => {
            type IdFn = unsafe extern "C" fn(
                nvml_wrapper_sys::bindings::nvmlDevice_t,
                *mut std::os::raw::c_uint,
            )
                -> nvml_wrapper_sys::bindings::nvmlReturn_t;
            let get = |f: Option<&IdFn>| -> Option<u32> {
                let f = f?;
                let mut id = 0u32;
                // SAFETY: the handle belongs to this library instance; `id` is a valid out-pointer.
                let rc = unsafe { f(handle.handle(), &mut id) };
                (rc == 0).then_some(id)
            };
            (
                get(lib.nvmlDeviceGetGpuInstanceId.as_ref().ok()),
                get(lib.nvmlDeviceGetComputeInstanceId.as_ref().ok()),
            )
        }
        _ => (None, None),
    };
    let profile = parent.and_then(|_| model.rsplit_once("MIG ").map(|(_, p)| p.trim().to_owned()));
    let mig_index = parent.map(|_| gpu_instance.unwrap_or(0));
    let hw_name = match mig_index {
        Some(gi) => format!("nvidia{index}/gi{gi}"),
        None => format!("nvidia{index}"),
    };
    let parent_uuid = parent.map(|p| p.info.uuid.clone());
    let mut base = vec![
        // Shared strings: every point clones these, and an Arc clone does not allocate.
        KeyValue::new(attr::HW_ID, Value::from(Arc::<str>::from(uuid.as_str()))),
        KeyValue::new(attr::HW_NAME, Value::from(Arc::<str>::from(hw_name))),
        KeyValue::new(attr::HW_VENDOR, "nvidia"),
        KeyValue::new(
            attr::HW_MODEL,
            Value::from(Arc::<str>::from(model.as_str())),
        ),
        KeyValue::new(ATTR_GPU_INDEX, i64::from(index)),
    ];
    if let Some(p) = &parent_uuid {
        base.push(KeyValue::new(
            attr::HW_PARENT,
            Value::from(Arc::<str>::from(p.as_str())),
        ));
    }
    let gpm_supported = match parent {
        Some(p) => p.gpm_supported.load(Ordering::Relaxed),
        None => handle.gpm_support().unwrap_or(false),
    };
    DeviceEntry {
        parent_handle: parent.map(|p| dup(&p.handle)),
        handle,
        info: GpuInfo {
            index,
            name: model,
            uuid,
            driver_version: driver_version.to_owned(),
            parent_uuid,
        },
        gpu_instance,
        compute_instance,
        profile,
        serial,
        vbios,
        base,
        not_supported: AtomicU64::new(0),
        logged: AtomicU64::new(0),
        stuck: Mutex::new(Vec::new()),
        gpm_supported: AtomicBool::new(gpm_supported),
        gpm_prev: Mutex::new(None),
        process_last_seen: AtomicU64::new(0),
        missing: AtomicBool::new(false),
        missing_since: AtomicU64::new(0),
        losses: Mutex::new(RateLimit::default()),
    }
}

/// At most this many GPUs that NVML no longer lists are kept (and reported as failed);
/// beyond it the one missing for longest is forgotten. More than any machine holds, so
/// a real failure stays visible, while GPUs replaced over months do not pile up.
pub(crate) const MAX_MISSING_GPUS: usize = 16;

/// What discovery starts from.
struct Discovery {
    ctx: Arc<Ctx>,
    old: Vec<Arc<DeviceEntry>>,
    gpu_count: Option<u32>,
    scheduled: bool,
    driver_version: String,
}

/// What discovery found.
#[derive(Default)]
struct Discovered {
    /// The device count, when NVML answered.
    count: Option<u32>,
    /// The new device table, when discovery was due.
    devices: Option<Vec<Arc<DeviceEntry>>>,
    errors: Vec<(&'static str, &'static str)>,
}

/// Counts the devices and, when due (the count changed, it is scheduled, or a known
/// device is missing), looks them all up again, keeping what is remembered about the
/// devices it knew (by UUID). Runs on the NVML worker, under a deadline.
fn discover(input: Discovery) -> Discovered {
    let nvml = input.ctx.nvml;
    let mut out = Discovered::default();
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            out.errors.push(("nvmlDeviceGetCount_v2", error_type(&e)));
            return out;
        }
    };
    out.count = Some(count);
    let discovery = DISCOVERIES.fetch_add(1, Ordering::Relaxed);
    let due = input.gpu_count != Some(count)
        || input.scheduled
        || input.old.iter().any(|d| d.missing.load(Ordering::Relaxed));
    if !due {
        return out;
    }
    let old: HashMap<String, Arc<DeviceEntry>> = input
        .old
        .into_iter()
        .map(|d| (d.info.uuid.clone(), d))
        .collect();
    let mut seen = Vec::new();
    let mut next = Vec::new();
    for index in 0..count {
        let dev = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                out.errors
                    .push(("nvmlDeviceGetHandleByIndex_v2", error_type(&e)));
                continue;
            }
        };
        let uuid = match dev.uuid() {
            Ok(u) => u,
            Err(e) => {
                out.errors.push(("nvmlDeviceGetUUID", error_type(&e)));
                continue;
            }
        };
        seen.push(uuid.clone());
        let gpu = match old.get(&uuid) {
            Some(e) => {
                if e.missing.swap(false, Ordering::Relaxed)
                    && e.logged.fetch_and(!LOGGED_MISSING, Ordering::Relaxed) & LOGGED_MISSING != 0
                {
                    let discoveries = discovery - e.missing_since.load(Ordering::Relaxed);
                    tracing::info!(uuid = %uuid, missing_for_discoveries = discoveries, "GPU enumerated by NVML again");
                }
                e.clone()
            }
            None => Arc::new(new_entry(
                &input.ctx,
                &input.driver_version,
                dev,
                uuid.clone(),
                index,
                None,
            )),
        };
        next.push(gpu.clone());
        // MIG instances of this GPU.
        if let Ok(mode) = gpu.handle.mig_mode()
            && mode.current == 1
        {
            let max = gpu.handle.mig_device_count().unwrap_or(0);
            for k in 0..max {
                let Ok(mig) = gpu.handle.mig_device_by_index(k) else {
                    continue;
                };
                let Ok(mig_uuid) = mig.uuid() else { continue };
                seen.push(mig_uuid.clone());
                let entry = match old.get(&mig_uuid) {
                    Some(e) => {
                        e.missing.store(false, Ordering::Relaxed);
                        e.clone()
                    }
                    None => Arc::new(new_entry(
                        &input.ctx,
                        &input.driver_version,
                        mig,
                        mig_uuid,
                        index,
                        Some(&gpu),
                    )),
                };
                next.push(entry);
            }
        }
    }
    // A GPU NVML no longer lists is kept, and reported as failed, until it returns (at
    // most MAX_MISSING_GPUS of them). A MIG instance that is no longer listed was
    // reconfigured away (or its GPU is lost, which the GPU reports): it is forgotten.
    let mut missing = Vec::new();
    for (uuid, e) in old {
        if seen.contains(&uuid) {
            continue;
        }
        if e.is_mig() {
            tracing::debug!(uuid = %uuid, "MIG instance no longer listed; forgotten");
            continue;
        }
        if !e.missing.swap(true, Ordering::Relaxed) {
            e.missing_since.store(discovery, Ordering::Relaxed);
            let logged = e
                .losses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .hit(Instant::now());
            if let Some(unlogged) = logged {
                e.logged.fetch_or(LOGGED_MISSING, Ordering::Relaxed);
                tracing::warn!(uuid = %uuid, earlier_losses_not_logged = unlogged, "GPU no longer enumerated by NVML; reporting it as failed");
            }
        }
        missing.push(e);
    }
    let missing = missing
        .into_iter()
        .map(|e| (e.missing_since.load(Ordering::Relaxed), e))
        .collect();
    next.extend(most_recent(missing, MAX_MISSING_GPUS));
    out.devices = Some(next);
    out
}

/// The `max` items with the highest keys (the most recently lost GPUs), newest first.
fn most_recent<T>(mut items: Vec<(u64, T)>, max: usize) -> impl Iterator<Item = T> {
    items.sort_by_key(|(since, _)| std::cmp::Reverse(*since));
    items.into_iter().take(max).map(|(_, item)| item)
}

/// Bit in [`DeviceEntry::logged`]: that the GPU is no longer enumerated was logged, so
/// its return is logged too.
const LOGGED_MISSING: u64 = 1 << 61;

/// Discoveries so far (the order in which GPUs went missing).
static DISCOVERIES: AtomicU64 = AtomicU64::new(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_most_recently_lost_gpus_are_kept() {
        let lost: Vec<(u64, String)> = (0..40u64)
            .map(|i| ((i * 7) % 40, format!("GPU-{i}")))
            .collect();
        let kept: Vec<String> = most_recent(lost, MAX_MISSING_GPUS).collect();
        assert_eq!(kept.len(), MAX_MISSING_GPUS);
        // Keys 39 down to 24: the GPUs lost in the 16 latest discoveries.
        let keys: Vec<u64> = kept
            .iter()
            .map(|u| (u[4..].parse::<u64>().unwrap() * 7) % 40)
            .collect();
        assert_eq!(keys, (24..40).rev().collect::<Vec<_>>());
        assert_eq!(most_recent(vec![(1, "a")], 16).count(), 1);
    }
}
