//! The process and tokio runtime metrics, over the wire (an in-process OtlpSink),
//! against what /proc/self and the runtime say at the same moment, and against
//! MONITORED.md's catalogue.
#![cfg(target_os = "linux")]

mod monitored_common;

use monitored_common::{env, serial};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
use otel_instrument::Telemetry;
use otel_instrument::testing::{OtlpSink, Received, attributes};

const WAIT: Duration = Duration::from_secs(10);

/// Telemetry exporting to `sink` only when flushed (the interval is an hour).
fn builder(sink: &OtlpSink) -> otel_instrument::TelemetryBuilder {
    Telemetry::builder()
        .env_lookup(env(&[
            ("OTEL_SERVICE_NAME", "process-test"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ]))
        .traces_export(false)
        .logs_export(false)
        .metric_export_interval(Duration::from_secs(3600))
}

/// Flushes and returns the first metric request that arrives after it.
fn flush(sink: &OtlpSink, t: &Telemetry) -> Received {
    sink.clear();
    assert!(t.guard().flush(), "the flush timed out");
    sink.wait_until(WAIT, |r| !r.metrics.is_empty())
        .expect("a metric export")
}

/// How a metric was sent: (kind, unit, points as (attributes, value)).
#[derive(Debug)]
struct Sent {
    kind: &'static str,
    unit: String,
    points: Vec<(BTreeMap<String, String>, f64)>,
}

fn sent(r: &Received, name: &str) -> Option<Sent> {
    let m = r.last_metric(name)?;
    let (kind, points) = match m.metric.data? {
        Data::Sum(s) if s.is_monotonic => ("Counter", s.data_points),
        Data::Sum(s) => ("UpDownCounter", s.data_points),
        Data::Gauge(g) => ("Gauge", g.data_points),
        _ => return None,
    };
    let points = points
        .into_iter()
        .map(|p| {
            let v = match p.value {
                Some(Value::AsInt(i)) => i as f64,
                Some(Value::AsDouble(d)) => d,
                None => f64::NAN,
            };
            (attributes(&p.attributes), v)
        })
        .collect();
    Some(Sent {
        kind,
        unit: m.metric.unit,
        points,
    })
}

impl Sent {
    /// The value of the one point with attribute `key=value` (or the only
    /// point when `attr` is None).
    fn value(&self, attr: Option<(&str, &str)>) -> f64 {
        let matching: Vec<f64> = self
            .points
            .iter()
            .filter(|(a, _)| attr.is_none_or(|(k, v)| a.get(k).map(String::as_str) == Some(v)))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(matching.len(), 1, "{attr:?} in {:?}", self.points);
        matching[0]
    }
}

/// /proc/self/stat as the test reads it: (utime, stime, threads, starttime, vsize, rss pages).
fn stat() -> (u64, u64, u64, u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = text.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = rest
        .split_ascii_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Field N of proc(5) is f[N - 3].
    (f[11], f[12], f[17], f[19], f[20], f[21])
}

fn status(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn sysconf(name: libc::c_int) -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(name) as f64 }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins until this thread has used `cpu` of CPU time (not wall time: the
/// machine may be shared).
fn burn_cpu(cpu: Duration) -> u64 {
    let until = thread_cpu() + cpu;
    let mut x = 0u64;
    while thread_cpu() < until {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

/// Seconds since boot (`/proc/uptime`).
fn boot_seconds() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_ascii_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn process_metrics_agree_with_proc_self_read_at_the_same_moment() {
    let _s = serial();
    burn_cpu(Duration::from_millis(300));
    // Touch 32 MiB, so the resident set is well above noise.
    let ballast = vec![1u8; 32 << 20];
    let sink = OtlpSink::start().unwrap();
    let t = builder(&sink).build().unwrap();

    let tick = sysconf(libc::_SC_CLK_TCK);
    let page = sysconf(libc::_SC_PAGESIZE);
    let before = stat();
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
    let boot_before = boot_seconds();
    let r = flush(&sink, &t);
    let boot_after = boot_seconds();
    let after = stat();
    let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count() as f64;
    let voluntary_after = status("voluntary_ctxt_switches:") as f64;
    assert_eq!(ballast.iter().map(|&b| b as usize).sum::<usize>(), 32 << 20);

    // CPU time: between the readings before and after, give or take one tick.
    let cpu = sent(&r, "process.cpu.time").expect("process.cpu.time");
    assert_eq!((cpu.kind, cpu.unit.as_str()), ("Counter", "s"));
    for (mode, lo, hi) in [("user", before.0, after.0), ("system", before.1, after.1)] {
        let v = cpu.value(Some(("cpu.mode", mode)));
        let (lo, hi) = ((lo as f64 - 1.0) / tick, (hi as f64 + 1.0) / tick);
        assert!(lo <= v && v <= hi, "{mode} {v} s not in [{lo}, {hi}]");
    }
    let total = cpu.value(Some(("cpu.mode", "user"))) + cpu.value(Some(("cpu.mode", "system")));
    assert!(total >= 0.3 - 2.0 / tick, "300 ms of CPU burnt, {cpu:?}");

    // Resident and virtual memory: within 10% of the test's readings.
    let rss = sent(&r, "process.memory.usage").expect("process.memory.usage");
    assert_eq!((rss.kind, rss.unit.as_str()), ("UpDownCounter", "By"));
    let rss = rss.value(None);
    let (lo, hi) = (
        before.5.min(after.5) as f64 * page,
        before.5.max(after.5) as f64 * page,
    );
    assert!(
        rss >= lo * 0.9 && rss <= hi * 1.1,
        "rss {rss} not within 10% of [{lo}, {hi}]"
    );
    assert!(
        rss >= f64::from(32u32 << 20),
        "the 32 MiB ballast is resident: {rss}"
    );
    let vsize = sent(&r, "process.memory.virtual").expect("process.memory.virtual");
    assert_eq!(vsize.unit, "By");
    let vsize = vsize.value(None);
    let (lo, hi) = (before.4.min(after.4) as f64, before.4.max(after.4) as f64);
    assert!(
        vsize >= lo * 0.9 && vsize <= hi * 1.1 && vsize > rss,
        "virtual {vsize} not within 10% of [{lo}, {hi}]"
    );

    // Threads and descriptors: near the test's own count (other test threads
    // may start or stop around the flush).
    let threads = sent(&r, "process.thread.count").expect("process.thread.count");
    let threads = threads.value(None);
    let (lo, hi) = (before.2.min(after.2) as f64, before.2.max(after.2) as f64);
    assert!(
        threads >= 2.0 && threads >= lo - 2.0 && threads <= hi + 2.0,
        "threads {threads} vs [{lo}, {hi}]"
    );
    let fds = sent(&r, "process.unix.file_descriptor.count")
        .expect("process.unix.file_descriptor.count")
        .value(None);
    let (lo, hi) = (fds_before.min(fds_after), fds_before.max(fds_after));
    assert!(
        fds >= 3.0 && fds >= lo - 3.0 && fds <= hi + 3.0,
        "fds {fds} vs [{lo}, {hi}]"
    );

    // Context switches: counted, and never more than the test sees after.
    let switches = sent(&r, "process.context_switches").expect("process.context_switches");
    assert_eq!(switches.kind, "Counter");
    let voluntary = switches.value(Some(("process.context_switch.type", "voluntary")));
    assert!(
        voluntary > 0.0 && voluntary <= voluntary_after,
        "voluntary {voluntary} vs {voluntary_after} after"
    );
    switches.value(Some(("process.context_switch.type", "involuntary")));

    // Uptime: the kernel's start time of this process to the moment it was
    // read, which lies between the readings before and after the flush (give
    // or take a tick), however long the flush took on a busy machine.
    let uptime = sent(&r, "process.uptime").expect("process.uptime");
    assert_eq!((uptime.kind, uptime.unit.as_str()), ("Gauge", "s"));
    let uptime = uptime.value(None);
    let started = before.3 as f64 / tick;
    let (lo, hi) = (
        boot_before - started - 2.0 / tick,
        boot_after - started + 2.0 / tick,
    );
    assert!(
        uptime > 0.0 && lo <= uptime && uptime <= hi,
        "uptime {uptime} not in [{lo}, {hi}]"
    );
}

/// The heap metric: exported on glibc, absent elsewhere.
const HEAP: &str = "process.memory.heap.usage";

/// Heap in use, read over the wire by one flush.
#[cfg(target_env = "gnu")]
fn exported_heap(sink: &OtlpSink, t: &Telemetry) -> f64 {
    // The callbacks of one collection share a reading taken within 20 ms; past that
    // the next flush reads afresh.
    std::thread::sleep(Duration::from_millis(50));
    let r = flush(sink, t);
    let heap = sent(&r, HEAP).expect(HEAP);
    assert_eq!((heap.kind, heap.unit.as_str()), ("UpDownCounter", "By"));
    heap.value(None)
}

/// glibc's own count of heap bytes in use, as the test reads it.
#[cfg(target_env = "gnu")]
fn mallinfo2_in_use() -> f64 {
    // SAFETY: mallinfo2 takes no arguments and only reads the arenas.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as f64
}

#[cfg(target_env = "gnu")]
#[test]
fn heap_in_use_is_exported_and_follows_memory_the_process_holds() {
    let _s = serial();
    const MIB: f64 = (1u32 << 20) as f64;
    let sink = OtlpSink::start().unwrap();
    let t = builder(&sink).build().unwrap();

    let (lo, base, hi) = (
        mallinfo2_in_use(),
        exported_heap(&sink, &t),
        mallinfo2_in_use(),
    );
    // Plausible: what glibc says around the flush (which allocates and frees its
    // request meanwhile, hence the slack), and less than the address space.
    let vsize = stat().4 as f64;
    assert!(
        base > 0.0 && base >= lo.min(hi) - 4.0 * MIB && base <= lo.max(hi) + 4.0 * MIB,
        "heap {base} vs glibc's {lo} before and {hi} after the flush"
    );
    assert!(base < vsize, "heap {base} above the virtual size {vsize}");

    // 48 MiB held, in blocks of every size class glibc treats differently: small
    // (arena), medium, and large ones that it mmaps on their own.
    let ballast: Vec<Vec<u8>> = (0..16 * 1024)
        .map(|_| vec![1u8; 1024])
        .chain((0..64).map(|_| vec![2u8; 256 * 1024]))
        .chain((0..1).map(|_| vec![3u8; 16 << 20]))
        .collect();
    let held = exported_heap(&sink, &t);
    let total: usize = ballast.iter().map(Vec::len).sum();
    assert_eq!(total, 48 << 20);
    drop(ballast);
    let released = exported_heap(&sink, &t);
    eprintln!("heap {base} -> {held} (48 MiB held) -> {released} (freed)");
    // Other test threads are idle (serial); the sink and the exporter allocate a
    // few hundred KiB per flush, far below the 8 MiB allowed.
    assert!(
        held - base >= 40.0 * MIB && held - base <= 56.0 * MIB,
        "48 MiB held: the heap went from {base} to {held}"
    );
    assert!(
        held - released >= 40.0 * MIB,
        "48 MiB freed: the heap went from {held} to {released}"
    );
}

#[test]
fn process_metrics_can_be_turned_off() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let t = builder(&sink).process_metrics(false).build().unwrap();
    let r = flush(&sink, &t);
    assert!(r.last_metric("build_info").is_some(), "the export happened");
    let process: Vec<String> = r
        .metrics()
        .into_iter()
        .map(|m| m.metric.name)
        .filter(|n| n.starts_with("process."))
        .collect();
    assert!(process.is_empty(), "{process:?}");
}

fn pending_tasks(rt: &tokio::runtime::Runtime, n: usize) {
    for _ in 0..n {
        rt.spawn(std::future::pending::<()>());
    }
}

#[test]
fn tokio_metrics_show_the_runtimes_real_worker_counts() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .build()
        .unwrap();
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    pending_tasks(&main, 5);
    pending_tasks(&other, 2);
    // Built inside `main` (index 0), and `other` named (index 1).
    let t = {
        let _in = main.enter();
        builder(&sink)
            .tokio_runtime(other.handle().clone())
            .build()
            .unwrap()
    };
    let r = flush(&sink, &t);

    let workers = sent(&r, "tokio.workers").expect("tokio.workers");
    assert_eq!(workers.kind, "Gauge");
    assert_eq!(workers.value(Some(("tokio.runtime.index", "0"))), 3.0);
    assert_eq!(workers.value(Some(("tokio.runtime.index", "1"))), 1.0);
    assert_eq!(
        workers.value(Some(("tokio.runtime.index", "0"))),
        main.metrics().num_workers() as f64
    );
    let tasks = sent(&r, "tokio.alive_tasks").expect("tokio.alive_tasks");
    assert_eq!(tasks.value(Some(("tokio.runtime.index", "0"))), 5.0);
    assert_eq!(tasks.value(Some(("tokio.runtime.index", "1"))), 2.0);
    let queue = sent(&r, "tokio.global_queue_depth").expect("tokio.global_queue_depth");
    // The current-thread runtime never ran: its two tasks wait in its queue,
    // with the watcher's own parked task, which it has not polled yet either.
    assert_eq!(queue.value(Some(("tokio.runtime.index", "1"))), 3.0);
    let busy = sent(&r, "tokio.worker.busy_duration").expect("tokio.worker.busy_duration");
    assert_eq!((busy.kind, busy.unit.as_str()), ("Counter", "s"));
    let per_worker: BTreeSet<(String, String)> = busy
        .points
        .iter()
        .map(|(a, _)| {
            (
                a["tokio.runtime.index"].clone(),
                a["tokio.worker.index"].clone(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [("0", "0"), ("0", "1"), ("0", "2"), ("1", "0")]
        .iter()
        .map(|(r, w)| ((*r).to_owned(), (*w).to_owned()))
        .collect();
    assert_eq!(per_worker, expected);
    let parks = sent(&r, "tokio.worker.park_count").expect("tokio.worker.park_count");
    assert_eq!(parks.points.len(), 4, "{parks:?}");
    drop(t);
}

#[test]
fn a_runtime_that_shut_down_stops_reporting_and_the_export_goes_on() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let gone = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let staying = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = builder(&sink)
        .tokio_runtime(gone.handle().clone())
        .tokio_runtime(staying.handle().clone())
        .build()
        .unwrap();
    let r = flush(&sink, &t);
    let workers = sent(&r, "tokio.workers").expect("tokio.workers");
    assert_eq!(workers.value(Some(("tokio.runtime.index", "0"))), 2.0);

    // A handle kept by the user outlives the runtime: reading it must not panic.
    let kept = gone.handle().clone();
    drop(gone);
    let r = flush(&sink, &t);
    let workers = sent(&r, "tokio.workers").expect("the staying runtime still reports");
    assert_eq!(
        workers.points.len(),
        1,
        "only the staying runtime: {workers:?}"
    );
    assert_eq!(workers.value(Some(("tokio.runtime.index", "1"))), 1.0);
    assert!(
        sent(&r, "process.uptime").is_some(),
        "the rest of the export goes on"
    );
    // And a runtime named after it shut down is never reported.
    drop(t);
    let t = builder(&sink).tokio_runtime(kept).build().unwrap();
    let r = flush(&sink, &t);
    assert!(sent(&r, "tokio.workers").is_none_or(|w| w.points.is_empty()));
    assert!(sent(&r, "process.uptime").is_some());
}

/// MONITORED.md's `## Process and runtime metrics` table: name -> (instrument, unit, attributes).
fn catalogue() -> BTreeMap<String, (String, String, BTreeSet<String>)> {
    let doc = include_str!("../MONITORED.md");
    let section = doc
        .split("\n## Process and runtime metrics")
        .nth(1)
        .expect("MONITORED.md has a `## Process and runtime metrics` section");
    let section = section.split("\n## ").next().unwrap();
    let code = |s: &str| s.trim().trim_matches('`').to_owned();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            assert!(
                cells.len() >= 5,
                "a row with name, instrument, unit, attributes, source: {l}"
            );
            // Attribute keys are the cell's `code` spans; values are plain text.
            let attrs = cells[3]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (code(cells[0]), (code(cells[1]), code(cells[2]), attrs))
        })
        .collect()
}

#[test]
fn the_catalogue_lists_exactly_what_is_exported() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let t = builder(&sink)
        .tokio_runtime(rt.handle().clone())
        .build()
        .unwrap();
    let r = flush(&sink, &t);
    let mut exported = BTreeMap::new();
    for m in r.metrics() {
        let name = m.metric.name.clone();
        if !(name.starts_with("process.") || name.starts_with("tokio.")) {
            continue;
        }
        assert_eq!(m.scope, "otel-instrument");
        let s = sent(&r, &name).unwrap();
        let attrs: BTreeSet<String> = s
            .points
            .iter()
            .flat_map(|(a, _)| a.keys().cloned())
            .collect();
        exported.insert(name, (s.kind.to_owned(), s.unit, attrs));
    }
    let mut catalogue = catalogue();
    assert!(catalogue.len() >= 12, "{catalogue:?}");
    if !cfg!(target_env = "gnu") {
        // Absent without glibc, as MONITORED.md says.
        assert!(!exported.contains_key(HEAP));
        catalogue.remove(HEAP);
    }
    for (name, row) in &catalogue {
        assert_eq!(
            exported.get(name),
            Some(row),
            "{name}: catalogue (instrument, unit, attributes) vs exported"
        );
    }
    for name in exported.keys() {
        assert!(
            catalogue.contains_key(name),
            "{name} is exported but not in MONITORED.md"
        );
    }
}

/// MONITORED.md's Prometheus column: OTLP name -> Prometheus name.
#[cfg(feature = "prometheus")]
fn prometheus_names() -> BTreeMap<String, String> {
    let doc = include_str!("../MONITORED.md");
    let section = doc
        .split("\n## Process and runtime metrics")
        .nth(1)
        .unwrap();
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            let code = |s: &str| s.trim().trim_matches('`').to_owned();
            (code(cells[0]), code(cells[5]))
        })
        .collect()
}

#[cfg(feature = "prometheus")]
#[test]
fn the_pull_endpoint_serves_every_metric_under_the_catalogues_prometheus_name() {
    use std::io::{Read, Write};
    let _s = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let t = Telemetry::builder()
        .env_lookup(env(&[("OTEL_SERVICE_NAME", "process-pull-test")]))
        .metrics_export(false)
        .traces_export(false)
        .logs_export(false)
        .prometheus_endpoint("127.0.0.1:0".parse().unwrap())
        .tokio_runtime(rt.handle().clone())
        .build()
        .unwrap();
    let addr = t.guard().prometheus_addr().expect("bound address");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let mut names = prometheus_names();
    assert!(names.len() >= 12, "{names:?}");
    if !cfg!(target_env = "gnu") {
        names.remove(HEAP);
    }
    for (otlp, prometheus) in &names {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("{prometheus}{{"))),
            "{otlp}: no {prometheus} series in\n{body}"
        );
    }
    // The runtime's two workers, on the pull path too.
    assert!(
        body.lines().any(|l| l.starts_with("tokio_workers{")
            && l.contains("tokio_runtime_index=\"0\"")
            && l.ends_with(" 2")),
        "{body}"
    );
}

fn quickstart_binary() -> std::path::PathBuf {
    // cargo test builds examples next to the test binaries: target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples")
        .join(format!("quickstart{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_quickstart_exports_its_own_process_metrics_within_what_the_kernel_reports_at_exit() {
    let sink = OtlpSink::start().unwrap();
    let bin = quickstart_binary();
    assert!(
        bin.exists(),
        "{} is missing; run through cargo test",
        bin.display()
    );
    let started = std::time::Instant::now();
    #[expect(clippy::zombie_processes, reason = "reaped by wait4 below")]
    let child = std::process::Command::new(&bin)
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // wait4 rather than Child::wait: the kernel's own account of the child's
    // CPU time and peak resident set.
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped; the out-pointers are valid.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let ran = started.elapsed().as_secs_f64();
    assert_eq!(reaped, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);

    // The guard flushed before exit, so the last export is here.
    let r = sink.received();
    let m = r.last_metric("process.cpu.time").expect("process.cpu.time");
    assert_eq!(m.resource["process.pid"], pid.to_string());
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let at_exit = tv(usage.ru_utime) + tv(usage.ru_stime);
    let cpu = sent(&r, "process.cpu.time").unwrap();
    let cpu = cpu.value(Some(("cpu.mode", "user"))) + cpu.value(Some(("cpu.mode", "system")));
    let tick = sysconf(libc::_SC_CLK_TCK);
    assert!(
        cpu <= at_exit + 2.0 / tick,
        "cpu {cpu} s, {at_exit} s at exit"
    );
    let rss = sent(&r, "process.memory.usage").unwrap().value(None);
    let peak = usage.ru_maxrss as f64 * 1024.0;
    assert!(rss > 0.0 && rss <= peak * 1.1, "rss {rss} vs peak {peak}");
    let uptime = sent(&r, "process.uptime").unwrap().value(None);
    assert!(
        uptime > 0.0 && uptime <= ran + 1.0 / tick,
        "uptime {uptime} s, ran {ran} s"
    );
    assert!(sent(&r, "process.thread.count").unwrap().value(None) >= 2.0);
}
