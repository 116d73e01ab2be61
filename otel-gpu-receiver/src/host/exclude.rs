//! Exclude lists for the filesystem and network families, with node_exporter-like
//! defaults sized for Kubernetes nodes: container overlays, kubelet pod volumes and
//! per-pod virtual interfaces come and go with every pod, and would churn series
//! without telling anything about the host.
//!
//! A pattern is a name where `*` stands for any characters (`cgroup*`, `veth*`). A
//! mount-point pattern without `*` also covers everything under it (`/proc` excludes
//! `/proc/sys/fs/binfmt_misc`); `/var/lib/kubelet/pods/*` excludes what is under the
//! directory but not the directory itself (a dedicated disk there is kept).

use std::fmt;

/// Filesystem types that hold no data of the host's own, or that belong to containers:
/// node_exporter's default list plus tmpfs, ramfs, efivarfs and lxcfs.
pub const DEFAULT_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup*",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "erofs",
    "fuse.lxcfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Mount points of pseudo filesystems and of the container runtimes and the kubelet
/// (node_exporter's list plus kubelet pod volumes and containerd).
pub const DEFAULT_MOUNT_POINTS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run/credentials/*",
    "/run/containerd/*",
    "/var/lib/containerd/*",
    "/var/lib/containers/storage/*",
    "/var/lib/docker/*",
    "/var/lib/kubelet/pods/*",
];

/// Virtual interfaces of containers and CNI plugins: one per pod, or bridges that only
/// carry pod traffic that the physical interfaces count already.
pub const DEFAULT_INTERFACES: &[&str] = &["veth*", "cali*", "flannel*", "cni*", "docker*"];

/// What a list of patterns is matched against; decides the validation and whether a
/// plain path covers what is under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Filesystem types (`ext4`, `cgroup*`).
    FsType,
    /// Absolute mount points (`/proc`, `/var/lib/kubelet/pods/*`).
    MountPoint,
    /// Network interface names (`veth*`).
    Interface,
}

/// A list of exclude patterns of one [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patterns {
    kind: Kind,
    patterns: Vec<String>,
}

/// Why a pattern was rejected (the config layer names the flag and adds an example).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.pattern, self.reason)
    }
}

impl Patterns {
    /// The default list of `kind`.
    pub fn default_for(kind: Kind) -> Self {
        let list = match kind {
            Kind::FsType => DEFAULT_FS_TYPES,
            Kind::MountPoint => DEFAULT_MOUNT_POINTS,
            Kind::Interface => DEFAULT_INTERFACES,
        };
        Self {
            kind,
            patterns: list.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// An empty list: nothing of `kind` is excluded.
    pub fn none(kind: Kind) -> Self {
        Self {
            kind,
            patterns: Vec::new(),
        }
    }

    /// Validates `items` as patterns of `kind`.
    ///
    /// # Errors
    /// The first pattern that is empty, or has characters that cannot appear in a
    /// name of that kind (whitespace, for instance, which says two patterns were
    /// meant but not separated by a comma).
    pub fn parse<S: AsRef<str>>(kind: Kind, items: &[S]) -> Result<Self, PatternError> {
        let mut patterns = Vec::new();
        for item in items {
            let p = item.as_ref().trim();
            let bad = |reason| PatternError {
                pattern: p.to_owned(),
                reason,
            };
            if p.is_empty() {
                return Err(bad("an empty pattern"));
            }
            match kind {
                Kind::MountPoint => {
                    if !p.starts_with('/') {
                        return Err(bad("a mount point pattern must be an absolute path"));
                    }
                    if p.chars().any(|c| c.is_control()) {
                        return Err(bad("a mount point pattern cannot hold control characters"));
                    }
                }
                Kind::FsType => {
                    if !p
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-*".contains(c))
                    {
                        return Err(bad(
                            "a filesystem type pattern has letters, digits, `.`, `_`, `+`, `-` and `*` only",
                        ));
                    }
                }
                Kind::Interface => {
                    if p.chars().any(|c| c.is_whitespace() || c == '/' || c == ':') {
                        return Err(bad(
                            "an interface name pattern cannot hold whitespace, `/` or `:`",
                        ));
                    }
                    if p.chars().filter(|c| *c != '*').count() > 15 {
                        return Err(bad("interface names are at most 15 characters"));
                    }
                }
            }
            patterns.push(p.to_owned());
        }
        Ok(Self { kind, patterns })
    }

    /// The patterns, as given.
    pub fn as_slice(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `name` is excluded.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| {
            if p.contains('*') {
                glob(p.as_bytes(), name.as_bytes())
            } else if self.kind == Kind::MountPoint {
                let p = p.trim_end_matches('/');
                name == p
                    || p.is_empty()
                    || name
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            } else {
                name == p
            }
        })
    }
}

/// `*` matches any run of characters (including none, and `/`); everything else
/// matches itself. Iterative, with one backtrack point: linear in practice.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_prefixes_suffixes_and_the_middle() {
        assert!(glob(b"veth*", b"veth12ab"));
        assert!(glob(b"veth*", b"veth"));
        assert!(!glob(b"veth*", b"eth0"));
        assert!(glob(b"*.lxcfs", b"fuse.lxcfs"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"cgroup*", b"cgroup2"));
    }

    #[test]
    fn the_default_fs_types_drop_container_and_pseudo_filesystems_only() {
        let p = Patterns::default_for(Kind::FsType);
        for t in [
            "overlay", "tmpfs", "squashfs", "nsfs", "proc", "sysfs", "cgroup", "cgroup2",
        ] {
            assert!(p.matches(t), "{t} should be excluded");
        }
        for t in ["ext4", "xfs", "btrfs", "nfs4", "zfs", "vfat", "fuse.sshfs"] {
            assert!(!p.matches(t), "{t} should be kept");
        }
    }

    #[test]
    fn the_default_mount_points_drop_kubelet_and_runtime_mounts_but_keep_their_disks() {
        let p = Patterns::default_for(Kind::MountPoint);
        for m in [
            "/proc",
            "/proc/sys/fs/binfmt_misc",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/var/lib/kubelet/pods/0a1b/volumes/kubernetes.io~csi/pvc-1/mount",
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs",
            "/var/lib/docker/overlay2/abc/merged",
            "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/x/shm",
        ] {
            assert!(p.matches(m), "{m} should be excluded");
        }
        for m in [
            "/",
            "/home",
            "/processing",
            "/var/lib/kubelet",
            "/var/lib/docker",
            "/var/lib/containerd",
            "/data/docker",
        ] {
            assert!(!p.matches(m), "{m} should be kept");
        }
    }

    #[test]
    fn the_default_interfaces_drop_pod_and_bridge_interfaces() {
        let p = Patterns::default_for(Kind::Interface);
        for i in ["veth3f2a", "cali8d1e", "flannel.1", "cni0", "docker0"] {
            assert!(p.matches(i), "{i} should be excluded");
        }
        for i in ["lo", "eth0", "eno1", "bond0", "ib0", "ens2f0np0"] {
            assert!(!p.matches(i), "{i} should be kept");
        }
    }

    #[test]
    fn bad_patterns_are_rejected_with_the_reason() {
        let e = Patterns::parse(Kind::MountPoint, &["var/lib"]).unwrap_err();
        assert!(e.reason.contains("absolute"), "{e}");
        let e = Patterns::parse(Kind::FsType, &["ext4 xfs"]).unwrap_err();
        assert_eq!(e.pattern, "ext4 xfs");
        let e = Patterns::parse(Kind::Interface, &["eth0", ""]).unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
        let e = Patterns::parse(Kind::Interface, &["averyveryverylongname0"]).unwrap_err();
        assert!(e.reason.contains("15"), "{e}");
        let ok = Patterns::parse(Kind::Interface, &[" lo ", "br-*"]).unwrap();
        assert!(ok.matches("lo") && ok.matches("br-1a2b") && !ok.matches("eth0"));
    }
}
