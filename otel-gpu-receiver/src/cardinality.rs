//! Per-instrument cardinality limits, from the agent's own estimate of each metric's
//! series, so that the SDK never folds real series into `otel.metric.overflow`
//! unnoticed.
//!
//! The OpenTelemetry SDK keeps at most 2,000 attribute sets per instrument and per
//! collection (`opentelemetry_sdk` 0.33's default); the rest are summed into one series
//! marked `otel.metric.overflow=true`, without a word. `system.cpu.time` alone has
//! 8 modes × logical CPUs: 3,072 series on a 384-thread node. At start-up the agent
//! reads the host's shape ([`Shape`]: logical CPUs, disks, mounts, interfaces) and
//! estimates each catalogue metric's series from the attributes it carries; the limit
//! of its instrument is twice that (room for hot-plugged CPUs and new mounts), and
//! never below the SDK's default. A [`View`](opentelemetry_sdk::metrics::Stream) sets
//! it per instrument.
//!
//! If a metric still outgrows its limit (a host that grew well past its shape at
//! start), the collector counts the series the SDK folds, per metric, in
//! `otel_gpu_receiver.series.overflow{metric.name}` and logs once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use opentelemetry_sdk::metrics::{Instrument, Stream};
use opentelemetry_semantic_conventions::attribute as a;

use crate::catalogue::{CATALOGUE, Family, MetricDesc, Origin};
use crate::host::Roots;
use crate::snapshot::Points;

/// The SDK's default per-instrument limit (`opentelemetry_sdk` 0.33).
pub const SDK_DEFAULT: usize = 2000;

/// How much room the limit leaves over the estimate.
pub const HEADROOM: usize = 2;

/// The most GPUs and MIG instances one node has (8 GPUs × 7 MIG instances, and the
/// GPUs themselves), for the attribution metrics' overflow series.
const GPU_DEVICES_MAX: usize = 64;

/// What bounds the host families' series, read once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Logical CPUs: those in /proc/stat, or the kernel's possible CPUs if more.
    pub cpus: usize,
    /// Block devices in /proc/diskstats (partitions included: an overestimate).
    pub disks: usize,
    /// Mounts in pid 1's mount table (before the excludes: an overestimate).
    pub mounts: usize,
    /// Interfaces in pid 1's network namespace.
    pub interfaces: usize,
}

impl Shape {
    /// Reads the shape under `roots`. Whatever cannot be read counts as 1.
    pub fn read(roots: &Roots) -> Self {
        let lines = |rel: &str| {
            std::fs::read_to_string(roots.proc(rel))
                .ok()
                .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        };
        let stat_cpus = std::fs::read_to_string(roots.proc("stat"))
            .map(|t| {
                t.lines()
                    .filter(|l| {
                        l.strip_prefix("cpu")
                            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0);
        let possible = possible_cpus(&roots.sys("devices/system/cpu/possible")).unwrap_or(0);
        let fallback = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = match stat_cpus.max(possible) {
            0 => fallback,
            n => n,
        };
        let disks = lines("diskstats").unwrap_or(1);
        let mounts = lines("1/mountinfo")
            .or_else(|| lines("mounts"))
            .unwrap_or(1);
        let interfaces = lines("1/net/dev")
            .or_else(|| lines("net/dev"))
            .map_or(1, |n| n.saturating_sub(2));
        Self {
            cpus,
            disks: disks.max(1),
            mounts: mounts.max(1),
            interfaces: interfaces.max(1),
        }
    }
}

/// Counts the CPUs of a kernel CPU list file such as `0-383` or `0-3,8,10-11`.
fn possible_cpus(path: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.trim().parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// The estimated series of one catalogue metric on a host of `shape`, from the
/// attributes it carries. Attributes that describe the same thing (a mount's device,
/// mount point, type and mode) count once.
pub fn estimate(d: &MetricDesc, shape: &Shape, attribution_max: usize) -> usize {
    let family = match d.origin {
        Origin::Host(f) => Some(f),
        Origin::SelfMonitoring => None,
    };
    if family == Some(Family::Gpu) {
        // The attributed GPU series are capped by the agent itself; the cap's overflow
        // adds one series per metric and GPU.
        if d.attributes.contains(&a::K8S_POD_NAME) {
            return attribution_max + GPU_DEVICES_MAX;
        }
        // The other GPU series are bounded by the devices, which are unknown until
        // NVML is up: the SDK's default fits 64 devices with their per-device sets.
        return 1;
    }
    let mut n: usize = 1;
    let mut per_mount = false;
    for key in d.attributes {
        n = n.saturating_mul(match *key {
            a::CPU_LOGICAL_NUMBER => shape.cpus,
            a::NETWORK_INTERFACE_NAME => shape.interfaces,
            a::SYSTEM_DEVICE if family == Some(Family::Disk) => shape.disks,
            a::SYSTEM_DEVICE
            | a::SYSTEM_FILESYSTEM_MOUNTPOINT
            | a::SYSTEM_FILESYSTEM_TYPE
            | a::SYSTEM_FILESYSTEM_MODE => {
                if per_mount {
                    1
                } else {
                    per_mount = true;
                    shape.mounts
                }
            }
            // Fixed enums: modes, states, directions, error types…
            _ => 8,
        });
    }
    n
}

/// The cardinality limit of every catalogue metric's instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    by_name: HashMap<&'static str, usize>,
}

impl Limits {
    /// Limits for a host of `shape`: twice each metric's estimate, at least the SDK's
    /// default.
    pub fn for_shape(shape: &Shape, attribution_max: usize) -> Self {
        let by_name = CATALOGUE
            .iter()
            .map(|d| {
                let want = estimate(d, shape, attribution_max).saturating_mul(HEADROOM);
                // The SDK refuses usize::MAX (it sizes a map as limit + 1).
                (d.name, want.clamp(SDK_DEFAULT, usize::MAX / 2))
            })
            .collect();
        Self { by_name }
    }

    /// Limits for the host the settings point at.
    pub fn estimate(settings: &crate::config::Settings) -> Self {
        let shape = Shape::read(&settings.roots);
        let attribution_max = settings
            .attribution
            .as_ref()
            .map_or(SDK_DEFAULT, |c| c.max_series);
        let limits = Self::for_shape(&shape, attribution_max);
        tracing::debug!(
            ?shape,
            cpu_time = limits.get(opentelemetry_semantic_conventions::metric::SYSTEM_CPU_TIME),
            "per-instrument cardinality limits"
        );
        limits
    }

    /// The limit of `name`'s instrument (the SDK's default for a name not in the
    /// catalogue).
    pub fn get(&self, name: &str) -> usize {
        self.by_name.get(name).copied().unwrap_or(SDK_DEFAULT)
    }

    /// A view for `SdkMeterProviderBuilder::with_view` that sets each catalogue
    /// instrument's limit.
    pub fn view(
        self: &Arc<Self>,
    ) -> impl Fn(&Instrument) -> Option<Stream> + Send + Sync + 'static {
        let limits = self.clone();
        move |i: &Instrument| {
            let n = *limits.by_name.get(i.name())?;
            Stream::builder().with_cardinality_limit(n).build().ok()
        }
    }

    /// The series per metric that the SDK will fold into `otel.metric.overflow` at the
    /// next collection of `points`: those beyond the limit. The series without
    /// attributes does not count against it (the SDK keeps it apart).
    pub fn excess(&self, points: &Points) -> BTreeMap<&'static str, u64> {
        // A source pushes a metric's points one after another: count runs of one name
        // and hash the name once per run, not once per point (this runs every cycle).
        let mut count: HashMap<&'static str, usize> = HashMap::new();
        let mut run: Option<(&'static str, usize)> = None;
        for p in points.iter().filter(|p| !p.attributes.is_empty()) {
            match &mut run {
                Some((name, n)) if *name == p.name => *n += 1,
                _ => {
                    if let Some((name, n)) = run.replace((p.name, 1)) {
                        *count.entry(name).or_default() += n;
                    }
                }
            }
        }
        if let Some((name, n)) = run {
            *count.entry(name).or_default() += n;
        }
        count
            .into_iter()
            .filter_map(|(name, n)| {
                let limit = self.get(name);
                (n > limit).then(|| (name, (n - limit) as u64))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry_semantic_conventions::metric as sc;

    fn shape(cpus: usize) -> Shape {
        Shape {
            cpus,
            disks: 4,
            mounts: 30,
            interfaces: 6,
        }
    }

    #[test]
    fn a_384_thread_node_gets_room_for_every_cpu_time_series() {
        let l = Limits::for_shape(&shape(384), 2000);
        // 8 modes × 384 CPUs = 3,072 > the SDK's 2,000.
        assert_eq!(l.get(sc::SYSTEM_CPU_TIME), 2 * 8 * 384);
        assert_eq!(l.get(sc::SYSTEM_CPU_FREQUENCY), SDK_DEFAULT);
        // Small families keep the SDK's default.
        assert_eq!(l.get(sc::SYSTEM_MEMORY_USAGE), SDK_DEFAULT);
        assert_eq!(l.get(sc::SYSTEM_FILESYSTEM_USAGE), SDK_DEFAULT);
        // Attribution: its own cap plus one overflow series per device, twice.
        assert_eq!(
            l.get(crate::gpu::names::PROCESS_GPU_MEMORY_USAGE),
            2 * (2000 + 64)
        );
        let l = Limits::for_shape(&shape(384), 5000);
        assert_eq!(
            l.get(crate::gpu::names::PROCESS_GPU_MEMORY_USAGE),
            2 * (5000 + 64)
        );
    }

    #[test]
    fn mount_attributes_count_once_and_directions_multiply() {
        let s = Shape {
            cpus: 1,
            disks: 500,
            mounts: 400,
            interfaces: 300,
        };
        let est = |name| estimate(crate::catalogue::find(name).unwrap(), &s, 0);
        assert_eq!(est(sc::SYSTEM_FILESYSTEM_LIMIT), 400);
        assert_eq!(est(sc::SYSTEM_FILESYSTEM_USAGE), 400 * 8);
        assert_eq!(est(sc::SYSTEM_DISK_IO), 500 * 8);
        assert_eq!(est(sc::SYSTEM_NETWORK_IO), 300 * 8);
        let l = Limits::for_shape(&s, 0);
        assert_eq!(l.get(sc::SYSTEM_FILESYSTEM_USAGE), 2 * 400 * 8);
    }

    #[test]
    fn excess_counts_the_series_beyond_each_limit() {
        let l = Limits::for_shape(&shape(2), 0);
        let mut p = Points::default();
        for i in 0..(SDK_DEFAULT + 7) {
            p.push(
                sc::SYSTEM_NETWORK_IO,
                vec![KeyValue::new(a::NETWORK_INTERFACE_NAME, format!("if{i}"))],
                1u64,
            );
        }
        p.push(sc::SYSTEM_CPU_LOGICAL_COUNT, vec![], 2u64);
        let e = l.excess(&p);
        assert_eq!(e, BTreeMap::from([(sc::SYSTEM_NETWORK_IO, 7)]));
    }

    #[test]
    fn the_shape_is_read_from_stat_possible_cpus_and_pid_1s_tables() {
        let d = tempfile::tempdir().unwrap();
        let proc = d.path().join("proc");
        let sys = d.path().join("sys");
        std::fs::create_dir_all(proc.join("1/net")).unwrap();
        std::fs::create_dir_all(sys.join("devices/system/cpu")).unwrap();
        std::fs::write(
            proc.join("stat"),
            "cpu  1 2 3\ncpu0 1 2 3\ncpu1 1 2 3\nintr 5\ncpufreq 1\n",
        )
        .unwrap();
        std::fs::write(proc.join("1/mountinfo"), "a\nb\nc\n").unwrap();
        std::fs::write(proc.join("1/net/dev"), "h1\nh2\n lo: 1\n eth0: 2\n").unwrap();
        let roots = Roots {
            proc,
            sys: sys.clone(),
            ..Roots::default()
        };
        let s = Shape::read(&roots);
        assert_eq!((s.cpus, s.mounts, s.interfaces, s.disks), (2, 3, 2, 1));
        // CPUs that may be hot-plugged later count too.
        std::fs::write(sys.join("devices/system/cpu/possible"), "0-3,8,10-11\n").unwrap();
        assert_eq!(Shape::read(&roots).cpus, 7);
        assert_eq!(possible_cpus(Path::new("/nonexistent")), None);
    }
}
