//! The sink of `benches/fleet.sh`: one OTLP gRPC endpoint that a fleet of agents
//! pushes to. It accepts every export, keeps only what it counts (so its memory stays
//! flat), and after the measured window prints one JSON object:
//!
//! - ingest over the window: requests, data points and bytes (the requests' protobuf
//!   size, as encoded on the wire without compression), in total and per second;
//! - the agents it heard from, and the points and bytes of one agent's request;
//! - the bytes of trace and log requests too, when services send them (the demo's
//!   traffic is measured this way);
//! - how the pushes spread over the interval: each request's arrival time (wall
//!   clock) modulo the interval, counted in ten bins, and the fullest bin against the
//!   mean (1.0 is perfectly even; 10 means every push in the same tenth); and the most
//!   requests that arrived within any one second.
//!
//! Usage: `fleet_sink ADDR WARMUP_S WINDOW_S INTERVAL_S`, e.g.
//! `cargo run --release -p otel-gpu-receiver --example fleet_sink -- 127.0.0.1:14317 15 60 10`

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use otel_instrument::testing::OtlpSink;
use otel_instrument::testing::proto::common::v1::any_value;
use otel_instrument::testing::proto::metrics::v1::metric;
use prost::Message as _;

fn arg(i: usize, default: &str) -> String {
    std::env::args()
        .nth(i)
        .unwrap_or_else(|| default.to_owned())
}

fn secs(i: usize, default: &str, name: &str) -> Result<f64, std::io::Error> {
    arg(i, default)
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| std::io::Error::other(format!("{name}: expected a number of seconds")))
}

fn main() -> std::io::Result<()> {
    let addr = arg(1, "127.0.0.1:4317")
        .parse()
        .map_err(std::io::Error::other)?;
    let warmup = secs(2, "15", "WARMUP_S")?;
    let window = secs(3, "60", "WINDOW_S")?;
    let interval = secs(4, "10", "INTERVAL_S")?;
    let sink = OtlpSink::start_at(addr)?;
    eprintln!("fleet_sink: listening on {addr}");

    let started = Instant::now();
    let (from, to) = (
        started + Duration::from_secs_f64(warmup),
        started + Duration::from_secs_f64(warmup + window),
    );
    // The wall clock of `started`, to place each arrival in the interval.
    let wall0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let (mut requests, mut points, mut bytes) = (0u64, 0u64, 0u64);
    let (mut spans, mut span_bytes, mut log_records, mut log_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut agents = BTreeSet::new();
    let mut per_agent: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut bins = [0u64; 10];
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    while Instant::now() < to {
        std::thread::sleep(Duration::from_millis(100));
        let got = sink.received();
        sink.clear();
        let now = Instant::now();
        if now >= from && now < to {
            for t in &got.traces {
                span_bytes += t.encoded_len() as u64;
                spans += t
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len() as u64)
                    .sum::<u64>();
            }
            for l in &got.logs {
                log_bytes += l.encoded_len() as u64;
                log_records += l
                    .resource_logs
                    .iter()
                    .flat_map(|r| &r.scope_logs)
                    .map(|s| s.log_records.len() as u64)
                    .sum::<u64>();
            }
        }
        let arrivals: Vec<Instant> = got
            .attempts
            .iter()
            .filter(|(signal, _)| *signal == "metrics")
            .map(|(_, at)| *at)
            .collect();
        for (i, req) in got.metrics.iter().enumerate() {
            let at = arrivals.get(i).copied().unwrap_or_else(Instant::now);
            let instance = req
                .resource_metrics
                .first()
                .and_then(|rm| rm.resource.as_ref())
                .and_then(|r| {
                    r.attributes
                        .iter()
                        .find(|kv| kv.key == "service.instance.id")
                })
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    any_value::Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            agents.insert(instance.clone());
            if at < from || at >= to {
                continue;
            }
            let n: u64 = req
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .map(|m| match &m.data {
                    Some(metric::Data::Gauge(g)) => g.data_points.len(),
                    Some(metric::Data::Sum(s)) => s.data_points.len(),
                    Some(metric::Data::Histogram(h)) => h.data_points.len(),
                    _ => 0,
                } as u64)
                .sum();
            let size = req.encoded_len() as u64;
            requests += 1;
            points += n;
            bytes += size;
            per_agent.insert(instance, (n, size));
            let wall = wall0 + at.duration_since(started);
            let phase = wall.as_secs_f64() % interval / interval;
            bins[((phase * 10.0) as usize).min(9)] += 1;
            *per_second.entry(wall.as_secs()).or_default() += 1;
        }
    }
    let mean = requests as f64 / 10.0;
    let fullest = bins.iter().copied().max().unwrap_or(0);
    let (agent_points, agent_bytes) = per_agent.values().copied().max().unwrap_or((0, 0));
    println!(
        "{}",
        serde_json::json!({
            "window_s": window,
            "interval_s": interval,
            "agents": agents.len(),
            "requests": requests,
            "points": points,
            "bytes": bytes,
            "requests_per_s": requests as f64 / window,
            "points_per_s": points as f64 / window,
            "bytes_per_s": bytes as f64 / window,
            "points_per_agent_request": agent_points,
            "bytes_per_agent_request": agent_bytes,
            "phase_bins": bins,
            "fullest_bin_vs_mean": if mean > 0.0 { fullest as f64 / mean } else { 0.0 },
            "max_requests_in_one_second": per_second.values().copied().max().unwrap_or(0),
            "spans_per_s": spans as f64 / window,
            "span_bytes_per_s": span_bytes as f64 / window,
            "log_records_per_s": log_records as f64 / window,
            "log_bytes_per_s": log_bytes as f64 / window,
        })
    );
    Ok(())
}
