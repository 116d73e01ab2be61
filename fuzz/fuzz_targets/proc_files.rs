//! Every /proc and /sys parser and the cgroup parsers on the same bytes: stat,
//! meminfo, mountinfo and mounts, net/dev, diskstats, <pid>/stat, <pid>/cgroup and
//! cgroup paths (v1 and v2 alike), via the functions the sources call; then the same
//! bytes as the files of a /proc tree that the sources whose parsing is inline read
//! (loadavg, vmstat with meminfo, uptime, stat's process counts, meminfo). None may
//! panic.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use otel_gpu_receiver::attribution::cgroup::{parse_cgroup_file, parse_cgroup_path};
use otel_gpu_receiver::host::{
    Roots, cpu, disk, filesystem, load, memory, network, paging, process, processes, uptime,
};

/// A /proc tree of our own (the sources read under `Roots::proc`).
static ROOT: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("otel-gpu-fuzz-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary /proc");
    dir
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let p = Path::new("/proc/fuzz");
    let _ = cpu::parse_stat(p, &text);
    let _ = memory::parse_meminfo(&text);
    let _ = filesystem::parse_mountinfo(&text);
    let _ = filesystem::parse_mounts(&text);
    let _ = network::parse_net_dev(p, &text);
    let _ = disk::parse_diskstats(p, &text);
    let _ = process::parse_pid_stat(p, &text);
    let _ = parse_cgroup_file(&text);
    let _ = parse_cgroup_path(&text);

    for f in ["loadavg", "vmstat", "meminfo", "uptime", "stat"] {
        std::fs::write(ROOT.join(f), data).expect("a fixture file");
    }
    let roots = Roots {
        proc: ROOT.clone(),
        sys: ROOT.join("sys"),
        rootfs: ROOT.clone(),
    };
    let _ = load::LoadSource::new(roots.clone()).read();
    let _ = paging::PagingSource::new(roots.clone()).read();
    let _ = uptime::UptimeSource::new(roots.clone()).read();
    let _ = memory::MemorySource::new(roots.clone()).read();
    let _ = processes::ProcessesSource::new(roots).read();
});
