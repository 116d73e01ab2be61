//! Pod UID → namespace and name, from the kubelet's pod log directories.
//!
//! The pod-resources API names pods but does not give their UIDs, while a process's cgroup
//! gives the UID but not the name. The kubelet creates one directory per pod under
//! `/var/log/pods`, named `<namespace>_<pod name>_<pod uid>`; namespaces and pod names are
//! DNS names and never contain `_`, so the name splits without ambiguity. Reading that
//! directory is what lets several pods sharing one GPU each get their own share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the kubelet keeps pod log directories.
pub const DEFAULT_POD_LOG_DIR: &str = "/var/log/pods";

/// A pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodName {
    /// `k8s.namespace.name`.
    pub namespace: String,
    /// `k8s.pod.name`.
    pub name: String,
}

/// The UID → name index, rescanned at most once per cycle and only on a miss.
#[derive(Debug)]
pub struct PodDirectory {
    root: PathBuf,
    by_uid: HashMap<String, PodName>,
    scanned_in: Option<u64>,
    readable: bool,
}

impl PodDirectory {
    /// An index over `root` (normally [`DEFAULT_POD_LOG_DIR`]). A missing directory is an
    /// empty index, not an error.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            by_uid: HashMap::new(),
            scanned_in: None,
            readable: false,
        }
    }

    /// The directory this index reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pod with `uid`, rescanning the directory first if the UID is unknown and the
    /// directory was not yet read in `cycle`.
    pub fn lookup(&mut self, uid: &str, cycle: u64) -> Option<&PodName> {
        if !self.by_uid.contains_key(uid) && self.scanned_in != Some(cycle) {
            self.scan();
            self.scanned_in = Some(cycle);
        }
        self.by_uid.get(uid)
    }

    /// Whether the directory could be read at the last scan (it is mounted), so that a UID
    /// missing from it is really unknown.
    pub fn is_readable(&self) -> bool {
        self.readable
    }

    fn scan(&mut self) {
        self.by_uid.clear();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            self.readable = false;
            return;
        };
        self.readable = true;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some((uid, pod)) = name.to_str().and_then(parse_pod_dir) {
                self.by_uid.insert(uid, pod);
            }
        }
    }
}

/// Splits `<namespace>_<name>_<uid>`.
pub fn parse_pod_dir(dir: &str) -> Option<(String, PodName)> {
    let mut parts = dir.split('_');
    let (Some(namespace), Some(name), Some(uid), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if namespace.is_empty() || name.is_empty() || uid.is_empty() {
        return None;
    }
    Some((
        uid.to_ascii_lowercase(),
        PodName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_log_directory_name_splits_into_namespace_name_and_uid() {
        let (uid, pod) =
            parse_pod_dir("ml-team_trainer-7f9c-0_0e6f1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(uid, "0e6f1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(pod.namespace, "ml-team");
        assert_eq!(pod.name, "trainer-7f9c-0");
        assert_eq!(parse_pod_dir("no-underscores"), None);
        assert_eq!(parse_pod_dir("a_b_c_d"), None);
        assert_eq!(parse_pod_dir("_b_c"), None);
    }

    #[test]
    fn a_missing_directory_is_an_empty_index() {
        let mut d = PodDirectory::new("/nonexistent/otel-gpu-receiver/pods");
        assert_eq!(d.lookup("x", 1), None);
        assert!(!d.is_readable());
    }
}
