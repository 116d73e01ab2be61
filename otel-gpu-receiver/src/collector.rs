//! The collection cycle: the host families share one worker thread, and every other
//! source (the GPU source) runs on a worker thread of its own, each under a time budget,
//! so one hung call cannot stall the cycle. A failing source logs once, counts an error
//! and is skipped.
//!
//! The host families only read small procfs files, and the one call among them that can
//! hang (statfs on a dead network mount) already runs under a deadline of its own
//! (`host::statvfs`). Running them one after another on one thread costs one wake-up
//! per cycle instead of one per family: on a VM a wake-up (two context switches and cold
//! caches) costs more than reading the file, and it was most of the host families' CPU.
//! Should a host family hang all the same, that family is counted as `timeout` and the
//! others as `busy` until it returns; the GPU source goes on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use crate::cardinality::Limits;
use crate::catalogue::Family;
use crate::host::{self, HostConfig, Roots};
use crate::names;
use crate::selfmon::SelfStats;
use crate::snapshot::{Points, Snapshot};
use crate::source::{CollectError, Source};

/// (worker, cycle, (member, result) for each member it asked).
type Reply = (usize, u64, Vec<(usize, Result<Points, CollectError>)>);

#[derive(Debug)]
struct Member {
    family: Family,
    /// The platform lacks this family: asked no more after the first answer.
    unsupported: bool,
}

#[derive(Debug)]
struct Worker {
    members: Vec<Member>,
    requests: Sender<u64>,
    busy: Arc<AtomicBool>,
    /// The member the worker is reading (or read last).
    running: Arc<AtomicUsize>,
}

impl Worker {
    fn active(&self) -> bool {
        self.members.iter().any(|m| !m.unsupported)
    }
}

/// The source of `family`: a host family, or the GPU source with the default library
/// (the agent adds its GPU source with the configured settings instead, see
/// [`crate::gpu::source`]).
fn source(family: Family, host: &HostConfig) -> Box<dyn Source> {
    let roots = &host.roots;
    host::source_with(family, host).unwrap_or_else(|| {
        Box::new(crate::gpu::GpuSource::new(
            crate::gpu::GpuConfig {
                proc_root: roots.proc.clone(),
                ..crate::gpu::GpuConfig::default()
            },
            crate::gpu::Inventory::default(),
        ))
    })
}

/// Runs the sources once per cycle and builds snapshots.
#[derive(Debug)]
pub struct Collector {
    workers: Vec<Worker>,
    replies: Receiver<Reply>,
    reply_tx: Sender<Reply>,
    budget: Duration,
    cycle: u64,
    stats: SelfStats,
    /// (source, error.type) pairs already logged; cleared when the source recovers.
    logged: HashSet<(&'static str, &'static str)>,
    /// The SDK's per-instrument limits, when exporting through it.
    limits: Option<Arc<Limits>>,
    /// Series beyond their instrument's limit, per metric, since start.
    overflow: BTreeMap<&'static str, u64>,
    /// Readings dropped for a NaN or infinite value, per metric, since start.
    non_finite: BTreeMap<&'static str, u64>,
}

impl Collector {
    /// Starts the workers of the enabled families, with the host families' default
    /// settings. `budget` bounds each worker per cycle.
    ///
    /// # Errors
    /// A worker thread cannot be spawned.
    pub fn new(
        families: &[Family],
        roots: &Roots,
        budget: Duration,
        stats: SelfStats,
    ) -> std::io::Result<Self> {
        Self::with_host(families, &HostConfig::from(roots.clone()), budget, stats)
    }

    /// Like [`Collector::new`], with the host families' settings of `host`. The host
    /// families share one worker; a GPU family gets one of its own.
    ///
    /// # Errors
    /// A worker thread cannot be spawned.
    pub fn with_host(
        families: &[Family],
        host: &HostConfig,
        budget: Duration,
        stats: SelfStats,
    ) -> std::io::Result<Self> {
        let (reply_tx, replies) = mpsc::channel();
        let mut c = Self {
            workers: Vec::new(),
            replies,
            reply_tx,
            budget,
            cycle: 0,
            stats,
            logged: HashSet::new(),
            limits: None,
            overflow: BTreeMap::new(),
            non_finite: BTreeMap::new(),
        };
        let (gpu, procfs): (Vec<Family>, Vec<Family>) =
            families.iter().partition(|f| **f == Family::Gpu);
        if !procfs.is_empty() {
            c.add_group("host", procfs.iter().map(|&f| source(f, host)).collect())?;
        }
        for f in gpu {
            c.add(source(f, host))?;
        }
        Ok(c)
    }

    /// Adds a source on a worker thread of its own (for example a GPU source, or a
    /// test double).
    ///
    /// # Errors
    /// Its worker thread cannot be spawned.
    pub fn add(&mut self, source: Box<dyn Source>) -> std::io::Result<()> {
        let name = source.family().as_str();
        self.add_group(name, vec![source])
    }

    /// Adds sources that share one worker thread, `src-{name}`, and are read one after
    /// another: one wake-up per cycle for all of them. A source that hangs holds up the
    /// ones after it, so only sources whose calls cannot hang belong together.
    ///
    /// # Errors
    /// The worker thread cannot be spawned.
    pub fn add_group(&mut self, name: &str, sources: Vec<Box<dyn Source>>) -> std::io::Result<()> {
        let index = self.workers.len();
        let members = sources
            .iter()
            .map(|s| Member {
                family: s.family(),
                unsupported: false,
            })
            .collect();
        let (tx, rx) = mpsc::channel::<u64>();
        let busy = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let (worker_busy, worker_running) = (busy.clone(), running.clone());
        let replies = self.reply_tx.clone();
        let mut sources: Vec<(Box<dyn Source>, bool)> =
            sources.into_iter().map(|s| (s, false)).collect();
        thread::Builder::new()
            .name(format!("src-{name}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(cycle) = rx.recv() {
                    // Families that read the same procfs file share one reading.
                    host::roots::new_cycle();
                    let mut results = Vec::with_capacity(sources.len());
                    for (i, (source, unsupported)) in sources.iter_mut().enumerate() {
                        if *unsupported {
                            continue;
                        }
                        worker_running.store(i, Ordering::Release);
                        let mut out = Points::default();
                        let r = source.collect(&mut out).map(|()| out);
                        *unsupported = matches!(r, Err(CollectError::Unsupported));
                        results.push((i, r));
                    }
                    worker_busy.store(false, Ordering::Release);
                    if replies.send((index, cycle, results)).is_err() {
                        return;
                    }
                }
            })?;
        self.workers.push(Worker {
            members,
            requests: tx,
            busy,
            running,
        });
        Ok(())
    }

    /// Counts, from now on, the series of each metric beyond its instrument's limit
    /// in `limits`: the series the SDK folds into `otel.metric.overflow`.
    pub fn set_limits(&mut self, limits: Arc<Limits>) {
        self.limits = Some(limits);
    }

    /// Series beyond their instrument's limit, per metric, since start.
    pub fn overflow(&self) -> &BTreeMap<&'static str, u64> {
        &self.overflow
    }

    /// The self-monitoring counters.
    pub fn stats(&self) -> &SelfStats {
        &self.stats
    }

    /// Every active member `m` of worker `w`, with `e(m)`.
    fn fail_all(
        &self,
        w: usize,
        e: impl Fn(usize) -> CollectError,
        out: &mut Vec<((usize, usize), CollectError)>,
    ) {
        for (m, member) in self.workers[w].members.iter().enumerate() {
            if !member.unsupported {
                out.push(((w, m), e(m)));
            }
        }
    }

    /// Runs one cycle: asks every worker, waits for each until the budget is spent,
    /// and returns the snapshot with the self-monitoring points.
    pub fn cycle(&mut self) -> Snapshot {
        let started = Instant::now();
        self.cycle += 1;
        let cycle = self.cycle;
        let mut failed: Vec<((usize, usize), CollectError)> = Vec::new();
        let mut pending = vec![false; self.workers.len()];
        for (i, w) in self.workers.iter().enumerate() {
            if !w.active() {
                continue;
            }
            if w.busy.swap(true, Ordering::AcqRel) {
                self.fail_all(i, |_| CollectError::Busy, &mut failed);
            } else if w.requests.send(cycle).is_err() {
                self.fail_all(i, |_| CollectError::WorkerGone, &mut failed);
            } else {
                pending[i] = true;
            }
        }
        let mut points = Points::default();
        let deadline = started + self.budget;
        let mut succeeded = Vec::new();
        while pending.iter().any(|p| *p) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok((w, c, results)) if c == cycle => {
                    pending[w] = false;
                    for (m, r) in results {
                        match r {
                            Ok(mut p) => {
                                points.append(&mut p);
                                succeeded.push((w, m));
                            }
                            Err(e) => failed.push(((w, m), e)),
                        }
                    }
                }
                // A late answer from an earlier cycle: too old to use.
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        for (w, p) in pending.iter().enumerate() {
            if *p {
                // The member being read hung; the others of its worker wait behind it.
                let hung = self.workers[w].running.load(Ordering::Acquire);
                let budget = self.budget;
                self.fail_all(
                    w,
                    |m| {
                        if m == hung {
                            CollectError::Timeout(budget)
                        } else {
                            CollectError::Busy
                        }
                    },
                    &mut failed,
                );
            }
        }
        for (w, m) in succeeded {
            let source = self.workers[w].members[m].family.as_str();
            if self.logged.iter().any(|(s, _)| *s == source) {
                self.logged.retain(|(s, _)| *s != source);
                tracing::info!(source, "source recovered");
            }
        }
        for ((w, m), e) in failed {
            let member = &mut self.workers[w].members[m];
            if matches!(e, CollectError::Unsupported) {
                // Counted and logged once, then never asked again.
                member.unsupported = true;
            }
            let source = member.family.as_str();
            let kind = e.kind();
            self.stats.count_error(source, kind);
            if self.logged.insert((source, kind)) {
                tracing::warn!(
                    source,
                    error = %DisplayChain(&e),
                    "source failed; skipping it (logged once until it recovers)"
                );
            }
        }
        // Neither the Prometheus text nor the SDK carries them: dropped here, once for
        // both exporters, and counted.
        let mut first = Vec::new();
        points.drop_non_finite(|name| {
            let n = self.non_finite.entry(name).or_default();
            if *n == 0 {
                first.push(name);
            }
            *n += 1;
        });
        for metric in first {
            tracing::warn!(
                metric,
                "a reading was NaN or infinite: dropped, and counted in \
                 otel_gpu_receiver.series.non_finite (logged once per metric)"
            );
        }
        if let Some(limits) = &self.limits {
            for (name, n) in limits.excess(&points) {
                let total = self.overflow.entry(name).or_default();
                if *total == 0 {
                    tracing::warn!(
                        metric = name,
                        series = n,
                        limit = limits.get(name),
                        "more series than the instrument's cardinality limit: the excess is \
                         folded into otel.metric.overflow and counted in \
                         otel_gpu_receiver.series.overflow (logged once per metric)"
                    );
                }
                *total += n;
            }
        }
        per_metric(&mut points, names::SERIES_OVERFLOW, &self.overflow);
        per_metric(&mut points, names::SERIES_NON_FINITE, &self.non_finite);
        let host_series = points.len();
        self.stats.cycles += 1;
        self.stats.last_duration = started.elapsed();
        self.stats.points(host_series, &mut points);
        Snapshot::new(points)
    }
}

/// One point of the self-metric `name` per metric in `counts`, with `metric.name`.
fn per_metric(points: &mut Points, name: &'static str, counts: &BTreeMap<&'static str, u64>) {
    for (metric, n) in counts {
        points.push(
            name,
            vec![KeyValue::new(names::ATTR_METRIC_NAME, *metric)],
            *n,
        );
    }
}

/// Displays an error with its sources, `a: b: c`.
#[derive(Debug)]
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut s = self.0.source();
        while let Some(e) = s {
            write!(f, ": {e}")?;
            s = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector without sources, for tests to add theirs.
    fn empty(budget: Duration) -> Collector {
        Collector::new(&[], &Roots::default(), budget, SelfStats::default()).unwrap()
    }

    #[derive(Debug)]
    struct Hung;
    impl Source for Hung {
        fn family(&self) -> Family {
            Family::Filesystem
        }
        fn collect(&mut self, _: &mut Points) -> Result<(), CollectError> {
            thread::sleep(Duration::from_secs(3600));
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Fine;
    impl Source for Fine {
        fn family(&self) -> Family {
            Family::Uptime
        }
        fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
            out.push("system.uptime", vec![], 1.0);
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Unsupported;
    impl Source for Unsupported {
        fn family(&self) -> Family {
            Family::Disk
        }
        fn collect(&mut self, _: &mut Points) -> Result<(), CollectError> {
            Err(CollectError::Unsupported)
        }
    }

    #[test]
    fn an_unsupported_source_is_counted_once_and_not_asked_again() {
        let mut c = empty(Duration::from_secs(5));
        c.add(Box::new(Unsupported)).unwrap();
        c.add(Box::new(Fine)).unwrap();
        for _ in 0..3 {
            assert_eq!(c.cycle().points("system.uptime").len(), 1);
        }
        assert_eq!(c.stats().errors.get(&("disk", "unsupported")), Some(&1));
    }

    #[derive(Debug)]
    struct Wide(usize);
    impl Source for Wide {
        fn family(&self) -> Family {
            Family::Network
        }
        fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
            for i in 0..self.0 {
                out.push(
                    "system.network.io",
                    vec![KeyValue::new("network.interface.name", format!("if{i}"))],
                    1u64,
                );
            }
            Ok(())
        }
    }

    #[test]
    fn series_beyond_the_cardinality_limit_are_counted_per_metric_and_exported() {
        let mut c = empty(Duration::from_secs(5));
        c.add(Box::new(Wide(2003))).unwrap();
        // Without limits (`--once`: no SDK) nothing is counted.
        assert!(c.cycle().points(names::SERIES_OVERFLOW).is_empty());
        let shape = crate::cardinality::Shape {
            cpus: 1,
            disks: 1,
            mounts: 1,
            interfaces: 1,
        };
        c.set_limits(Arc::new(Limits::for_shape(&shape, 0)));
        c.cycle();
        let s = c.cycle();
        let p = s.points(names::SERIES_OVERFLOW);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].attributes,
            [KeyValue::new(names::ATTR_METRIC_NAME, "system.network.io")]
        );
        assert_eq!(p[0].value, crate::snapshot::Value::Int(6));
        assert_eq!(c.overflow().get("system.network.io"), Some(&6));
    }

    #[derive(Debug)]
    struct Broken;
    impl Source for Broken {
        fn family(&self) -> Family {
            Family::Memory
        }
        fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
            out.push("system.memory.utilization", vec![], f64::NAN);
            out.push("system.memory.utilization", vec![], f64::INFINITY);
            out.push("system.memory.utilization", vec![], 0.5);
            Ok(())
        }
    }

    #[test]
    fn non_finite_readings_are_dropped_counted_per_metric_and_exported() {
        let mut c = empty(Duration::from_secs(5));
        c.add(Box::new(Broken)).unwrap();
        c.cycle();
        let s = c.cycle();
        let kept = s.points("system.memory.utilization");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].value, crate::snapshot::Value::Float(0.5));
        let p = s.points(names::SERIES_NON_FINITE);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].attributes,
            [KeyValue::new(
                names::ATTR_METRIC_NAME,
                "system.memory.utilization"
            )]
        );
        assert_eq!(p[0].value, crate::snapshot::Value::Int(4));
    }

    #[test]
    fn a_hung_source_times_out_and_the_others_still_report() {
        let mut c = empty(Duration::from_millis(200));
        c.add(Box::new(Hung)).unwrap();
        c.add(Box::new(Fine)).unwrap();
        let s = c.cycle();
        assert_eq!(s.points("system.uptime").len(), 1);
        assert_eq!(c.stats().errors.get(&("filesystem", "timeout")), Some(&1));
        // The hung worker is still busy: the next cycle skips it at once.
        let t = Instant::now();
        let s = c.cycle();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(s.points("system.uptime").len(), 1);
        assert_eq!(c.stats().errors.get(&("filesystem", "busy")), Some(&1));
    }
}
