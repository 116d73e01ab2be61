//! Host metric families, one file each. Each family is a [`Source`]: it reads a typed
//! reading (from /proc on Linux, from sysinfo elsewhere) and converts it to points.
//!
//! /proc and /sys are reached through [`Roots`], so tests can point a family at a
//! fixture tree.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catalogue::Family;
use crate::snapshot::Points;

pub mod cpu;
pub mod disk;
pub mod filesystem;
pub mod load;
pub mod memory;
pub mod network;
pub mod paging;
pub mod process;
pub mod processes;
pub mod uptime;

/// Why a source could not be read this cycle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file did not have the expected format.
    #[error("unexpected format in {}: {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The source did not answer within its time budget.
    #[error("no answer within {0:?} (a hung call, e.g. statfs on a dead mount?)")]
    Timeout(Duration),
    /// The previous read of this source is still running (it hung earlier).
    #[error("still busy with an earlier cycle")]
    Busy,
    /// The source's thread is gone (it panicked).
    #[error("the source's worker thread is gone")]
    WorkerGone,
    /// The platform does not provide this family.
    #[error("not supported on this platform")]
    Unsupported,
}

impl CollectError {
    /// Low-cardinality `error.type` for the self-metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Parse { .. } => "parse",
            Self::Timeout(_) => "timeout",
            Self::Busy => "busy",
            Self::WorkerGone => "worker_gone",
            Self::Unsupported => "unsupported",
        }
    }

    pub(crate) fn parse(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::Parse {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// A family's reader. Runs on a worker thread of its own, once per cycle.
pub trait Source: Send + 'static {
    /// The family it reads.
    fn family(&self) -> Family;

    /// Reads once and appends points.
    ///
    /// # Errors
    /// The source cannot be read this cycle; the cycle skips it and counts the error.
    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError>;
}

/// Where /proc and /sys are. Tests point these at fixture trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The procfs root. Default: `/proc`.
    pub proc: PathBuf,
    /// The sysfs root. Default: `/sys`.
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

impl Roots {
    /// Path of `rel` under the procfs root.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }

    /// Path of `rel` under the sysfs root.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sys.join(rel)
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|source| CollectError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Parses a whitespace-separated field as u64.
pub(crate) fn field(path: &Path, line: &str, s: Option<&str>) -> Result<u64, CollectError> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| CollectError::parse(path, format!("bad numeric field in line {line:?}")))
}

/// Builds the source for `family`.
pub fn source(family: Family, roots: &Roots) -> Box<dyn Source> {
    match family {
        Family::Cpu => Box::new(cpu::CpuSource::new(roots.clone())),
        Family::Memory => Box::new(memory::MemorySource::new(roots.clone())),
        Family::Paging => Box::new(paging::PagingSource::new(roots.clone())),
        Family::Disk => Box::new(disk::DiskSource::new(roots.clone())),
        Family::Filesystem => Box::new(filesystem::FilesystemSource::new(roots.clone())),
        Family::Network => Box::new(network::NetworkSource::new(roots.clone())),
        Family::Load => Box::new(load::LoadSource::new(roots.clone())),
        Family::Processes => Box::new(processes::ProcessesSource::new(roots.clone())),
        Family::Uptime => Box::new(uptime::UptimeSource::new(roots.clone())),
        Family::Process => Box::new(process::ProcessSource::new(roots.clone())),
        // With the default library; the agent adds its GPU source with the configured
        // settings instead (see `crate::gpu::source`).
        Family::Gpu => Box::new(crate::gpu::GpuSource::new(
            crate::gpu::GpuConfig {
                proc_root: roots.proc.clone(),
                ..crate::gpu::GpuConfig::default()
            },
            crate::gpu::Inventory::default(),
        )),
    }
}

/// Clock ticks per second, the unit of /proc/stat and /proc/<pid>/stat times.
#[cfg(unix)]
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
