//! The bundled Grafana dashboards: raw provisioning JSON, typed against
//! `@grafana/schema`, PromQL that parses, and panels that return data against a
//! real Prometheus fed by our own receiver and the demo's three processes.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{KillOnDrop, Prometheus, free_addr, http_get, repo_root, run_ok, tool, urlencode};
use serde_json::Value;

struct Query {
    dashboard: String,
    panel: String,
    expr: String,
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = repo_root().join("grafana/dashboards");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 4, "expected the four bundled dashboards");
    out
}

fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Whether a panel's target goes to the logs datasource (the `logs` variable, Loki).
fn is_logs_query(panel: &Value, target: &Value) -> bool {
    let ds = if target["datasource"].is_object() {
        &target["datasource"]
    } else {
        &panel["datasource"]
    };
    ds["type"] == "loki" && ds["uid"] == "${logs}"
}

/// Every panel query, with Grafana's variables replaced by values a test can evaluate.
fn queries() -> Vec<Query> {
    let mut out = Vec::new();
    for (path, d) in dashboards() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for p in panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                // LogQL for Loki: checked in tests/stack.rs, not by Prometheus.
                if is_logs_query(p, t) {
                    continue;
                }
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                let expr = expr
                    .replace("$__rate_interval", "30s")
                    .replace("$__range", "5m")
                    .replace("$__interval", "15s")
                    .replace("\"$job\"", "\".*\"")
                    .replace("\"$function\"", "\".*\"")
                    .replace("\"$instance\"", "\".*\"")
                    .replace("\"$gpu\"", "\".*\"");
                assert!(!expr.contains('$'), "{name}: unhandled variable in {expr}");
                out.push(Query {
                    dashboard: name.clone(),
                    panel: p["title"].as_str().unwrap_or("?").to_owned(),
                    expr,
                });
            }
        }
    }
    out
}

#[test]
fn dashboards_are_raw_provisioning_json_with_stable_uids_and_a_datasource_variable() {
    let mut uids = BTreeSet::new();
    for (path, d) in dashboards() {
        let name = path.display();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            d.get("__inputs").is_none() && !text.contains("${DS_"),
            "{name} is in export format"
        );
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{name} needs a stable uid"
        );
        assert!(uids.insert(uid.to_owned()), "{name}: duplicate uid {uid}");
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["type"] == "datasource"
                && v["name"] == "datasource"
                && v["query"] == "prometheus"),
            "{name} needs a `datasource` variable of type prometheus"
        );
        for p in panels(&d) {
            if p["type"] == "row" {
                continue;
            }
            let title = p["title"].as_str().unwrap_or("?");
            if p["type"] == "logs" {
                // Logs come from Loki, through the dashboard's `logs` variable.
                assert_eq!(p["datasource"]["uid"], "${logs}", "{name}: panel {title:?}");
                assert!(
                    vars.iter().any(|v| v["type"] == "datasource"
                        && v["name"] == "logs"
                        && v["query"] == "loki"),
                    "{name}: panel {title:?} needs a `logs` variable of type loki"
                );
            } else {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{name}: panel {title:?}"
                );
            }
            let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
            assert!(targets > 0, "{name}: panel {title:?} has no query");
        }
    }
}

#[test]
fn dashboards_type_check_against_grafana_schema() {
    let dir = repo_root().join("grafana/schema-check");
    let tsc = dir.join("node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "tsc and @grafana/schema are missing: run ./test.sh (npm ci in grafana/schema-check)"
    );
    let generated = dir.join("generated");
    let _ = std::fs::remove_dir_all(&generated);
    std::fs::create_dir_all(&generated).unwrap();
    let wrap = |ident: &str, json: &str| {
        format!(
            "import type {{ Dashboard }} from '@grafana/schema';\nexport const {ident} = ({json}) satisfies Dashboard;\n"
        )
    };
    for (path, _) in dashboards() {
        let ident = path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('-', "_");
        let json = std::fs::read_to_string(&path).unwrap();
        std::fs::write(generated.join(format!("{ident}.ts")), wrap(&ident, &json)).unwrap();
    }
    run_ok(Command::new(&tsc).current_dir(&dir).args(["-p", "."]));

    // The check can fail: a panel with a misspelt field is rejected.
    std::fs::write(
        generated.join("broken.ts"),
        wrap("broken", r#"{"schemaVersion": 41, "panels": [{"type": "timeseries", "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0}, "titel": "typo"}]}"#),
    )
    .unwrap();
    let out = Command::new(&tsc)
        .current_dir(&dir)
        .args(["-p", "."])
        .output()
        .unwrap();
    std::fs::remove_file(generated.join("broken.ts")).unwrap();
    assert!(
        !out.status.success(),
        "tsc accepted a dashboard with an unknown field"
    );
}

#[test]
fn every_panel_query_parses_as_promql() {
    let promtool = tool("promtool", "Debian's prometheus package");
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, q) in queries().iter().enumerate() {
        let expr = serde_json::to_string(&q.expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {expr}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queries.yml");
    std::fs::write(&path, rules).unwrap();
    run_ok(Command::new(promtool).args(["check", "rules"]).arg(&path));
}

/// A /proc seen through symlinks, minus `uptime`: the uptime source fails every cycle
/// (skipped and counted, the pipeline's "Source errors" panel) while every other
/// family reads the real files.
fn proc_without_uptime(dir: &std::path::Path) -> PathBuf {
    let root = dir.join("proc");
    std::fs::create_dir_all(&root).unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if name != "uptime" {
            std::os::unix::fs::symlink(entry.path(), root.join(&name)).unwrap();
        }
    }
    root
}

/// Builds the fake libnvidia-ml from the receiver's test sources.
fn fake_nvml(dir: &std::path::Path) -> Option<PathBuf> {
    let src = repo_root().join("otel-gpu-receiver/tests/fake_nvml/fake_nvml.c");
    if !src.exists() {
        return None;
    }
    let out = dir.join("libnvidia-ml.so.1");
    run_ok(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .args(["-lpthread", "-ldl"]),
    );
    Some(out)
}

#[test]
fn every_panel_query_returns_data_against_a_real_prometheus() {
    let work = tempfile::tempdir().unwrap();

    // Every OTLP export below goes to an address where nothing listens, so the
    // pipeline panels see real failures: export failures and dropped spans and logs.
    let dead_otlp = format!("http://{}", free_addr());

    // Our receiver, with fake GPUs when the fake NVML exists, on a pull endpoint; its
    // OTLP push fails (the receiver's export-failure series).
    let receiver_addr = free_addr();
    let mut receiver = Command::new(env!("CARGO_BIN_EXE_e2e-otel-gpu-receiver"));
    receiver
        .args([
            "--interval",
            "1s",
            "--otlp-endpoint",
            &dead_otlp,
            "--prometheus",
        ])
        .arg(receiver_addr.to_string())
        .arg("--proc-root")
        .arg(proc_without_uptime(work.path()))
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let gpus = fake_nvml(work.path());
    if let Some(lib) = &gpus {
        let script = work.path().join("gpus.script");
        std::fs::write(&script, fake_nvml_script()).unwrap();
        receiver
            .arg("--nvml-lib")
            .arg(lib)
            .arg("--per-process")
            .env("FAKE_NVML_SCRIPT", &script);
    }
    let _receiver = KillOnDrop(receiver.spawn().expect("start the receiver"));

    // The demo (load -> gateway -> backend), each serving /metrics. Their OTLP
    // endpoint has no collector, so the pipeline panels see failed exports.
    let demo = |bin: &str, service: &str, prometheus: SocketAddr| {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("DEMO_PROMETHEUS_ADDR", prometheus.to_string())
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &dead_otlp)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let (backend_metrics, gateway_metrics, load_metrics) = (free_addr(), free_addr(), free_addr());
    let backend_addr = free_addr();
    let gateway_addr = free_addr();
    let _backend = KillOnDrop(
        demo(
            env!("CARGO_BIN_EXE_e2e-demo-backend"),
            "demo-backend",
            backend_metrics,
        )
        .env("DEMO_BACKEND_ADDR", backend_addr.to_string())
        .spawn()
        .expect("start demo-backend"),
    );
    let _gateway = KillOnDrop(
        demo(
            env!("CARGO_BIN_EXE_e2e-demo-gateway"),
            "demo-gateway",
            gateway_metrics,
        )
        .env("DEMO_GATEWAY_ADDR", gateway_addr.to_string())
        .env("DEMO_BACKEND_URL", format!("http://{backend_addr}"))
        // Its debug event per view becomes an OTLP log record, so logs are dropped too.
        .env("RUST_LOG", "info,demo=debug")
        .spawn()
        .expect("start demo-gateway"),
    );
    let _load = KillOnDrop(
        demo(
            env!("CARGO_BIN_EXE_e2e-demo-load"),
            "demo-load",
            load_metrics,
        )
        .env("DEMO_GATEWAY_URL", format!("http://{gateway_addr}"))
        .env("DEMO_LOAD_RATE", "50")
        .spawn()
        .expect("start demo-load"),
    );
    // No collector runs here: an offline stand-in serves what the pinned collector's
    // own /metrics serves while Jaeger is down and memory_limiter refuses (below).
    let collector = FakeCollectorMetrics::start();
    let targets = [
        ("otel-gpu-receiver", receiver_addr),
        ("demo-backend", backend_metrics),
        ("demo-gateway", gateway_metrics),
        ("demo-load", load_metrics),
        ("otel-collector", collector.addr),
    ];
    for (job, addr) in targets {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(addr, "/metrics"), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "no /metrics from {job} on {addr}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Scrape job names equal the service names, so `job` matches the OTLP path.
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, addr) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
        ));
    }
    let prom = Prometheus::start(&config);
    prom.wait_targets_up(&targets.map(|(job, _)| job), Duration::from_secs(30));

    // Rates need a few samples; give every query up to 40 s to see data.
    let queries = queries();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut empty: Vec<&Query> = queries.iter().collect();
    while !empty.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        empty.retain(|q| prom.query_len(&q.expr) == 0);
    }
    // Each demo process feeds the functions dashboard, not just one of them.
    for job in ["demo-backend", "demo-gateway", "demo-load"] {
        let expr = format!("function_calls_total{{job=\"{job}\"}}");
        assert!(prom.query_len(&expr) > 0, "no {expr} in Prometheus");
    }
    let report: Vec<String> = empty
        .iter()
        .map(|q| format!("{} / panel {:?}: {}", q.dashboard, q.panel, q.expr))
        .collect();
    assert!(
        report.is_empty(),
        "panels without data (fake GPUs: {}):\n{}",
        gpus.is_some(),
        report.join("\n")
    );

    // Data is not enough for the pipeline panels: each must show its failure, not a
    // flat zero, or a panel that can never move would pass.
    let pipeline: Vec<&Query> = queries
        .iter()
        .filter(|q| q.dashboard == "pipeline.json")
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut flat: Vec<&str> = FAILURE_PANELS.to_vec();
    while !flat.is_empty() && Instant::now() < deadline {
        flat.retain(|title| {
            let exprs: Vec<&&Query> = pipeline.iter().filter(|q| q.panel == *title).collect();
            assert!(!exprs.is_empty(), "no pipeline panel is titled {title:?}");
            !exprs.iter().any(|q| query_max(&prom, &q.expr) > 0.0)
        });
        if !flat.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    assert!(
        flat.is_empty(),
        "pipeline panels that never showed their failure: {flat:?}"
    );
    assert!(
        collector.scrapes() > 0,
        "Prometheus never scraped the stand-in"
    );
}

/// Pipeline panels that a failure in this test must move above zero.
const FAILURE_PANELS: [&str; 7] = [
    "Spans dropped",
    "Export failures",
    "Log records dropped",
    "Collector: refused at its receivers",
    "Collector: export failures",
    "Collector: dropped, sending queue full",
    "Collector: sending queue fill",
];

/// The largest sample of an instant query (0 when it returns nothing).
fn query_max(prom: &Prometheus, expr: &str) -> f64 {
    let (_, body) = http_get(
        prom.addr,
        &format!("/api/v1/query?query={}", urlencode(expr)),
    )
    .expect("query prometheus");
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
    json["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

/// An OFFLINE STAND-IN for the collector's own `/metrics` (no collector binary or
/// Docker engine here): the series names, labels and types that
/// opentelemetry-collector-contrib 0.157.0 serves with the stack's telemetry config
/// (its Prometheus reader defaults to no `_total` suffix, no units, no scope labels;
/// attributes `receiver`/`transport`, `exporter`, `data_type` as in its receiverhelper
/// and exporterhelper), in the state of a real outage: Jaeger is unreachable, so the
/// traces exporter fails every send and its 1000-batch queue is full and drops, while
/// memory_limiter makes the OTLP receiver refuse. Counters grow on every scrape. It
/// proves the panels and their queries, not the collector; `stack/smoke.sh` checks a
/// real one where Docker runs.
struct FakeCollectorMetrics {
    addr: SocketAddr,
    scrapes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeCollectorMetrics {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let scrapes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, halt) = (scrapes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => req.extend_from_slice(&buf[..k]),
                    }
                }
                let scrape = n.fetch_add(1, Ordering::Relaxed) + 1;
                let body = fake_collector_exposition(scrape);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            addr,
            scrapes,
            stop,
            thread: Some(thread),
        }
    }

    fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }
}

impl Drop for FakeCollectorMetrics {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The stand-in's exposition at its `n`th scrape (see [`FakeCollectorMetrics`]).
fn fake_collector_exposition(n: u64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, series: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in series {
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    };
    let otlp = r#"receiver="otlp",transport="grpc""#;
    let (jaeger, prom, logs) = (
        r#"exporter="otlp_grpc/jaeger""#,
        r#"exporter="otlp_http/prometheus""#,
        r#"exporter="debug/logs""#,
    );
    family(
        "target_info",
        "gauge",
        "Target metadata",
        &[(
            r#"service_instance_id="6f1c2a7e-0000-4000-8000-000000000001",service_name="otelcol-contrib",service_version="0.157.0""#,
            1,
        )],
    );
    let signals = [
        ("spans", "traces", jaeger, 40, 5, 7, 3),
        ("metric_points", "metrics", prom, 200, 20, 0, 0),
        ("log_records", "logs", logs, 30, 2, 0, 0),
    ];
    for (items, _, exporter, accepted, refused, failed, dropped) in signals {
        family(
            &format!("otelcol_receiver_accepted_{items}"),
            "counter",
            "Number of items successfully pushed into the pipeline. [Alpha]",
            &[(otlp, accepted * n)],
        );
        family(
            &format!("otelcol_receiver_refused_{items}"),
            "counter",
            "Number of items that could not be pushed into the pipeline. [Alpha]",
            &[(otlp, refused * n)],
        );
        family(
            &format!("otelcol_exporter_sent_{items}"),
            "counter",
            "Number of items successfully sent to destination. [Alpha]",
            &[(exporter, if failed > 0 { 0 } else { accepted * n })],
        );
        family(
            &format!("otelcol_exporter_send_failed_{items}"),
            "counter",
            "Number of items in failed attempts to send to destination. [Alpha]",
            &[(exporter, failed * n)],
        );
        // A real collector creates this series with the first drop; the outage has
        // dropped spans already, the others show it at zero.
        family(
            &format!("otelcol_exporter_enqueue_failed_{items}"),
            "counter",
            "Number of items failed to be added to the sending queue. [Alpha]",
            &[(exporter, dropped * n)],
        );
    }
    let queue = |exporter: &str, data_type: &str| format!(r#"data_type="{data_type}",{exporter}"#);
    let (jq, pq, lq) = (
        queue(jaeger, "traces"),
        queue(prom, "metrics"),
        queue(logs, "logs"),
    );
    family(
        "otelcol_exporter_queue_size",
        "gauge",
        "Current size of the retry queue (in batches). [Alpha]",
        &[(&jq, 1000), (&pq, n % 3), (&lq, 0)],
    );
    family(
        "otelcol_exporter_queue_capacity",
        "gauge",
        "Fixed capacity of the retry queue (in batches). [Alpha]",
        &[(&jq, 1000), (&pq, 1000), (&lq, 1000)],
    );
    out
}

/// Three fake GPUs: one power- and thermally throttled with a training process, one
/// with an inference process, an Xid 48 and a hung NVML call, and one that is lost
/// (Xid 79) from the third cycle on, so the health, Xid and NVML panels have data.
fn fake_nvml_script() -> String {
    [
        "devices 3",
        "dev 0 throttle 36",
        "dev 0 proc 4242 1073741824 40 20 trainer",
        "dev 1 proc 4343 536870912 10 5 inference",
        "dev 1 enc 12",
        "dev 1 dec 7",
        "xid 1 1 48",
        "xid 2 2 79",
        "dev 2 lost 3 0",
        // A hung call: the watchdog abandons it each cycle and counts it.
        "dev 1 sleep nvmlDeviceGetFanSpeed_v2 1500",
    ]
    .join("\n")
}
