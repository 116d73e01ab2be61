//! Sustained load: `#[monitored]` calls at a fixed span rate for a fixed time,
//! set up as `init!()` does it (fmt on, the default sampler, queue, batch and
//! timeouts), exporting over the real OTLP wire to an in-process collector.
//! Reports spans issued, received and dropped, and the calls' p50/p99 cost.
//!
//! ```sh
//! cargo bench -p otel-instrument --features testing --bench sustained
//! # SUSTAINED_RATE=100000 SUSTAINED_SECS=30 are the defaults
//! ```
//!
//! Not criterion: the figure of merit is what arrives, not a per-iteration time.

use std::time::{Duration, Instant};

use otel_instrument::testing::OtlpSink;

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

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // else and would run the whole load: keep that short.
    let benching = std::env::args().any(|a| a == "--bench");
    let rate = env_or("SUSTAINED_RATE", 100_000);
    let secs = env_or("SUSTAINED_SECS", if benching { 30 } else { 1 });

    let sink = OtlpSink::start().expect("sink");
    let guard = otel_instrument::builder!()
        .endpoint(sink.endpoint())
        .install()
        .expect("install");

    let roots_per_sec = rate as f64 / 2.0;
    let total = (roots_per_sec * secs as f64) as u64;
    let mut costs: Vec<u32> = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let mut issued = 0u64;
    while issued < total {
        let due = ((start.elapsed().as_secs_f64() * roots_per_sec) as u64).min(total);
        if due <= issued {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        while issued < due {
            let t = Instant::now();
            let r = root(issued);
            costs.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
            assert_eq!(r.ok(), Some(issued));
            issued += 1;
        }
    }
    let elapsed = start.elapsed();
    assert!(guard.flush(), "flush timed out");
    let spans_issued = issued * 2;
    let dropped = guard.stats().spans_dropped();
    let got = sink
        .wait_until(Duration::from_secs(30), |r| {
            r.spans().len() as u64 + dropped >= spans_issued
        })
        .unwrap_or_else(|| sink.received());
    let received = got.spans().len() as u64;
    costs.sort_unstable();
    println!(
        "sustained: target {rate} spans/s for {secs} s; achieved {:.0} spans/s",
        spans_issued as f64 / elapsed.as_secs_f64()
    );
    println!(
        "sustained: issued {spans_issued}, received {received}, dropped {dropped} \
         (queue full {}, export failed {}), export failures {}",
        guard.stats().spans_queue_full(),
        guard.stats().spans_lost(),
        guard
            .stats()
            .failures(otel_instrument::config::Signal::Traces)
    );
    println!(
        "sustained: root call (2 spans) p50 {} ns, p99 {} ns, max {} ns",
        percentile(&costs, 0.5),
        percentile(&costs, 0.99),
        costs.last().copied().unwrap_or(0)
    );
    drop(guard);
}
