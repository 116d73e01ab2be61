//! GPU attribution: process → container → Kubernetes pod.
//!
//! Three layers, each optional and quiet when absent:
//! 1. NVML's per-process data says which pid uses how much of which GPU (the `gpu` source).
//! 2. The pid's cgroup gives the container ID and the pod UID ([`cgroup`]); the kubelet's pod
//!    log directories name the pod behind a UID ([`pods`]).
//! 3. The kubelet pod-resources API says which containers hold which GPU ([`kubelet`]).
//!
//! From these, one [`Attributor::run`] per cycle produces:
//! - per-pod sums by default: `process.gpu.memory.usage` and `process.gpu.utilization` per GPU
//!   and pod (and container), with `process.pid` dropped. Each pod on a shared GPU
//!   (time-slicing, MPS) gets its own processes' share; the device total is never copied to
//!   the pods;
//! - per-process series instead, when asked for (`per_process`), with `container.id` and the
//!   `k8s.*` attributes added;
//! - `nvidia.gpu.allocation{hw.id, k8s.*} 1` for every container that holds a GPU, busy or idle;
//! - the owner of each GPU held by exactly one pod, so that device-level series can carry
//!   `k8s.pod.name`, `k8s.namespace.name` and `k8s.container.name` ([`Attribution::owners`]).
//!
//! A cap bounds the attributed series per cycle: what exceeds it is folded into one series per
//! metric and GPU marked `otel.metric.overflow=true`, and counted.

/// pid → container, shared with otel-instrument's own resource detection.
pub use otel_instrument::resource::cgroup;
pub mod kubelet;
pub mod pods;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::gpu::names::ATTR_GPU_INDEX;
use crate::snapshot::{Points, Value};

use self::cgroup::{CgroupError, CgroupReader, ContainerInfo};
use self::kubelet::{Allocations, GpuIdentity, Holder, KubeletSource};
use self::pods::PodDirectory;

/// `process.gpu.memory.usage`, the GPU source's per-process series that attribution rewrites.
pub use crate::gpu::names::PROCESS_GPU_MEMORY_USAGE;
/// `process.gpu.utilization`, the GPU source's per-process series that attribution rewrites.
pub use crate::gpu::names::PROCESS_GPU_UTILIZATION;
/// The attribution metric names (they live in [`crate::names`], so that the catalogue
/// needs nothing from this module).
pub use crate::names::{ATTR_OVERFLOW, ATTRIBUTION_ERRORS, ATTRIBUTION_OVERFLOW, GPU_ALLOCATION};

/// How attribution runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributionConfig {
    /// Ask the kubelet which pods hold which GPU. Default: true.
    pub kubelet: bool,
    /// The kubelet pod-resources socket. Default: [`kubelet::DEFAULT_SOCKET`].
    pub kubelet_socket: PathBuf,
    /// Deadline of one kubelet call. Default: [`kubelet::DEFAULT_TIMEOUT`] (2 s).
    pub kubelet_timeout: Duration,
    /// Where `/proc` is (the host's, with `hostPID: true`). Default: `/proc`.
    pub proc_root: PathBuf,
    /// The kubelet's pod log directory, to name the pod behind a cgroup's pod UID.
    /// Default: [`pods::DEFAULT_POD_LOG_DIR`].
    pub pod_log_dir: PathBuf,
    /// Emit one series per process (with `process.pid`) instead of per-pod sums. Default: false.
    pub per_process: bool,
    /// At most this many attributed series per cycle; the rest is aggregated. Default: 2000.
    pub max_series: usize,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            kubelet: true,
            kubelet_socket: kubelet::DEFAULT_SOCKET.into(),
            kubelet_timeout: kubelet::DEFAULT_TIMEOUT,
            proc_root: "/proc".into(),
            pod_log_dir: pods::DEFAULT_POD_LOG_DIR.into(),
            per_process: false,
            max_series: 2000,
        }
    }
}

/// A source (the GPU source) whose points go through an [`Attributor`] before they reach
/// the snapshot. Attribution runs on the source's worker thread, inside its time budget.
#[derive(Debug)]
pub struct AttributedSource<S> {
    inner: S,
    attributor: Attributor,
    /// The whole source's budget per cycle (inner source and kubelet together), if any.
    budget: Option<Duration>,
}

impl<S: crate::source::Source> AttributedSource<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, config: AttributionConfig) -> Self {
        Self {
            inner,
            attributor: Attributor::new(config),
            budget: None,
        }
    }

    /// Bounds each cycle, `inner` and the kubelet call together, by `budget`: the kubelet
    /// is waited for only as long as `inner` left of it.
    pub fn within(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl<S: crate::source::Source + std::fmt::Debug> crate::source::Source for AttributedSource<S> {
    fn family(&self) -> crate::catalogue::Family {
        self.inner.family()
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), crate::source::CollectError> {
        let deadline = self.budget.map(|b| std::time::Instant::now() + b);
        let mut mine = Points::default();
        self.inner.collect(&mut mine)?;
        self.attributor.deadline = deadline;
        self.attributor.apply(&mut mine);
        out.append(&mut mine);
        Ok(())
    }
}

/// Wraps `source` in attribution when `config` is `Some` (attribution on).
pub fn wrap<S: crate::source::Source + std::fmt::Debug>(
    source: S,
    config: Option<&AttributionConfig>,
) -> Box<dyn crate::source::Source> {
    match config {
        Some(c) => Box::new(AttributedSource::new(source, c.clone())),
        None => Box::new(source),
    }
}

/// Like [`wrap`], with the source and the kubelet call bounded together by `budget` per
/// cycle (see [`AttributedSource::within`]).
pub fn wrap_within<S: crate::source::Source + std::fmt::Debug>(
    source: S,
    config: Option<&AttributionConfig>,
    budget: Duration,
) -> Box<dyn crate::source::Source> {
    match config {
        Some(c) => Box::new(AttributedSource::new(source, c.clone()).within(budget)),
        None => Box::new(source),
    }
}

/// One process's use of one GPU, as NVML reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuProcess {
    /// Host pid.
    pub pid: u32,
    /// UUID of the GPU (or MIG instance): the `hw.id`.
    pub gpu: String,
    /// `process.executable.name`, when known.
    pub executable: Option<String>,
    /// GPU memory used, bytes, when NVML reported it.
    pub memory_used: Option<u64>,
    /// Utilization ratios (0–1) by `hw.gpu.task` (`general`, `encoder`, `decoder`).
    pub utilization: Vec<(String, f64)>,
}

/// A metric value produced by attribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SeriesValue {
    /// Integer (bytes, counts).
    Int(i64),
    /// Ratio.
    Float(f64),
}

/// One series produced by attribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Metric name (one of this module's constants).
    pub name: &'static str,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
    /// Value.
    pub value: SeriesValue,
}

/// The pod (and, when unique, the container) that alone holds a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `k8s.namespace.name`.
    pub namespace: String,
    /// `k8s.pod.name`.
    pub pod: String,
    /// `k8s.container.name`, when exactly one container of the pod holds the GPU.
    pub container: Option<String>,
}

impl Owner {
    /// The `k8s.*` attributes to add to the GPU's device-level series.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut a = vec![
            KeyValue::new(semconv::K8S_POD_NAME, self.pod.clone()),
            KeyValue::new(semconv::K8S_NAMESPACE_NAME, self.namespace.clone()),
        ];
        if let Some(c) = &self.container {
            a.push(KeyValue::new(semconv::K8S_CONTAINER_NAME, c.clone()));
        }
        a
    }
}

/// What one cycle of attribution produced.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    /// Per-pod (or per-process) GPU use, allocations, overflow series and self-metrics.
    pub series: Vec<Series>,
    /// GPU UUID → the one pod that holds it. GPUs held by several pods, or by none, are absent.
    pub owners: BTreeMap<String, Owner>,
    /// Whether the kubelet answered this cycle.
    pub kubelet_ok: bool,
}

/// Where a process runs, as far as we can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Placement {
    namespace: Option<String>,
    pod: Option<String>,
    container: Option<String>,
    container_id: Option<String>,
}

/// The key of one attributed series group: a GPU plus whatever identifies the owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    gpu: String,
    placement: Placement,
    /// Only in per-process mode.
    pid: Option<u32>,
}

#[derive(Debug, Default, Clone)]
struct Sums {
    memory: Option<u64>,
    utilization: BTreeMap<String, f64>,
    executable: Option<String>,
}

impl Sums {
    fn add(&mut self, memory: Option<u64>, utilization: &[(String, f64)]) {
        if let Some(m) = memory {
            self.memory = Some(self.memory.unwrap_or(0).saturating_add(m));
        }
        for (task, v) in utilization {
            if v.is_finite() {
                *self.utilization.entry(task.clone()).or_insert(0.0) += v.max(0.0);
            }
        }
    }

    fn merge(&mut self, other: &Sums) {
        if let Some(m) = other.memory {
            self.memory = Some(self.memory.unwrap_or(0).saturating_add(m));
        }
        for (task, v) in &other.utilization {
            *self.utilization.entry(task.clone()).or_insert(0.0) += v;
        }
    }

    fn series(&self) -> usize {
        usize::from(self.memory.is_some()) + self.utilization.len()
    }
}

/// Runs attribution once per cycle and keeps what must outlive a cycle (the kubelet
/// connection, the pod index, the self-metric totals, what was already logged).
#[derive(Debug)]
pub struct Attributor {
    config: AttributionConfig,
    cgroups: CgroupReader,
    pods: PodDirectory,
    /// GPU UUID → minor number, from the driver's `/proc/driver/nvidia/gpus/*/information`.
    minors: BTreeMap<String, u32>,
    minors_read_in: Option<u64>,
    kubelet: Option<KubeletSource>,
    cycle: u64,
    overflow_total: u64,
    errors: BTreeMap<&'static str, u64>,
    /// Error kinds already logged; cleared when the source recovers.
    logged: HashSet<&'static str>,
    kubelet_off_logged: bool,
    /// When this cycle's source budget ends: the kubelet is not waited for past it.
    pub(crate) deadline: Option<std::time::Instant>,
}

impl Attributor {
    /// An attributor with `config`. Nothing is read or connected until the first run.
    pub fn new(config: AttributionConfig) -> Self {
        let kubelet = config
            .kubelet
            .then(|| KubeletSource::new(&config.kubelet_socket, config.kubelet_timeout));
        Self {
            cgroups: CgroupReader::new(&config.proc_root),
            pods: PodDirectory::new(&config.pod_log_dir),
            kubelet,
            config,
            cycle: 0,
            overflow_total: 0,
            errors: BTreeMap::new(),
            logged: HashSet::new(),
            kubelet_off_logged: false,
            minors: BTreeMap::new(),
            minors_read_in: None,
            deadline: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AttributionConfig {
        &self.config
    }

    /// Cumulative error counts by `error.type`.
    pub fn errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.errors
    }

    /// Cumulative count of series folded into overflow series.
    pub fn overflow_total(&self) -> u64 {
        self.overflow_total
    }

    /// How many kubelet `List` calls were made so far.
    pub fn kubelet_calls(&self) -> u64 {
        self.kubelet.as_ref().map_or(0, KubeletSource::calls)
    }

    /// Attributes one cycle's per-process GPU use. `gpus` are the GPUs NVML sees (to map
    /// device-name IDs), `processes` what NVML reported per process this cycle.
    pub fn run(&mut self, gpus: &[GpuIdentity], processes: &[GpuProcess]) -> Attribution {
        self.cycle += 1;
        // No GPU seen (no NVML, or none on this machine): nothing to ask the kubelet about,
        // and no "attribution is off" line on every machine without one.
        let (allocations, kubelet_ok) = if gpus.is_empty() && processes.is_empty() {
            (Allocations::default(), false)
        } else {
            self.allocations(gpus)
        };

        let mut groups: BTreeMap<GroupKey, Sums> = BTreeMap::new();
        for p in processes {
            let placement = self.place(p, &allocations);
            let key = if self.config.per_process {
                GroupKey {
                    gpu: p.gpu.clone(),
                    placement,
                    pid: Some(p.pid),
                }
            } else {
                // Per-pod sums: processes outside any container or pod (the host's) are
                // not reported; per-process series (opt-in) show them.
                if placement.pod.is_none() && placement.container_id.is_none() {
                    continue;
                }
                // Within a pod, the container ID adds nothing but churn.
                let placement = if placement.pod.is_some() {
                    Placement {
                        container_id: None,
                        ..placement
                    }
                } else {
                    placement
                };
                GroupKey {
                    gpu: p.gpu.clone(),
                    placement,
                    pid: None,
                }
            };
            let sums = groups.entry(key).or_default();
            sums.add(p.memory_used, &p.utilization);
            if sums.executable.is_none() {
                sums.executable.clone_from(&p.executable);
            }
        }

        let mut out = Attribution {
            kubelet_ok,
            ..Attribution::default()
        };
        let mut budget = self.config.max_series;
        let mut overflow_alloc: BTreeMap<String, i64> = BTreeMap::new();
        let mut overflow_use: BTreeMap<String, Sums> = BTreeMap::new();
        let mut folded = 0u64;

        for (gpu, holders) in &allocations.by_gpu {
            for h in holders {
                if budget == 0 {
                    *overflow_alloc.entry(gpu.clone()).or_default() += 1;
                    folded += 1;
                    continue;
                }
                budget -= 1;
                out.series.push(Series {
                    name: GPU_ALLOCATION,
                    attributes: vec![
                        KeyValue::new(semconv::HW_ID, gpu.clone()),
                        KeyValue::new(semconv::K8S_NAMESPACE_NAME, h.namespace.clone()),
                        KeyValue::new(semconv::K8S_POD_NAME, h.pod.clone()),
                        KeyValue::new(semconv::K8S_CONTAINER_NAME, h.container.clone()),
                    ],
                    value: SeriesValue::Int(1),
                });
            }
            if let Some(owner) = sole_owner(holders) {
                out.owners.insert(gpu.clone(), owner);
            }
        }

        for (key, sums) in &groups {
            let n = sums.series();
            if n > budget {
                overflow_use.entry(key.gpu.clone()).or_default().merge(sums);
                folded += n as u64;
                budget = 0;
                continue;
            }
            budget -= n;
            let attrs = group_attributes(key, sums);
            push_use(&mut out.series, attrs, sums);
        }

        for (gpu, count) in overflow_alloc {
            out.series.push(Series {
                name: GPU_ALLOCATION,
                attributes: vec![
                    KeyValue::new(semconv::HW_ID, gpu),
                    KeyValue::new(ATTR_OVERFLOW, true),
                ],
                value: SeriesValue::Int(count),
            });
        }
        for (gpu, sums) in overflow_use {
            let attrs = vec![
                KeyValue::new(semconv::HW_ID, gpu),
                KeyValue::new(ATTR_OVERFLOW, true),
            ];
            push_use(&mut out.series, attrs, &sums);
        }
        if folded > 0 && self.logged.insert("overflow") {
            tracing::warn!(
                max_series = self.config.max_series,
                folded,
                "more attributed GPU series than the cap; the excess is aggregated (logged once)"
            );
        }
        self.overflow_total += folded;

        if self.overflow_total > 0 {
            out.series.push(Series {
                name: ATTRIBUTION_OVERFLOW,
                attributes: Vec::new(),
                value: SeriesValue::Int(i64::try_from(self.overflow_total).unwrap_or(i64::MAX)),
            });
        }
        for (kind, n) in &self.errors {
            out.series.push(Series {
                name: ATTRIBUTION_ERRORS,
                attributes: vec![KeyValue::new(semconv::ERROR_TYPE, *kind)],
                value: SeriesValue::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            });
        }
        out
    }

    /// Rewrites one cycle's points in place: the GPU source's per-process series become
    /// per-pod sums (or attributed per-process series), allocations and self-metrics are
    /// added, and the device-level series of a GPU held by exactly one pod get its `k8s.*`
    /// attributes.
    ///
    /// The GPUs are recognised by their `hw.id` and `gpu.index` attributes (MIG instances,
    /// which carry `hw.parent`, are matched by UUID only).
    pub fn apply(&mut self, points: &mut Points) {
        let mut all = std::mem::take(points).into_vec();
        let mut gpus: BTreeMap<String, GpuIdentity> = BTreeMap::new();
        // hw.id → gpu.index, MIG instances included (they carry their parent's index).
        let mut index_of: BTreeMap<String, i64> = BTreeMap::new();
        let mut procs: BTreeMap<(String, u32), GpuProcess> = BTreeMap::new();
        // Every point is looked at by reference: a cycle has a thousand of them, and an
        // owned copy of their `hw.id` each was most of this pass's cost.
        all.retain(|p| {
            let hw_id = str_ref(&p.attributes, semconv::HW_ID);
            if let Some(id) = hw_id
                && !index_of.contains_key(id)
                && let Some(index) = int_of(&p.attributes, ATTR_GPU_INDEX)
            {
                index_of.insert(id.to_owned(), index);
            }
            if p.name == PROCESS_GPU_MEMORY_USAGE || p.name == PROCESS_GPU_UTILIZATION {
                let pid =
                    int_of(&p.attributes, semconv::PROCESS_PID).and_then(|v| u32::try_from(v).ok());
                if let (Some(gpu), Some(pid)) = (hw_id, pid) {
                    let entry = procs
                        .entry((gpu.to_owned(), pid))
                        .or_insert_with(|| GpuProcess {
                            pid,
                            gpu: gpu.to_owned(),
                            executable: str_of(&p.attributes, semconv::PROCESS_EXECUTABLE_NAME),
                            memory_used: None,
                            utilization: Vec::new(),
                        });
                    if p.name == PROCESS_GPU_MEMORY_USAGE {
                        entry.memory_used = u64::try_from(p.value.as_i64()).ok();
                    } else {
                        let task = str_of(&p.attributes, semconv::HW_GPU_TASK)
                            .unwrap_or_else(|| "general".to_owned());
                        entry.utilization.push((task, p.value.as_f64()));
                    }
                    return false;
                }
            } else if let Some(uuid) = hw_id
                && !gpus.contains_key(uuid)
                && str_ref(&p.attributes, semconv::HW_PARENT).is_none()
                && let Some(index) =
                    int_of(&p.attributes, ATTR_GPU_INDEX).and_then(|v| u32::try_from(v).ok())
            {
                gpus.insert(
                    uuid.to_owned(),
                    GpuIdentity {
                        uuid: uuid.to_owned(),
                        index,
                        minor_number: None,
                    },
                );
            }
            true
        });
        let gpus: Vec<GpuIdentity> = gpus.into_values().collect();
        let procs: Vec<GpuProcess> = procs.into_values().collect();
        let out = self.run(&gpus, &procs);

        if !out.owners.is_empty() {
            for p in &mut all {
                if !p.name.starts_with("process.")
                    && !p.name.starts_with("otel_gpu_receiver.")
                    && let Some(owner) =
                        str_ref(&p.attributes, semconv::HW_ID).and_then(|id| out.owners.get(id))
                {
                    p.attributes.extend(owner.attributes());
                }
            }
        }
        *points = Points::from(all);
        for mut s in out.series {
            if let Some(index) =
                str_of(&s.attributes, semconv::HW_ID).and_then(|id| index_of.get(&id).copied())
            {
                s.attributes.insert(1, KeyValue::new(ATTR_GPU_INDEX, index));
            }
            let value = match s.value {
                SeriesValue::Int(i) => Value::Int(i),
                SeriesValue::Float(f) => Value::Float(f),
            };
            points.push(s.name, s.attributes, value);
        }
    }

    /// `gpus` with the minor numbers NVML did not give filled in from the driver's proc
    /// files (read again, at most once per cycle, when a GPU is not known there yet). The
    /// kubelet's `nvidia<N>` device IDs are minor numbers, which need not follow the index.
    fn with_minor_numbers(&mut self, gpus: &[GpuIdentity]) -> Vec<GpuIdentity> {
        let unknown = gpus
            .iter()
            .any(|g| g.minor_number.is_none() && !self.minors.contains_key(&g.uuid));
        if unknown && self.minors_read_in != Some(self.cycle) {
            self.minors_read_in = Some(self.cycle);
            self.minors = read_minor_numbers(&self.config.proc_root);
        }
        gpus.iter()
            .map(|g| GpuIdentity {
                minor_number: g.minor_number.or_else(|| self.minors.get(&g.uuid).copied()),
                ..g.clone()
            })
            .collect()
    }

    fn count(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// The kubelet's allocations this cycle (empty when off or failed).
    fn allocations(&mut self, gpus: &[GpuIdentity]) -> (Allocations, bool) {
        let cycle = self.cycle;
        let Some(kubelet) = self.kubelet.as_mut() else {
            return (Allocations::default(), false);
        };
        match kubelet.list_until(cycle, self.deadline) {
            Ok(list) => {
                if self.kubelet_off_logged || self.logged.iter().any(|k| k.starts_with("kubelet")) {
                    tracing::info!(socket = %kubelet.socket().display(), "kubelet pod-resources answers again; attribution to pods is on");
                }
                self.kubelet_off_logged = false;
                self.logged.retain(|k| !k.starts_with("kubelet"));
                // Minor numbers only serve to read the kubelet's `nvidia<N>` IDs: off
                // Kubernetes the driver's proc files are not read at all.
                let gpus = self.with_minor_numbers(gpus);
                let a = Allocations::from_list(&list, &gpus);
                if a.unrecognised_ids > 0 {
                    *self.errors.entry("unknown_device_id").or_insert(0) +=
                        a.unrecognised_ids as u64;
                    if self.logged.insert("unknown_device_id") {
                        tracing::warn!(
                            count = a.unrecognised_ids,
                            "kubelet reported NVIDIA device IDs that match no GPU here (logged once)"
                        );
                    }
                }
                (a, true)
            }
            Err(e) if e.is_unavailable() => {
                if !self.kubelet_off_logged {
                    self.kubelet_off_logged = true;
                    tracing::info!(
                        socket = %kubelet.socket().display(),
                        reason = %cause(&e),
                        "kubelet pod-resources socket not usable; GPU attribution to pods is off"
                    );
                }
                (Allocations::default(), false)
            }
            Err(e) => {
                let kind = e.kind();
                if self.logged.insert(kind) {
                    tracing::warn!(
                        socket = %kubelet.socket().display(),
                        error = %cause(&e),
                        "kubelet pod-resources call failed; no pod attribution this cycle (logged once)"
                    );
                }
                self.count(kind);
                (Allocations::default(), false)
            }
        }
    }

    /// Where process `p` runs: its container, and its pod when that can be told for sure.
    fn place(&mut self, p: &GpuProcess, allocations: &Allocations) -> Placement {
        let info = match self.cgroups.read(p.pid) {
            Ok(info) => info,
            // The process exited between NVML's answer and now: nothing to attribute.
            Err(CgroupError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                ContainerInfo::default()
            }
            Err(e) => {
                let kind = e.kind();
                self.count(kind);
                if self.logged.insert(kind) {
                    tracing::warn!(pid = p.pid, error = %cause(&e), "cgroup file skipped (logged once)");
                }
                ContainerInfo::default()
            }
        };
        let mut placement = Placement {
            container_id: info.container_id.clone(),
            ..Placement::default()
        };
        let Some(uid) = info.pod_uid.as_deref() else {
            // Not in a pod (host process or plain container): never guess a pod for it.
            return placement;
        };
        let holders = allocations.holders(&p.gpu);
        let named = self.pods.lookup(uid, self.cycle).cloned();
        let (namespace, pod) = match named {
            Some(n) => (n.namespace, n.name),
            // The pod log directory is readable and does not know this UID: whatever the
            // allocations say, the process may be in a pod that uses the GPU without holding
            // it (NVIDIA_VISIBLE_DEVICES=all). Do not guess.
            None if self.pods.is_readable() => return placement,
            None => match sole_owner(holders) {
                // The UID cannot be named (no pod log directory), but only one pod holds
                // this GPU: it is that pod.
                Some(o) => (o.namespace, o.pod),
                None => {
                    if !holders.is_empty() {
                        self.count("pod_ambiguous");
                    }
                    return placement;
                }
            },
        };
        let mut containers = holders
            .iter()
            .filter(|h| h.namespace == namespace && h.pod == pod)
            .map(|h| h.container.as_str());
        let container = match (containers.next(), containers.next()) {
            (Some(c), None) => Some(c.to_owned()),
            _ => None,
        };
        placement.namespace = Some(namespace);
        placement.pod = Some(pod);
        placement.container = container;
        placement
    }
}

/// The one pod among `holders`, if there is exactly one (several containers of it may hold
/// the GPU; the container is then left out).
fn sole_owner(holders: &[Holder]) -> Option<Owner> {
    let pods: BTreeSet<(&str, &str)> = holders
        .iter()
        .map(|h| (h.namespace.as_str(), h.pod.as_str()))
        .collect();
    if pods.len() != 1 {
        return None;
    }
    let first = holders.first()?;
    Some(Owner {
        namespace: first.namespace.clone(),
        pod: first.pod.clone(),
        container: (holders.len() == 1).then(|| first.container.clone()),
    })
}

fn group_attributes(key: &GroupKey, sums: &Sums) -> Vec<KeyValue> {
    let mut a = vec![KeyValue::new(semconv::HW_ID, key.gpu.clone())];
    if let Some(pid) = key.pid {
        a.push(KeyValue::new(semconv::PROCESS_PID, i64::from(pid)));
        if let Some(exe) = &sums.executable {
            a.push(KeyValue::new(semconv::PROCESS_EXECUTABLE_NAME, exe.clone()));
        }
    }
    let p = &key.placement;
    if let Some(id) = &p.container_id {
        a.push(KeyValue::new(semconv::CONTAINER_ID, id.clone()));
    }
    if let Some(ns) = &p.namespace {
        a.push(KeyValue::new(semconv::K8S_NAMESPACE_NAME, ns.clone()));
    }
    if let Some(pod) = &p.pod {
        a.push(KeyValue::new(semconv::K8S_POD_NAME, pod.clone()));
    }
    if let Some(c) = &p.container {
        a.push(KeyValue::new(semconv::K8S_CONTAINER_NAME, c.clone()));
    }
    a
}

fn push_use(out: &mut Vec<Series>, attrs: Vec<KeyValue>, sums: &Sums) {
    if let Some(m) = sums.memory {
        out.push(Series {
            name: PROCESS_GPU_MEMORY_USAGE,
            attributes: attrs.clone(),
            value: SeriesValue::Int(i64::try_from(m).unwrap_or(i64::MAX)),
        });
    }
    for (task, v) in &sums.utilization {
        let mut a = attrs.clone();
        a.push(KeyValue::new(semconv::HW_GPU_TASK, task.clone()));
        out.push(Series {
            name: PROCESS_GPU_UTILIZATION,
            attributes: a,
            // Several processes' shares of one GPU cannot add up past the whole GPU.
            value: SeriesValue::Float(v.min(1.0)),
        });
    }
}

/// GPU UUID → minor number from `<proc_root>/driver/nvidia/gpus/<pci>/information`, whose
/// `GPU UUID:` and `Device Minor:` lines the NVIDIA driver writes. Missing files: empty.
pub fn read_minor_numbers(proc_root: &std::path::Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(dirs) = std::fs::read_dir(proc_root.join("driver/nvidia/gpus")) else {
        return out;
    };
    for d in dirs.flatten() {
        let Ok(text) = std::fs::read_to_string(d.path().join("information")) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':'))
                .map(str::trim)
        };
        if let (Some(uuid), Some(minor)) = (
            field("GPU UUID"),
            field("Device Minor").and_then(|m| m.parse().ok()),
        ) {
            out.insert(uuid.to_owned(), minor);
        }
    }
    out
}

/// The string value of `key`, borrowed (`None` for a missing key or a non-string value).
fn str_ref<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .and_then(|kv| match &kv.value {
            opentelemetry::Value::String(s) => Some(s.as_str()),
            _ => None,
        })
}

fn str_of(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn int_of(attrs: &[KeyValue], key: &str) -> Option<i64> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .and_then(|kv| match kv.value {
            opentelemetry::Value::I64(i) => Some(i),
            _ => None,
        })
}

/// An error and its sources, `a: b: c`, for log lines.
fn cause(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(inner) = next {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        next = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(ns: &str, pod: &str, c: &str) -> Holder {
        Holder {
            namespace: ns.into(),
            pod: pod.into(),
            container: c.into(),
        }
    }

    #[test]
    fn a_gpu_held_by_two_containers_of_one_pod_has_an_owner_without_container() {
        let o = sole_owner(&[holder("a", "p", "c1"), holder("a", "p", "c2")]).unwrap();
        assert_eq!(o.pod, "p");
        assert_eq!(o.container, None);
        assert_eq!(
            sole_owner(&[holder("a", "p", "c1"), holder("a", "q", "c1")]),
            None
        );
        assert_eq!(sole_owner(&[]), None);
    }

    #[test]
    fn utilization_sums_are_capped_at_the_whole_gpu_and_ignore_nan() {
        let mut s = Sums::default();
        s.add(Some(5), &[("general".into(), 0.7)]);
        s.add(
            None,
            &[("general".into(), 0.6), ("encoder".into(), f64::NAN)],
        );
        let mut out = Vec::new();
        push_use(&mut out, vec![], &s);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].value, SeriesValue::Int(5));
        assert_eq!(out[1].value, SeriesValue::Float(1.0));
    }

    #[test]
    fn apply_turns_per_process_points_into_sums_and_keeps_the_rest() {
        let proc_root = tempfile::tempdir().unwrap();
        let id = "ab".repeat(32);
        for pid in [10u32, 11] {
            let d = proc_root.path().join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("cgroup"),
                format!("0::/system.slice/docker-{id}.scope\n"),
            )
            .unwrap();
        }
        let mut a = Attributor::new(AttributionConfig {
            kubelet: false,
            proc_root: proc_root.path().to_owned(),
            ..AttributionConfig::default()
        });
        let gpu = |extra: &[KeyValue]| {
            let mut v = vec![
                KeyValue::new(semconv::HW_ID, "GPU-1"),
                KeyValue::new(ATTR_GPU_INDEX, 0i64),
            ];
            v.extend_from_slice(extra);
            v
        };
        let mut points = Points::default();
        points.push("hw.gpu.memory.usage", gpu(&[]), Value::Int(9000));
        for pid in [10i64, 11] {
            let p = [
                KeyValue::new(semconv::PROCESS_PID, pid),
                KeyValue::new(semconv::PROCESS_EXECUTABLE_NAME, "python"),
            ];
            points.push(PROCESS_GPU_MEMORY_USAGE, gpu(&p), Value::Int(pid * 100));
            let mut u = p.to_vec();
            u.push(KeyValue::new(semconv::HW_GPU_TASK, "general"));
            points.push(PROCESS_GPU_UTILIZATION, gpu(&u), Value::Float(0.25));
        }
        a.apply(&mut points);
        let points = points.into_vec();
        let find = |name: &'static str| points.iter().filter(move |p| p.name == name);
        assert_eq!(
            find("hw.gpu.memory.usage").count(),
            1,
            "device series kept once"
        );
        let mem: Vec<_> = find(PROCESS_GPU_MEMORY_USAGE).collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].value, Value::Int(2100));
        assert_eq!(str_of(&mem[0].attributes, semconv::CONTAINER_ID), Some(id));
        assert_eq!(int_of(&mem[0].attributes, semconv::PROCESS_PID), None);
        let util: Vec<_> = find(PROCESS_GPU_UTILIZATION).collect();
        assert_eq!(util.len(), 1);
        assert_eq!(util[0].value, Value::Float(0.5));
        assert_eq!(
            find(ATTRIBUTION_OVERFLOW).count(),
            0,
            "only once the cap was hit"
        );
        assert_eq!(
            int_of(&mem[0].attributes, ATTR_GPU_INDEX),
            Some(0),
            "gpu.index is kept"
        );
    }
}
