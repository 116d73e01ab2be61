//! Where /proc, /sys and the host's root filesystem are, and how the families read
//! files under them. Tests point [`Roots`] at fixture trees.

use std::path::{Path, PathBuf};

use crate::source::CollectError;

/// Where /proc, /sys and the host's `/` are. Tests point these at fixture trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The procfs root. Default: `/proc`.
    pub proc: PathBuf,
    /// The sysfs root. Default: `/sys`.
    pub sys: PathBuf,
    /// Where the host's root filesystem is mounted (`--rootfs`): mount points are
    /// `statvfs`ed, and the hostname and machine id read, under it. Default: `/`.
    pub rootfs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            rootfs: PathBuf::from("/"),
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

    /// Where the host's absolute path `host_path` (a mount point, say) is seen from
    /// here: under `--rootfs`.
    pub fn host_path(&self, host_path: &str) -> PathBuf {
        let rel = host_path.trim_start_matches('/');
        if rel.is_empty() {
            self.rootfs.clone()
        } else {
            self.rootfs.join(rel)
        }
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

/// Clock ticks per second, the unit of /proc/stat and /proc/<pid>/stat times.
#[cfg(unix)]
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}
