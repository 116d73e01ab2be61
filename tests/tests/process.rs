//! A demo service's process and runtime metrics, over the wire (an in-process
//! OTLP sink), against `/proc/<pid>` of the running service read around the
//! collection that produced them.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{KillOnDrop, free_addr};
use otel_instrument::testing::{OtlpSink, Received, attributes};

/// `/proc/<pid>/stat`: (utime + stime in ticks, threads, rss pages).
fn stat(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = text.rsplit_once(')').unwrap().1;
    let f: Vec<u64> = rest
        .split_ascii_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Field N of proc(5) is f[N - 3].
    (f[11] + f[12], f[17], f[21])
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// Every point of the metric in the latest request that has it: (attributes, value).
fn points(r: &Received, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    use otel_instrument::testing::proto::metrics::v1::{metric::Data, number_data_point::Value};
    let Some(m) = r.last_metric(name) else {
        return Vec::new();
    };
    let points = match m.metric.data {
        Some(Data::Sum(s)) => s.data_points,
        Some(Data::Gauge(g)) => g.data_points,
        _ => Vec::new(),
    };
    points
        .into_iter()
        .map(|p| {
            let v = match p.value {
                Some(Value::AsInt(i)) => i as f64,
                Some(Value::AsDouble(d)) => d,
                None => f64::NAN,
            };
            (attributes(&p.attributes), v)
        })
        .collect()
}

fn sum(r: &Received, name: &str) -> f64 {
    let p = points(r, name);
    assert!(!p.is_empty(), "no {name}");
    p.iter().map(|(_, v)| v).sum()
}

#[test]
fn the_demo_backend_exports_process_metrics_that_agree_with_its_proc_entry() {
    let sink = OtlpSink::start().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_e2e-demo-backend"))
        .env_clear()
        .env("OTEL_SERVICE_NAME", "demo-backend")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("DEMO_BACKEND_ADDR", free_addr().to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo-backend");
    let pid = child.id();
    let _child = KillOnDrop(child);
    let has_process = |r: &Received| r.last_metric("process.memory.usage").is_some();
    let wait = Duration::from_secs(20);

    // Just after one export arrives, the next collection is an interval away:
    // read /proc/<pid> now and again when that next export arrives, and the
    // values it carries were read in between.
    sink.wait_until(wait, has_process)
        .expect("a first export with process metrics");
    sink.clear();
    let (cpu_a, threads_a, rss_a) = stat(pid);
    let fds_a = fds(pid);
    let r = sink
        .wait_until(wait, has_process)
        .expect("a second export with process metrics");
    let (cpu_b, threads_b, rss_b) = stat(pid);
    let fds_b = fds(pid);
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };

    let cpu = sum(&r, "process.cpu.time");
    let (lo, hi) = ((cpu_a as f64 - 1.0) / tick, (cpu_b as f64 + 1.0) / tick);
    assert!(lo <= cpu && cpu <= hi, "cpu {cpu} s not in [{lo}, {hi}]");
    let rss = sum(&r, "process.memory.usage");
    let (lo, hi) = (
        rss_a.min(rss_b) as f64 * page * 0.9,
        rss_a.max(rss_b) as f64 * page * 1.1,
    );
    assert!(lo <= rss && rss <= hi, "rss {rss} not in [{lo}, {hi}]");
    let threads = sum(&r, "process.thread.count");
    assert!(
        threads >= threads_a.min(threads_b) as f64 - 1.0
            && threads <= threads_a.max(threads_b) as f64 + 1.0,
        "threads {threads} vs {threads_a}..{threads_b}"
    );
    let open = sum(&r, "process.unix.file_descriptor.count");
    assert!(
        open >= fds_a.min(fds_b) as f64 - 2.0 && open <= fds_a.max(fds_b) as f64 + 2.0,
        "fds {open} vs {fds_a}..{fds_b}"
    );
    // The demo's runtime has two workers (demo::runtime), watched without asking.
    let workers = points(&r, "tokio.workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0].1, 2.0);
    assert_eq!(workers[0].0["tokio.runtime.index"], "0");
}
