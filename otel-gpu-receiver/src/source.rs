//! The [`Source`] trait and [`CollectError`], which every family (host, gpu,
//! attribution) implements and the collector drives.
//!
//! This module depends on nothing but the catalogue's [`Family`] and the snapshot's
//! [`Points`], so families depend on it and it depends on none of them: the dependency
//! graph points one way (families → source, snapshot, catalogue; the collector and
//! `lib.rs` compose them).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::catalogue::Family;
use crate::snapshot::Points;

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
    #[error("its worker is still busy with an earlier read that hung")]
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

#[cfg(test)]
mod tests {
    /// The `crate::` modules a file's non-test code names (`crate::a::b` → `a::b`).
    fn crate_paths(text: &str) -> Vec<String> {
        let code = text.split("#[cfg(test)]").next().unwrap_or(text);
        let mut out = Vec::new();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                out.push(path.trim_end_matches(':').to_owned());
            }
        }
        out
    }

    fn only(file: &str, text: &str, allowed: &[&str]) {
        for p in crate_paths(text) {
            assert!(
                allowed
                    .iter()
                    .any(|a| p == *a || p.starts_with(&format!("{a}::"))),
                "{file} depends on crate::{p}; dependencies must point one way \
                 (allowed: {allowed:?})"
            );
        }
    }

    #[test]
    fn the_catalogue_is_a_leaf_that_names_only_name_modules() {
        only(
            "catalogue.rs",
            include_str!("catalogue.rs"),
            &["names", "gpu::names", "snapshot::Snapshot"],
        );
    }

    #[test]
    fn the_source_trait_depends_only_on_the_catalogue_and_the_snapshot() {
        only(
            "source.rs",
            include_str!("source.rs"),
            &["catalogue", "snapshot"],
        );
    }

    #[test]
    fn host_families_never_depend_on_gpu_attribution_or_the_collector() {
        let allowed = &["catalogue", "snapshot", "source", "names", "host"];
        only("host/mod.rs", include_str!("host/mod.rs"), allowed);
        only("host/roots.rs", include_str!("host/roots.rs"), allowed);
        only("host/cpu.rs", include_str!("host/cpu.rs"), allowed);
        only("host/disk.rs", include_str!("host/disk.rs"), allowed);
        only(
            "host/filesystem.rs",
            include_str!("host/filesystem.rs"),
            allowed,
        );
        only("host/load.rs", include_str!("host/load.rs"), allowed);
        only("host/memory.rs", include_str!("host/memory.rs"), allowed);
        only("host/network.rs", include_str!("host/network.rs"), allowed);
        only("host/paging.rs", include_str!("host/paging.rs"), allowed);
        only("host/process.rs", include_str!("host/process.rs"), allowed);
        only(
            "host/processes.rs",
            include_str!("host/processes.rs"),
            allowed,
        );
        only("host/uptime.rs", include_str!("host/uptime.rs"), allowed);
    }

    #[test]
    fn gpu_and_attribution_implement_source_without_going_through_host() {
        for (file, text) in [
            ("gpu/mod.rs", include_str!("gpu/mod.rs")),
            ("attribution/mod.rs", include_str!("attribution/mod.rs")),
        ] {
            let paths = crate_paths(text);
            assert!(
                paths.iter().all(|p| !p.starts_with("host")),
                "{file} depends on crate::host: {paths:?}"
            );
        }
    }
}
