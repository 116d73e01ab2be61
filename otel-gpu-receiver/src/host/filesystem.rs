//! `system.filesystem.*`: the mount table from /proc/mounts, sizes from statvfs.
//! Pseudo filesystems (proc, sysfs, cgroup, …) are excluded. A hung statvfs (a dead
//! NFS mount) is bounded by the source's time budget in the collector.

#[cfg(target_os = "linux")]
use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::{
    SYSTEM_DEVICE, SYSTEM_FILESYSTEM_MODE, SYSTEM_FILESYSTEM_MOUNTPOINT, SYSTEM_FILESYSTEM_STATE,
    SYSTEM_FILESYSTEM_TYPE,
};
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// Filesystem types that hold no user data (node_exporter's default exclusions).
pub const PSEUDO_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "erofs",
    "sysfs",
    "tracefs",
];

/// One mount as listed in /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Device (first column).
    pub device: String,
    /// Mount point.
    pub mountpoint: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Sizes of one filesystem in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemStats {
    /// The mount.
    pub mount: Mount,
    /// Total size.
    pub total: u64,
    /// Free for unprivileged users.
    pub free: u64,
    /// Reserved for root.
    pub reserved: u64,
}

/// One cycle's filesystem reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesystemReading {
    /// Per mounted, non-pseudo filesystem.
    pub filesystems: Vec<FilesystemStats>,
}

impl FilesystemReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        for f in &self.filesystems {
            let m = &f.mount;
            let base = || {
                vec![
                    KeyValue::new(SYSTEM_DEVICE, m.device.clone()),
                    KeyValue::new(SYSTEM_FILESYSTEM_MOUNTPOINT, m.mountpoint.clone()),
                    KeyValue::new(SYSTEM_FILESYSTEM_TYPE, m.fstype.clone()),
                    KeyValue::new(
                        SYSTEM_FILESYSTEM_MODE,
                        if m.read_only { "ro" } else { "rw" },
                    ),
                ]
            };
            let used = f.total.saturating_sub(f.free + f.reserved);
            for (state, v) in [("used", used), ("free", f.free), ("reserved", f.reserved)] {
                let mut a = base();
                a.push(KeyValue::new(SYSTEM_FILESYSTEM_STATE, state));
                out.push(sc::SYSTEM_FILESYSTEM_USAGE, a, v);
            }
            out.push(sc::SYSTEM_FILESYSTEM_LIMIT, base(), f.total);
            if f.total > 0 {
                out.push(
                    sc::SYSTEM_FILESYSTEM_UTILIZATION,
                    base(),
                    used as f64 / f.total as f64,
                );
            }
        }
    }
}

/// Undoes /proc/mounts' octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/mounts, dropping pseudo filesystems and repeated mount points.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 4 || PSEUDO_TYPES.contains(&f[2]) {
            continue;
        }
        let m = Mount {
            device: unescape(f[0]),
            mountpoint: unescape(f[1]),
            fstype: f[2].to_owned(),
            read_only: f[3].split(',').any(|o| o == "ro"),
        };
        // The last mount on a path hides the earlier ones.
        out.retain(|o| o.mountpoint != m.mountpoint);
        out.push(m);
    }
    out
}

#[cfg(target_os = "linux")]
// The statvfs field types differ between platforms (u32 on some): keep the casts.
#[allow(clippy::unnecessary_cast)]
fn statvfs(path: &Path) -> std::io::Result<(u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `s` points to writable memory of
    // the right type; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let s = unsafe { s.assume_init() };
    let frsize = s.f_frsize as u64;
    let total = s.f_blocks as u64 * frsize;
    let bfree = s.f_bfree as u64 * frsize;
    let bavail = s.f_bavail as u64 * frsize;
    Ok((total, bavail, bfree.saturating_sub(bavail)))
}

/// Reads the filesystem family.
#[derive(Debug)]
pub struct FilesystemSource {
    roots: Roots,
}

impl FilesystemSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/mounts cannot be read. A mount whose statvfs fails is skipped.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<FilesystemReading, CollectError> {
        let path = self.roots.proc("mounts");
        let mounts = parse_mounts(&super::roots::read(&path)?);
        let filesystems = mounts
            .into_iter()
            .filter_map(|mount| {
                // Permission errors on other users' mounts are normal: skip them.
                let (total, free, reserved) = statvfs(Path::new(&mount.mountpoint)).ok()?;
                Some(FilesystemStats {
                    mount,
                    total,
                    free,
                    reserved,
                })
            })
            .collect();
        Ok(FilesystemReading { filesystems })
    }

    /// Reads once through sysinfo.
    ///
    /// # Errors
    /// sysinfo does not support this platform.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<FilesystemReading, CollectError> {
        let _ = &self.roots;
        let disks =
            sysinfo::Disks::new_with_refreshed_list().map_err(|_| CollectError::Unsupported)?;
        let filesystems = disks
            .iter()
            .map(|d| FilesystemStats {
                mount: Mount {
                    device: d.name().to_string_lossy().into_owned(),
                    mountpoint: d.mount_point().to_string_lossy().into_owned(),
                    fstype: d.file_system().to_string_lossy().into_owned(),
                    read_only: d.is_read_only(),
                },
                total: d.total_space(),
                free: d.available_space(),
                reserved: 0,
            })
            .collect();
        Ok(FilesystemReading { filesystems })
    }
}

impl Source for FilesystemSource {
    fn family(&self) -> Family {
        Family::Filesystem
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
        self.read()?.points(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_filesystems_are_excluded_and_escapes_decoded() {
        let m = parse_mounts(
            "proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sdb1 /mnt/my\\040disk xfs ro 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, "/mnt/my disk");
        assert!(m[1].read_only);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn statvfs_of_root_reports_a_size() {
        let (total, free, _) = statvfs(Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
    }
}
