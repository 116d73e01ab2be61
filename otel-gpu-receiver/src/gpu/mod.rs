//! NVIDIA GPUs through NVML (nvml-wrapper), as one more source of the collection cycle.
//!
//! - [`session`]: NVML is loaded (`--nvml-lib` names the library) and initialised again
//!   when the driver comes and goes ([`lifecycle`]): while the library or the driver is
//!   missing, cycles retry with backoff (1 s, doubling, at most 5 min), and a call that
//!   answers DRIVER_NOT_LOADED or UNINITIALIZED mid-run starts that over. Device handles
//!   are kept and rediscovered when the count changes, every `rediscover_every` cycles,
//!   while a known GPU is missing and when a MIG instance vanishes or appears. Calls
//!   whose answer is NOT_SUPPORTED are remembered per device until the next scheduled
//!   rediscovery. No library, no driver or no GPU: one warning (or none), the agent runs
//!   host-only and says so in `otel_gpu_receiver.gpu.source.state` and `/healthz`.
//! - `calls`: one NVML call each, converted to the catalogue's units (mW → W, mJ → J,
//!   MHz → Hz, % → ratio). A call that fails adds nothing, so one metric's error never
//!   hides another and nothing is reported as 0 for lack of a reading.
//! - `watchdog`: the calls (initialisation and device discovery included) run on a
//!   worker thread under a deadline per call and one budget per cycle, which leaves room
//!   for the kubelet call of attribution inside the source's time budget; a hung call is
//!   counted in `otel_gpu_receiver.nvml.timeouts` and the cycle goes on without it. The
//!   health calls of every device come first, so a cycle cut short still reports every
//!   `hw.status` it could.
//! - `xid`: critical Xid events from an NVML event set, on a thread of their own.
//!
//! Health (`hw.status`): GPU_IS_LOST, Xid 79 or a GPU that NVML no longer lists → `failed`
//! (the other GPUs keep reporting); a pending page retirement or row remap →
//! `predicted_failure`; hardware slowdown → `degraded`.

pub(crate) mod call;
pub(crate) mod calls;
pub(crate) mod device;
pub mod lifecycle;
pub mod names;
pub mod session;
pub(crate) mod watchdog;
pub(crate) mod xid;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use lifecycle::SourceState;
pub use session::GpuSession;

/// Settings of the GPU source.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuConfig {
    /// The NVML library to load. Default: `libnvidia-ml.so` from the loader's search path.
    pub nvml_lib: Option<PathBuf>,
    /// Report per-process GPU memory and utilisation. Default: off (pids churn).
    pub per_process: bool,
    /// Deadline of one NVML call. Default: 1 s.
    pub call_timeout: Duration,
    /// Budget of one cycle's NVML work: initialisation (when due), discovery and the
    /// calls. Default: 4 s.
    pub budget: Duration,
    /// First wait before NVML initialisation is tried again, doubled after each failure.
    /// Default: 1 s.
    pub init_backoff: Duration,
    /// The longest wait between initialisation attempts. Default: 5 min.
    pub init_backoff_max: Duration,
    /// Look the devices up again every this many cycles (0: only when the count
    /// changes or a GPU is missing). Default: 30.
    pub rediscover_every: u64,
    /// procfs root, for process names. Default: `/proc`.
    pub proc_root: PathBuf,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            nvml_lib: None,
            per_process: false,
            call_timeout: Duration::from_secs(1),
            budget: Duration::from_secs(4),
            init_backoff: Duration::from_secs(1),
            init_backoff_max: Duration::from_secs(300),
            rediscover_every: 30,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// A GPU (or MIG instance) as `--once` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuInfo {
    /// NVML index (of the parent, for a MIG instance).
    pub index: u32,
    /// Product name.
    pub name: String,
    /// GPU UUID, or MIG UUID.
    pub uuid: String,
    /// Driver version.
    pub driver_version: String,
    /// The parent GPU's UUID, for a MIG instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_uuid: Option<String>,
}

/// The devices the GPU source knows, and its state, shared with whoever wants to list
/// them (`--once`) or report health (`/healthz`).
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    devices: Arc<Mutex<Vec<GpuInfo>>>,
    state: Arc<lifecycle::SharedState>,
}

impl Inventory {
    /// The devices as of the last discovery.
    pub fn devices(&self) -> Vec<GpuInfo> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The GPU source's state; `None` before its first cycle.
    pub fn state(&self) -> Option<SourceState> {
        self.state.get()
    }

    /// Why the GPU source is degraded, for `/healthz`; `None` while it is up (or has not
    /// run yet).
    pub fn degraded(&self) -> Option<&'static str> {
        match self.state()? {
            SourceState::Up => None,
            SourceState::NoLibrary => Some("gpu source: no_library (NVML cannot be loaded)"),
            SourceState::NoDriver => Some("gpu source: no_driver (NVML has no driver)"),
            SourceState::InitFailed => Some("gpu source: init_failed (NVML does not initialise)"),
            SourceState::Hung => Some("gpu source: hung (NVML calls do not return)"),
        }
    }

    pub(crate) fn set_devices(&self, devices: Vec<GpuInfo>) {
        *self.devices.lock().unwrap_or_else(|e| e.into_inner()) = devices;
    }
}

/// The GPU family as a source of the collection cycle: an NVML session, opened on the
/// source's worker thread at its first cycle (so a slow driver load never delays start-up).
#[derive(Debug)]
pub struct GpuSource {
    cfg: Option<GpuConfig>,
    inventory: Inventory,
    session: Option<GpuSession>,
}

impl GpuSource {
    /// A source that loads NVML per `cfg` at its first cycle and lists its devices in
    /// `inventory`.
    pub fn new(cfg: GpuConfig, inventory: Inventory) -> Self {
        Self {
            cfg: Some(cfg),
            inventory,
            session: None,
        }
    }
}

impl crate::source::Source for GpuSource {
    fn family(&self) -> crate::catalogue::Family {
        crate::catalogue::Family::Gpu
    }

    fn collect(
        &mut self,
        out: &mut crate::snapshot::Points,
    ) -> Result<(), crate::source::CollectError> {
        if self.session.is_none()
            && let Some(cfg) = self.cfg.take()
        {
            self.session = Some(GpuSession::open(cfg, self.inventory.clone()));
        }
        if let Some(s) = &mut self.session {
            s.collect(out);
        }
        Ok(())
    }
}

/// The share of `--source-timeout` the GPU source plans to use: the rest is margin for
/// handing points over, so the cycle never drops the GPU output for being late.
pub const SOURCE_SHARE: f64 = 0.9;

/// The GPU source's whole budget per cycle, NVML and kubelet together (see [`source`]).
pub fn source_budget(settings: &crate::config::Settings) -> Duration {
    settings.source_timeout.mul_f64(SOURCE_SHARE)
}

/// The GPU source configured from the agent's settings. Everything it does in a cycle
/// fits in [`source_budget`]: NVML initialisation, discovery and calls get that budget
/// less the kubelet's deadline (attribution asks the kubelet after NVML, and its wait is
/// capped at what is left), so the cycle never drops the GPU output, `hw.status`
/// included, for being late. A hung call is abandoned by the watchdog first.
pub fn source(settings: &crate::config::Settings, inventory: Inventory) -> GpuSource {
    let kubelet = settings
        .attribution
        .as_ref()
        .filter(|a| a.kubelet)
        .map_or(Duration::ZERO, |a| a.kubelet_timeout);
    let total = source_budget(settings);
    let budget = total.saturating_sub(kubelet).max(total / 2);
    GpuSource::new(
        GpuConfig {
            nvml_lib: settings.nvml_lib.clone(),
            // Attribution (issue 6) needs the per-process readings even when only per-pod
            // sums are reported; it rewrites them before they reach the snapshot.
            per_process: settings.per_process || settings.attribution.is_some(),
            call_timeout: (budget / 3).min(Duration::from_secs(1)),
            budget,
            proc_root: settings.roots.proc.clone(),
            ..GpuConfig::default()
        },
        inventory,
    )
}

/// The GPUs as `--once` lists them before the readings: index, name, UUID, driver.
pub fn list(gpus: &[GpuInfo]) -> String {
    use std::fmt::Write as _;
    let whole = gpus.iter().filter(|g| g.parent_uuid.is_none()).count();
    let mut s = format!("GPUs: {whole}\n");
    for g in gpus {
        match &g.parent_uuid {
            None => {
                let _ = writeln!(
                    s,
                    "  GPU {}: {} ({}), driver {}",
                    g.index, g.name, g.uuid, g.driver_version
                );
            }
            Some(parent) => {
                let _ = writeln!(s, "    MIG: {} ({}), parent {}", g.name, g.uuid, parent);
            }
        }
    }
    s.push('\n');
    s
}
