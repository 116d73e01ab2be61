//! `system.filesystem.*`: the host's mount table from `<proc>/1/mountinfo`, sizes from
//! `statvfs` of each mount point under `--rootfs`.
//!
//! `/proc/mounts` links to `/proc/self/mounts`: the agent's own mount namespace, which in
//! a container is the overlay `/`, `/etc/hosts` and `/etc/resolv.conf`. pid 1's
//! mountinfo is the host's table whenever the agent sees the host's processes; the
//! host's mount points are then reached under `--rootfs` (the host's `/`, mounted
//! read-only into the container). Only if pid 1's table cannot be read does the agent
//! fall back to its own, and it says so once.
//!
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

/// One mount as listed in mountinfo (or /proc/mounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Device (the mount source).
    pub device: String,
    /// Mount point, as the host sees it.
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

/// Parses /proc/mounts (the fallback table). Every mount is kept; see [`visible`].
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            (f.len() >= 4).then(|| Mount {
                device: unescape(f[0]),
                mountpoint: unescape(f[1]),
                fstype: f[2].to_owned(),
                read_only: f[3].split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// Parses `<proc>/<pid>/mountinfo`:
/// `id parent major:minor root mountpoint options [optional fields…] - fstype source super-options`.
/// Lines that do not have that shape are skipped. Every mount is kept; see [`visible`].
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let h: Vec<&str> = head.split_ascii_whitespace().collect();
            let t: Vec<&str> = tail.split_ascii_whitespace().collect();
            if h.len() < 6 || t.len() < 2 {
                return None;
            }
            let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
            Some(Mount {
                device: unescape(t[1]),
                mountpoint: unescape(h[4]),
                fstype: unescape(t[0]),
                read_only: ro(h[5]) || t.get(2).is_some_and(|o| ro(o)),
            })
        })
        .collect()
}

/// The mounts that hold data and are not hidden: pseudo filesystems are dropped, and
/// of several mounts on one path only the last (the one on top) is kept.
pub fn visible(mounts: Vec<Mount>) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for m in mounts {
        if PSEUDO_TYPES.contains(&m.fstype.as_str()) {
            continue;
        }
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
    /// The fallback to the agent's own mount table was logged.
    warned: bool,
}

impl FilesystemSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self {
            roots,
            warned: false,
        }
    }

    /// The host's mount table (pid 1's), else the agent's own.
    ///
    /// # Errors
    /// Neither `<proc>/1/mountinfo` nor `<proc>/mounts` can be read.
    pub fn mounts(&mut self) -> Result<Vec<Mount>, CollectError> {
        let host = self.roots.proc("1/mountinfo");
        match super::roots::read(&host) {
            Ok(text) => {
                if self.warned {
                    self.warned = false;
                    tracing::info!(path = %host.display(), "reading the host's mounts again");
                }
                Ok(parse_mountinfo(&text))
            }
            Err(e) => {
                let own = self.roots.proc("mounts");
                let mounts = parse_mounts(&super::roots::read(&own)?);
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        error = ?e,
                        fallback = %own.display(),
                        "cannot read the host's mount table through pid 1; reporting the \
                         agent's own mounts instead (run with the host's pid namespace, or \
                         mount the host's /proc at --proc-root)"
                    );
                }
                Ok(mounts)
            }
        }
    }

    /// Reads once.
    ///
    /// # Errors
    /// No mount table can be read. A mount whose statvfs fails is skipped.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<FilesystemReading, CollectError> {
        let mounts = visible(self.mounts()?);
        let filesystems = mounts
            .into_iter()
            .filter_map(|mount| {
                // The host's mount point, seen under --rootfs. Permission errors on
                // other users' mounts are normal: skip them.
                let at = self.roots.host_path(&mount.mountpoint);
                let (total, free, reserved) = statvfs(&at).ok()?;
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
        let m = visible(parse_mounts(
            "proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sdb1 /mnt/my\\040disk xfs ro 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n",
        ));
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, "/mnt/my disk");
        assert!(m[1].read_only);
    }

    const MOUNTINFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
31 22 259:2 / /srv/data\\040set rw,noatime shared:20 master:3 - xfs /dev/nvme0n1p2 rw,attr2
32 22 259:3 / /mnt/ro ro,relatime shared:21 - ext4 /dev/sdc1 rw
33 22 0:50 / /mnt/nfs rw,relatime shared:22 - nfs4 fileserver:/export rw,vers=4.2
34 22 259:4 / /mnt/late rw,relatime - ext4 /dev/sdd1 ro
broken line
";

    #[test]
    fn mountinfo_gives_source_type_mode_and_escaped_paths_with_optional_fields() {
        let m = visible(parse_mountinfo(MOUNTINFO));
        let points: Vec<&str> = m.iter().map(|m| m.mountpoint.as_str()).collect();
        assert_eq!(
            points,
            ["/", "/srv/data set", "/mnt/ro", "/mnt/nfs", "/mnt/late"]
        );
        assert_eq!(m[0].device, "/dev/mapper/root");
        assert_eq!(m[1].fstype, "xfs");
        assert_eq!(m[3].device, "fileserver:/export");
        assert!(!m[0].read_only);
        // Read-only per mount, or read-only superblock.
        assert!(m[2].read_only && m[4].read_only);
    }

    /// A /proc whose own mount table (`mounts`) is the container's and pid 1's
    /// (`1/mountinfo`) the host's, and a rootfs with the host's mount points.
    #[cfg(target_os = "linux")]
    fn namespaced() -> (tempfile::TempDir, Roots) {
        let d = tempfile::tempdir().unwrap();
        let proc = d.path().join("proc");
        std::fs::create_dir_all(proc.join("1")).unwrap();
        std::fs::write(
            proc.join("mounts"),
            "overlay / overlay rw,lowerdir=/l,upperdir=/u 0 0\n/dev/vda1 /etc/hosts ext4 rw 0 0\n",
        )
        .unwrap();
        std::fs::write(
            proc.join("1/mountinfo"),
            "22 1 253:1 / / rw - ext4 /dev/mapper/root rw\n40 22 259:2 / /srv/otel-fixture-disk rw - xfs /dev/nvme0n1p2 rw\n41 22 259:3 / /srv/otel-fixture-missing rw - xfs /dev/nvme1n1 rw\n",
        )
        .unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("srv/otel-fixture-disk")).unwrap();
        let roots = Roots {
            proc,
            rootfs,
            ..Roots::default()
        };
        (d, roots)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn mounts_come_from_pid_1_and_are_statvfsed_under_the_rootfs() {
        let (_d, roots) = namespaced();
        let r = FilesystemSource::new(roots).read().unwrap();
        let points: Vec<&str> = r
            .filesystems
            .iter()
            .map(|f| f.mount.mountpoint.as_str())
            .collect();
        // /srv/otel-fixture-disk exists only under the rootfs: it was statvfsed there and
        // is reported under the host's path. The missing one is skipped, not an error.
        assert_eq!(points, ["/", "/srv/otel-fixture-disk"]);
        assert!(r.filesystems.iter().all(|f| f.total > 0));
        assert_eq!(r.filesystems[1].mount.device, "/dev/nvme0n1p2");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn without_pid_1s_mountinfo_the_agents_own_table_is_the_fallback() {
        let (_d, roots) = namespaced();
        std::fs::remove_file(roots.proc("1/mountinfo")).unwrap();
        let mut s = FilesystemSource::new(roots.clone());
        let m = s.mounts().unwrap();
        assert_eq!(m[0].fstype, "overlay");
        assert!(s.warned);
        std::fs::remove_file(roots.proc("mounts")).unwrap();
        assert_eq!(s.mounts().unwrap_err().kind(), "io");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn statvfs_of_root_reports_a_size() {
        let (total, free, _) = statvfs(Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
    }
}
