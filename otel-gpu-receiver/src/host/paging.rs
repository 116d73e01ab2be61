//! `system.paging.*`: swap usage from /proc/meminfo, faults and swap operations from
//! /proc/vmstat (sysinfo has neither).

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::{
    SYSTEM_PAGING_DIRECTION, SYSTEM_PAGING_FAULT_TYPE, SYSTEM_PAGING_STATE,
};
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// One cycle's paging reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagingReading {
    /// Swap size in bytes.
    pub swap_total: u64,
    /// Free swap in bytes.
    pub swap_free: u64,
    /// Minor faults since boot (pgfault − pgmajfault).
    pub minor_faults: u64,
    /// Major faults since boot.
    pub major_faults: u64,
    /// Pages swapped in since boot.
    pub swap_in: u64,
    /// Pages swapped out since boot.
    pub swap_out: u64,
}

impl PagingReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        let used = self.swap_total.saturating_sub(self.swap_free);
        for (state, v) in [("used", used), ("free", self.swap_free)] {
            let attrs = vec![KeyValue::new(SYSTEM_PAGING_STATE, state)];
            out.push(sc::SYSTEM_PAGING_USAGE, attrs.clone(), v);
            // No swap: report 0 rather than nothing, so the series exist everywhere.
            let share = if self.swap_total > 0 {
                v as f64 / self.swap_total as f64
            } else {
                0.0
            };
            out.push(sc::SYSTEM_PAGING_UTILIZATION, attrs, share);
        }
        for (ty, v) in [("minor", self.minor_faults), ("major", self.major_faults)] {
            out.push(
                sc::SYSTEM_PAGING_FAULTS,
                vec![KeyValue::new(SYSTEM_PAGING_FAULT_TYPE, ty)],
                v,
            );
        }
        for (dir, v) in [("in", self.swap_in), ("out", self.swap_out)] {
            out.push(
                sc::SYSTEM_PAGING_OPERATIONS,
                vec![KeyValue::new(SYSTEM_PAGING_DIRECTION, dir)],
                v,
            );
        }
    }
}

/// Reads the paging family.
#[derive(Debug)]
pub struct PagingSource {
    roots: Roots,
}

impl PagingSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/meminfo or /proc/vmstat cannot be read or lacks a field.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<PagingReading, CollectError> {
        let mpath = self.roots.proc("meminfo");
        let text = super::roots::read(&mpath)?;
        let m = super::memory::parse_meminfo(&text);
        let vpath = self.roots.proc("vmstat");
        let vm = super::roots::read(&vpath)?;
        let get = |k: &str| -> Result<u64, CollectError> {
            vm.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
                .ok_or_else(|| CollectError::parse(&vpath, format!("no {k} line")))
        };
        let faults = get("pgfault")?;
        let major = get("pgmajfault")?;
        let swap_in = get("pswpin")?;
        let swap_out = get("pswpout")?;
        Ok(PagingReading {
            swap_total: m.get("SwapTotal").copied().unwrap_or(0),
            swap_free: m.get("SwapFree").copied().unwrap_or(0),
            minor_faults: faults.saturating_sub(major),
            major_faults: major,
            swap_in,
            swap_out,
        })
    }

    /// Reads once.
    ///
    /// # Errors
    /// Faults are only available on Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<PagingReading, CollectError> {
        let _ = &self.roots;
        Err(CollectError::Unsupported)
    }
}

impl Source for PagingSource {
    fn family(&self) -> Family {
        Family::Paging
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
    fn paging_points_split_used_and_free_swap() {
        let r = PagingReading {
            swap_total: 100,
            swap_free: 25,
            ..Default::default()
        };
        let mut p = Points::default();
        r.points(&mut p);
        let s = crate::snapshot::Snapshot::new(p);
        let used = &s.points(sc::SYSTEM_PAGING_USAGE)[0];
        assert_eq!(used.value, crate::snapshot::Value::Int(75));
    }
}
