//! `system.disk.*` from /proc/diskstats (sysinfo has no per-disk operation counts).
//! Partitions and virtual devices (loop, ram, zram, fd, sr) are skipped, like
//! node_exporter, so each byte is counted once per physical disk.

use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::{DISK_IO_DIRECTION, SYSTEM_DEVICE};
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// Counters of one disk since boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Device name, e.g. `sda`.
    pub device: String,
    /// Reads completed.
    pub reads: u64,
    /// Reads merged.
    pub reads_merged: u64,
    /// Sectors (512 B) read.
    pub sectors_read: u64,
    /// Milliseconds spent reading.
    pub read_ms: u64,
    /// Writes completed.
    pub writes: u64,
    /// Writes merged.
    pub writes_merged: u64,
    /// Sectors (512 B) written.
    pub sectors_written: u64,
    /// Milliseconds spent writing.
    pub write_ms: u64,
    /// Milliseconds with I/O in flight.
    pub io_ms: u64,
}

/// One cycle's disk reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskReading {
    /// Per disk.
    pub disks: Vec<DiskStats>,
}

impl DiskReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        for d in &self.disks {
            let dev = || KeyValue::new(SYSTEM_DEVICE, d.device.clone());
            let dir = |x: &'static str| vec![dev(), KeyValue::new(DISK_IO_DIRECTION, x)];
            out.push(sc::SYSTEM_DISK_IO, dir("read"), d.sectors_read * 512);
            out.push(sc::SYSTEM_DISK_IO, dir("write"), d.sectors_written * 512);
            out.push(sc::SYSTEM_DISK_OPERATIONS, dir("read"), d.reads);
            out.push(sc::SYSTEM_DISK_OPERATIONS, dir("write"), d.writes);
            out.push(
                sc::SYSTEM_DISK_OPERATION_TIME,
                dir("read"),
                d.read_ms as f64 / 1e3,
            );
            out.push(
                sc::SYSTEM_DISK_OPERATION_TIME,
                dir("write"),
                d.write_ms as f64 / 1e3,
            );
            out.push(sc::SYSTEM_DISK_MERGED, dir("read"), d.reads_merged);
            out.push(sc::SYSTEM_DISK_MERGED, dir("write"), d.writes_merged);
            out.push(sc::SYSTEM_DISK_IO_TIME, vec![dev()], d.io_ms as f64 / 1e3);
        }
    }
}

/// Whether a diskstats device is a partition or a virtual device we skip.
pub fn skipped(name: &str) -> bool {
    const VIRTUAL: [&str; 5] = ["loop", "ram", "zram", "fd", "sr"];
    if VIRTUAL.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    let ends_in_digit = name.ends_with(|c: char| c.is_ascii_digit());
    // sda1, vdb2, xvda1, hda3
    let classic = ["sd", "vd", "hd", "xvd"]
        .iter()
        .any(|p| name.starts_with(p) && ends_in_digit);
    // nvme0n1p1, mmcblk0p1
    let p_style = (name.starts_with("nvme") || name.starts_with("mmcblk"))
        && name.rsplit_once('p').is_some_and(|(head, tail)| {
            !tail.is_empty()
                && tail.bytes().all(|b| b.is_ascii_digit())
                && head.ends_with(|c: char| c.is_ascii_digit())
        });
    classic || p_style
}

/// Parses /proc/diskstats, skipping partitions and virtual devices.
///
/// # Errors
/// A line with too few or non-numeric fields.
pub fn parse_diskstats(path: &Path, text: &str) -> Result<DiskReading, CollectError> {
    let mut disks = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 14 {
            if f.is_empty() {
                continue;
            }
            return Err(CollectError::parse(path, format!("short line {line:?}")));
        }
        if skipped(f[2]) {
            continue;
        }
        let n = |i: usize| super::roots::field(path, line, f.get(i).copied());
        disks.push(DiskStats {
            device: f[2].to_owned(),
            reads: n(3)?,
            reads_merged: n(4)?,
            sectors_read: n(5)?,
            read_ms: n(6)?,
            writes: n(7)?,
            writes_merged: n(8)?,
            sectors_written: n(9)?,
            write_ms: n(10)?,
            io_ms: n(12)?,
        });
    }
    Ok(DiskReading { disks })
}

/// Reads the disk family.
#[derive(Debug)]
pub struct DiskSource {
    roots: Roots,
}

impl DiskSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/diskstats cannot be read or parsed (always Unsupported off Linux).
    pub fn read(&mut self) -> Result<DiskReading, CollectError> {
        if cfg!(not(target_os = "linux")) {
            return Err(CollectError::Unsupported);
        }
        let path = self.roots.proc("diskstats");
        parse_diskstats(&path, &super::roots::read(&path)?)
    }
}

impl Source for DiskSource {
    fn family(&self) -> Family {
        Family::Disk
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
    fn partitions_and_virtual_devices_are_skipped() {
        for p in ["sda1", "nvme0n1p2", "mmcblk0p1", "loop0", "ram1", "xvda1"] {
            assert!(skipped(p), "{p}");
        }
        for d in ["sda", "nvme0n1", "vdb", "dm-0", "md0", "mmcblk0"] {
            assert!(!skipped(d), "{d}");
        }
    }

    #[test]
    fn diskstats_sectors_become_bytes() {
        let text = "   8       0 sda 10 1 8 4 20 2 16 6 0 30 40 0 0 0 0\n   8       1 sda1 1 1 1 1 1 1 1 1 0 1 1\n";
        let r = parse_diskstats("diskstats".as_ref(), text).unwrap();
        assert_eq!(r.disks.len(), 1);
        let mut p = Points::default();
        r.points(&mut p);
        let s = crate::snapshot::Snapshot::new(p);
        assert_eq!(s.points(sc::SYSTEM_DISK_IO)[0].value.as_i64(), 8 * 512);
        assert_eq!(s.points(sc::SYSTEM_DISK_IO_TIME)[0].value.as_f64(), 0.03);
    }
}
