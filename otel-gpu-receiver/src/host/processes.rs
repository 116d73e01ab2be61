//! `system.process.count` by status and `system.process.created`, from /proc/stat's
//! `procs_running`, `procs_blocked` and `processes` lines: one file, where a per-state
//! count of every process would read `/proc/<pid>/stat` for each process.

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::PROCESS_STATE;
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// One cycle's process counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessesReading {
    /// Runnable processes.
    pub running: u64,
    /// Processes blocked on I/O.
    pub blocked: u64,
    /// Processes (forks) created since boot.
    pub created: u64,
}

impl ProcessesReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        for (status, v) in [("running", self.running), ("blocked", self.blocked)] {
            out.push(
                sc::SYSTEM_PROCESS_COUNT,
                vec![KeyValue::new(PROCESS_STATE, status)],
                v,
            );
        }
        out.push(sc::SYSTEM_PROCESS_CREATED, vec![], self.created);
    }
}

/// Reads the processes family.
#[derive(Debug)]
pub struct ProcessesSource {
    roots: Roots,
}

impl ProcessesSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/stat cannot be read or lacks a line (always Unsupported off Linux).
    pub fn read(&mut self) -> Result<ProcessesReading, CollectError> {
        if cfg!(not(target_os = "linux")) {
            return Err(CollectError::Unsupported);
        }
        let path = self.roots.proc("stat");
        let text = super::roots::read(&path)?;
        let get = |k: &str| -> Result<u64, CollectError> {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
                .ok_or_else(|| CollectError::parse(&path, format!("no {k} line")))
        };
        Ok(ProcessesReading {
            running: get("procs_running")?,
            blocked: get("procs_blocked")?,
            created: get("processes")?,
        })
    }
}

impl Source for ProcessesSource {
    fn family(&self) -> Family {
        Family::Processes
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
        self.read()?.points(out);
        Ok(())
    }
}
