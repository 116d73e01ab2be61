//! The GPU source and attribution together, in process, against the fake libnvidia-ml, a
//! fake kubelet and a fixture `/proc` (issue 13): per-pod series on MIG instances match
//! the kubelet's `MIG-…` allocations, and NVML and a hung kubelet fit in one source budget.

mod attribution_support;
mod fake_nvml;

use std::time::{Duration, Instant};

use attribution_support::{
    FakeKubelet, Node, Raw, RawSocket, Script, container, container_id, list, pod, pod_uid,
};
use fake_nvml::FakeNvml;
use opentelemetry::Value as AttrValue;
use otel_gpu_receiver::attribution::{self, AttributionConfig};
use otel_gpu_receiver::collector::Collector;
use otel_gpu_receiver::gpu::{GpuConfig, GpuSource, Inventory};
use otel_gpu_receiver::host::{Roots, Source};
use otel_gpu_receiver::selfmon::SelfStats;
use otel_gpu_receiver::snapshot::{Point, Points};

const MIB: u64 = 1024 * 1024;

fn uuid(i: usize) -> String {
    format!("GPU-00000000-0000-4000-8000-{i:012}")
}

fn mig_uuid(parent: usize, k: usize) -> String {
    format!("MIG-00000000-0000-4000-8000-{parent:06}{k:06}")
}

fn attr(p: &Point, key: &str) -> Option<String> {
    p.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            AttrValue::I64(i) => i.to_string(),
            v => v.as_str().into_owned(),
        })
}

fn named<'a>(points: &'a [Point], name: &'a str) -> impl Iterator<Item = &'a Point> + 'a {
    points.iter().filter(move |p| p.name == name)
}

#[test]
fn per_pod_series_on_mig_instances_match_the_kubelets_mig_allocations() {
    // GPU 0 has two MIG instances (gpu instance 1 and 2); pod ml/a holds the first and
    // pod ml/b the second, each with one process in it.
    let (a, b) = (4_194_401u32, 4_194_402u32);
    let fake = FakeNvml::new(&format!(
        "devices 1\n\
         dev 0 mig 2\n\
         dev 0 proc {a} {} 0 0 trainer 1 0\n\
         dev 0 proc {b} {} 0 0 infer 2 0",
        1024 * MIB,
        512 * MIB
    ));
    let (m0, m1) = (mig_uuid(0, 0), mig_uuid(0, 1));
    let kubelet = FakeKubelet::start(Script::Respond(list(vec![
        pod(
            "ml",
            "a",
            vec![container("ta", "nvidia.com/mig-3g.40gb", &[&m0])],
        ),
        pod(
            "ml",
            "b",
            vec![container("tb", "nvidia.com/mig-3g.40gb", &[&m1])],
        ),
    ])));
    let node = Node::new();
    node.pod_dir("ml", "a", &pod_uid(1))
        .pod_dir("ml", "b", &pod_uid(2))
        .pod_process(a, &pod_uid(1), &container_id(1))
        .pod_process(b, &pod_uid(2), &container_id(2));
    let gpu = GpuSource::new(
        GpuConfig {
            nvml_lib: Some(fake.lib.clone()),
            per_process: true,
            proc_root: node.proc_root(),
            ..GpuConfig::default()
        },
        Inventory::default(),
    );
    let mut source = attribution::AttributedSource::new(
        gpu,
        AttributionConfig {
            kubelet_socket: kubelet.socket.clone(),
            proc_root: node.proc_root(),
            pod_log_dir: node.pod_log_dir(),
            ..AttributionConfig::default()
        },
    );
    let mut p = Points::default();
    source.collect(&mut p).unwrap();
    let points = p.into_vec();

    // Per-pod memory on each MIG instance: the hw.id is the one the kubelet allocated.
    let mut memory: Vec<_> = named(&points, "process.gpu.memory.usage")
        .map(|p| {
            assert_eq!(attr(p, "process.pid"), None, "per-pod sums");
            (
                attr(p, "hw.id").unwrap(),
                attr(p, "k8s.pod.name").unwrap(),
                attr(p, "k8s.container.name").unwrap(),
                p.value.as_i64() as u64,
            )
        })
        .collect();
    memory.sort();
    assert_eq!(
        memory,
        vec![
            (m0.clone(), "a".into(), "ta".into(), 1024 * MIB),
            (m1.clone(), "b".into(), "tb".into(), 512 * MIB),
        ]
    );
    let mut alloc: Vec<_> = named(&points, "nvidia.gpu.allocation")
        .map(|p| (attr(p, "hw.id").unwrap(), attr(p, "k8s.pod.name").unwrap()))
        .collect();
    alloc.sort();
    assert_eq!(
        alloc,
        vec![(m0.clone(), "a".into()), (m1.clone(), "b".into())]
    );
    // The instance's own series carry its one pod; the parent's none.
    for (id, pod) in [(&m0, "a"), (&m1, "b")] {
        let mem: Vec<_> = named(&points, "hw.gpu.memory.usage")
            .filter(|p| attr(p, "hw.id").as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(attr(mem[0], "k8s.pod.name").as_deref(), Some(pod));
    }
    let parent: Vec<_> = named(&points, "hw.status")
        .filter(|p| attr(p, "hw.id") == Some(uuid(0)))
        .collect();
    assert!(!parent.is_empty());
    assert!(parent.iter().all(|p| attr(p, "k8s.pod.name").is_none()));
    // Nothing went wrong: no unknown device IDs, no ambiguous pods.
    assert_eq!(
        named(&points, "otel_gpu_receiver.attribution.errors").count(),
        0
    );
}

#[test]
fn a_hung_discovery_and_a_silent_kubelet_still_fit_in_the_source_budget() {
    // Cycle 2: device discovery hangs (abandoned after the call deadline), every power
    // reading takes 500 ms, and the kubelet accepts the connection and never answers.
    // Discovery, the calls and the kubelet share the GPU source's budget, so the cycle
    // gets the GPU output, hw.status first, instead of dropping it for being late.
    let fake = FakeNvml::new(
        "devices 4\n\
         count_sleep 2 30000\n\
         dev * sleep nvmlDeviceGetPowerUsage 500",
    );
    let silent = RawSocket::start(Raw::Silent);
    let source_timeout = Duration::from_secs(3);
    let total = source_timeout.mul_f64(otel_gpu_receiver::gpu::SOURCE_SHARE);
    let kubelet_timeout = Duration::from_millis(450);
    let gpu = GpuSource::new(
        GpuConfig {
            nvml_lib: Some(fake.lib.clone()),
            call_timeout: Duration::from_millis(750),
            budget: total - kubelet_timeout,
            ..GpuConfig::default()
        },
        Inventory::default(),
    );
    let config = AttributionConfig {
        kubelet_socket: silent.socket.clone(),
        kubelet_timeout,
        ..AttributionConfig::default()
    };
    let mut c =
        Collector::new(&[], &Roots::default(), source_timeout, SelfStats::default()).unwrap();
    c.add(attribution::wrap_within(gpu, Some(&config), total))
        .unwrap();
    c.cycle();
    let started = Instant::now();
    let snap = c.cycle();
    let took = started.elapsed();
    assert!(took < source_timeout, "{took:?}");
    assert_eq!(c.stats().errors_of("gpu"), 0, "{:?}", c.stats().errors);
    // Every GPU's health, although the budget did not cover every reading.
    let ok = snap
        .points("hw.status")
        .iter()
        .filter(|p| attr(p, "hw.state").as_deref() == Some("ok") && p.value.as_i64() == 1)
        .count();
    assert_eq!(ok, 4);
    let timeouts = |call: &str| {
        snap.points("otel_gpu_receiver.nvml.timeouts")
            .iter()
            .find(|p| attr(p, "nvml.call").as_deref() == Some(call))
            .map_or(0, |p| p.value.as_i64())
    };
    assert_eq!(timeouts("nvmlDeviceGetCount_v2"), 1);
    assert_eq!(timeouts("budget"), 1);
    // The kubelet's silence is counted (once per cycle), within the budget.
    let kubelet = snap
        .points("otel_gpu_receiver.attribution.errors")
        .iter()
        .find(|p| attr(p, "error.type").as_deref() == Some("kubelet_timeout"))
        .map(|p| p.value.as_i64());
    assert_eq!(kubelet, Some(2));
}
