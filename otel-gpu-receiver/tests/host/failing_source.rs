use std::fs;
use std::path::Path;

use crate::common::once_json;

/// A fixed /proc tree with every file the host families read, except `vmstat`.
fn fixture_without_vmstat(root: &Path) {
    let files: [(&str, &str); 8] = [
        (
            "stat",
            "cpu  100 0 50 800 10 5 5 0 0 0\ncpu0 100 0 50 800 10 5 5 0 0 0\nintr 1\nctxt 2\nprocesses 4321\nprocs_running 3\nprocs_blocked 1\n",
        ),
        (
            "meminfo",
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 200 kB\nSwapTotal: 400 kB\nSwapFree: 300 kB\n",
        ),
        ("loadavg", "0.50 0.25 0.10 1/100 999\n"),
        ("uptime", "12345.67 20000.00\n"),
        (
            "net/dev",
            "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0\n",
        ),
        (
            "diskstats",
            "   8       0 sda 10 1 8 4 20 2 16 6 0 30 40 0 0 0 0\n",
        ),
        ("mounts", ""),
        (
            "self/stat",
            "42 (otel-gpu-receiver) S 1 42 42 0 -1 0 0 0 0 0 7 3 0 0 20 0 5 0 1000 123456 789 0\n",
        ),
    ];
    for (rel, text) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

#[test]
fn a_source_with_a_missing_proc_file_is_skipped_and_counted_while_the_others_report() {
    let dir = tempfile::tempdir().unwrap();
    fixture_without_vmstat(dir.path());
    let rows = once_json(&["--proc-root", dir.path().to_str().unwrap()]);
    let named = |n: &'static str| rows.iter().filter(move |r| r["name"] == n);

    // paging reads /proc/vmstat: skipped, nothing of it reported.
    assert_eq!(named("system.paging.faults").count(), 0);
    assert_eq!(named("system.paging.usage").count(), 0);
    // ... and counted once, by source and error type.
    let errors: Vec<_> = named("otel_gpu_receiver.errors").collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["attributes"]["source"], "paging");
    assert_eq!(errors[0]["attributes"]["error.type"], "io");
    assert_eq!(errors[0]["value"], 1);

    // The others still report, with the fixture's values.
    let load = named("system.cpu.load_average.1m")
        .next()
        .expect("load reported");
    assert_eq!(load["value"], 0.5);
    let limit = named("system.memory.limit")
        .next()
        .expect("memory reported");
    assert_eq!(limit["value"], 1000 * 1024);
    let running = named("system.process.count")
        .find(|r| r["attributes"]["process.state"] == "running")
        .expect("processes reported");
    assert_eq!(running["value"], 3);
    assert_eq!(named("system.network.io").count(), 2);
    assert_eq!(named("system.disk.io").count(), 2);
    assert_eq!(named("system.uptime").next().unwrap()["value"], 12345.67);
}
