//! The kubelet layer against a fake kubelet: a tonic server from the same proto, on a unix
//! socket in a temp dir, scripted per test.

mod attribution_support;

use std::time::{Duration, Instant};

use attribution_support::{
    FakeKubelet, Node, Raw, RawSocket, Script, container, container_id, list, pod, pod_uid,
};
use opentelemetry::{KeyValue, Value};
use otel_gpu_receiver::attribution::kubelet::{GpuIdentity, KubeletClient, KubeletSource};
use otel_gpu_receiver::attribution::{
    ATTRIBUTION_ERRORS, AttributionConfig, Attributor, GPU_ALLOCATION, GpuProcess,
    PROCESS_GPU_MEMORY_USAGE, PROCESS_GPU_UTILIZATION, Series, SeriesValue,
};

const GPU0: &str = "GPU-11111111-2222-3333-4444-555555555555";
const GPU1: &str = "GPU-66666666-7777-8888-9999-000000000000";

/// Two GPUs whose minor numbers are the reverse of their indices, so a mapping that confused
/// `nvidia<N>` with the index would be caught.
fn gpus() -> Vec<GpuIdentity> {
    vec![
        GpuIdentity {
            uuid: GPU0.into(),
            index: 0,
            minor_number: Some(1),
        },
        GpuIdentity {
            uuid: GPU1.into(),
            index: 1,
            minor_number: Some(0),
        },
    ]
}

fn attributor(socket: &std::path::Path, node: &Node) -> Attributor {
    Attributor::new(AttributionConfig {
        kubelet_socket: socket.to_owned(),
        kubelet_timeout: Duration::from_millis(400),
        proc_root: node.proc_root(),
        pod_log_dir: node.pod_log_dir(),
        ..AttributionConfig::default()
    })
}

fn attr<'a>(s: &'a Series, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn str_attr(s: &Series, key: &str) -> Option<String> {
    attr(s, key).map(|v| v.as_str().into_owned())
}

/// (hw.id, namespace, pod, container) of every allocation series, sorted.
fn allocations(series: &[Series]) -> Vec<(String, String, String, String)> {
    let mut v: Vec<_> = series
        .iter()
        .filter(|s| s.name == GPU_ALLOCATION)
        .map(|s| {
            assert_eq!(s.value, SeriesValue::Int(1));
            (
                str_attr(s, "hw.id").unwrap(),
                str_attr(s, "k8s.namespace.name").unwrap(),
                str_attr(s, "k8s.pod.name").unwrap(),
                str_attr(s, "k8s.container.name").unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn s(a: &str, b: &str, c: &str, d: &str) -> (String, String, String, String) {
    (a.into(), b.into(), c.into(), d.into())
}

#[test]
fn uuid_device_ids_give_each_gpu_its_pod_even_when_idle() {
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![
        pod(
            "ml",
            "trainer",
            vec![container("main", "nvidia.com/gpu", &[GPU0])],
        ),
        pod(
            "ml",
            "server",
            vec![container("srv", "nvidia.com/gpu", &[GPU1])],
        ),
        pod(
            "web",
            "nginx",
            vec![container("nginx", "example.com/foo", &["x"])],
        ),
    ])));
    let node = Node::new();
    let mut a = attributor(&kubelet.socket, &node);

    // No process uses either GPU: the allocations still show.
    let out = a.run(&gpus(), &[]);
    assert!(out.kubelet_ok);
    assert_eq!(
        allocations(&out.series),
        vec![
            s(GPU0, "ml", "trainer", "main"),
            s(GPU1, "ml", "server", "srv")
        ]
    );
    assert_eq!(out.owners[GPU0].pod, "trainer");
    assert_eq!(out.owners[GPU0].container.as_deref(), Some("main"));
    assert_eq!(out.owners[GPU1].pod, "server");
    assert_eq!(
        out.owners[GPU1].attributes(),
        vec![
            KeyValue::new("k8s.pod.name", "server"),
            KeyValue::new("k8s.namespace.name", "ml"),
            KeyValue::new("k8s.container.name", "srv"),
        ]
    );
    assert!(a.errors().is_empty(), "{:?}", a.errors());
}

#[test]
fn device_name_ids_are_recognised_without_a_flag() {
    // nvidia0 is minor number 0, which is GPU1 here.
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![
        pod(
            "ml",
            "a",
            vec![container("c", "nvidia.com/gpu", &["nvidia0"])],
        ),
        pod(
            "ml",
            "b",
            vec![container("c", "nvidia.com/gpu", &["nvidia1"])],
        ),
    ])));
    let node = Node::new();
    let mut a = attributor(&kubelet.socket, &node);
    let out = a.run(&gpus(), &[]);
    assert_eq!(
        allocations(&out.series),
        vec![s(GPU0, "ml", "b", "c"), s(GPU1, "ml", "a", "c")]
    );
    assert!(a.errors().is_empty(), "{:?}", a.errors());
}

#[test]
fn device_names_use_the_drivers_minor_numbers_when_nvml_gave_none() {
    // The minor numbers run against the index here: /dev/nvidia0 is GPU 1.
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![pod(
        "ml",
        "a",
        vec![container("c", "nvidia.com/gpu", &["nvidia0"])],
    )])));
    let node = Node::new();
    node.driver_info("0000:18:00.0", GPU0, 1)
        .driver_info("0000:28:00.0", GPU1, 0);
    let mut a = attributor(&kubelet.socket, &node);
    let no_minors: Vec<GpuIdentity> = gpus()
        .into_iter()
        .map(|g| GpuIdentity {
            minor_number: None,
            ..g
        })
        .collect();
    let out = a.run(&no_minors, &[]);
    assert_eq!(allocations(&out.series), vec![s(GPU1, "ml", "a", "c")]);
}

#[test]
fn one_gpu_in_two_pods_gives_each_pod_its_own_share_and_no_device_owner() {
    // Time-slicing: NVIDIA's plugin hands out replicas `<uuid>::<n>` of the same GPU.
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![
        pod(
            "ml",
            "a",
            vec![container("ca", "nvidia.com/gpu", &[&format!("{GPU0}::0")])],
        ),
        pod(
            "ml",
            "b",
            vec![container("cb", "nvidia.com/gpu", &[&format!("{GPU0}::3")])],
        ),
    ])));
    let node = Node::new();
    node.pod_dir("ml", "a", &pod_uid(1))
        .pod_dir("ml", "b", &pod_uid(2))
        .pod_process(101, &pod_uid(1), &container_id(1))
        .pod_process(102, &pod_uid(1), &container_id(1))
        .pod_process(201, &pod_uid(2), &container_id(2));
    let mut a = attributor(&kubelet.socket, &node);
    let p = |pid, mem, util| GpuProcess {
        pid,
        gpu: GPU0.into(),
        executable: Some("python".into()),
        memory_used: Some(mem),
        utilization: vec![("general".into(), util)],
    };
    let out = a.run(
        &gpus(),
        &[p(101, 1000, 0.25), p(102, 500, 0.25), p(201, 4000, 0.125)],
    );

    assert!(
        !out.owners.contains_key(GPU0),
        "two pods hold GPU0: no device owner"
    );
    assert_eq!(
        allocations(&out.series),
        vec![s(GPU0, "ml", "a", "ca"), s(GPU0, "ml", "b", "cb")]
    );
    let memory: Vec<_> = out
        .series
        .iter()
        .filter(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
        .map(|s| {
            assert_eq!(attr(s, "process.pid"), None, "per-pod sums drop the pid");
            (
                str_attr(s, "k8s.pod.name").unwrap(),
                str_attr(s, "k8s.container.name").unwrap(),
                s.value,
            )
        })
        .collect();
    assert_eq!(
        memory,
        vec![
            ("a".into(), "ca".into(), SeriesValue::Int(1500)),
            ("b".into(), "cb".into(), SeriesValue::Int(4000)),
        ]
    );
    let util: Vec<_> = out
        .series
        .iter()
        .filter(|s| s.name == PROCESS_GPU_UTILIZATION)
        .map(|s| (str_attr(s, "k8s.pod.name").unwrap(), s.value))
        .collect();
    assert_eq!(
        util,
        vec![
            ("a".into(), SeriesValue::Float(0.5)),
            ("b".into(), SeriesValue::Float(0.125))
        ]
    );
}

#[test]
fn a_missing_socket_turns_pod_attribution_off_without_an_error() {
    let node = Node::new();
    node.pod_process(7, &pod_uid(1), &container_id(7));
    let mut a = attributor(&node.dir.path().join("no-such.sock"), &node);
    let proc_on_gpu0 = GpuProcess {
        pid: 7,
        gpu: GPU0.into(),
        executable: None,
        memory_used: Some(42),
        utilization: vec![],
    };
    for _ in 0..3 {
        let out = a.run(&gpus(), std::slice::from_ref(&proc_on_gpu0));
        assert!(!out.kubelet_ok);
        assert!(allocations(&out.series).is_empty());
        assert!(out.owners.is_empty());
        assert!(
            !out.series.iter().any(|s| s.name == ATTRIBUTION_ERRORS),
            "no socket is not an error"
        );
        // The container is still known from the cgroup.
        let m = out
            .series
            .iter()
            .find(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
            .unwrap();
        assert_eq!(str_attr(m, "container.id"), Some(container_id(7)));
        assert_eq!(attr(m, "k8s.pod.name"), None);
    }
    assert!(a.errors().is_empty());
}

#[test]
fn a_missing_socket_is_reported_as_unavailable_by_the_client() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = KubeletClient::new(dir.path().join("kubelet.sock"), Duration::from_secs(1));
    let e = rt.block_on(c.list()).unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    assert_eq!(e.kind(), "kubelet_unavailable");
}

#[test]
fn a_hanging_kubelet_is_cut_off_at_the_deadline_every_cycle() {
    let kubelet = FakeKubelet::start(Script::Hang);
    let node = Node::new();
    let mut a = attributor(&kubelet.socket, &node);
    for cycle in 1..=3u64 {
        let started = Instant::now();
        let out = a.run(&gpus(), &[]);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "cycle {cycle} took {took:?}");
        assert!(!out.kubelet_ok);
        assert!(allocations(&out.series).is_empty());
    }
    assert_eq!(
        a.errors().get("kubelet_timeout"),
        Some(&3),
        "{:?}",
        a.errors()
    );

    // When the kubelet answers again, attribution comes back.
    kubelet.set(Script::Respond(list(vec![pod(
        "ml",
        "a",
        vec![container("c", "nvidia.com/gpu", &[GPU0])],
    )])));
    let mut back = false;
    for _ in 0..5 {
        if a.run(&gpus(), &[]).kubelet_ok {
            back = true;
            break;
        }
    }
    assert!(
        back,
        "attribution did not come back after the kubelet recovered"
    );
}

#[test]
fn a_silent_socket_is_cut_off_at_the_deadline() {
    let raw = RawSocket::start(Raw::Silent);
    let node = Node::new();
    let mut a = attributor(&raw.socket, &node);
    let started = Instant::now();
    let out = a.run(&gpus(), &[]);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!out.kubelet_ok);
    assert_eq!(
        a.errors().get("kubelet_timeout"),
        Some(&1),
        "{:?}",
        a.errors()
    );
}

#[test]
fn a_socket_that_answers_garbage_is_counted_and_attribution_goes_on() {
    let raw = RawSocket::start(Raw::Garbage);
    let node = Node::new();
    node.cgroup(
        9,
        &format!("0::/system.slice/docker-{}.scope\n", container_id(9)),
    );
    let mut a = attributor(&raw.socket, &node);
    let started = Instant::now();
    let out = a.run(
        &gpus(),
        &[GpuProcess {
            pid: 9,
            gpu: GPU1.into(),
            executable: None,
            memory_used: Some(1),
            utilization: vec![],
        }],
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!out.kubelet_ok);
    let errors: u64 = a
        .errors()
        .iter()
        .filter(|(k, _)| k.starts_with("kubelet_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(errors, 1, "{:?}", a.errors());
    assert!(out.series.iter().any(|s| s.name == PROCESS_GPU_MEMORY_USAGE
        && str_attr(s, "container.id") == Some(container_id(9))));
}

#[test]
fn nonsense_device_ids_are_counted_and_other_vendors_ignored() {
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![
        pod(
            "ml",
            "a",
            vec![container(
                "c",
                "nvidia.com/gpu",
                &["nvidia9", "banana", "", GPU0],
            )],
        ),
        pod(
            "x",
            "b",
            vec![container("c", "example.com/fpga", &["banana"])],
        ),
        pod("", "", vec![]),
    ])));
    let node = Node::new();
    let mut a = attributor(&kubelet.socket, &node);
    let out = a.run(&gpus(), &[]);
    assert!(out.kubelet_ok);
    assert_eq!(allocations(&out.series), vec![s(GPU0, "ml", "a", "c")]);
    assert_eq!(a.errors().get("unknown_device_id"), Some(&3));
}

#[test]
fn a_kubelet_error_status_is_counted_not_fatal() {
    let kubelet = FakeKubelet::start(Script::Fail(tonic::Status::internal("boom")));
    let node = Node::new();
    let mut a = attributor(&kubelet.socket, &node);
    let out = a.run(&gpus(), &[]);
    assert!(!out.kubelet_ok);
    assert_eq!(a.errors().get("kubelet_rpc"), Some(&1));
    let e = out
        .series
        .iter()
        .find(|s| s.name == ATTRIBUTION_ERRORS)
        .unwrap();
    assert_eq!(str_attr(e, "error.type").as_deref(), Some("kubelet_rpc"));
    assert_eq!(e.value, SeriesValue::Int(1));
}

#[test]
fn list_is_called_at_most_once_per_cycle() {
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![pod(
        "ml",
        "a",
        vec![container("c", "nvidia.com/gpu", &[GPU0])],
    )])));
    let mut source = KubeletSource::new(&kubelet.socket, Duration::from_secs(1));
    let first = source.list(1).unwrap();
    let again = source.list(1).unwrap();
    assert_eq!(first, again);
    assert_eq!(kubelet.calls(), 1);
    assert_eq!(source.calls(), 1);
    source.list(2).unwrap();
    assert_eq!(kubelet.calls(), 2);

    // And through the attributor: one call per run.
    let node = Node::new();
    let mut a = attributor(&kubelet.socket, &node);
    a.run(&gpus(), &[]);
    a.run(&gpus(), &[]);
    assert_eq!(a.kubelet_calls(), 2);
    assert_eq!(kubelet.calls(), 4);
}

#[test]
fn the_cardinality_cap_aggregates_the_excess_and_counts_it() {
    let pods: Vec<_> = (0..5)
        .map(|i| {
            pod(
                "ml",
                &format!("p{i}"),
                vec![container("c", "nvidia.com/gpu", &[GPU0])],
            )
        })
        .collect();
    let kubelet = FakeKubelet::start(Script::Respond(list(pods)));
    let node = Node::new();
    let mut procs = Vec::new();
    for i in 0..5u8 {
        node.pod_dir("ml", &format!("p{i}"), &pod_uid(i))
            .pod_process(u32::from(i) + 10, &pod_uid(i), &container_id(i));
        procs.push(GpuProcess {
            pid: u32::from(i) + 10,
            gpu: GPU0.into(),
            executable: None,
            memory_used: Some(100),
            utilization: vec![],
        });
    }
    let mut a = Attributor::new(AttributionConfig {
        kubelet_socket: kubelet.socket.clone(),
        proc_root: node.proc_root(),
        pod_log_dir: node.pod_log_dir(),
        max_series: 6,
        ..AttributionConfig::default()
    });
    let out = a.run(&gpus(), &procs);
    // 5 allocations fit, then 1 of the 5 per-pod memory series; 4 are folded.
    assert_eq!(allocations(&out.series).len(), 5);
    let memory: Vec<_> = out
        .series
        .iter()
        .filter(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
        .collect();
    assert_eq!(memory.len(), 2);
    let overflow = memory
        .iter()
        .find(|s| attr(s, "otel.metric.overflow") == Some(&Value::Bool(true)))
        .expect("an overflow series");
    assert_eq!(
        overflow.value,
        SeriesValue::Int(400),
        "the excess is summed, not lost"
    );
    assert_eq!(a.overflow_total(), 4);
    let counted = out
        .series
        .iter()
        .find(|s| s.name == "otel_gpu_receiver.attribution.overflow")
        .unwrap();
    assert_eq!(counted.value, SeriesValue::Int(4));
}

#[test]
fn per_process_series_carry_the_pid_the_container_and_the_pod() {
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![pod(
        "ml",
        "a",
        vec![container("ca", "nvidia.com/gpu", &[GPU0])],
    )])));
    let node = Node::new();
    // No pod log directory: the pod is still known, because only it holds GPU0.
    node.pod_process(5, &pod_uid(1), &container_id(5))
        .pod_process(6, &pod_uid(1), &container_id(5));
    let mut a = Attributor::new(AttributionConfig {
        kubelet_socket: kubelet.socket.clone(),
        proc_root: node.proc_root(),
        pod_log_dir: node.dir.path().join("not-mounted"),
        per_process: true,
        ..AttributionConfig::default()
    });
    let p = |pid| GpuProcess {
        pid,
        gpu: GPU0.into(),
        executable: Some("python3".into()),
        memory_used: Some(u64::from(pid)),
        utilization: vec![],
    };
    let out = a.run(&gpus(), &[p(5), p(6)]);
    let memory: Vec<_> = out
        .series
        .iter()
        .filter(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
        .collect();
    assert_eq!(memory.len(), 2);
    for (m, pid) in memory.iter().zip([5i64, 6]) {
        assert_eq!(attr(m, "process.pid"), Some(&Value::I64(pid)));
        assert_eq!(m.value, SeriesValue::Int(pid));
        assert_eq!(
            str_attr(m, "process.executable.name").as_deref(),
            Some("python3")
        );
        assert_eq!(str_attr(m, "container.id"), Some(container_id(5)));
        assert_eq!(str_attr(m, "k8s.pod.name").as_deref(), Some("a"));
        assert_eq!(str_attr(m, "k8s.namespace.name").as_deref(), Some("ml"));
        assert_eq!(str_attr(m, "k8s.container.name").as_deref(), Some("ca"));
    }
}

#[test]
fn a_pod_the_log_directory_does_not_know_is_not_guessed_from_the_allocations() {
    // Pod `a` holds GPU0, but the process belongs to another pod (uid 9) that uses the GPU
    // without holding it: with the log directory mounted, that is visible, so no guess.
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![pod(
        "ml",
        "a",
        vec![container("ca", "nvidia.com/gpu", &[GPU0])],
    )])));
    let node = Node::new();
    node.pod_dir("ml", "a", &pod_uid(1))
        .pod_process(5, &pod_uid(9), &container_id(9));
    let mut a = attributor(&kubelet.socket, &node);
    let out = a.run(
        &gpus(),
        &[GpuProcess {
            pid: 5,
            gpu: GPU0.into(),
            executable: None,
            memory_used: Some(7),
            utilization: vec![],
        }],
    );
    let m = out
        .series
        .iter()
        .find(|s| s.name == PROCESS_GPU_MEMORY_USAGE)
        .unwrap();
    assert_eq!(attr(m, "k8s.pod.name"), None, "not attributed to pod a");
    assert_eq!(str_attr(m, "container.id"), Some(container_id(9)));
    assert_eq!(m.value, SeriesValue::Int(7));
    // The device still belongs to pod a alone.
    assert_eq!(out.owners[GPU0].pod, "a");
}
