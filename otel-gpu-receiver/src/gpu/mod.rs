//! NVIDIA GPUs through NVML (nvml-wrapper), as one more source of the collection cycle.
//!
//! - [`session`]: NVML is loaded once (`--nvml-lib` names the library); device handles are
//!   kept and rediscovered when the count changes, every `rediscover_every` cycles and
//!   while a known GPU is missing. Calls that answer NOT_SUPPORTED are remembered per
//!   device and never made again. No library, no driver or no GPU: one warning (or none),
//!   and the agent runs host-only.
//! - `calls`: one NVML call each, converted to the catalogue's units (mW → W, mJ → J,
//!   MHz → Hz, % → ratio). A call that fails adds nothing, so one metric's error never
//!   hides another and nothing is reported as 0 for lack of a reading.
//! - `watchdog`: the calls (device discovery included) run on a worker thread under a
//!   deadline per call and a budget per cycle; a hung call is counted in
//!   `otel_gpu_receiver.nvml.timeouts` and the cycle goes on without it. Only loading
//!   the library (once, at the first cycle) runs outside it, under the cycle's own
//!   per-source budget.
//! - `xid`: critical Xid events from an NVML event set, on a thread of their own.
//!
//! Health (`hw.status`): GPU_IS_LOST, Xid 79 or a GPU that NVML no longer lists → `failed`
//! (the other GPUs keep reporting); a pending page retirement or row remap →
//! `predicted_failure`; hardware slowdown → `degraded`.

pub(crate) mod calls;
pub mod names;
pub mod session;
pub(crate) mod watchdog;
pub(crate) mod xid;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Budget of all NVML calls of one cycle. Default: 4 s.
    pub budget: Duration,
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

/// The devices the GPU source knows, shared with whoever wants to list them (`--once`).
#[derive(Debug, Clone, Default)]
pub struct Inventory(Arc<Mutex<Vec<GpuInfo>>>);

impl Inventory {
    /// The devices as of the last discovery.
    pub fn devices(&self) -> Vec<GpuInfo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

/// The GPU source configured from the agent's settings. Its NVML budget stays inside
/// the source time budget of the cycle, so the cycle never counts the GPU source as
/// timed out because of one hung call: the watchdog abandons the call first.
pub fn source(settings: &crate::config::Settings, inventory: Inventory) -> GpuSource {
    let budget = settings.source_timeout.mul_f64(0.8);
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
