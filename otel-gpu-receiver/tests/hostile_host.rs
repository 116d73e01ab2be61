//! Hosts the receiver has never seen, at their worst: a mount table of 10,000 entries
//! with escaped paths, a 64 KiB cgroup path, interface names with spaces and escapes, a
//! `/proc/<pid>` that is gone by the time it is read, a `/sys` file that fails to read.
//! Each is read, skipped or counted as an error the collector counts; none panics. The
//! families and attribution are run over such trees too, not only the parsers.
//!
//! A read error (EIO) is simulated as the other fixtures simulate unreadable files: a
//! directory where the file should be, so `read` fails with an I/O error the same way.

use std::fs;
use std::path::Path;

use otel_gpu_receiver::attribution::cgroup::{CgroupReader, parse_cgroup_file, parse_cgroup_path};
use otel_gpu_receiver::host::Roots;
use otel_gpu_receiver::host::cpu::CpuSource;
use otel_gpu_receiver::host::exclude::{Kind, Patterns};
use otel_gpu_receiver::host::filesystem::{parse_mountinfo, parse_mounts, visible};
use otel_gpu_receiver::host::network::parse_net_dev;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

#[test]
fn a_mount_table_of_10000_entries_with_escaped_paths_is_read_whole() {
    let mut text = String::new();
    for i in 0..10_000 {
        // Space, tab, newline and backslash escaped as the kernel writes them, and
        // escapes the kernel never writes (cut short, out of range, not octal).
        let odd = match i % 5 {
            0 => "\\040with\\011space",
            1 => "\\134back\\012slash",
            2 => "\\04",
            3 => "\\777",
            _ => "\\9x9",
        };
        text.push_str(&format!(
            "{i} 1 0:{i} / /mnt/m{i}{odd} rw,relatime shared:1 - tmpfs dev{odd} rw\n"
        ));
    }
    // And lines that are not mountinfo at all.
    text.push_str("garbage\n - \n1 2 3 - x\n\u{0}\u{0}\n");
    let mounts = parse_mountinfo(&text);
    assert_eq!(mounts.len(), 10_000, "every well-formed line, nothing else");
    assert_eq!(mounts[0].mountpoint, "/mnt/m0 with\tspace");
    assert_eq!(mounts[1].mountpoint, "/mnt/m1\\back\nslash");
    assert!(mounts.iter().all(|m| m.fstype == "tmpfs"));
    let shown = visible(
        mounts,
        &Patterns::parse::<&str>(Kind::FsType, &[]).unwrap(),
        &Patterns::parse::<&str>(Kind::MountPoint, &[]).unwrap(),
    );
    assert_eq!(shown.len(), 10_000);
    // The /proc/mounts fallback reads the same lines without panicking.
    let fallback = parse_mounts(&text);
    assert!(fallback.len() >= 10_000);
}

#[test]
fn a_64_kib_cgroup_path_is_read_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let id = "a".repeat(64);
    // 64 KiB of nesting, then a container scope at the end.
    let deep: String = "/deeper".repeat(64 * 1024 / 7);
    let path = format!("{deep}/docker-{id}.scope");
    assert!(path.len() > 64 * 1024);
    write(dir.path(), "4242/cgroup", &format!("0::{path}\n"));
    let info = CgroupReader::new(dir.path()).read(4242).unwrap();
    assert_eq!(info.container_id.as_deref(), Some(id.as_str()));

    // Only separators and parent references, and a path of one 64 KiB segment.
    assert!(parse_cgroup_path(&"/..".repeat(22_000)).is_host());
    assert!(parse_cgroup_path(&format!("/{}", "x".repeat(65_536))).is_host());
    // A file that is not a cgroup file is refused whole, with its line.
    assert_eq!(
        parse_cgroup_file(&format!("0::{path}\nnot a cgroup line\n")).unwrap_err(),
        2
    );
    assert_eq!(parse_cgroup_file("").unwrap_err(), 1);
}

#[test]
fn a_pid_that_is_gone_when_read_is_an_error_of_its_own_kind() {
    let dir = tempfile::tempdir().unwrap();
    // Listed, then gone: the directory is there, its cgroup file no longer.
    fs::create_dir_all(dir.path().join("777")).unwrap();
    let reader = CgroupReader::new(dir.path());
    let e = reader.read(777).unwrap_err();
    assert_eq!(e.kind(), "cgroup_gone");
    let e = reader.read(778).unwrap_err();
    assert_eq!(e.kind(), "cgroup_gone");
    // Unreadable (EIO): a directory where the file should be.
    fs::create_dir_all(dir.path().join("779/cgroup")).unwrap();
    assert_eq!(reader.read(779).unwrap_err().kind(), "cgroup_unreadable");
    // Bytes that are not UTF-8.
    fs::create_dir_all(dir.path().join("780")).unwrap();
    fs::write(
        dir.path().join("780/cgroup"),
        [0xff, 0xfe, b':', b':', b'/'],
    )
    .unwrap();
    assert_eq!(reader.read(780).unwrap_err().kind(), "cgroup_malformed");
}

#[test]
fn interface_names_with_spaces_and_escapes_are_kept_or_refused_never_a_panic() {
    let head = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n";
    let nums = "1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0";
    let text = format!(
        "{head}  my if: {nums}\nweird\\x20name\\\\: {nums}\n{}: {nums}\n",
        "n".repeat(4096)
    );
    let reading = parse_net_dev(Path::new("/proc/net/dev"), &text).unwrap();
    let names: Vec<&str> = reading.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names.len(), 3);
    assert_eq!(names[0], "my if");
    assert_eq!(names[1], "weird\\x20name\\\\");
    assert_eq!(names[2].len(), 4096);
    // A colon inside a name (no kernel allows one) shifts the fields: the file is
    // refused as a parse error naming the line, which the collector counts for the
    // network family, rather than misread.
    let bad = format!("{head}  eth0:1: {nums}\n");
    let e = parse_net_dev(Path::new("/proc/net/dev"), &bad).unwrap_err();
    assert!(e.to_string().contains("/proc/net/dev"), "{e}");
}

#[test]
fn a_sys_file_that_fails_to_read_falls_back_and_the_cycle_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let roots = Roots {
        proc: dir.path().join("proc"),
        sys: dir.path().join("sys"),
        rootfs: dir.path().to_path_buf(),
    };
    write(
        &roots.proc,
        "stat",
        "cpu  100 0 50 800 10 5 5 0 0 0\ncpu0 50 0 25 400 5 2 2 0 0 0\ncpu1 50 0 25 400 5 3 3 0 0 0\n",
    );
    write(
        &roots.proc,
        "cpuinfo",
        "processor\t: 0\ncpu MHz\t\t: 2000.0\nprocessor\t: 1\ncpu MHz\t\t: 2100.0\n",
    );
    // cpu0's frequency file reads fine, cpu1's fails (EIO).
    write(
        &roots.sys,
        "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
        "1500000\n",
    );
    fs::create_dir_all(
        roots
            .sys
            .join("devices/system/cpu/cpu1/cpufreq/scaling_cur_freq"),
    )
    .unwrap();
    let mut cpu = CpuSource::new(roots);
    let reading = cpu
        .read()
        .expect("a failing /sys file is not a failing cycle");
    assert_eq!(reading.per_cpu.len(), 2);
    // Not a mix of the two sources: all of /proc/cpuinfo.
    assert_eq!(reading.frequency_hz, vec![(0, 2.0e9), (1, 2.1e9)]);
}

#[test]
fn the_filesystem_family_reads_a_10000_entry_host_mount_table_and_reports_what_exists() {
    use otel_gpu_receiver::host::filesystem::FilesystemSource;
    let dir = tempfile::tempdir().unwrap();
    let roots = Roots {
        proc: dir.path().join("proc"),
        sys: dir.path().join("sys"),
        rootfs: dir.path().join("rootfs"),
    };
    fs::create_dir_all(roots.rootfs.join("data disk")).unwrap();
    let mut table = String::from(
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:2 / /data\\040disk rw - ext4 /dev/sda2 rw\n",
    );
    // 10,000 more whose mount points this host does not have (statvfs fails: skipped).
    for i in 0..10_000 {
        table.push_str(&format!(
            "{} 1 0:{i} / /gone/m{i}\\011x rw - ext4 /dev/loop{i} rw\n",
            i + 3
        ));
    }
    write(&roots.proc, "1/mountinfo", &table);
    let mut source = FilesystemSource::new(roots);
    let reading = source
        .read()
        .expect("a huge mount table is read, not an error");
    let mut points: Vec<&str> = reading
        .filesystems
        .iter()
        .map(|f| f.mount.mountpoint.as_str())
        .collect();
    points.sort_unstable();
    assert_eq!(
        points,
        ["/", "/data disk"],
        "what exists is reported, the rest skipped"
    );
}

#[test]
fn attribution_over_hostile_pids_counts_what_it_cannot_read_and_places_the_rest() {
    use otel_gpu_receiver::attribution::{
        AttributionConfig, Attributor, GpuProcess, PROCESS_GPU_MEMORY_USAGE,
    };
    let dir = tempfile::tempdir().unwrap();
    let id = "b".repeat(64);
    let deep: String = "/nest".repeat(64 * 1024 / 5);
    // 501: a 64 KiB path ending in a container; 502: gone (listed by NVML, exited since);
    // 503: unreadable (EIO); 504: not UTF-8.
    write(
        dir.path(),
        "501/cgroup",
        &format!("0::{deep}/cri-containerd-{id}.scope\n"),
    );
    fs::create_dir_all(dir.path().join("503/cgroup")).unwrap();
    fs::create_dir_all(dir.path().join("504")).unwrap();
    fs::write(dir.path().join("504/cgroup"), [0xc3, 0x28, b'\n']).unwrap();
    let mut a = Attributor::new(AttributionConfig {
        kubelet: false,
        proc_root: dir.path().to_path_buf(),
        ..AttributionConfig::default()
    });
    let procs: Vec<GpuProcess> = (501..=504)
        .map(|pid| GpuProcess {
            pid,
            gpu: "GPU-0".into(),
            executable: None,
            memory_used: Some(u64::from(pid)),
            utilization: vec![],
        })
        .collect();
    let out = a.run(&[], &procs);
    assert_eq!(a.errors().get("cgroup_unreadable"), Some(&1));
    assert_eq!(a.errors().get("cgroup_malformed"), Some(&1));
    let placed: Vec<_> = out
        .series
        .iter()
        .filter(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
        .filter(|s| {
            s.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "container.id" && kv.value.as_str() == id.as_str())
        })
        .collect();
    assert_eq!(
        placed.len(),
        1,
        "the process under the 64 KiB path keeps its container"
    );
}
