//! pid → container and pod, through fixture `/proc` trees: one real-looking cgroup file per
//! runtime and layout (cgroup v1, v2, hybrid; docker, containerd, cri-o, podman; the kubelet's
//! cgroupfs and systemd drivers), and malformed files that are skipped and counted.

use std::path::PathBuf;

use otel_gpu_receiver::attribution::cgroup::{CgroupError, CgroupReader, Runtime};
use otel_gpu_receiver::attribution::{
    AttributionConfig, Attributor, GpuProcess, PROCESS_GPU_MEMORY_USAGE, SeriesValue,
};

const DOCKER: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const CONTAINERD: &str = "c0ffee0000000000000000000000000000000000000000000000000000000001";
const CRIO: &str = "5ea7c0de5ea7c0de5ea7c0de5ea7c0de5ea7c0de5ea7c0de5ea7c0de5ea7c0de";
const PODMAN: &str = "b0d1e5b0d1e5b0d1e5b0d1e5b0d1e5b0d1e5b0d1e5b0d1e5b0d1e5b0d1e5b0d1";
const UID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const STATIC_UID: &str = "0f3e5d8b2a7c4e1f9b6d3a8c5e2f7b4d";

fn proc_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup/proc")
}

fn reader() -> CgroupReader {
    CgroupReader::new(proc_root())
}

/// (pid, container id, runtime, pod uid) for every fixture that parses.
#[allow(clippy::type_complexity)]
const CASES: &[(u32, Option<&str>, Option<Runtime>, Option<&str>, &str)] = &[
    (
        1001,
        Some(DOCKER),
        Some(Runtime::Docker),
        None,
        "v1 docker cgroupfs",
    ),
    (
        1002,
        Some(DOCKER),
        Some(Runtime::Docker),
        None,
        "v1 docker systemd",
    ),
    (
        1003,
        Some(DOCKER),
        Some(Runtime::Unknown),
        Some(UID),
        "v1 kubelet cgroupfs, docker",
    ),
    (
        1004,
        Some(DOCKER),
        Some(Runtime::Docker),
        Some(UID),
        "v1 kubelet systemd, docker",
    ),
    (
        1005,
        Some(CONTAINERD),
        Some(Runtime::Unknown),
        Some(UID),
        "v1 kubelet cgroupfs, containerd",
    ),
    (
        1006,
        Some(PODMAN),
        Some(Runtime::Podman),
        None,
        "v1 podman cgroupfs",
    ),
    (
        1007,
        Some(CONTAINERD),
        Some(Runtime::Unknown),
        Some(STATIC_UID),
        "v1 static pod",
    ),
    (1008, None, None, None, "v1 host process"),
    (
        2001,
        Some(DOCKER),
        Some(Runtime::Docker),
        None,
        "v2 docker systemd",
    ),
    (
        2002,
        Some(CONTAINERD),
        Some(Runtime::Containerd),
        Some(UID),
        "v2 kubelet systemd, containerd",
    ),
    (
        2003,
        Some(CRIO),
        Some(Runtime::CriO),
        Some(UID),
        "v2 kubelet systemd, cri-o guaranteed",
    ),
    (
        2004,
        None,
        None,
        Some(UID),
        "v2 cri-o conmon is not the container",
    ),
    (
        2005,
        Some(PODMAN),
        Some(Runtime::Podman),
        None,
        "v2 podman rootful, sub-cgroup",
    ),
    (
        2006,
        Some(PODMAN),
        Some(Runtime::Podman),
        None,
        "v2 podman rootless",
    ),
    (
        2007,
        Some(CONTAINERD),
        Some(Runtime::Containerd),
        Some(UID),
        "v2 kind (kubelet.slice)",
    ),
    (
        2008,
        Some(CONTAINERD),
        Some(Runtime::Containerd),
        Some(UID),
        "v2 from another cgroup namespace",
    ),
    (2009, None, None, None, "v2 host process"),
    (
        3001,
        Some(CONTAINERD),
        Some(Runtime::Containerd),
        Some(UID),
        "hybrid kubelet systemd",
    ),
    (
        3002,
        Some(DOCKER),
        Some(Runtime::Docker),
        None,
        "hybrid docker, unified is the service",
    ),
];

#[test]
fn every_runtime_and_layout_yields_its_container_id_and_pod_uid() {
    let r = reader();
    for &(pid, id, runtime, uid, what) in CASES {
        let info = r
            .read(pid)
            .unwrap_or_else(|e| panic!("{what} ({pid}): {e}"));
        assert_eq!(
            info.container_id.as_deref(),
            id,
            "{what} ({pid}): container id"
        );
        assert_eq!(info.runtime, runtime, "{what} ({pid}): runtime");
        assert_eq!(info.pod_uid.as_deref(), uid, "{what} ({pid}): pod uid");
    }
}

#[test]
fn host_processes_have_neither_container_nor_pod() {
    let r = reader();
    assert!(r.read(1008).unwrap().is_host());
    assert!(r.read(2009).unwrap().is_host());
    assert!(!r.read(2004).unwrap().is_host());
}

#[test]
fn malformed_files_are_errors_naming_the_line() {
    let r = reader();
    for (pid, line) in [(9001, 1), (9002, 2), (9003, 1), (9004, 1)] {
        match r.read(pid) {
            Err(CgroupError::Malformed { line: l, path }) => {
                assert_eq!(l, line, "pid {pid}");
                assert!(path.ends_with(format!("{pid}/cgroup")));
            }
            other => panic!("pid {pid}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_process_is_a_read_error_not_a_panic() {
    let e = reader().read(4_000_000).unwrap_err();
    assert_eq!(e.kind(), "cgroup_gone");
}

#[test]
fn malformed_cgroup_files_are_skipped_and_counted_while_others_are_attributed() {
    let mut a = Attributor::new(AttributionConfig {
        kubelet: false,
        proc_root: proc_root(),
        ..AttributionConfig::default()
    });
    let procs = [
        GpuProcess {
            pid: 9001,
            gpu: "GPU-0".into(),
            executable: None,
            memory_used: Some(100),
            utilization: vec![],
        },
        GpuProcess {
            pid: 9002,
            gpu: "GPU-0".into(),
            executable: None,
            memory_used: Some(10),
            utilization: vec![],
        },
        GpuProcess {
            pid: 2001,
            gpu: "GPU-0".into(),
            executable: None,
            memory_used: Some(1),
            utilization: vec![],
        },
    ];
    let out = a.run(&[], &procs);
    assert_eq!(a.errors().get("cgroup_malformed"), Some(&2));

    // Per-pod sums (the default) report containers and pods only: the docker process.
    let memory: Vec<_> = out
        .series
        .iter()
        .filter(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
        .collect();
    assert_eq!(memory.len(), 1, "{memory:?}");
    assert!(
        memory[0]
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "container.id"),
        "the docker process keeps its container"
    );
    assert_eq!(memory[0].value, SeriesValue::Int(1));

    // A second cycle counts again: the counter is cumulative.
    a.run(&[], &procs);
    assert_eq!(a.errors().get("cgroup_malformed"), Some(&4));
}

#[test]
fn per_process_series_show_processes_with_unreadable_cgroups_without_a_container() {
    let mut a = Attributor::new(AttributionConfig {
        kubelet: false,
        proc_root: proc_root(),
        per_process: true,
        ..AttributionConfig::default()
    });
    let p = |pid| GpuProcess {
        pid,
        gpu: "GPU-0".into(),
        executable: Some("x".into()),
        memory_used: Some(u64::from(pid)),
        utilization: vec![],
    };
    let out = a.run(&[], &[p(9001), p(2001), p(4_000_000)]);
    let mut memory: Vec<_> = out
        .series
        .iter()
        .filter(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
        .map(|s| {
            let has = |k: &str| s.attributes.iter().any(|kv| kv.key.as_str() == k);
            (s.value, has("container.id"), has("process.pid"))
        })
        .collect();
    memory.sort_by_key(|(v, _, _)| match v {
        SeriesValue::Int(i) => *i,
        SeriesValue::Float(_) => 0,
    });
    assert_eq!(
        memory,
        vec![
            (SeriesValue::Int(2001), true, true),
            (SeriesValue::Int(9001), false, true),
            (SeriesValue::Int(4_000_000), false, true),
        ]
    );
    // Malformed is counted; a process that is gone is not an error.
    assert_eq!(a.errors().get("cgroup_malformed"), Some(&1));
    assert_eq!(a.errors().len(), 1, "{:?}", a.errors());
}
