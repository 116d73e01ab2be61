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
//! Pseudo filesystems and the mounts of containers and the kubelet are excluded by type
//! and mount point ([`super::exclude`], configurable). Each `statvfs` runs under a
//! deadline of its own ([`super::statvfs`]): a mount that does not answer (a dead NFS
//! server) is stuck, skipped without a call until it answers again, and counted; the
//! other mounts are reported as usual, and the whole family stays inside its budget.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use opentelemetry_semantic_conventions::attribute::{
    SYSTEM_DEVICE, SYSTEM_FILESYSTEM_MODE, SYSTEM_FILESYSTEM_MOUNTPOINT, SYSTEM_FILESYSTEM_STATE,
    SYSTEM_FILESYSTEM_TYPE,
};
use opentelemetry_semantic_conventions::metric as sc;

use super::exclude::{Kind, Patterns};
use super::roots::Roots;
use super::statvfs::{Probe, Prober};
use crate::catalogue::Family;
use crate::names;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// Settings of the filesystem family.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesystemConfig {
    /// Filesystem types left out. Default: [`super::exclude::DEFAULT_FS_TYPES`].
    pub fs_types_exclude: Patterns,
    /// Mount points left out. Default: [`super::exclude::DEFAULT_MOUNT_POINTS`].
    pub mount_points_exclude: Patterns,
    /// Deadline of one `statvfs`. Default: 1 s.
    pub statvfs_timeout: Duration,
    /// Time all `statvfs` calls of one cycle may take; mounts left when it is spent
    /// wait for the next cycle. Default: 4 s (80% of the default source budget).
    pub budget: Duration,
    /// Calls that may be left hung in the kernel at once (one thread each). Default: 16.
    pub max_hung: usize,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        Self {
            fs_types_exclude: Patterns::default_for(Kind::FsType),
            mount_points_exclude: Patterns::default_for(Kind::MountPoint),
            statvfs_timeout: Duration::from_secs(1),
            budget: Duration::from_secs(4),
            max_hung: 16,
        }
    }
}

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
    /// Inodes in all (0 where the filesystem has no fixed inode table, like btrfs).
    pub inodes: u64,
    /// Inodes free.
    pub inodes_free: u64,
}

/// One cycle's filesystem reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesystemReading {
    /// Per mounted, non-pseudo filesystem.
    pub filesystems: Vec<FilesystemStats>,
    /// Mount points whose `statvfs` is hung now.
    pub stuck: Vec<String>,
    /// `statvfs` calls abandoned past their deadline, since start.
    pub timeouts: u64,
    /// Mounts not asked, since start, by why (`stuck`, `budget`, `hung_limit`).
    pub skipped: BTreeMap<&'static str, u64>,
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
            // A filesystem without an inode table reports 0 inodes: no series, rather
            // than one that says it is full.
            if f.inodes > 0 {
                let used = f.inodes.saturating_sub(f.inodes_free);
                for (state, v) in [("used", used), ("free", f.inodes_free)] {
                    let mut a = base();
                    a.push(KeyValue::new(SYSTEM_FILESYSTEM_STATE, state));
                    out.push(names::SYSTEM_FILESYSTEM_INODES_USAGE, a, v);
                }
            }
            if f.total > 0 {
                out.push(
                    sc::SYSTEM_FILESYSTEM_UTILIZATION,
                    base(),
                    used as f64 / f.total as f64,
                );
            }
        }
        for m in &self.stuck {
            out.push(
                names::FILESYSTEM_STUCK,
                vec![KeyValue::new(SYSTEM_FILESYSTEM_MOUNTPOINT, m.clone())],
                1u64,
            );
        }
        if self.timeouts > 0 {
            out.push(names::FILESYSTEM_TIMEOUTS, vec![], self.timeouts);
        }
        for (why, n) in &self.skipped {
            out.push(
                names::FILESYSTEM_SKIPPED,
                vec![KeyValue::new(ERROR_TYPE, *why)],
                *n,
            );
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

/// The mounts to report: of several mounts on one path only the last (the one on top)
/// counts, and then those of an excluded type or mount point are dropped.
pub fn visible(mounts: Vec<Mount>, fs_types: &Patterns, mount_points: &Patterns) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for m in mounts {
        out.retain(|o| o.mountpoint != m.mountpoint);
        out.push(m);
    }
    out.retain(|m| !fs_types.matches(&m.fstype) && !mount_points.matches(&m.mountpoint));
    out
}

/// Reads the filesystem family.
#[derive(Debug)]
pub struct FilesystemSource {
    roots: Roots,
    cfg: FilesystemConfig,
    prober: Prober,
    /// The fallback to the agent's own mount table was logged.
    warned: bool,
    /// Stuck mounts already logged, to log their recovery once.
    logged_stuck: BTreeSet<String>,
    /// Mounts that answered last cycle: asked first.
    healthy: BTreeSet<String>,
    timeouts: u64,
    skipped: BTreeMap<&'static str, u64>,
}

impl FilesystemSource {
    /// A source reading under `roots`, with the default settings.
    pub fn new(roots: Roots) -> Self {
        Self::with_config(roots, FilesystemConfig::default())
    }

    /// A source reading under `roots` with `cfg`.
    pub fn with_config(roots: Roots, cfg: FilesystemConfig) -> Self {
        let prober = Prober::new(cfg.statvfs_timeout, cfg.max_hung);
        Self::with_prober(roots, cfg, prober)
    }

    /// With a given prober (tests model hung mounts with it).
    pub fn with_prober(roots: Roots, cfg: FilesystemConfig, prober: Prober) -> Self {
        Self {
            roots,
            cfg,
            prober,
            warned: false,
            logged_stuck: BTreeSet::new(),
            healthy: BTreeSet::new(),
            timeouts: 0,
            skipped: BTreeMap::new(),
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

    /// Reads once. Never waits longer than the family's budget (plus one call's
    /// timeout at most): stuck mounts are skipped without a call, and the mounts left
    /// when the budget is spent wait for the next cycle.
    ///
    /// # Errors
    /// No mount table can be read. A mount whose statvfs fails is skipped.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<FilesystemReading, CollectError> {
        let mounts = visible(
            self.mounts()?,
            &self.cfg.fs_types_exclude,
            &self.cfg.mount_points_exclude,
        );
        let deadline = Instant::now() + self.cfg.budget;
        // Mounts that answered last cycle go first, so that a newly hung mount can only
        // use up the budget of those not known to be healthy.
        let mut order: Vec<(usize, Mount)> = mounts.into_iter().enumerate().collect();
        order.sort_by_key(|(i, m)| (!self.healthy.contains(&m.mountpoint), *i));
        let mut healthy = BTreeSet::new();
        let mut filesystems = Vec::new();
        for (i, mount) in order {
            if self.prober.is_stuck(&mount.mountpoint) {
                *self.skipped.entry("stuck").or_default() += 1;
                continue;
            }
            if Instant::now() + self.prober.timeout() > deadline {
                *self.skipped.entry("budget").or_default() += 1;
                continue;
            }
            // The host's mount point, seen under --rootfs.
            let at = self.roots.host_path(&mount.mountpoint);
            let probe = if super::statvfs::answers_from_memory(&mount.fstype) {
                self.prober.probe_inline(&at)
            } else {
                self.prober.probe(&mount.mountpoint, &at)
            };
            match probe {
                Probe::Answered(Ok(st)) => {
                    healthy.insert(mount.mountpoint.clone());
                    filesystems.push((
                        i,
                        FilesystemStats {
                            mount,
                            total: st.total,
                            free: st.free,
                            reserved: st.reserved,
                            inodes: st.inodes,
                            inodes_free: st.inodes_free,
                        },
                    ));
                }
                // Permission errors on other users' mounts, or a mount point that is
                // not under the rootfs: normal, skip them.
                Probe::Answered(Err(_)) => {}
                Probe::TimedOut => {
                    self.timeouts += 1;
                    if self.logged_stuck.insert(mount.mountpoint.clone()) {
                        tracing::warn!(
                            mountpoint = %mount.mountpoint,
                            fstype = %mount.fstype,
                            timeout = ?self.prober.timeout(),
                            "statvfs did not answer; skipping this mount until it \
                             answers again (a dead NFS server?)"
                        );
                    }
                }
                Probe::Stuck => *self.skipped.entry("stuck").or_default() += 1,
                Probe::TooManyHung => *self.skipped.entry("hung_limit").or_default() += 1,
            }
        }
        self.healthy = healthy;
        filesystems.sort_by_key(|(i, _)| *i);
        let filesystems = filesystems.into_iter().map(|(_, f)| f).collect();
        let stuck: Vec<String> = self.prober.stuck().into_iter().map(|(m, _)| m).collect();
        self.logged_stuck.retain(|m| {
            let still = stuck.contains(m);
            if !still {
                tracing::info!(mountpoint = %m, "statvfs answers again");
            }
            still
        });
        Ok(FilesystemReading {
            filesystems,
            stuck,
            timeouts: self.timeouts,
            skipped: self.skipped.clone(),
        })
    }

    /// Reads once through sysinfo.
    ///
    /// # Errors
    /// sysinfo does not support this platform.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<FilesystemReading, CollectError> {
        let _ = (&self.roots, &self.prober, &self.logged_stuck, &self.healthy);
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
                inodes: 0,
                inodes_free: 0,
            })
            .filter(|f| {
                !self.cfg.fs_types_exclude.matches(&f.mount.fstype)
                    && !self.cfg.mount_points_exclude.matches(&f.mount.mountpoint)
            })
            .collect();
        Ok(FilesystemReading {
            filesystems,
            ..FilesystemReading::default()
        })
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

    fn defaults(mounts: Vec<Mount>) -> Vec<Mount> {
        let c = FilesystemConfig::default();
        visible(mounts, &c.fs_types_exclude, &c.mount_points_exclude)
    }

    #[test]
    fn pseudo_filesystems_are_excluded_and_escapes_decoded() {
        let m = defaults(parse_mounts(
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
        let m = defaults(parse_mountinfo(MOUNTINFO));
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

    /// A Kubernetes node's table: the host's disks among overlays, kubelet volumes,
    /// containerd shm mounts, tmpfs, nsfs and cgroups.
    const K8S_MOUNTINFO: &str = "\
22 1 253:1 / / rw - ext4 /dev/nvme0n1p1 rw
23 22 0:5 / /dev rw - devtmpfs devtmpfs rw
24 22 0:21 / /run rw - tmpfs tmpfs rw
25 22 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
26 22 259:2 / /var/lib/kubelet rw - xfs /dev/nvme1n1 rw
27 22 259:3 / /var/lib/containerd rw - xfs /dev/nvme2n1 rw
30 27 0:60 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw
31 26 0:61 / /var/lib/kubelet/pods/0a1b/volumes/kubernetes.io~projected/kube-api-access-x rw - tmpfs tmpfs rw
32 26 259:4 / /var/lib/kubelet/pods/0a1b/volumes/kubernetes.io~csi/pvc-1/mount rw - ext4 /dev/nvme3n1 rw
33 22 0:4 net:[4026532] /run/netns/cni-1234 rw - nsfs nsfs rw
34 27 0:62 / /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm rw - tmpfs shm rw
35 22 0:63 / /snap/core/1 ro - squashfs /dev/loop0 ro
36 22 0:64 / /mnt/nfs rw - nfs4 fs:/export rw
";

    #[test]
    fn kubernetes_nodes_report_their_disks_and_not_pod_or_runtime_mounts() {
        let m = defaults(parse_mountinfo(K8S_MOUNTINFO));
        let points: Vec<&str> = m.iter().map(|m| m.mountpoint.as_str()).collect();
        assert_eq!(
            points,
            ["/", "/var/lib/kubelet", "/var/lib/containerd", "/mnt/nfs"]
        );
    }

    #[test]
    fn configured_excludes_replace_the_defaults() {
        let types = Patterns::parse(Kind::FsType, &["nfs*"]).unwrap();
        let points = Patterns::parse(Kind::MountPoint, &["/var/lib"]).unwrap();
        let m = visible(parse_mountinfo(K8S_MOUNTINFO), &types, &points);
        let got: Vec<&str> = m.iter().map(|m| m.mountpoint.as_str()).collect();
        // Now overlay, tmpfs and the rest are kept; nfs and all of /var/lib are not.
        assert!(
            got.contains(&"/run") && got.contains(&"/snap/core/1"),
            "{got:?}"
        );
        assert!(
            !got.iter()
                .any(|m| m.starts_with("/var/lib") || *m == "/mnt/nfs")
        );
        let none = Patterns::none(Kind::FsType);
        let all = visible(
            parse_mountinfo(K8S_MOUNTINFO),
            &none,
            &Patterns::none(Kind::MountPoint),
        );
        assert_eq!(all.len(), 13);
    }

    /// Sizes every fake statvfs answers.
    const STAT: super::super::statvfs::Stat = super::super::statvfs::Stat {
        total: 1000,
        free: 400,
        reserved: 100,
        inodes: 50,
        inodes_free: 20,
    };

    /// A source over a fixture tree whose pid 1 has `mountinfo`, asking `call` for
    /// statvfs.
    #[cfg(target_os = "linux")]
    fn source_over(
        mountinfo: &str,
        cfg: FilesystemConfig,
        call: super::super::statvfs::StatFn,
    ) -> (tempfile::TempDir, FilesystemSource) {
        let d = tempfile::tempdir().unwrap();
        let proc = d.path().join("proc");
        std::fs::create_dir_all(proc.join("1")).unwrap();
        std::fs::write(proc.join("1/mountinfo"), mountinfo).unwrap();
        let prober = Prober::with_call(cfg.statvfs_timeout, cfg.max_hung, call);
        let roots = Roots {
            proc,
            rootfs: d.path().to_owned(),
            ..Roots::default()
        };
        (d, FilesystemSource::with_prober(roots, cfg, prober))
    }

    /// Roots whose pid-1 table lists `/`, two mounts that hang and one that answers,
    /// and a prober whose statvfs blocks on `hung` paths until released.
    #[cfg(target_os = "linux")]
    fn with_hung_mounts(
        timeout_ms: u64,
        budget_ms: u64,
    ) -> (
        tempfile::TempDir,
        FilesystemSource,
        std::sync::mpsc::Sender<()>,
    ) {
        use std::sync::{Arc, Mutex, mpsc};
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let call: super::super::statvfs::StatFn = Arc::new(move |p: &std::path::Path| {
            if p.to_string_lossy().contains("hung") {
                let _ = rx.lock().unwrap().recv();
            }
            Ok(STAT)
        });
        let cfg = FilesystemConfig {
            statvfs_timeout: Duration::from_millis(timeout_ms),
            budget: Duration::from_millis(budget_ms),
            ..FilesystemConfig::default()
        };
        let (d, src) = source_over(
            "22 1 253:1 / / rw - ext4 /dev/vda rw\n\
             40 22 0:50 / /mnt/hung-a rw - nfs4 fs:/a rw\n\
             41 22 0:51 / /mnt/hung-b rw - nfs4 fs:/b rw\n\
             42 22 259:2 / /srv/ok rw - xfs /dev/vdb rw\n",
            cfg,
            call,
        );
        (d, src, tx)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn local_filesystems_are_asked_inline_and_remote_ones_under_the_deadline() {
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let log = seen.clone();
        let call: super::super::statvfs::StatFn = Arc::new(move |p: &std::path::Path| {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            log.lock()
                .unwrap()
                .push((p.to_string_lossy().into_owned(), thread));
            Ok(STAT)
        });
        let (_d, mut src) = source_over(
            "22 1 253:1 / / rw - ext4 /dev/vda rw\n\
             40 22 0:50 / /mnt/nfs rw - nfs4 fs:/a rw\n\
             41 22 0:51 / /mnt/fuse rw - fuse.sshfs host:/b rw\n\
             42 22 259:2 / /srv/xfs rw - xfs /dev/vdb rw\n",
            FilesystemConfig::default(),
            call,
        );
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || src.read().unwrap())
            .unwrap()
            .join()
            .unwrap();
        let seen = seen.lock().unwrap();
        let thread_of = |suffix: &str| {
            seen.iter()
                .find(|(p, _)| p.ends_with(suffix))
                .map(|(_, t)| t.clone())
                .unwrap_or_else(|| panic!("{suffix} not asked: {seen:?}"))
        };
        assert_eq!(thread_of("/srv/xfs"), "reader");
        assert_eq!(thread_of("/mnt/nfs"), "statvfs");
        assert_eq!(thread_of("/mnt/fuse"), "statvfs");
        // The root mount: ext4, inline.
        assert!(
            seen.iter()
                .any(|(p, t)| !p.contains("mnt") && !p.ends_with("xfs") && t == "reader"),
            "{seen:?}"
        );
    }

    #[cfg(target_os = "linux")]
    fn mountpoints(r: &FilesystemReading) -> Vec<&str> {
        r.filesystems
            .iter()
            .map(|f| f.mount.mountpoint.as_str())
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hung_mounts_are_skipped_until_they_answer_and_the_others_keep_reporting() {
        let (_d, mut src, release) = with_hung_mounts(300, 2000);
        let t = Instant::now();
        let r = src.read().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(mountpoints(&r), ["/", "/srv/ok"]);
        assert_eq!(r.stuck, ["/mnt/hung-a", "/mnt/hung-b"]);
        assert_eq!(r.timeouts, 2);
        // The next cycle does not wait on them at all.
        let t = Instant::now();
        let r = src.read().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(mountpoints(&r), ["/", "/srv/ok"]);
        assert_eq!(r.timeouts, 2);
        assert_eq!(r.skipped.get("stuck"), Some(&2));
        let mut out = Points::default();
        r.points(&mut out);
        let s = crate::snapshot::Snapshot::new(out);
        assert_eq!(s.points(names::FILESYSTEM_STUCK).len(), 2);
        assert_eq!(
            s.points(names::FILESYSTEM_TIMEOUTS)[0].value,
            crate::snapshot::Value::Int(2)
        );
        // Both answer at last: they are asked (and reported) again.
        release.send(()).unwrap();
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !src.prober.stuck().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        release.send(()).unwrap();
        release.send(()).unwrap();
        let r = src.read().unwrap();
        assert_eq!(
            mountpoints(&r),
            ["/", "/mnt/hung-a", "/mnt/hung-b", "/srv/ok"]
        );
        assert!(r.stuck.is_empty());
    }

    #[test]
    fn inodes_are_reported_used_and_free_where_the_filesystem_has_an_inode_table() {
        let mount = |m: &str| Mount {
            device: "/dev/x".into(),
            mountpoint: m.into(),
            fstype: "ext4".into(),
            read_only: false,
        };
        let r = FilesystemReading {
            filesystems: vec![
                FilesystemStats {
                    mount: mount("/"),
                    total: 1000,
                    free: 400,
                    reserved: 100,
                    inodes: 64,
                    inodes_free: 24,
                },
                // btrfs: no inode table.
                FilesystemStats {
                    mount: mount("/data"),
                    total: 1000,
                    free: 400,
                    reserved: 0,
                    inodes: 0,
                    inodes_free: 0,
                },
            ],
            ..FilesystemReading::default()
        };
        let mut out = Points::default();
        r.points(&mut out);
        let s = crate::snapshot::Snapshot::new(out);
        let p = s.points(names::SYSTEM_FILESYSTEM_INODES_USAGE);
        let by_state: BTreeMap<String, i64> = p
            .iter()
            .map(|p| {
                let state = p
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == SYSTEM_FILESYSTEM_STATE)
                    .map(|kv| kv.value.as_str().into_owned())
                    .unwrap();
                (state, p.value.as_i64())
            })
            .collect();
        assert_eq!(
            by_state,
            BTreeMap::from([("free".into(), 24), ("used".into(), 40)])
        );
        let attrs: BTreeSet<&str> = p[0].attributes.iter().map(|kv| kv.key.as_str()).collect();
        let want: BTreeSet<&str> = crate::catalogue::find(names::SYSTEM_FILESYSTEM_INODES_USAGE)
            .unwrap()
            .attributes
            .iter()
            .copied()
            .collect();
        assert_eq!(attrs, want);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_family_stops_calling_when_its_budget_is_spent() {
        // Two hung mounts at 300 ms each do not fit in 450 ms: the second one and the
        // mounts after it wait for the next cycle.
        let (_d, mut src, release) = with_hung_mounts(300, 450);
        let t = Instant::now();
        let r = src.read().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(mountpoints(&r), ["/"]);
        assert_eq!(r.timeouts, 1);
        assert_eq!(r.skipped.get("budget"), Some(&2));
        // Next cycle: hung-a is skipped at once, hung-b gets its call, /srv/ok waits.
        let r = src.read().unwrap();
        assert_eq!(r.timeouts, 2);
        assert_eq!(r.skipped.get("stuck"), Some(&1));
        // Then both are known to hang and cost nothing: /srv/ok is reported.
        let t = Instant::now();
        let r = src.read().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(mountpoints(&r), ["/", "/srv/ok"]);
        assert_eq!(r.skipped.get("stuck"), Some(&3));
        release.send(()).unwrap();
        release.send(()).unwrap();
    }
}
