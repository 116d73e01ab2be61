//! One GPU or MIG instance as the session knows it, and what every NVML call needs
//! besides it. Below `session`, `calls`, `watchdog` and `xid`, which all use it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, GpmSample, Nvml};
use opentelemetry::{KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as attr;

use super::GpuInfo;
use super::call::Call;
use super::names::*;
use crate::quiet::RateLimit;

/// What every NVML call needs besides its device.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) nvml: &'static Nvml,
    pub(super) names: Mutex<HashMap<u32, Arc<str>>>,
    pub(super) proc_root: std::path::PathBuf,
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

    pub(super) fn forget_processes(&self) {
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
    pub(crate) compute_instance: Option<u32>,
    pub(super) profile: Option<String>,
    pub(super) serial: Option<String>,
    pub(super) vbios: Option<String>,
    pub(super) base: Vec<KeyValue>,
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
    pub(super) missing: AtomicBool,
    /// Since when (discovery's count) it is missing, to evict the oldest first.
    pub(super) missing_since: AtomicU64,
    /// Losses of this GPU (lost, or no longer enumerated) that reach the log: a GPU
    /// that flaps gets one line per [`crate::quiet::SUMMARY_EVERY`], not one per flap.
    pub(crate) losses: Mutex<RateLimit>,
    /// For a GPU: whether it was in MIG mode at the last discovery.
    pub(super) mig_enabled: AtomicBool,
    /// For a GPU in MIG mode: its MIG instances as of the last discovery (processes are
    /// given to them by instance id).
    pub(crate) mig: Mutex<Vec<Arc<DeviceEntry>>>,
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

    /// `hw.errors` attributes of an ECC counter (`volatile` or `aggregate`).
    pub(crate) fn ecc_attrs(&self, kind: &'static str, counter: &'static str) -> Vec<KeyValue> {
        self.attrs(&[
            KeyValue::new(attr::HW_TYPE, "gpu"),
            KeyValue::new(attr::ERROR_TYPE, kind),
            KeyValue::new(ATTR_ECC_COUNTER, counter),
        ])
    }

    /// `hw.fan.speed_ratio` attributes: the fan is a component of its own, `hw.id`
    /// `<gpu uuid>:fan<i>`, whose `hw.parent` is the GPU.
    pub(crate) fn fan_attrs(&self, fan: u32) -> Vec<KeyValue> {
        let name = self.base[1].value.as_str();
        vec![
            KeyValue::new(attr::HW_ID, format!("{}:fan{fan}", self.info.uuid)),
            KeyValue::new(attr::HW_NAME, format!("{name}/fan{fan}")),
            self.base[2].clone(),
            self.base[3].clone(),
            self.base[4].clone(),
            KeyValue::new(attr::HW_PARENT, self.base[0].value.clone()),
        ]
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

    pub(super) fn is_mig(&self) -> bool {
        self.info.parent_uuid.is_some()
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
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => "library_not_found",
        NvmlError::LibRmVersionMismatch => "version_mismatch",
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
