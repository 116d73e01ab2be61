//! Snapshots to export, shared by the exposition golden test and `benches/export.rs`:
//! real collection cycles (the host's /proc, the fake libnvidia-ml, attribution with a
//! fake kubelet and a fixture /proc), so the series are the agent's own.
//!
//! Needs `mod fake_nvml;` and `mod attribution_support;` beside it in the crate root.
#![allow(dead_code)]

use std::time::Duration;

use otel_gpu_receiver::attribution;
use otel_gpu_receiver::catalogue::Family;
use otel_gpu_receiver::collector::Collector;
use otel_gpu_receiver::config::Settings;
use otel_gpu_receiver::gpu::{self, Inventory};
use otel_gpu_receiver::selfmon::SelfStats;
use otel_gpu_receiver::snapshot::Snapshot;

use crate::attribution_support::{
    FakeKubelet, Node, Script, container, container_id, list, pod, pod_uid,
};
use crate::fake_nvml::FakeNvml;

/// Which snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// Every host family, no GPU (as `benches/footprint.sh` runs the agent).
    Host,
    /// The host and 8 fake GPUs with `--per-process` (as `benches/gpu_cycle.sh`): GPM,
    /// 4 NVLink links and two compute processes per GPU; attribution on, no containers.
    Gpus8,
    /// The host and 8 fake GPUs with attribution to pods: GPU 0 shared by pods `ml/a`
    /// and `ml/b`, GPU 1 held by `ml/c`, the other processes outside any container.
    /// Per-pod sums, or per-process series with their pod when `per_process`.
    Pods { per_process: bool },
}

impl Fixture {
    /// Every fixture, for tests that check them all.
    pub const ALL: [Fixture; 4] = [
        Fixture::Host,
        Fixture::Gpus8,
        Fixture::Pods { per_process: false },
        Fixture::Pods { per_process: true },
    ];

    /// A short name for messages and bench ids.
    pub fn name(self) -> &'static str {
        match self {
            Fixture::Host => "host",
            Fixture::Gpus8 => "8gpus-per-process",
            Fixture::Pods { per_process: false } => "8gpus-pods",
            Fixture::Pods { per_process: true } => "8gpus-pods-per-process",
        }
    }
}

/// GPU `i`'s UUID in the fake.
pub fn uuid(i: usize) -> String {
    format!("GPU-00000000-0000-4000-8000-{i:012}")
}

const PIDS: [u32; 3] = [4_194_401, 4_194_402, 4_194_403];

/// The fake's script: 8 GPUs, GPM, 4 NVLink links each and two processes per GPU; on GPUs
/// 0 and 1 the pod processes `PIDS` replace the first ones.
fn script() -> String {
    let mut s = String::from("devices 8\ndriver 550.54.15\ndev * gpm 1\ndev * nvlinks 4\n");
    for i in 0..8_u32 {
        let (p0, p1) = match i {
            0 => (PIDS[0], PIDS[1]),
            1 => (PIDS[2], 4_194_500),
            _ => (4_194_500 + 2 * i, 4_194_501 + 2 * i),
        };
        s += &format!(
            "dev {i} proc {p0} {} {} 5 trainer{i}\n",
            u64::from(i + 1) << 30,
            10 + i
        );
        s += &format!(
            "dev {i} proc {p1} {} 3 1 notebook{i}\n",
            u64::from(i + 1) << 28
        );
    }
    s
}

/// A collected snapshot and what must outlive the collector (the fake, the kubelet).
pub struct Scene {
    /// The agent's settings for this fixture.
    pub settings: Settings,
    /// The second cycle's snapshot (the first has no CPU utilisation yet).
    pub snapshot: Snapshot,
    _fake: Option<FakeNvml>,
    _kubelet: Option<FakeKubelet>,
    _node: Option<Node>,
}

impl std::fmt::Debug for Scene {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scene")
            .field("series", &self.snapshot.series())
            .finish_non_exhaustive()
    }
}

/// Runs two collection cycles of `fixture`.
pub fn collect(fixture: Fixture) -> Scene {
    let mut settings = Settings::default();
    let (mut fake, mut kubelet, mut node) = (None, None, None);
    match fixture {
        Fixture::Host => settings.families.retain(|f| *f != Family::Gpu),
        Fixture::Gpus8 => {
            let f = FakeNvml::new(&script());
            settings.nvml_lib = Some(f.lib.clone());
            settings.per_process = true;
            if let Some(a) = settings.attribution.as_mut() {
                a.per_process = true;
            }
            fake = Some(f);
        }
        Fixture::Pods { per_process } => {
            let f = FakeNvml::new(&script());
            let k = FakeKubelet::start(Script::Respond(list(vec![
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
                    vec![container("inf", "nvidia.com/gpu", &[&uuid(1)])],
                ),
            ])));
            let n = Node::new();
            n.pod_dir("ml", "a", &pod_uid(1))
                .pod_dir("ml", "b", &pod_uid(2))
                .pod_dir("ml", "c", &pod_uid(3))
                .pod_process(PIDS[0], &pod_uid(1), &container_id(1))
                .pod_process(PIDS[1], &pod_uid(2), &container_id(2))
                .pod_process(PIDS[2], &pod_uid(3), &container_id(3));
            settings.nvml_lib = Some(f.lib.clone());
            settings.per_process = per_process;
            let a = settings
                .attribution
                .as_mut()
                .expect("attribution is on by default");
            a.per_process = per_process;
            a.proc_root = n.proc_root();
            a.pod_log_dir = n.pod_log_dir();
            a.kubelet_socket = k.socket.clone();
            a.kubelet_timeout = Duration::from_secs(2);
            crate::attribution_support::wait_for(&k.socket);
            fake = Some(f);
            kubelet = Some(k);
            node = Some(n);
        }
    }
    let host: Vec<Family> = settings
        .families
        .iter()
        .copied()
        .filter(|f| *f != Family::Gpu)
        .collect();
    let mut c = Collector::new(
        &host,
        &settings.roots,
        settings.source_timeout,
        SelfStats::default(),
    )
    .expect("start the collector");
    if settings.families.contains(&Family::Gpu) {
        c.add(attribution::wrap(
            gpu::source(&settings, Inventory::default()),
            settings.attribution.as_ref(),
        ))
        .expect("start the GPU source");
    }
    let _ = c.cycle();
    std::thread::sleep(Duration::from_millis(200));
    let snapshot = c.cycle();
    Scene {
        settings,
        snapshot,
        _fake: fake,
        _kubelet: kubelet,
        _node: node,
    }
}
