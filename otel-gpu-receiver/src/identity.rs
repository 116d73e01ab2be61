//! Who the agent reports as: the host's identity, not the container's.
//!
//! In a container (compose) or a DaemonSet pod, the agent's own hostname is the
//! container's (it changes on every rollout) and `/etc/machine-id` is the image's. The
//! host's own files are read under `--rootfs` instead, and the node name comes from
//! `K8S_NODE_NAME` (the downward API), so `service.instance.id`, and with it
//! Prometheus's `instance`, stays the same across restarts of the agent on one host.
//!
//! | attribute | from, first that answers |
//! |---|---|
//! | `host.name` | `<rootfs>/etc/hostname` (when `--rootfs` is not `/`); the node name; `gethostname()` |
//! | `host.id` | `<rootfs>/etc/machine-id`, `<rootfs>/var/lib/dbus/machine-id` |
//! | `service.instance.id` | `--instance-id`; the node name; the host's hostname; its machine id; `gethostname()` |
//!
//! Only the last fallback can be the container's own name: then one warning says so.

use std::path::Path;

/// Where a host name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// `<rootfs>/etc/hostname`: the host's configured name.
    Rootfs,
    /// `K8S_NODE_NAME`.
    NodeName,
    /// `gethostname()` with `--rootfs /`: the host's name when the agent runs on it.
    Kernel,
    /// `gethostname()` although `--rootfs` points elsewhere: the container's name,
    /// which changes with every rollout.
    Container,
    /// Nothing answered.
    Unknown,
}

/// The identity the resource reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// `host.name`.
    pub host_name: String,
    /// Where `host_name` came from.
    pub host_name_source: NameSource,
    /// `host.id`: the host's machine id, when readable.
    pub host_id: Option<String>,
    /// `service.instance.id`.
    pub instance_id: String,
    /// `k8s.node.name`, when `K8S_NODE_NAME` is set.
    pub node_name: Option<String>,
}

impl HostIdentity {
    /// Reads the host's identity under `rootfs`. `instance_id` is `--instance-id`,
    /// `node_name` is `K8S_NODE_NAME`, and `kernel_hostname` is `gethostname()` (a
    /// parameter so that tests need not depend on the machine they run on).
    pub fn detect(
        rootfs: &Path,
        instance_id: Option<&str>,
        node_name: Option<&str>,
        kernel_hostname: &dyn Fn() -> Option<String>,
    ) -> Self {
        let on_host = rootfs == Path::new("/");
        let node_name = node_name.and_then(non_empty);
        let from_rootfs = || read_first_line(&rootfs.join("etc/hostname"));
        let (host_name, host_name_source) = if on_host {
            match kernel_hostname().as_deref().and_then(non_empty) {
                Some(h) => (h, NameSource::Kernel),
                None => match from_rootfs() {
                    Some(h) => (h, NameSource::Rootfs),
                    None => fallback(node_name.clone(), None),
                },
            }
        } else {
            match from_rootfs() {
                Some(h) => (h, NameSource::Rootfs),
                None => fallback(
                    node_name.clone(),
                    kernel_hostname().as_deref().and_then(non_empty),
                ),
            }
        };
        let host_id = ["etc/machine-id", "var/lib/dbus/machine-id"]
            .iter()
            .find_map(|p| read_first_line(&rootfs.join(p)));
        let instance_id = instance_id
            .and_then(non_empty)
            .or_else(|| node_name.clone())
            .or_else(|| {
                matches!(
                    host_name_source,
                    NameSource::Rootfs | NameSource::Kernel | NameSource::NodeName
                )
                .then(|| host_name.clone())
            })
            .or_else(|| host_id.clone())
            .unwrap_or_else(|| host_name.clone());
        Self {
            host_name,
            host_name_source,
            host_id,
            instance_id,
            node_name,
        }
    }

    /// Logs once what the identity rests on, and warns when it is the container's own
    /// name (which changes with every rollout).
    pub fn log(&self, rootfs: &Path) {
        if self.host_name_source == NameSource::Container && self.instance_id == self.host_name {
            tracing::warn!(
                rootfs = %rootfs.display(),
                host.name = %self.host_name,
                "no host name under the rootfs, no K8S_NODE_NAME and no machine id: \
                 service.instance.id falls back to this container's hostname, which changes \
                 with every restart; mount the host's / read-only and pass --rootfs, or set \
                 K8S_NODE_NAME or --instance-id"
            );
        } else if self.host_name_source == NameSource::Container {
            tracing::warn!(
                rootfs = %rootfs.display(),
                host.name = %self.host_name,
                service.instance.id = %self.instance_id,
                "no etc/hostname under the rootfs and no K8S_NODE_NAME: host.name is this \
                 container's hostname (service.instance.id is the host's machine id, so it \
                 stays stable)"
            );
        } else {
            tracing::debug!(
                host.name = %self.host_name,
                service.instance.id = %self.instance_id,
                source = ?self.host_name_source,
                "host identity"
            );
        }
    }
}

fn fallback(node_name: Option<String>, container: Option<String>) -> (String, NameSource) {
    match (node_name, container) {
        (Some(n), _) => (n, NameSource::NodeName),
        (None, Some(c)) => (c, NameSource::Container),
        (None, None) => ("unknown".to_owned(), NameSource::Unknown),
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The first line of a small file, trimmed; `None` when unreadable or empty.
fn read_first_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    non_empty(text.lines().next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs(hostname: Option<&str>, machine_id: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        if let Some(h) = hostname {
            std::fs::write(d.path().join("etc/hostname"), format!("{h}\n")).unwrap();
        }
        if let Some(m) = machine_id {
            std::fs::write(d.path().join("etc/machine-id"), format!("{m}\n")).unwrap();
        }
        d
    }

    const CONTAINER: &dyn Fn() -> Option<String> = &|| Some("3f2a9c1d7e6b".to_owned());

    #[test]
    fn in_a_container_the_host_files_under_rootfs_win_over_the_container_hostname() {
        let r = rootfs(Some("gpu-node-17"), Some("0123456789abcdef"));
        let id = HostIdentity::detect(r.path(), None, None, CONTAINER);
        assert_eq!(id.host_name, "gpu-node-17");
        assert_eq!(id.host_name_source, NameSource::Rootfs);
        assert_eq!(id.host_id.as_deref(), Some("0123456789abcdef"));
        assert_eq!(id.instance_id, "gpu-node-17");
    }

    #[test]
    fn the_node_name_is_the_instance_id_when_set() {
        let r = rootfs(Some("ip-10-0-0-7"), Some("abc"));
        let id = HostIdentity::detect(r.path(), None, Some("node-a"), CONTAINER);
        assert_eq!(id.instance_id, "node-a");
        assert_eq!(id.host_name, "ip-10-0-0-7");
        assert_eq!(id.node_name.as_deref(), Some("node-a"));
        // --instance-id beats it.
        let id = HostIdentity::detect(r.path(), Some("mine"), Some("node-a"), CONTAINER);
        assert_eq!(id.instance_id, "mine");
    }

    #[test]
    fn the_instance_id_is_the_same_across_restarts_in_new_containers() {
        let r = rootfs(None, Some("feedface"));
        let a = HostIdentity::detect(r.path(), None, None, &|| Some("container-a".into()));
        let b = HostIdentity::detect(r.path(), None, None, &|| Some("container-b".into()));
        // No hostname file: the machine id, never the container's changing name.
        assert_eq!(a.instance_id, "feedface");
        assert_eq!(a.instance_id, b.instance_id);
        assert_eq!(a.host_name_source, NameSource::Container);
    }

    #[test]
    fn with_nothing_of_the_host_readable_the_container_name_is_the_last_resort() {
        let r = rootfs(None, None);
        let id = HostIdentity::detect(r.path(), None, None, CONTAINER);
        assert_eq!(id.instance_id, "3f2a9c1d7e6b");
        assert_eq!(id.host_id, None);
        let id = HostIdentity::detect(r.path(), None, None, &|| None);
        assert_eq!(id.host_name, "unknown");
    }

    #[test]
    fn on_the_host_itself_the_kernel_hostname_is_used() {
        let id = HostIdentity::detect(Path::new("/"), None, None, &|| Some("bare-metal-1".into()));
        assert_eq!(id.host_name, "bare-metal-1");
        assert_eq!(id.instance_id, "bare-metal-1");
        assert_eq!(id.host_name_source, NameSource::Kernel);
    }
}
