//! What an outage costs: `#[monitored]` calls at a fixed span rate, set up as a user
//! sets it up (`builder!()` defaults: fmt on, the default sampler, queue, batch and
//! timeouts), exporting over the real OTLP wire to an in-process gRPC collector that
//! refuses every export for its first `OUTAGE_SECS` and then accepts.
//!
//! Reports, from the sink's own clock (the moment it accepts again), the spans issued
//! during the outage and after the return, and of each how many never arrived. Every
//! span is identified (root index and name), so "lost after the return" counts exactly
//! the spans handed over after the collector was back that never reached it.
//!
//! ```sh
//! cargo bench -p otel-instrument --features testing --bench outage_cost
//! # OUTAGE_RATE=10000 (spans/s; two per root), OUTAGE_SECS=3, OUTAGE_TOTAL_SECS=8,
//! # OUTAGE_RUNS=3 are the defaults
//! ```
//!
//! Not criterion: the figure of merit is what arrives, not a per-iteration time.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use otel_instrument::testing::{Behaviour, OtlpSink, Received};

#[otel_instrument::monitored]
fn root(i: u64) -> Result<u64, std::io::Error> {
    leaf(i)
}

#[otel_instrument::monitored]
fn leaf(i: u64) -> Result<u64, std::io::Error> {
    Ok(std::hint::black_box(i))
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The spans of `root`/`leaf` that arrived, as (is_root, i).
fn arrived(r: &Received) -> HashSet<(bool, u64)> {
    r.spans()
        .into_iter()
        .filter_map(|s| {
            let is_root = match s.span.name.as_str() {
                "root" => true,
                "leaf" => false,
                _ => return None,
            };
            let i = s.attributes().get("i")?.parse().ok()?;
            Some((is_root, i))
        })
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter.
    let rate = env_or("OUTAGE_RATE", 10_000);
    let outage = Duration::from_secs(env_or("OUTAGE_SECS", 3));
    let total = Duration::from_secs(env_or("OUTAGE_TOTAL_SECS", 8));
    let runs = env_or("OUTAGE_RUNS", 3);
    assert!(total > outage, "OUTAGE_TOTAL_SECS must exceed OUTAGE_SECS");

    let sink = OtlpSink::start().expect("sink");
    let guard = otel_instrument::builder!()
        .endpoint(sink.endpoint())
        .install()
        .expect("install");
    println!(
        "{rate} spans/s for {total:?}, the collector refusing for the first {outage:?} (queue {}, retry at most every {:?})",
        otel_instrument::config::DEFAULT_SPAN_QUEUE_SIZE,
        otel_instrument::otlp::retry::MAX_DELAY
    );
    println!(
        "{:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "run", "issued", "arrived", "out.iss", "out.lost", "aft.iss", "aft.lost", "first ok"
    );
    let roots_per_sec = rate as f64 / 2.0;
    // Root indices are unique across runs, so a late span of one run never counts in
    // the next.
    let mut base = 0u64;
    for run in 1..=runs {
        sink.clear();
        sink.set_behaviour(Behaviour::Refuse);
        let start = Instant::now();
        let mut back_at = None;
        let mut ended_at: Vec<Instant> =
            Vec::with_capacity((roots_per_sec * total.as_secs_f64() * 1.1) as usize);
        let mut issued = 0u64;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= total {
                break;
            }
            if back_at.is_none() && elapsed >= outage {
                sink.set_behaviour(Behaviour::Accept);
                back_at = Some(Instant::now());
            }
            let due = ((elapsed.as_secs_f64() * roots_per_sec) as u64).saturating_sub(issued);
            if due == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            for _ in 0..due.min(64) {
                let i = base + issued;
                assert_eq!(root(i).ok(), Some(i));
                ended_at.push(Instant::now());
                issued += 1;
            }
        }
        let back_at = back_at.expect("the outage ended before the run did");
        // What is still queued goes out now.
        assert!(guard.flush(), "the flush timed out");
        let got = sink
            .wait_until(Duration::from_secs(5), |r| {
                let spans: usize = r
                    .traces
                    .iter()
                    .flat_map(|t| &t.resource_spans)
                    .flat_map(|rs| &rs.scope_spans)
                    .map(|ss| ss.spans.len())
                    .sum();
                spans as u64 >= 2 * issued
            })
            .unwrap_or_else(|| sink.received());
        let seen = arrived(&got);
        let first_back = ended_at.partition_point(|t| *t < back_at) as u64;
        let lost = |range: std::ops::Range<u64>| -> u64 {
            range
                .map(|k| {
                    let i = base + k;
                    u64::from(!seen.contains(&(true, i))) + u64::from(!seen.contains(&(false, i)))
                })
                .sum()
        };
        let first_ok = got
            .attempts
            .iter()
            .filter(|(signal, at)| *signal == "traces" && *at >= back_at)
            .map(|(_, at)| at.duration_since(back_at))
            .min();
        println!(
            "{run:>4} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.0}ms",
            2 * issued,
            seen.len(),
            2 * first_back,
            lost(0..first_back),
            2 * (issued - first_back),
            lost(first_back..issued),
            first_ok.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        );
        base += issued;
        // Let the exporter's retry state settle before the next run's outage.
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(guard);
}
