//! pid → container: the container ID and the Kubernetes pod UID, read from a process's
//! `<proc_root>/<pid>/cgroup`. otel-instrument reads its own process's for
//! `container.id`; otel-gpu-receiver reads every GPU process's.
//!
//! The file has one `hierarchy-id:controllers:path` line per hierarchy. cgroup v1 has one line
//! per controller (`4:memory:/docker/<id>`), v2 a single `0::/path` line, and hybrid hosts
//! both. The container and the pod are encoded in the path by the runtime and by the
//! kubelet's cgroup driver:
//!
//! | runtime / driver | path segment |
//! |---|---|
//! | docker (cgroupfs) | `/docker/<id>` |
//! | docker (systemd) | `docker-<id>.scope` |
//! | containerd CRI (systemd) | `cri-containerd-<id>.scope` |
//! | cri-o (systemd) | `crio-<id>.scope` (`crio-conmon-<id>.scope` is the monitor, not the container) |
//! | podman | `libpod-<id>.scope`, or `/libpod_parent/libpod-<id>` |
//! | kubelet, cgroupfs driver | `/kubepods/<qos>/pod<uid>/<id>` |
//! | kubelet, systemd driver | `kubepods-<qos>-pod<uid with _ for ->.slice` |
//!
//! Paths are read segment by segment, so a leading `/../..` (the agent in its own cgroup
//! namespace) or a trailing sub-cgroup (`.../<id>.scope/init`) does not matter.

use std::path::{Path, PathBuf};

/// The container runtime that named a cgroup, guessed from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Runtime {
    /// Docker (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// containerd through its CRI plugin (`cri-containerd-<id>.scope`).
    Containerd,
    /// CRI-O (`crio-<id>.scope`).
    CriO,
    /// Podman (`libpod-<id>`).
    Podman,
    /// A bare 64-hex ID (the kubelet's cgroupfs driver, or an unknown runtime).
    Unknown,
}

impl Runtime {
    /// The `container.runtime` value of the semantic conventions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        }
    }
}

/// What a process's cgroup says about where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// The container ID (64 lowercase hex digits), when the process is in a container.
    pub container_id: Option<String>,
    /// The runtime that named the container.
    pub runtime: Option<Runtime>,
    /// The Kubernetes pod UID (with dashes), when the process is in a pod.
    pub pod_uid: Option<String>,
}

impl ContainerInfo {
    /// Neither a container nor a pod was found (a host process).
    pub fn is_host(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

/// Reading a cgroup file failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// The file could not be read (the process exited, or no permission).
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `hierarchy-id:controllers:path`.
    #[error("malformed cgroup file {path}, line {line}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

impl CgroupError {
    /// A short, low-cardinality name for counting (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                "cgroup_gone"
            }
            Self::Read { .. } => "cgroup_unreadable",
            Self::Malformed { .. } => "cgroup_malformed",
        }
    }
}

/// Reads `<proc_root>/<pid>/cgroup`. The proc root is the seam tests point at fixture trees.
#[derive(Debug, Clone)]
pub struct CgroupReader {
    proc_root: PathBuf,
}

impl Default for CgroupReader {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl CgroupReader {
    /// A reader over `proc_root` (normally `/proc`; the host's `/proc` when run in a pod with
    /// `hostPID: true`).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
        }
    }

    /// The proc root this reader uses.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Where `pid` runs.
    ///
    /// # Errors
    /// [`CgroupError::Read`] when the file cannot be read, [`CgroupError::Malformed`] when a
    /// line does not have the cgroup format (the file is then not trusted at all).
    pub fn read(&self, pid: u32) -> Result<ContainerInfo, CgroupError> {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let bytes = std::fs::read(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Err(CgroupError::Malformed { path, line: 1 });
        };
        parse_cgroup_file(text).map_err(|line| CgroupError::Malformed { path, line })
    }
}

/// Parses the contents of a `/proc/<pid>/cgroup` file.
///
/// Every line's path is examined; the first container ID and the first pod UID found win
/// (on hybrid hosts all hierarchies normally agree).
///
/// # Errors
/// The 1-based number of the first line that is not `hierarchy-id:controllers:path`; an
/// empty file is malformed too (line 1).
pub fn parse_cgroup_file(text: &str) -> Result<ContainerInfo, usize> {
    let mut info = ContainerInfo::default();
    let mut lines = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(n + 1);
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
            return Err(n + 1);
        }
        let found = parse_cgroup_path(path);
        if info.container_id.is_none() && found.container_id.is_some() {
            info.container_id = found.container_id;
            info.runtime = found.runtime;
        }
        if info.pod_uid.is_none() {
            info.pod_uid = found.pod_uid;
        }
    }
    if lines == 0 {
        return Err(1);
    }
    Ok(info)
}

/// Finds the container ID and pod UID in one cgroup path.
pub fn parse_cgroup_path(path: &str) -> ContainerInfo {
    let mut info = ContainerInfo::default();
    let mut previous = "";
    for segment in path.split('/').filter(|s| !s.is_empty() && *s != "..") {
        if info.pod_uid.is_none() {
            info.pod_uid = pod_uid(segment);
        }
        if info.container_id.is_none()
            && let Some((id, runtime)) = container_id(segment, previous)
        {
            info.container_id = Some(id);
            info.runtime = Some(runtime);
        }
        previous = segment;
    }
    info
}

/// The container ID in one path segment, and the runtime its naming points to.
fn container_id(segment: &str, parent: &str) -> Option<(String, Runtime)> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // Monitor processes (conmon) live next to the container under a similar name.
    if name.starts_with("crio-conmon-") || name.starts_with("libpod-conmon-") {
        return None;
    }
    const PREFIXES: [(&str, Runtime); 6] = [
        ("cri-containerd-", Runtime::Containerd),
        ("containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
        ("nerdctl-", Runtime::Containerd),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((id.to_ascii_lowercase(), runtime));
        }
    }
    if is_container_id(name) {
        let runtime = match parent {
            "docker" => Runtime::Docker,
            "libpod_parent" => Runtime::Podman,
            _ => Runtime::Unknown,
        };
        return Some((name.to_ascii_lowercase(), runtime));
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod UID in one path segment: `pod<uid>` (cgroupfs driver) or
/// `…-pod<uid>.slice` (systemd driver, where the UID's dashes are underscores).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let rest = if let Some(rest) = name.strip_prefix("pod") {
        rest
    } else {
        let at = name.rfind("-pod")?;
        // Only kubelet slices: `kubepods-…-pod<uid>` or `kubelet-kubepods-…-pod<uid>`.
        if !name.contains("kubepods") {
            return None;
        }
        &name[at + 4..]
    };
    let uid = rest.replace('_', "-");
    is_pod_uid(&uid).then(|| uid.to_ascii_lowercase())
}

/// A pod UID: an RFC 4122 UUID (8-4-4-4-12), or the 32 hex digits of a static pod's hash.
fn is_pod_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f8a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    #[test]
    fn a_systemd_slice_uid_has_its_underscores_turned_into_dashes() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_aaaa_bbbb_cccc_123456789abc.slice/cri-containerd-{ID}.scope"
        );
        let info = parse_cgroup_path(&p);
        assert_eq!(
            info.pod_uid.as_deref(),
            Some("1b2c3d4e-aaaa-bbbb-cccc-123456789abc")
        );
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.runtime, Some(Runtime::Containerd));
    }

    #[test]
    fn a_conmon_scope_is_not_a_container() {
        let info = parse_cgroup_path(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert!(info.is_host());
    }

    #[test]
    fn short_or_non_hex_ids_are_not_containers() {
        assert!(parse_cgroup_path("/docker/abc123").is_host());
        assert!(parse_cgroup_path("/system.slice/docker.service").is_host());
        assert!(parse_cgroup_path("/user.slice/user-1000.slice/session-2.scope").is_host());
    }

    #[test]
    fn a_line_without_three_fields_makes_the_file_malformed() {
        assert_eq!(parse_cgroup_file("0::/\ngarbage\n"), Err(2));
        assert_eq!(parse_cgroup_file("x:cpu:/\n"), Err(1));
        assert_eq!(parse_cgroup_file("0::relative\n"), Err(1));
        assert_eq!(parse_cgroup_file(""), Err(1));
    }
}
