//! `system.memory.*` from /proc/meminfo (sysinfo elsewhere).

use std::collections::HashMap;
use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::SYSTEM_MEMORY_STATE;
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// One cycle's memory reading, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryReading {
    /// Total memory.
    pub total: u64,
    /// Used: total − free − buffers − cached (cached includes reclaimable slab).
    pub used: u64,
    /// Free.
    pub free: u64,
    /// Buffers.
    pub buffers: u64,
    /// Page cache and reclaimable slab.
    pub cached: u64,
    /// The kernel's estimate of what new applications can use without swapping
    /// (`MemAvailable`, Linux 3.14 and later).
    pub available: Option<u64>,
}

impl MemoryReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        out.push(sc::SYSTEM_MEMORY_LIMIT, vec![], self.total);
        if let Some(a) = self.available {
            out.push(sc::SYSTEM_MEMORY_LINUX_AVAILABLE, vec![], a);
        }
        for (state, v) in [
            ("used", self.used),
            ("free", self.free),
            ("buffers", self.buffers),
            ("cached", self.cached),
        ] {
            let attrs = vec![KeyValue::new(SYSTEM_MEMORY_STATE, state)];
            out.push(sc::SYSTEM_MEMORY_USAGE, attrs.clone(), v);
            if self.total > 0 {
                out.push(
                    sc::SYSTEM_MEMORY_UTILIZATION,
                    attrs,
                    v as f64 / self.total as f64,
                );
            }
        }
    }

    /// Builds the reading from /proc/meminfo fields (bytes).
    ///
    /// # Errors
    /// MemTotal or MemFree is missing.
    pub fn from_meminfo(path: &Path, m: &HashMap<&str, u64>) -> Result<Self, CollectError> {
        let get = |k: &str| {
            m.get(k)
                .copied()
                .ok_or_else(|| CollectError::parse(path, format!("no {k} line")))
        };
        let total = get("MemTotal")?;
        let free = get("MemFree")?;
        let buffers = m.get("Buffers").copied().unwrap_or(0);
        let cached =
            m.get("Cached").copied().unwrap_or(0) + m.get("SReclaimable").copied().unwrap_or(0);
        let used = total.saturating_sub(free + buffers + cached);
        Ok(Self {
            total,
            used,
            free,
            buffers,
            cached,
            available: m.get("MemAvailable").copied(),
        })
    }
}

/// Parses /proc/meminfo into bytes per field (the names borrowed from `text`).
pub fn parse_meminfo(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut it = v.split_ascii_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            let mult = if it.next() == Some("kB") { 1024 } else { 1 };
            Some((k.trim(), n * mult))
        })
        .collect()
}

/// Reads the memory family.
#[derive(Debug)]
pub struct MemorySource {
    roots: Roots,
}

impl MemorySource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/meminfo cannot be read or lacks a field.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<MemoryReading, CollectError> {
        let path = self.roots.proc("meminfo");
        MemoryReading::from_meminfo(&path, &parse_meminfo(&super::roots::read(&path)?))
    }

    /// Reads once through sysinfo.
    ///
    /// # Errors
    /// sysinfo does not support this platform.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<MemoryReading, CollectError> {
        let _ = &self.roots;
        let mut s = sysinfo::System::new().map_err(|_| CollectError::Unsupported)?;
        s.refresh_memory();
        let total = s.total_memory();
        let free = s.free_memory();
        let used = s.used_memory();
        Ok(MemoryReading {
            total,
            used,
            free,
            buffers: 0,
            cached: total.saturating_sub(used + free),
            available: Some(s.available_memory()),
        })
    }
}

impl Source for MemorySource {
    fn family(&self) -> Family {
        Family::Memory
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
    fn meminfo_used_excludes_free_buffers_and_cache() {
        let m = parse_meminfo(
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 200 kB\nSReclaimable: 50 kB\n",
        );
        let r = MemoryReading::from_meminfo("meminfo".as_ref(), &m).unwrap();
        assert_eq!(r.total, 1000 * 1024);
        assert_eq!(r.used, 600 * 1024);
        assert_eq!(r.cached, 250 * 1024);
        assert_eq!(r.available, None);
    }

    #[test]
    fn mem_available_is_reported_as_system_memory_linux_available() {
        let m = parse_meminfo(
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 700 kB\nBuffers: 50 kB\nCached: 200 kB\n",
        );
        let r = MemoryReading::from_meminfo("meminfo".as_ref(), &m).unwrap();
        assert_eq!(r.available, Some(700 * 1024));
        let mut out = Points::default();
        r.points(&mut out);
        let s = crate::snapshot::Snapshot::new(out);
        let p = s.points(sc::SYSTEM_MEMORY_LINUX_AVAILABLE);
        assert_eq!(p.len(), 1);
        assert!(p[0].attributes.is_empty());
        assert_eq!(p[0].value, crate::snapshot::Value::Int(700 * 1024));
        // A kernel without MemAvailable: no series rather than a made-up value.
        let old = MemoryReading {
            available: None,
            ..r
        };
        let mut out = Points::default();
        old.points(&mut out);
        let s = crate::snapshot::Snapshot::new(out);
        assert!(s.points(sc::SYSTEM_MEMORY_LINUX_AVAILABLE).is_empty());
    }

    #[test]
    fn meminfo_without_memtotal_is_a_parse_error() {
        let m = parse_meminfo("MemFree: 100 kB\n");
        let e = MemoryReading::from_meminfo("meminfo".as_ref(), &m).unwrap_err();
        assert_eq!(e.kind(), "parse");
    }
}
