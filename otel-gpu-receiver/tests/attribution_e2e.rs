//! End to end: the real agent binary, the fake libnvidia-ml, a fake kubelet and a fixture
//! `/proc`, exporting to an in-process OTLP sink.
//!
//! Node: GPU 0 is time-sliced between pods `ml/a` and `ml/b` (one process each), GPU 1 is
//! held by pod `ml/c` (one process), and named by device name (`nvidia1`) rather than UUID.

mod attribution_support;
mod fake_nvml;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use attribution_support::{FakeKubelet, Node, Script, container, container_id, list, pod, pod_uid};
use fake_nvml::FakeNvml;
use otel_gpu_receiver::catalogue::{self, Instrument};
use otel_instrument::testing::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use otel_instrument::testing::proto::metrics::v1::{Metric, metric, number_data_point};
use otel_instrument::testing::{OtlpSink, attributes};

const BIN: &str = env!("CARGO_BIN_EXE_otel-gpu-receiver");
const MIB: i64 = 1024 * 1024;

fn uuid(i: usize) -> String {
    format!("GPU-00000000-0000-4000-8000-{i:012}")
}

/// A child process killed and reaped on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (attributes, value) of every data point of `name` in one export request.
fn points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in sm.metrics.iter().filter(|m| m.name == name) {
                let dps = match &m.data {
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    _ => continue,
                };
                for dp in dps {
                    let v = match dp.value {
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        None => f64::NAN,
                    };
                    out.push((attributes(&dp.attributes), v));
                }
            }
        }
    }
    out
}

/// The metric `name` of one export request.
fn metric<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Metric> {
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .find(|m| m.name == name)
}

/// The metric arrived with the catalogue's unit and instrument, and attribute keys that the
/// catalogue lists (plus the overflow marker, and `k8s.*` on device series).
fn assert_catalogued(req: &ExportMetricsServiceRequest, name: &str) {
    let desc = catalogue::find(name).unwrap_or_else(|| panic!("{name} is not catalogued"));
    let m = metric(req, name).unwrap_or_else(|| panic!("{name} was not received"));
    assert_eq!(m.unit, desc.unit, "unit of {name}");
    let kind = match &m.data {
        Some(metric::Data::Gauge(_)) => Instrument::Gauge,
        Some(metric::Data::Sum(s)) if s.is_monotonic => Instrument::Counter,
        Some(metric::Data::Sum(_)) => Instrument::UpDownCounter,
        other => panic!("{name}: unexpected data {other:?}"),
    };
    assert_eq!(kind, desc.instrument, "instrument of {name}");
    for (attrs, _) in points(req, name) {
        for key in attrs.keys() {
            assert!(
                desc.attributes.contains(&key.as_str()) || key == "otel.metric.overflow",
                "{name}: {key} is not in the catalogue's {:?}",
                desc.attributes
            );
        }
    }
}

fn get<'a>(attrs: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    attrs.get(key).map(String::as_str)
}

/// The node of every test here, with the agent running and exporting to the sink.
struct Scene {
    sink: OtlpSink,
    _agent: Agent,
    _fake: FakeNvml,
    _kubelet: FakeKubelet,
    _node: Node,
}

const PIDS: (u32, u32, u32) = (4_194_401, 4_194_402, 4_194_403);

impl Scene {
    fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, |_| {})
    }

    /// Like [`start`](Self::start), with `tweak` applied to the node before the agent starts.
    fn start_with(extra: &[&str], tweak: impl FnOnce(&Node)) -> Self {
        let (a, b, c) = PIDS;
        let fake = FakeNvml::new(&format!(
            "devices 2\n\
             dev 0 proc {a} {} 40 5 trainer\n\
             dev 0 proc {b} {} 10 2 notebook\n\
             dev 1 proc {c} {} 70 30 infer",
            1024 * MIB,
            512 * MIB,
            2048 * MIB
        ));
        let kubelet = FakeKubelet::start(Script::Respond(list(vec![
            pod(
                "ml",
                "a",
                vec![container(
                    "ta",
                    "nvidia.com/gpu",
                    &[&format!("{}::0", uuid(0))],
                )],
            ),
            pod(
                "ml",
                "b",
                vec![container(
                    "nb",
                    "nvidia.com/gpu",
                    &[&format!("{}::1", uuid(0))],
                )],
            ),
            pod(
                "ml",
                "c",
                vec![container("inf", "nvidia.com/gpu", &["nvidia1"])],
            ),
        ])));
        let node = Node::new();
        node.pod_dir("ml", "a", &pod_uid(1))
            .pod_dir("ml", "b", &pod_uid(2))
            .pod_dir("ml", "c", &pod_uid(3))
            .pod_process(a, &pod_uid(1), &container_id(1))
            .pod_process(b, &pod_uid(2), &container_id(2))
            .pod_process(c, &pod_uid(3), &container_id(3));
        tweak(&node);

        let sink = OtlpSink::start().unwrap();
        let proc_root = node.proc_root();
        let pod_logs = node.pod_log_dir();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--interval",
            "1s",
            "--families",
            "gpu",
            "--otlp-endpoint",
            &sink.endpoint(),
        ])
        .arg("--nvml-lib")
        .arg(&fake.lib)
        .arg("--proc-root")
        .arg(&proc_root)
        .arg("--kubelet-socket")
        .arg(&kubelet.socket)
        .arg("--pod-log-dir")
        .arg(&pod_logs)
        .env_clear()
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let agent = Agent(cmd.spawn().expect("start the agent"));
        Self {
            sink,
            _agent: agent,
            _fake: fake,
            _kubelet: kubelet,
            _node: node,
        }
    }

    /// The latest export request that has all three allocations.
    fn request(&self) -> ExportMetricsServiceRequest {
        let got = self
            .sink
            .wait_until(Duration::from_secs(30), |r| {
                r.metrics
                    .iter()
                    .any(|req| points(req, "nvidia.gpu.allocation").len() == 3)
            })
            .expect("the sink never received the three allocations");
        got.metrics
            .iter()
            .rev()
            .find(|req| points(req, "nvidia.gpu.allocation").len() == 3)
            .unwrap()
            .clone()
    }
}

#[test]
fn two_pods_sharing_gpu0_and_one_on_gpu1_get_their_own_series_and_no_device_total_is_copied() {
    let scene = Scene::start(&[]);
    let req = &scene.request();

    // Every pod that holds a GPU shows its allocation.
    let mut alloc: Vec<_> = points(req, "nvidia.gpu.allocation")
        .into_iter()
        .map(|(a, v)| {
            assert_eq!(v, 1.0);
            (
                get(&a, "hw.id").unwrap().to_owned(),
                get(&a, "k8s.pod.name").unwrap().to_owned(),
                get(&a, "k8s.container.name").unwrap().to_owned(),
            )
        })
        .collect();
    alloc.sort();
    assert_eq!(
        alloc,
        vec![
            (uuid(0), "a".into(), "ta".into()),
            (uuid(0), "b".into(), "nb".into()),
            (uuid(1), "c".into(), "inf".into()),
        ]
    );

    // Per-pod memory: each pod its own processes' bytes, never the device's.
    let mut memory: Vec<_> = points(req, "process.gpu.memory.usage")
        .into_iter()
        .map(|(a, v)| {
            assert_eq!(get(&a, "process.pid"), None, "per-pod sums by default");
            assert_eq!(get(&a, "k8s.namespace.name"), Some("ml"));
            (
                get(&a, "hw.id").unwrap().to_owned(),
                get(&a, "k8s.pod.name").unwrap().to_owned(),
                v as i64,
            )
        })
        .collect();
    memory.sort();
    assert_eq!(
        memory,
        vec![
            (uuid(0), "a".into(), 1024 * MIB),
            (uuid(0), "b".into(), 512 * MIB),
            (uuid(1), "c".into(), 2048 * MIB),
        ]
    );

    // Per-pod utilization (general = SM): each pod its own share.
    let mut util: Vec<_> = points(req, "process.gpu.utilization")
        .into_iter()
        .filter(|(a, _)| get(a, "hw.gpu.task") == Some("general"))
        .map(|(a, v)| {
            (
                get(&a, "k8s.pod.name").unwrap().to_owned(),
                (v * 100.0).round() as i64,
            )
        })
        .collect();
    util.sort();
    assert_eq!(
        util,
        vec![("a".into(), 40), ("b".into(), 10), ("c".into(), 70)]
    );

    // Device series: one per GPU, not one per pod. GPU 1 has a single pod, so it is
    // labelled with it; GPU 0 is shared, so it is not.
    let device = points(req, "hw.gpu.memory.usage");
    assert_eq!(device.len(), 2, "{device:?}");
    for (a, _) in &device {
        match get(a, "hw.id") {
            Some(id) if id == uuid(0) => assert_eq!(get(a, "k8s.pod.name"), None),
            Some(id) if id == uuid(1) => {
                assert_eq!(get(a, "k8s.pod.name"), Some("c"));
                assert_eq!(get(a, "k8s.container.name"), Some("inf"));
            }
            other => panic!("unexpected device {other:?}"),
        }
    }
    let utilization = points(req, "hw.gpu.utilization");
    let gpu0_general = utilization
        .iter()
        .filter(|(a, _)| {
            get(a, "hw.id") == Some(uuid(0).as_str()) && get(a, "hw.gpu.task") == Some("general")
        })
        .count();
    assert_eq!(
        gpu0_general, 1,
        "the shared GPU's utilization is reported once"
    );

    // Nothing went wrong along the way.
    assert!(points(req, "otel_gpu_receiver.attribution.errors").is_empty());
    assert!(points(req, "otel_gpu_receiver.attribution.overflow").is_empty());

    // What arrived matches the catalogue.
    for name in [
        "nvidia.gpu.allocation",
        "process.gpu.memory.usage",
        "process.gpu.utilization",
    ] {
        assert_catalogued(req, name);
    }
}

#[test]
fn per_process_series_carry_pid_container_and_pod_end_to_end() {
    let scene = Scene::start(&["--per-process"]);
    let req = &scene.request();
    let mut memory: Vec<_> = points(req, "process.gpu.memory.usage")
        .into_iter()
        .map(|(a, v)| {
            (
                get(&a, "process.pid").unwrap().to_owned(),
                get(&a, "container.id").unwrap().to_owned(),
                get(&a, "k8s.pod.name").unwrap().to_owned(),
                get(&a, "process.executable.name").unwrap().to_owned(),
                v as i64,
            )
        })
        .collect();
    memory.sort();
    let (a, b, c) = PIDS;
    assert_eq!(
        memory,
        vec![
            (
                a.to_string(),
                container_id(1),
                "a".into(),
                "trainer".into(),
                1024 * MIB
            ),
            (
                b.to_string(),
                container_id(2),
                "b".into(),
                "notebook".into(),
                512 * MIB
            ),
            (
                c.to_string(),
                container_id(3),
                "c".into(),
                "infer".into(),
                2048 * MIB
            ),
        ]
    );
}

#[test]
fn a_tiny_cap_and_a_malformed_cgroup_are_aggregated_and_counted_on_the_wire() {
    let (_, _, c) = PIDS;
    let scene = Scene::start_with(&["--attribution-max-series", "2"], |node| {
        node.cgroup(c, "this is not a cgroup file\n");
    });
    let req = &scene.request();

    // Two allocations fit; GPU 1's is folded into an overflow series.
    let alloc = points(req, "nvidia.gpu.allocation");
    let overflowed: Vec<_> = alloc
        .iter()
        .filter(|(a, _)| get(a, "otel.metric.overflow") == Some("true"))
        .collect();
    assert_eq!(overflowed.len(), 1, "{alloc:?}");
    assert_eq!(get(&overflowed[0].0, "hw.id"), Some(uuid(1).as_str()));
    assert_eq!(get(&overflowed[0].0, "k8s.pod.name"), None);
    assert_eq!(overflowed[0].1, 1.0);

    // Pods a and b no longer fit: their memory is summed per GPU, not lost. Process c's
    // cgroup is unreadable, so it is in no pod and not reported in per-pod mode.
    let memory = points(req, "process.gpu.memory.usage");
    assert_eq!(memory.len(), 1, "{memory:?}");
    assert_eq!(get(&memory[0].0, "otel.metric.overflow"), Some("true"));
    assert_eq!(get(&memory[0].0, "hw.id"), Some(uuid(0).as_str()));
    assert_eq!(memory[0].1 as i64, 1536 * MIB);

    let overflow = points(req, "otel_gpu_receiver.attribution.overflow");
    assert_eq!(overflow.len(), 1);
    assert!(
        overflow[0].1 >= 5.0,
        "1 allocation + 2 memory + 2 utilization series per cycle"
    );
    let errors = points(req, "otel_gpu_receiver.attribution.errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(get(&errors[0].0, "error.type"), Some("cgroup_malformed"));
    assert!(errors[0].1 >= 1.0);

    for name in [
        "nvidia.gpu.allocation",
        "process.gpu.memory.usage",
        "otel_gpu_receiver.attribution.overflow",
        "otel_gpu_receiver.attribution.errors",
    ] {
        assert_catalogued(req, name);
    }
}
