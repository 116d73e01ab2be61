use std::collections::BTreeSet;

use otel_gpu_receiver::catalogue::{self, Family, Origin};

use crate::common::{once_json, run};

fn families_in(rows: &[serde_json::Value]) -> BTreeSet<Family> {
    rows.iter()
        .filter_map(|r| catalogue::find(r["name"].as_str()?))
        .filter_map(|d| match d.origin {
            Origin::Host(f) => Some(f),
            Origin::SelfMonitoring => None,
        })
        .collect()
}

#[test]
fn once_json_parses_and_contains_every_enabled_family() {
    let rows = once_json(&[]);
    for r in &rows {
        assert!(r["name"].is_string() && r["unit"].is_string(), "{r}");
        assert!(
            r["instrument"].is_string() && r["attributes"].is_object(),
            "{r}"
        );
        assert!(r["value"].is_number(), "{r}");
    }
    let seen = families_in(&rows);
    let all: BTreeSet<Family> = Family::ALL.into_iter().collect();
    assert_eq!(seen, all, "families missing from --once output");
    // No GPU on this machine (tests/gpu_cli.rs covers the gpu family with the fake NVML):
    // the gpu family reports only its own state, which says why.
    let gpu: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| catalogue::find(n).is_some_and(|d| d.origin == Origin::Host(Family::Gpu)))
        .collect();
    assert!(
        gpu.iter().all(|n| n.starts_with("otel_gpu_receiver.")),
        "{gpu:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["name"] == "otel_gpu_receiver.cycle.duration"),
        "self-monitoring missing"
    );
}

#[test]
fn once_reports_only_the_enabled_families() {
    let rows = once_json(&["--families", "cpu,memory,load", "--disable", "load"]);
    let seen = families_in(&rows);
    assert_eq!(seen, BTreeSet::from([Family::Cpu, Family::Memory]));
}

#[test]
fn once_prints_a_table_by_default() {
    let out = run(&["--once", "--no-otlp", "--families", "memory"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("NAME"));
    assert!(text.contains("system.memory.usage"), "{text}");
}

/// The value of the one row of `name` whose attributes include `attrs`.
fn value(rows: &[serde_json::Value], name: &str, attrs: &[(&str, &str)]) -> Option<f64> {
    rows.iter()
        .find(|r| r["name"] == name && attrs.iter().all(|(k, v)| r["attributes"][*k] == *v))
        .and_then(|r| r["value"].as_f64())
}

#[test]
fn once_reports_mem_available_from_meminfo_and_inodes_from_statvfs() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    std::fs::create_dir_all(proc.join("1")).unwrap();
    std::fs::write(
        proc.join("meminfo"),
        "MemTotal: 8000 kB\nMemFree: 1000 kB\nMemAvailable: 5000 kB\nBuffers: 100 kB\nCached: 2000 kB\n",
    )
    .unwrap();
    // One mount: the temp dir itself, statvfs'ed under the rootfs `/`.
    let at = dir.path().display().to_string();
    std::fs::write(
        proc.join("1/mountinfo"),
        format!("40 1 259:2 / {at} rw - ext4 /dev/fixture rw\n"),
    )
    .unwrap();
    let rows = once_json(&[
        "--families",
        "memory,filesystem",
        "--proc-root",
        proc.to_str().unwrap(),
    ]);
    assert_eq!(
        value(&rows, "system.memory.linux.available", &[]),
        Some(5000.0 * 1024.0)
    );
    let mp = ("system.filesystem.mountpoint", at.as_str());
    let used = value(
        &rows,
        "system.filesystem.inodes.usage",
        &[mp, ("system.filesystem.state", "used")],
    );
    let free = value(
        &rows,
        "system.filesystem.inodes.usage",
        &[mp, ("system.filesystem.state", "free")],
    );
    // What statvfs says here: none where the filesystem has no inode table (btrfs).
    let c = std::ffi::CString::new(at.clone()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a valid NUL-terminated path and a writable statvfs.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
    // SAFETY: statvfs returned 0.
    let st = unsafe { st.assume_init() };
    if st.f_files == 0 {
        assert_eq!((used, free), (None, None));
        return;
    }
    let (used, free) = (used.expect("inodes used"), free.expect("inodes free"));
    assert!(used > 0.0 && free > 0.0, "used {used}, free {free}");
    // Files come and go on a shared temp filesystem: the total is what is stable.
    assert_eq!(used + free, st.f_files as f64);
}
