//! The NVML session: the library (initialised again when the driver comes and goes), the
//! device table (GPUs and MIG instances, rediscovered periodically), the per-device memo
//! of calls that are not supported, and the cycle that reads them all under the watchdog.

use std::collections::{BTreeSet, HashMap, HashSet};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use opentelemetry::{KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as attr;
use opentelemetry_semantic_conventions::metric as sc;

use super::call::Call;
use super::device::{Ctx, DeviceEntry};
use super::device::{dup, error_type};
use super::lifecycle::{Backoff, SourceState, driver_gone};
use super::names::*;
use super::watchdog::{CycleReport, Watchdog};
use super::xid::XidWatcher;
use super::{GpuConfig, GpuInfo, Inventory};
use crate::quiet::RateLimit;
use crate::snapshot::Points;

/// The `nvml.call` of initialisation.
const INIT: &str = "nvmlInit_v2";
/// The `nvml.call` of discovery (its first call).
const DISCOVERY: &str = "nvmlDeviceGetCount_v2";

/// Xid codes whose `nvidia.gpu.xid.events` series every GPU reports from its discovery
/// on, at 0 until the first event, so that `increase()` sees that event. They are the
/// codes NVIDIA's Xid catalogue asks operators to act on (13 graphics engine exception,
/// 31 memory page fault, 43 GPU stopped, 45 preemptive cleanup, 48 double-bit ECC,
/// 61/62 micro-controller halt, 63/64 page retirement or row remap event and failure,
/// 68 video decoder exception, 69 graphics engine class error, 74 NVLink error, 79 fell
/// off the bus, 92 high single-bit ECC rate, 94/95 contained/uncontained ECC error,
/// 119/120 GSP timeout/error). Other codes appear at their first event;
/// `hw.errors{error.type="xid"}`, also from 0, counts them all.
pub const XID_CODES: [u64; 20] = [
    13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 119, 120, 121, 140,
];

/// Cumulative self-monitoring counts of the GPU source.
#[derive(Debug, Default)]
pub(crate) struct GpuStats {
    pub(crate) timeouts: HashMap<&'static str, u64>,
    pub(crate) errors: HashMap<(&'static str, &'static str), u64>,
}

/// The library and its devices. Created with [`GpuSession::open`]; never fails: without
/// NVML it reads nothing, reports its state, and tries again with backoff.
#[derive(Debug)]
pub struct GpuSession {
    cfg: GpuConfig,
    ctx: Option<Arc<Ctx>>,
    state: SourceState,
    backoff: Backoff,
    /// An attempt was made since the last cycle (by `open`): the first cycle makes none.
    tried: bool,
    /// The one warning that NVML is unavailable was logged.
    warned: bool,
    /// Failed attempts since NVML last answered (for the log line when it does).
    failed_attempts: u64,
    driver_version: String,
    devices: Vec<Arc<DeviceEntry>>,
    gpu_count: Option<u32>,
    cycle: u64,
    /// Look the devices up again next cycle (a MIG instance vanished or appeared).
    rediscover_next: bool,
    /// Unknown MIG instances (gpu, compute instance id) that processes ran in and that
    /// were already looked for: each one asks for one rediscovery, not one per cycle,
    /// until the next scheduled rediscovery.
    looked_for: std::collections::HashSet<(u32, Option<u32>)>,
    watchdog: Watchdog,
    /// The Xid thread, and the library it was started with.
    xid: Option<(XidWatcher, usize)>,
    /// Xid counts of a watcher replaced when NVML came back from another library file.
    xid_carry: HashMap<(String, u64), (u64, f64)>,
    /// The GPUs the Xid thread watches.
    watched: Vec<String>,
    stats: GpuStats,
    inventory: Inventory,
}

impl GpuSession {
    /// Makes the first attempt to load NVML (from `cfg.nvml_lib` when given). A missing
    /// library or driver is logged once as a warning, the agent runs host-only, and the
    /// cycles try again, `cfg.init_backoff` apart at first and doubling up to
    /// `cfg.init_backoff_max`.
    pub fn open(cfg: GpuConfig, inventory: Inventory) -> Self {
        let mut s = Self {
            watchdog: Watchdog::new(cfg.call_timeout),
            backoff: Backoff::new(cfg.init_backoff, cfg.init_backoff_max),
            cfg,
            ctx: None,
            state: SourceState::NoLibrary,
            tried: false,
            warned: false,
            failed_attempts: 0,
            driver_version: String::new(),
            devices: Vec::new(),
            gpu_count: None,
            cycle: 0,
            rediscover_next: false,
            looked_for: std::collections::HashSet::new(),
            xid: None,
            xid_carry: HashMap::new(),
            watched: Vec::new(),
            stats: GpuStats::default(),
            inventory,
        };
        s.try_init(Instant::now() + s.cfg.budget);
        s
    }

    /// Whether NVML is initialised now.
    pub fn is_loaded(&self) -> bool {
        self.ctx.is_some()
    }

    /// The GPU source's state.
    pub fn state(&self) -> SourceState {
        self.state
    }

    /// The driver version NVML reports (empty without NVML).
    pub fn driver_version(&self) -> &str {
        &self.driver_version
    }

    /// Reads every device once and appends the points to `out`, all within
    /// `cfg.budget`: initialisation (when due), discovery and the calls share it.
    pub fn collect(&mut self, out: &mut Points) {
        self.cycle += 1;
        let deadline = Instant::now() + self.cfg.budget;
        if self.ctx.is_none() && !self.tried {
            self.try_init(deadline);
        }
        self.tried = false;
        let mut points = Points::default();
        if let Some(ctx) = self.ctx.clone() {
            self.rediscover(&ctx, deadline);
        }
        if let Some(ctx) = self.ctx.clone() {
            let steps = self.steps();
            let report = self.watchdog.run(&ctx, &self.devices, steps, deadline);
            self.finish(report, &mut points);
        }
        self.self_metrics(&mut points);
        out.append(&mut points);
    }

    fn set_state(&mut self, s: SourceState) {
        self.state = s;
        self.inventory.state.set(s);
    }

    /// One attempt to initialise NVML, unless the backoff says wait. Runs on the NVML
    /// worker under the call deadline: a library that hangs in its init never stalls
    /// the cycle.
    fn try_init(&mut self, deadline: Instant) {
        let now = Instant::now();
        if !self.backoff.ready(now) {
            return;
        }
        let timeout = self
            .cfg
            .call_timeout
            .min(deadline.saturating_duration_since(now));
        if timeout.is_zero() {
            *self.stats.timeouts.entry("budget").or_default() += 1;
            return;
        }
        self.tried = true;
        let lib = self.cfg.nvml_lib.clone();
        let result = self.watchdog.call(INIT, timeout, move || {
            let mut b = Nvml::builder();
            if let Some(p) = &lib {
                b.lib_path(p.as_os_str());
            }
            b.init().map(|nvml| {
                let version = nvml.sys_driver_version().unwrap_or_default();
                (nvml, version)
            })
        });
        match result {
            Ok(Ok((nvml, version))) => self.loaded(nvml, version),
            Ok(Err(e)) => {
                *self.stats.errors.entry((INIT, error_type(&e))).or_default() += 1;
                self.init_failed(SourceState::after_init_error(&e), &e.to_string());
            }
            Err(why) => {
                *self.stats.timeouts.entry(why).or_default() += 1;
                let state = if why == "worker" {
                    SourceState::InitFailed
                } else {
                    SourceState::Hung
                };
                self.init_failed(state, "initialisation did not answer in time");
            }
        }
    }

    fn init_failed(&mut self, state: SourceState, error: &str) {
        let library = self.cfg.nvml_lib.as_deref().map_or_else(
            || "libnvidia-ml.so.1 (default)".to_owned(),
            |p| p.display().to_string(),
        );
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                error,
                %library,
                "NVML is not available; GPU metrics are off and the agent runs host-only \
                 (initialisation is retried with backoff)"
            );
        } else if state != self.state {
            tracing::info!(error, %library, %state, "NVML still unavailable");
        } else {
            tracing::debug!(error, %library, %state, "NVML still unavailable");
        }
        self.set_state(state);
        self.failed_attempts += 1;
        self.backoff.failed(Instant::now());
    }

    fn loaded(&mut self, nvml: Nvml, version: String) {
        // Kept for the life of the process: device handles, event sets and GPM samples
        // borrow it from worker threads that may outlive a cycle. A re-initialisation
        // after a driver reload loads it again; the same library file gives the same
        // handle, so this leaks one small struct per driver reload.
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        if self.failed_attempts > 0 || self.warned {
            tracing::info!(driver_version = %version, attempts = self.failed_attempts + 1, "NVML initialised; GPU metrics are on");
        } else {
            tracing::info!(driver_version = %version, "NVML loaded");
        }
        let lib = lib_id(nvml);
        if self.xid.as_ref().is_none_or(|(_, id)| *id != lib) {
            // Another library file (a driver upgrade): the Xid thread must use it. Its
            // counts carry over, so that the counters never go back.
            if let Some((old, _)) = self.xid.take() {
                for (k, (n, t)) in old.take_state().counts {
                    let e = self.xid_carry.entry(k).or_insert((0, 0.0));
                    e.0 += n;
                    e.1 = e.1.max(t);
                }
                old.stop();
            }
            self.xid = XidWatcher::start(nvml).map(|x| (x, lib));
        }
        self.ctx = Some(Arc::new(Ctx {
            nvml,
            names: Mutex::new(HashMap::new()),
            proc_root: self.cfg.proc_root.clone(),
        }));
        self.driver_version = version;
        self.devices.clear();
        self.gpu_count = None;
        self.watched.clear();
        self.failed_attempts = 0;
        self.backoff.reset();
        self.set_state(SourceState::Up);
    }

    /// The driver went away mid-run (`DriverNotLoaded`, `Uninitialized`): the device
    /// handles are void. Forget the devices and initialise NVML again, with backoff.
    fn lose_driver(&mut self, function: &'static str, kind: &'static str) {
        *self.stats.errors.entry((function, kind)).or_default() += 1;
        tracing::warn!(
            call = function,
            error = kind,
            "NVML lost the driver (unloaded or reloaded?); GPU readings stop until it \
             initialises again (retried with backoff)"
        );
        self.ctx = None;
        self.devices.clear();
        self.gpu_count = None;
        self.watched.clear();
        self.inventory.set_devices(Vec::new());
        self.set_state(SourceState::NoDriver);
        self.backoff.reset();
        self.backoff.failed(Instant::now());
    }

    /// This cycle's calls: the health calls of every device first, then the rest, so
    /// that a cycle cut short by its budget still reports every `hw.status`.
    fn steps(&self) -> Vec<(usize, Call)> {
        let mut first = Vec::new();
        let mut rest = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            if d.missing.load(Ordering::Relaxed) {
                continue;
            }
            let mig = d.is_mig();
            let calls = if mig { Call::MIG } else { Call::GPU };
            for &c in calls {
                if !self.cfg.per_process && c.per_process() {
                    continue;
                }
                if c.is_health(mig) {
                    first.push((i, c));
                } else {
                    rest.push((i, c));
                }
            }
        }
        first.extend(rest);
        first
    }

    /// Runs [`discover`] on the NVML worker under a deadline and applies what it found.
    /// When it hangs, the cycle goes on with the devices already known.
    fn rediscover(&mut self, ctx: &Arc<Ctx>, deadline: Instant) {
        let timeout = self
            .cfg
            .call_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        if timeout.is_zero() {
            *self.stats.timeouts.entry("budget").or_default() += 1;
            return;
        }
        let scheduled =
            self.cfg.rediscover_every > 0 && self.cycle.is_multiple_of(self.cfg.rediscover_every);
        if scheduled {
            self.looked_for.clear();
        }
        let input = Discovery {
            ctx: ctx.clone(),
            old: self.devices.clone(),
            gpu_count: self.gpu_count,
            scheduled,
            forced: self.rediscover_next,
            driver_version: self.driver_version.clone(),
        };
        let found = match self
            .watchdog
            .call(DISCOVERY, timeout, move || discover(input))
        {
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
        if let Some((call, kind)) = found.driver_gone {
            self.lose_driver(call, kind);
            return;
        }
        if found.count.is_some() {
            self.gpu_count = found.count;
        }
        let Some(devices) = found.devices else {
            return;
        };
        self.rediscover_next = false;
        self.devices = devices;
        if let Some(x) = &self.xid {
            let known: HashSet<&str> = self.devices.iter().map(|d| d.info.uuid.as_str()).collect();
            x.0.retain(&known);
        }
        // A new event set only when the GPUs to watch change: replacing the set would
        // drop the events still queued on the old one.
        let watch: Vec<&Arc<DeviceEntry>> = self
            .devices
            .iter()
            .filter(|d| !d.is_mig() && !d.missing.load(Ordering::Relaxed))
            .collect();
        let uuids: Vec<String> = watch.iter().map(|d| d.info.uuid.clone()).collect();
        if let Some((x, _)) = &self.xid
            && uuids != self.watched
        {
            x.watch(watch.iter().map(|d| (dup(&d.handle), d.info.uuid.clone())));
            self.watched = uuids;
        }
        if self.cfg.per_process {
            ctx.forget_processes();
        }
        self.inventory
            .set_devices(self.devices.iter().map(|d| d.info.clone()).collect());
    }

    /// The Xid counts (including those carried over from a replaced watcher) and the
    /// GPUs with Xid 79 since the last cycle; `None` without an Xid thread.
    fn xid_state(&self) -> Option<super::xid::XidState> {
        let (x, _) = self.xid.as_ref()?;
        let mut st = x.take_state();
        for (k, (n, t)) in &self.xid_carry {
            let e = st.counts.entry(k.clone()).or_insert((0, 0.0));
            e.0 += n;
            e.1 = e.1.max(*t);
        }
        Some(st)
    }

    /// Health per device and Xid counts, after the calls.
    fn finish(&mut self, report: CycleReport, out: &mut Points) {
        let CycleReport {
            mut points,
            flags,
            timeouts,
            errors,
            driver_gone,
            rediscover,
            unknown_instances,
        } = report;
        for c in &timeouts {
            *self.stats.timeouts.entry(c).or_default() += 1;
        }
        for (c, e) in errors {
            *self.stats.errors.entry((c, e)).or_default() += 1;
        }
        if rediscover {
            self.rediscover_next = true;
        }
        for id in unknown_instances {
            if self.looked_for.insert(id) {
                self.rediscover_next = true;
            }
        }
        if let Some((call, kind)) = driver_gone {
            // What was read before the driver went is real; the devices' health is not
            // known, so no hw.status.
            out.append(&mut points);
            self.lose_driver(call, kind);
            return;
        }
        self.set_state(if timeouts.contains(&"skipped") {
            SourceState::Hung
        } else {
            SourceState::Up
        });
        let xid = self.xid_state();
        for (i, d) in self.devices.iter().enumerate() {
            let f = flags.get(i).copied().unwrap_or_default();
            if f.vanished {
                // A MIG instance removed by a reconfiguration: it is dropped at the next
                // discovery, and is neither ok nor failed meanwhile.
                continue;
            }
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
            } else if let Some(x) = &xid {
                // From discovery on, every GPU has its Xid counters, at 0 until the first
                // event: a series that first appears at 1 hides that event from increase().
                let mut codes: BTreeSet<u64> = XID_CODES.into_iter().collect();
                codes.extend(
                    x.counts
                        .keys()
                        .filter(|(uuid, _)| *uuid == d.info.uuid)
                        .map(|(_, code)| *code),
                );
                let mut total = 0u64;
                for code in codes {
                    let (n, last) = x
                        .counts
                        .get(&(d.info.uuid.clone(), code))
                        .copied()
                        .unwrap_or((0, 0.0));
                    total = total.saturating_add(n);
                    let attrs = d.attrs(&[KeyValue::new(
                        ATTR_XID_CODE,
                        i64::try_from(code).unwrap_or(i64::MAX),
                    )]);
                    if n > 0 {
                        points.push(NVIDIA_GPU_XID_LAST_TIME, attrs.clone(), last);
                    }
                    points.push(NVIDIA_GPU_XID_EVENTS, attrs, n);
                }
                points.push(sc::HW_ERRORS, d.error_attrs("xid"), total);
            }
        }
        out.append(&mut points);
    }

    /// The GPU source's own health: its state, NVML timeouts and errors, the devices
    /// known. Reported every cycle, with NVML or without.
    fn self_metrics(&self, points: &mut Points) {
        for s in SourceState::ALL {
            points.push(
                GPU_SOURCE_STATE,
                vec![KeyValue::new(ATTR_SOURCE_STATE, s.as_str())],
                i64::from(s == self.state),
            );
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
        if let Some((x, _)) = self.xid.take() {
            x.stop();
        }
    }
}

/// Which loaded library image `nvml` calls into: the address of its init symbol.
fn lib_id(nvml: &Nvml) -> usize {
    nvml.lib().nvmlInit_v2.as_ref().map_or(0, |f| *f as usize)
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
        mig_enabled: AtomicBool::new(false),
        mig: Mutex::new(Vec::new()),
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
    /// The scheduled rediscovery: what is remembered as not supported is asked again.
    scheduled: bool,
    /// Asked for by the last cycle (a MIG instance vanished or appeared).
    forced: bool,
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
    /// The driver went away: (NVML function, error.type).
    driver_gone: Option<(&'static str, &'static str)>,
}

impl Discovered {
    /// Notes a failed call. True when the driver is gone (discovery then stops).
    fn failed(&mut self, call: &'static str, e: &NvmlError) -> bool {
        if driver_gone(e) {
            self.driver_gone = Some((call, error_type(e)));
            return true;
        }
        self.errors.push((call, error_type(e)));
        false
    }
}

/// Forgets the calls a device remembers as not supported, so that they are asked again.
fn forget_not_supported(d: &DeviceEntry) {
    d.not_supported.store(0, Ordering::Relaxed);
}

/// Counts the devices and, when due (the count changed, it is scheduled or asked for, or
/// a known GPU is missing), looks them all up again, keeping what is remembered about
/// the devices it knew (by UUID). Runs on the NVML worker, under a deadline.
///
/// A whole GPU that NVML no longer lists is kept and reported as failed until it returns.
/// A MIG instance that is no longer listed was removed by a reconfiguration: it is
/// dropped. A scheduled rediscovery, or a GPU entering or leaving MIG mode, asks again
/// what was remembered as not supported (a GPU out of MIG mode has utilisation again).
fn discover(input: Discovery) -> Discovered {
    let nvml = input.ctx.nvml;
    let mut out = Discovered::default();
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            out.failed("nvmlDeviceGetCount_v2", &e);
            return out;
        }
    };
    out.count = Some(count);
    let discovery = DISCOVERIES.fetch_add(1, Ordering::Relaxed);
    let due = input.gpu_count != Some(count)
        || input.scheduled
        || input.forced
        || input
            .old
            .iter()
            .any(|d| !d.is_mig() && d.missing.load(Ordering::Relaxed));
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
                if out.failed("nvmlDeviceGetHandleByIndex_v2", &e) {
                    return out;
                }
                continue;
            }
        };
        let uuid = match dev.uuid() {
            Ok(u) => u,
            Err(e) => {
                if out.failed("nvmlDeviceGetUUID", &e) {
                    return out;
                }
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
                if input.scheduled {
                    forget_not_supported(e);
                    e.gpm_supported
                        .store(e.handle.gpm_support().unwrap_or(false), Ordering::Relaxed);
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
        let mig_on = gpu.handle.mig_mode().is_ok_and(|m| m.current == 1);
        if gpu.mig_enabled.swap(mig_on, Ordering::Relaxed) != mig_on {
            // In or out of MIG mode: what the GPU supports changed with it.
            forget_not_supported(&gpu);
        }
        let mut children = Vec::new();
        if mig_on {
            let max = gpu.handle.mig_device_count().unwrap_or(0);
            for k in 0..max {
                let Ok(mig) = gpu.handle.mig_device_by_index(k) else {
                    continue;
                };
                let Ok(mig_uuid) = mig.uuid() else { continue };
                seen.push(mig_uuid.clone());
                let entry = match old.get(&mig_uuid) {
                    Some(e) => {
                        if input.scheduled {
                            forget_not_supported(e);
                            e.gpm_supported.store(
                                gpu.gpm_supported.load(Ordering::Relaxed),
                                Ordering::Relaxed,
                            );
                        }
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
                children.push(entry.clone());
                next.push(entry);
            }
        }
        *gpu.mig.lock().unwrap_or_else(|e| e.into_inner()) = children;
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
        e.mig.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
