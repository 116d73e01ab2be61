//! A day of the agent, compressed: a hundred thousand collection cycles back to back
//! against the fake libnvidia-ml with everything that churns (a GPU lost for good, one
//! that is lost and found again, Xid storms, MIG reconfigurations, processes that come
//! and go under `--per-process`), the Prometheus endpoint scraped all along, and the
//! OTLP collector going up, down and hanging in turns.
//!
//! After a warm-up it asserts that the agent does not grow with the length of the run:
//! heap in use and RSS (the least-squares slopes over the second half), threads, file
//! descriptors, the series it exposes (every map keyed by pid, UUID or attribute set
//! is bounded), and its log (one line when a problem starts, one when it ends).
//!
//! The run is a fixed number of cycles, however long the machine takes for them: the
//! cycle rate is printed as a figure, not judged. The only clock is a hang guard, which
//! fails the run when no cycle completes for [`STALL`].
//!
//! Run by `./test.sh` (it is `#[ignore]`d in the plain `cargo test`, as it takes
//! minutes and wants the machine to itself):
//!
//! ```sh
//! cargo test -p otel-gpu-receiver --test soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_CYCLES` (default 100000) sets the length; `SOAK_PRELOAD=<lib>` runs the
//! agent with that library preloaded (an allocator such as libjemalloc.so.2, to tell
//! allocator behaviour from growth); the agent runs with glibc's per-thread caches off
//! so that heap in use is the live heap, unless `GLIBC_TUNABLES` is set (`GLIBC_TUNABLES=`
//! runs it as in production; the heap is then reported, not judged);
//! `SOAK_CSV=<path>` writes every sample there.

#[path = "host/common.rs"]
#[allow(dead_code)]
mod common;
mod fake_nvml;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Running, agent_cmd, free_port, http_get};
use fake_nvml::FakeNvml;
use otel_gpu_receiver::quiet::SUMMARY_EVERY;
use otel_instrument::testing::soak::{
    ProcSample, TCACHE_OFF, glibc_tunables, messages, second_half, slope,
};
use otel_instrument::testing::{Behaviour, OtlpSink};

/// Three GPUs, as in the issue's run, plus everything that churns:
/// - GPU 1 is lost after its first read, for good;
/// - GPU 0 is lost for 200 cycles out of every 4,000 and found again, runs two MIG
///   instances that are reconfigured (new UUIDs) every 2,500 cycles, and two processes
///   whose pids change every 50 cycles;
/// - GPU 2 has a queued Xid 79, an Xid 13 storm of 20 events every 2,000 cycles, and a
///   process whose pid changes every 70 cycles.
const SCRIPT: &str = "devices 3\n\
                      dev 1 lost 2 0\n\
                      xid 3 2 79\n\
                      dev 0 flap 4000 200\n\
                      dev 0 mig 2\n\
                      dev 0 mig_churn 2500\n\
                      dev 0 proc 100000 1073741824 55 20 trainer\n\
                      dev 0 proc 100001 536870912 15 10 loader\n\
                      dev 0 pid_churn 50 1000000\n\
                      dev 2 proc 200000 2147483648 70 30 infer\n\
                      dev 2 pid_churn 70 1000000\n\
                      xid_storm 2000 2 13 20";

/// The host families besides `gpu`: one of each kind of reader (a /proc file, the
/// agent's own process, the network namespace), at a price that lets a hundred
/// thousand cycles take minutes, not hours, on two cores.
const FAMILIES: &str = "gpu,memory,load,network,process";

/// How long the collector stays in each state, in turn: up, down (nothing listens),
/// up, hanging (takes the request, never answers).
const PHASE: Duration = Duration::from_secs(5);
const PHASES: [Phase; 4] = [Phase::Up, Phase::Down, Phase::Up, Phase::Hang];

/// The part of the run (by cycles) before the measurements count.
const WARM_UP: f64 = 0.25;
/// The hang guard: the run fails when no cycle completes for this long. A cycle takes
/// about a millisecond on the 2-core CI VM; this is for an agent that is stuck, and no
/// machine is slow enough to reach it otherwise.
const STALL: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Up,
    Down,
    Hang,
}

/// One scrape and one /proc reading.
#[derive(Debug, Clone, Copy)]
struct Sample {
    cycles: u64,
    proc: ProcSample,
    series: usize,
    /// The most pids one metric has series for.
    pids: usize,
    /// The most MIG instances one metric has series for.
    migs: usize,
    /// The agent's heap in use (`process.memory.heap.usage`, from the same scrape), KiB.
    heap_kib: Option<f64>,
    /// Time since the previous scrape.
    gap: Duration,
    log_len: usize,
}

fn scraped(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name || series.starts_with(&format!("{name}{{")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// The most distinct values of the label `key` that one metric of the scrape has,
/// counting only values that `keep` accepts. Per metric, because each instrument reads
/// the snapshot of its own moment, and snapshots change between two instruments.
fn most_label_values(body: &str, key: &str, keep: impl Fn(&str) -> bool) -> usize {
    let pat = format!("{key}=\"");
    let mut by_metric: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(at) = l.find(&pat) else { continue };
        let rest = &l[at + pat.len()..];
        let Some(end) = rest.find('"') else { continue };
        let name = &l[..l.find('{').unwrap_or(l.len())];
        if keep(&rest[..end]) {
            by_metric.entry(name).or_default().insert(&rest[..end]);
        }
    }
    by_metric.values().map(BTreeSet::len).max().unwrap_or(0)
}

/// Plays the collector: cycles through [`PHASES`] until stopped, and records for each
/// phase whether metrics arrived.
fn collector(stop: Arc<AtomicBool>, delivered: Arc<Mutex<Vec<(Phase, usize)>>>) -> SocketAddr {
    let sink = OtlpSink::start().expect("start the sink");
    let addr = sink.addr();
    thread::spawn(move || {
        let mut sink = Some(sink);
        for phase in PHASES.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match phase {
                Phase::Up => {
                    let s = sink
                        .get_or_insert_with(|| OtlpSink::start_at(addr).expect("restart the sink"));
                    s.set_behaviour(Behaviour::Accept);
                }
                Phase::Down => drop(sink.take()),
                Phase::Hang => {
                    let s = sink
                        .get_or_insert_with(|| OtlpSink::start_at(addr).expect("restart the sink"));
                    s.set_behaviour(Behaviour::Hang);
                }
            }
            let end = Instant::now() + PHASE;
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
            // What this phase delivered, then forget it: the sink keeps every request.
            let n = sink.as_ref().map_or(0, |s| {
                let n = s.received().metrics.len();
                s.clear();
                n
            });
            delivered.lock().unwrap().push((*phase, n));
        }
    });
    addr
}

#[test]
#[ignore = "minutes long: ./test.sh runs it"]
fn a_hundred_thousand_cycles_of_churn_and_outages_leave_memory_threads_fds_and_the_log_flat() {
    let cycles: u64 = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let fake = FakeNvml::without_stats(SCRIPT);
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let otlp = collector(stop.clone(), delivered.clone());
    let prom: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let endpoint = format!("http://{otlp}");
    let prom_s = prom.to_string();
    let args = [
        "--allow-short-interval",
        "--interval",
        "0.01ms",
        "--source-timeout",
        "2s",
        "--families",
        FAMILIES,
        "--nvml-lib",
        fake.lib.to_str().unwrap(),
        "--per-process",
        "--prometheus",
        &prom_s,
        "--otlp-endpoint",
        &endpoint,
    ];
    let preload = std::env::var("SOAK_PRELOAD").unwrap_or_default();
    let tunables = glibc_tunables();
    // The heap is judged where it is the live heap: glibc's caches off, no preload.
    let live_heap = tunables.1 == TCACHE_OFF && preload.is_empty();
    let mut env = vec![
        // Export five times a second; a hanging collector fails an export in 1 s.
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
    ];
    if !preload.is_empty() {
        env.push(("LD_PRELOAD", preload.as_str()));
    }
    // glibc's per-thread caches off, unless the caller sets GLIBC_TUNABLES: see
    // `glibc_tunables` and the verdict below.
    env.push((tunables.0, tunables.1.as_str()));
    let started = Instant::now();
    let mut agent = Running::spawn(agent_cmd(&args, &env));
    let pid = agent.pid();

    // Scrape every 250 ms (the issue's 10 s scrape interval, compressed like the
    // cycles); read /proc every scrape.
    let mut samples: Vec<Sample> = Vec::new();
    let mut scrapes = 0u64;
    let mut last_scrape = Instant::now();
    // When the cycle count last moved, for the hang guard.
    let mut progress = (0u64, Instant::now());
    loop {
        thread::sleep(Duration::from_millis(250));
        assert!(
            agent.alive(),
            "the agent died after {:?}:\n{}",
            started.elapsed(),
            agent.stderr()
        );
        assert!(
            progress.1.elapsed() < STALL,
            "the agent hangs: no cycle completed in {STALL:?}, at {} of {cycles} cycles",
            progress.0
        );
        let Some((200, body)) = http_get(prom, "/metrics") else {
            continue;
        };
        scrapes += 1;
        let gap = last_scrape.elapsed();
        last_scrape = Instant::now();
        let Some(done_cycles) = scraped(&body, "otel_gpu_receiver_cycles_total") else {
            continue;
        };
        if done_cycles as u64 > progress.0 {
            progress = (done_cycles as u64, Instant::now());
        }
        let Some(proc) = ProcSample::read(pid) else {
            continue;
        };
        let series = body.lines().filter(|l| !l.starts_with('#')).count();
        samples.push(Sample {
            cycles: done_cycles as u64,
            proc,
            series,
            pids: most_label_values(&body, "process_pid", |_| true),
            migs: most_label_values(&body, "hw_id", |u| u.starts_with("MIG-")),
            heap_kib: scraped(&body, "process_memory_heap_usage_bytes").map(|b| b / 1024.0),
            gap,
            log_len: std::fs::metadata(&agent.stderr).map_or(0, |m| m.len() as usize),
        });
        if done_cycles as u64 >= cycles {
            break;
        }
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let log = agent.stderr();
    drop(agent);

    // ---- the figures ----
    let warm = samples
        .iter()
        .position(|s| s.cycles as f64 >= WARM_UP * cycles as f64)
        .expect("samples after the warm-up");
    let measured = &samples[warm..];
    let first = measured[0];
    let last = *measured.last().unwrap();
    let half = second_half(&samples);
    let per_10k = |f: fn(&ProcSample) -> u64| {
        slope(
            &half
                .iter()
                .map(|s| (s.cycles as f64 / 10_000.0, f(&s.proc) as f64))
                .collect::<Vec<_>>(),
        )
        .unwrap_or(0.0)
    };
    let rss_slope = per_10k(|p| p.rss_kib);
    let heap_points: Vec<(f64, f64)> = half
        .iter()
        .filter_map(|s| Some((s.cycles as f64 / 10_000.0, s.heap_kib?)))
        .collect();
    let heap_slope = slope(&heap_points);
    let anon_slope = per_10k(|p| p.rss_anon_kib);
    let range = |f: fn(&Sample) -> u64| {
        let v: Vec<u64> = measured.iter().map(f).collect();
        (*v.iter().min().unwrap(), *v.iter().max().unwrap())
    };
    let threads = range(|s| s.proc.threads);
    let fds = range(|s| s.proc.fds);
    let warm_threads = samples[..warm]
        .iter()
        .map(|s| s.proc.threads)
        .max()
        .unwrap_or(0);
    let warm_fds = samples[..warm]
        .iter()
        .map(|s| s.proc.fds)
        .max()
        .unwrap_or(0);
    let series = range(|s| s.series as u64);
    let pids = range(|s| s.pids as u64);
    let migs = range(|s| s.migs as u64);
    let warm_series = samples[..warm].iter().map(|s| s.series).max().unwrap_or(0) as u64;
    let after_warm_up = &log[first.log_len.min(log.len())..];
    let lines_total = log.lines().count();
    let lines_after = after_warm_up.lines().count();
    let phases = delivered.lock().unwrap().clone();
    let outages = phases.iter().filter(|(p, _)| *p != Phase::Up).count();
    // A problem that repeats (the Xid storm, the GPU that flaps) logs once, then at most
    // once per summary window: a slower machine's longer run may have more windows.
    let windows = (wall.as_secs_f64() / SUMMARY_EVERY.as_secs_f64()) as usize;
    eprintln!(
        "soak: {} cycles in {:.1} s ({:.0}/s), {scrapes} scrapes, {} collector phases ({outages} outages){}\n\
         soak: RSS {} KiB at the end of the warm-up (cycle {}), {} KiB at the end (cycle {})\n\
         soak: RSS slope over the second half {rss_slope:+.1} KiB per 10,000 cycles (RssAnon {anon_slope:+.1}), heap in use {} ({} of {} scrapes had it)\n\
         soak: threads {}..{} (warm-up max {warm_threads}), fds {}..{} (warm-up max {warm_fds})\n\
         soak: series in a scrape {}..{} (warm-up max {warm_series}), pids {}..{}, MIG instances {}..{}\n\
         soak: log lines {lines_total} in all, {lines_after} after the warm-up ({windows} summary windows)",
        last.cycles,
        wall.as_secs_f64(),
        last.cycles as f64 / wall.as_secs_f64(),
        phases.len(),
        if preload.is_empty() {
            format!(", GLIBC_TUNABLES={}", tunables.1)
        } else {
            format!(", LD_PRELOAD={preload}")
        },
        first.proc.rss_kib,
        first.cycles,
        last.proc.rss_kib,
        last.cycles,
        heap_slope.map_or("unknown".to_string(), |h| format!("{h:+.1}")),
        heap_points.len(),
        half.len(),
        threads.0,
        threads.1,
        fds.0,
        fds.1,
        series.0,
        series.1,
        pids.0,
        pids.1,
        migs.0,
        migs.1,
    );
    if let Ok(path) = std::env::var("SOAK_CSV") {
        let mut csv =
            String::from("seconds,cycles,rss_kib,rss_anon_kib,heap_kib,threads,fds,series\n");
        for s in &samples {
            csv.push_str(&format!(
                "{:.2},{},{},{},{:.1},{},{},{}\n",
                s.proc.at.duration_since(started).as_secs_f64(),
                s.cycles,
                s.proc.rss_kib,
                s.proc.rss_anon_kib,
                s.heap_kib.unwrap_or(f64::NAN),
                s.proc.threads,
                s.proc.fds,
                s.series
            ));
        }
        std::fs::write(&path, csv).expect("write SOAK_CSV");
    }
    let by_message = messages(log.lines());
    for (m, n) in &by_message {
        eprintln!("soak: {n:>5} x {m}");
    }

    // ---- the verdict ----
    assert!(last.cycles >= cycles);
    // Memory: heap in use (glibc's count of allocated bytes, the agent's own
    // process.memory.heap.usage) is what a leak grows, so it is judged tightly; RSS
    // also moves with how the allocator's pages are used, so it gets a looser bound.
    //
    // Measured on the 2-core VM over the second half of 100,000 cycles:
    // - with glibc's per-thread caches off (the run's default): heap in use -1.7 KiB
    //   per 10,000 cycles, flat at about 680 KiB from the first 10,000 cycles on;
    //   RSS -10.4;
    // - with them on (`GLIBC_TUNABLES=`, what a user's agent gets): heap in use +9.1 to
    //   +15.4 and RSS +18.6 to +29.0 in four runs, RSS +42.1 in one CI run. Over
    //   400,000 cycles that rise slows down (heap in use +73 KiB from cycle 25,000 to
    //   100,000, +44 to 200,000, +34 to 300,000, +7 to 375,000; over the second half
    //   +2.0 heap, +5.6 RSS): the caches filling up to their bound, not a leak.
    //
    // The bounds: heap in use 8 KiB per 10,000 cycles fails a leak of 0.8 bytes a
    // cycle; RSS 32 KiB (at the default 10 s interval 10,000 cycles are 28 hours, so
    // about 1 MiB a month) catches growth outside the heap, such as stacks or maps.
    // A C library without mallinfo2 gives no heap figure: then only RSS is judged.
    if let Some(heap_slope) = heap_slope.filter(|_| live_heap) {
        assert!(
            heap_slope < 8.0,
            "heap in use grows by {heap_slope:.1} KiB per 10,000 cycles over the second half"
        );
    }
    assert!(
        rss_slope < if live_heap { 32.0 } else { 64.0 },
        "RSS grows by {rss_slope:.1} KiB per 10,000 cycles over the second half"
    );
    assert!(
        threads.1 <= warm_threads + 2,
        "threads grew: {threads:?} after a warm-up max of {warm_threads}"
    );
    assert!(
        fds.1 <= warm_fds + 4,
        "file descriptors grew: {fds:?} after a warm-up max of {warm_fds}"
    );
    // Bounded maps, seen from outside: per-process series follow the live pids, MIG
    // instances the live configuration, and the whole exposition stays the size it had
    // in the warm-up. A scrape holds what the instruments observed since the previous
    // scrape, and the OTLP reader's collections (every 200 ms) observe into the
    // Prometheus reader's state too (the SDK runs an observable callback once per
    // reader and records into every reader), so one scrape sees the snapshots of the
    // OTLP collections since the previous scrape (one per 200 ms) and its own: 3 live
    // pids and at most 2 MIG instances each. A map that grew would exceed that.
    for s in measured {
        let snapshots = (s.gap.as_millis() / 200) as usize + 2;
        assert!(
            s.pids <= 3 * snapshots,
            "series of {} pids in one scrape {:?} after the previous one",
            s.pids,
            s.gap
        );
        assert!(
            s.migs <= 2 * snapshots,
            "{} MIG instances in one scrape {:?} after the previous one",
            s.migs,
            s.gap
        );
    }
    assert!(
        series.1 <= warm_series + warm_series / 10,
        "series grew: {series:?} after a warm-up max of {warm_series}"
    );
    // The collector came back every time it was up (after the first phase).
    for (i, (phase, n)) in phases.iter().enumerate().skip(1) {
        if *phase == Phase::Up {
            assert!(
                *n > 0,
                "no export arrived in up-phase {i}: {phases:?}\n{log}"
            );
        }
    }
    // The log: one line when an outage starts (naming its cause) and one when it ends;
    // the GPU that is lost, the one that flaps and the Xid storm each once (their
    // repeats are counted, and summarised at most every 5 minutes).
    let count = |needle: &str| log.matches(needle).count();
    assert!(
        count("OTLP export is failing") <= outages + 1,
        "{} failing lines for {outages} outages:\n{log}",
        count("OTLP export is failing")
    );
    assert!(count("OTLP export recovered") <= outages + 1, "{log}");
    assert!(count("Xid event") <= 2 + windows, "{log}");
    assert!(
        count("GPU is lost") + count("no longer enumerated") <= 4 + windows,
        "{log}"
    );
    // Per outage: its start and its end. Per window at most: the Xid 13 storm's line,
    // and the flapping GPU's loss and its recovery.
    assert!(
        lines_after <= 2 * outages + 4 + 3 * windows,
        "{lines_after} lines after the warm-up for {outages} outages and {windows} summary \
         windows:\n{after_warm_up}"
    );
}
