//! The real binary with `--nvml-lib` pointing at the fake libnvidia-ml: `--once`
//! (table and JSON), the catalogue's GPU rows, the OTLP push over several cycles, and
//! a missing library.

mod fake_nvml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fake_nvml::FakeNvml;
use otel_gpu_receiver::catalogue::{
    CATALOGUE, FROM_THE_FIRST_ERROR, Family, Origin, WHERE_SUPPORTED,
};
use otel_instrument::testing::proto::metrics::v1::metric::Data;
use otel_instrument::testing::proto::metrics::v1::number_data_point::Value;
use otel_instrument::testing::proto::metrics::v1::{Metric, NumberDataPoint};
use otel_instrument::testing::{OtlpSink, Received, attributes};

const BIN: &str = env!("CARGO_BIN_EXE_otel-gpu-receiver");

fn uuid(i: usize) -> String {
    format!("GPU-00000000-0000-4000-8000-{i:012}")
}

/// A command for the agent with a clean environment.
fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_clear().env("RUST_LOG", "info");
    if let Ok(p) = std::env::var("PATH") {
        c.env("PATH", p);
    }
    c
}

fn once_json(args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let mut all = vec!["--once", "--format", "json", "--no-otlp"];
    all.extend_from_slice(args);
    let out: Output = agent(&all).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "--once failed: {stderr}");
    let rows = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("stdout is one JSON document")
        .as_array()
        .unwrap()
        .clone();
    (rows, stderr)
}

fn rows_named<'a>(rows: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    rows.iter().filter(|r| r["name"] == name).collect()
}

/// The value of the one row of `name` for GPU `id` with the `extra` attributes.
fn row_value(rows: &[serde_json::Value], name: &str, id: &str, extra: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = rows_named(rows, name)
        .into_iter()
        .filter(|r| r["attributes"]["hw.id"] == id)
        .filter(|r| extra.iter().all(|(k, v)| r["attributes"][*k] == *v))
        .collect();
    assert_eq!(found.len(), 1, "{name} {id} {extra:?}: {found:#?}");
    found[0]["value"].as_f64().unwrap()
}

/// Everything the catalogue can show: 8 GPUs, MIG on GPU 0, NVLink, processes.
const RICH: &str = "devices 8\n\
                    driver 550.54.15\n\
                    dev 0 mig 2\n\
                    dev 1 nvlinks 2\n\
                    dev 2 proc 4194401 1073741824 55 20 trainer\n\
                    dev 3 proc 4194402 2147483648 70 30 infer";

#[test]
fn once_lists_the_gpus_then_the_readings_in_the_right_units() {
    let fake = FakeNvml::new(RICH);
    let lib = fake.lib.to_str().unwrap();
    // Table: the list comes first, on stdout.
    let out = agent(&[
        "--once",
        "--no-otlp",
        "--families",
        "gpu",
        "--nvml-lib",
        lib,
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let first = table.lines().next().unwrap();
    assert_eq!(first, "GPUs: 8");
    for i in 0..8 {
        let line = format!(
            "  GPU {i}: NVIDIA Fake H100 80GB HBM3 ({}), driver 550.54.15",
            uuid(i)
        );
        let at = table
            .find(&line)
            .unwrap_or_else(|| panic!("{line:?} not in {table}"));
        assert!(
            at < table.find("hw.power").unwrap(),
            "the list comes before the readings"
        );
    }
    // JSON: the list on stderr, the readings on stdout.
    let (rows, stderr) = once_json(&["--families", "gpu", "--nvml-lib", lib]);
    assert!(stderr.contains("GPUs: 8"), "{stderr}");
    assert!(stderr.contains(&uuid(7)), "{stderr}");
    for i in 0..8 {
        let id = uuid(i);
        let f = i as f64;
        assert_eq!(row_value(&rows, "hw.power", &id, &[]), 100.5 + f);
        assert_eq!(
            row_value(&rows, "hw.energy", &id, &[]),
            (1_000_000.0 + 1000.0 * f + 5000.0) / 1000.0
        );
        assert_eq!(
            row_value(
                &rows,
                "nvidia.gpu.clock.frequency",
                &id,
                &[("nvidia.gpu.clock", "sm")]
            ),
            (1510.0 + f) * 1e6
        );
        // GPU 0 is in MIG mode, where NVML has no utilisation rates.
        let general: Vec<_> = rows_named(&rows, "hw.gpu.utilization")
            .into_iter()
            .filter(|r| r["attributes"]["hw.id"] == id.as_str())
            .filter(|r| r["attributes"]["hw.gpu.task"] == "general")
            .map(|r| r["value"].as_f64().unwrap())
            .collect();
        if i == 0 {
            assert!(general.is_empty(), "{general:?}");
        } else {
            assert_eq!(general, [(10.0 + f) / 100.0]);
        }
        assert_eq!(
            row_value(&rows, "hw.status", &id, &[("hw.state", "ok")]),
            1.0
        );
    }
    let unit = |name: &str| {
        rows_named(&rows, name)[0]["unit"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(unit("hw.power"), "W");
    assert_eq!(unit("hw.energy"), "J");
    assert_eq!(unit("hw.temperature"), "Cel");
    assert_eq!(unit("nvidia.gpu.clock.frequency"), "Hz");
    assert_eq!(unit("hw.gpu.memory.usage"), "By");
    assert_eq!(unit("hw.gpu.utilization"), "1");
    // Opt-in: no per-process (per-pid) series without --per-process.
    assert!(
        rows.iter()
            .filter(|r| r["name"].as_str().unwrap().starts_with("process.gpu."))
            .all(|r| r["attributes"].get("process.pid").is_none())
    );
}

#[test]
fn the_catalogue_gpu_rows_match_what_the_fake_gpus_emit() {
    let fake = FakeNvml::new(RICH);
    let (rows, _) = once_json(&[
        "--families",
        "gpu",
        "--per-process",
        "--nvml-lib",
        fake.lib.to_str().unwrap(),
    ]);
    // Keys that only some series of a metric have: hw.parent (MIG instances only), and
    // the driver/VBIOS/serial of hw.status (whole GPUs only).
    let optional: BTreeSet<&str> = [
        "hw.parent",
        // On the ECC series of hw.errors only.
        "nvidia.gpu.ecc.counter",
        "hw.driver_version",
        "hw.firmware_version",
        "hw.serial_number",
        // Attribution (issue 6): only for processes in a container or pod, and only
        // with a kubelet for the allocations.
        "container.id",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name",
    ]
    .into();
    let doc = include_str!("../CATALOGUE.md");
    let gpu_rows: Vec<_> = CATALOGUE
        .iter()
        .filter(|d| d.origin == Origin::Host(Family::Gpu))
        .collect();
    assert!(gpu_rows.len() >= 25);
    for d in &gpu_rows {
        assert!(
            doc.contains(&format!(
                "| `{}` | {} | `{}` |",
                d.name, d.instrument, d.unit
            )),
            "{} is not in CATALOGUE.md",
            d.name
        );
        let emitted = rows_named(&rows, d.name);
        // GPM needs two samples (one cycle here); Xid and NVML failures need an event.
        let may_be_absent = d.description.contains(WHERE_SUPPORTED)
            || d.description.contains(FROM_THE_FIRST_ERROR)
            || d.name.starts_with("nvidia.gpu.") && d.name.ends_with("activity")
            || d.name == "nvidia.gpu.sm.occupancy";
        assert!(
            may_be_absent || !emitted.is_empty(),
            "{} is in the catalogue but was not emitted",
            d.name
        );
        let doc_keys: BTreeSet<&str> = d.attributes.iter().copied().collect();
        for r in emitted {
            assert_eq!(r["unit"], d.unit, "unit of {}", d.name);
            assert_eq!(
                r["instrument"],
                d.instrument.as_str(),
                "instrument of {}",
                d.name
            );
            let keys: BTreeSet<&str> = r["attributes"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert!(
                keys.is_subset(&doc_keys),
                "{}: {keys:?} vs {doc_keys:?}",
                d.name
            );
            let required: BTreeSet<&str> = doc_keys.difference(&optional).copied().collect();
            assert!(
                required.is_subset(&keys),
                "{}: {keys:?} vs {doc_keys:?}",
                d.name
            );
        }
    }
    // Everything GPU-ish that was emitted is in the catalogue's GPU rows.
    for r in &rows {
        let name = r["name"].as_str().unwrap();
        if name.starts_with("hw.") || name.starts_with("nvidia.") || name.starts_with("process.gpu")
        {
            assert!(
                gpu_rows.iter().any(|d| d.name == name),
                "{name} is not catalogued"
            );
        }
    }
    // MIG and NVLink and per-process really were there.
    assert_eq!(rows_named(&rows, "nvidia.gpu.mig.info").len(), 2);
    assert_eq!(rows_named(&rows, "nvidia.gpu.nvlink.io").len(), 4);
    // 2 links × crc_flit, crc_data, replay, recovery.
    assert_eq!(rows_named(&rows, "nvidia.gpu.nvlink.errors").len(), 8);
    // One fan per GPU, one state series per state with "up" on.
    assert_eq!(rows_named(&rows, "hw.fan.speed_ratio").len(), 8);
    let up: Vec<_> = rows_named(&rows, "otel_gpu_receiver.gpu.source.state")
        .into_iter()
        .filter(|r| r["value"] == 1)
        .map(|r| r["attributes"]["state"].clone())
        .collect();
    assert_eq!(up, ["up"]);
    assert_eq!(rows_named(&rows, "process.gpu.memory.usage").len(), 2);
}

#[test]
fn without_the_library_the_agent_runs_host_only_with_one_warning_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libnvidia-ml.so.1");
    let (rows, stderr) = once_json(&["--nvml-lib", missing.to_str().unwrap()]);
    assert!(rows.iter().any(|r| r["name"] == "system.memory.usage"));
    assert!(!rows.iter().any(|r| {
        let n = r["name"].as_str().unwrap();
        n.starts_with("hw.") || n.starts_with("nvidia.")
    }));
    assert_eq!(
        stderr.matches("NVML is not available").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("GPUs: 0"), "{stderr}");
    // The same through the environment variable.
    let out = agent(&["--once", "--no-otlp", "--families", "gpu,uptime"])
        .env("OTEL_GPU_RECEIVER_NVML_LIB", &missing)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("NVML is not available").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

/// Kills (and reaps) the agent on drop; its stderr goes to a file.
struct Agent {
    child: Child,
    stderr: PathBuf,
}

impl Agent {
    fn start(args: &[&str], dir: &std::path::Path) -> Self {
        let stderr = dir.join("agent.stderr");
        let child = agent(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn points(m: &Metric) -> Vec<NumberDataPoint> {
    match m.data.as_ref() {
        Some(Data::Gauge(g)) => g.data_points.clone(),
        Some(Data::Sum(s)) => s.data_points.clone(),
        _ => Vec::new(),
    }
}

fn number(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(Value::AsDouble(d)) => d,
        Some(Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

/// One export request: (metric name, attributes) → (unit, value).
type Request = BTreeMap<(String, BTreeMap<String, String>), (String, f64)>;

/// Per export request: (metric name, attributes) → (unit, value).
fn requests(r: &Received) -> Vec<Request> {
    r.metrics
        .iter()
        .map(|req| {
            let mut out = BTreeMap::new();
            for rm in &req.resource_metrics {
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        for p in points(m) {
                            out.insert(
                                (m.name.clone(), attributes(&p.attributes)),
                                (m.unit.clone(), number(&p)),
                            );
                        }
                    }
                }
            }
            out
        })
        .collect()
}

fn find(req: &Request, name: &str, with: &[(&str, &str)]) -> Option<(String, f64)> {
    req.iter()
        .find(|((n, a), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v.clone())
}

#[test]
fn the_otlp_sink_sees_gpu_health_xid_and_per_process_use_over_cycles() {
    // GPU 3 is lost from cycle 3 to cycle 5 and comes back; GPU 0 has no power reading;
    // Xid 48 twice on GPU 0 and Xid 79 once on GPU 1 from cycle 2.
    let fake = FakeNvml::new(
        "devices 8\n\
         dev 3 lost 3 6\n\
         dev 0 notsup nvmlDeviceGetPowerUsage\n\
         xid 2 0 48\nxid 2 0 48\nxid 2 1 79\n\
         dev 2 proc 4194401 1073741824 55 20 trainer",
    );
    let sink = OtlpSink::start().unwrap();
    let agent = Agent::start(
        &[
            // A roomy cycle, so that a loaded CI machine does not run into the GPU budget
            // (80% of the source timeout) or the per-call deadline (a third of it).
            "--interval",
            "1s",
            "--source-timeout",
            "1s",
            "--families",
            "gpu",
            "--per-process",
            "--otlp-endpoint",
            &sink.endpoint(),
            "--nvml-lib",
            fake.lib.to_str().unwrap(),
        ],
        fake.dir.path(),
    );
    let g3 = uuid(3);
    let failed_then_ok = |r: &Received| {
        let reqs = requests(r);
        let failed_at = reqs.iter().position(|q| {
            find(q, "hw.status", &[("hw.id", &g3), ("hw.state", "failed")]).map(|v| v.1)
                == Some(1.0)
        });
        let xid = reqs.last().and_then(|q| {
            find(
                q,
                "nvidia.gpu.xid.events",
                &[("hw.id", &uuid(0)), ("nvidia.gpu.xid.code", "48")],
            )
        });
        failed_at.is_some_and(|i| {
            reqs[i..].iter().any(|q| {
                find(q, "hw.status", &[("hw.id", &g3), ("hw.state", "ok")]).map(|v| v.1)
                    == Some(1.0)
            })
        }) && xid.map(|v| v.1) == Some(2.0)
    };
    let got = sink
        .wait_until(Duration::from_secs(60), failed_then_ok)
        .unwrap_or_else(|| {
            panic!(
                "never saw GPU 3 fail and recover; agent said:\n{}",
                agent.stderr()
            )
        });
    let reqs = requests(&got);
    let last = reqs.last().unwrap();
    // While GPU 3 was failed, the others kept reporting.
    let during = reqs
        .iter()
        .find(|q| {
            find(q, "hw.status", &[("hw.id", &g3), ("hw.state", "failed")]).map(|v| v.1)
                == Some(1.0)
        })
        .unwrap();
    // (GPU 1 is left out: its Xid 79 may fail it in the same cycle.)
    for i in [2usize, 4, 7] {
        assert_eq!(
            find(
                during,
                "hw.status",
                &[("hw.id", &uuid(i)), ("hw.state", "ok")]
            )
            .map(|v| v.1),
            Some(1.0)
        );
    }
    // Units on the wire.
    assert_eq!(
        find(last, "hw.power", &[("hw.id", &uuid(5))]),
        Some(("W".to_owned(), 105.5))
    );
    let (unit, joules) = find(last, "hw.energy", &[("hw.id", &uuid(5))]).unwrap();
    assert_eq!(unit, "J");
    assert!(joules > 1005.0, "{joules}");
    // Cumulative counters only grow from one export to the next.
    let energy: Vec<f64> = reqs
        .iter()
        .filter_map(|q| find(q, "hw.energy", &[("hw.id", &uuid(5))]).map(|v| v.1))
        .collect();
    assert!(energy.len() >= 3, "{energy:?}");
    assert!(energy.windows(2).all(|w| w[0] <= w[1]), "{energy:?}");
    assert!(energy.last() > energy.first(), "{energy:?}");
    // NOT_SUPPORTED: omitted, never 0.
    assert_eq!(find(last, "hw.power", &[("hw.id", &uuid(0))]), None);
    // Xid counters and last time.
    assert_eq!(
        find(
            last,
            "nvidia.gpu.xid.events",
            &[("hw.id", &uuid(1)), ("nvidia.gpu.xid.code", "79")]
        )
        .map(|v| v.1),
        Some(1.0)
    );
    let (unit, t) = find(
        last,
        "nvidia.gpu.xid.last_time",
        &[("hw.id", &uuid(0)), ("nvidia.gpu.xid.code", "48")],
    )
    .unwrap();
    assert_eq!(unit, "s");
    assert!(t > 1.7e9, "{t}");
    // Per-process memory attribution.
    assert_eq!(
        find(
            last,
            "process.gpu.memory.usage",
            &[
                ("process.pid", "4194401"),
                ("process.executable.name", "trainer"),
                ("hw.id", &uuid(2))
            ]
        ),
        Some(("By".to_owned(), 1073741824.0))
    );
    // No error spam: the loss is logged once, NOT_SUPPORTED never at info level, and
    // the unsupported call was made once in all those cycles.
    drop(agent);
    let stderr = std::fs::read_to_string(fake.dir.path().join("agent.stderr")).unwrap();
    assert_eq!(stderr.matches("GPU is lost").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("not supported").count(), 0, "{stderr}");
    assert!(!stderr.contains("NVML call failed"), "{stderr}");
    assert_eq!(fake.count("nvmlDeviceGetPowerUsage", 0), 1);
    // GPU 5 was asked once per cycle (the fake counts cycles as it writes its stats).
    let cycles = fake.count("cycle", -1);
    assert!(cycles >= 5, "{cycles}");
    assert!(fake.count("nvmlDeviceGetPowerUsage", 5) + 1 >= cycles);
}

#[test]
fn nvml_lib_and_per_process_come_from_flags_env_or_the_config_file() {
    let fake = FakeNvml::new("devices 1\ndev 0 proc 4194401 1073741824 55 20 trainer");
    let lib = fake.lib.to_str().unwrap();
    let missing = fake.dir.path().join("nowhere/libnvidia-ml.so.1");
    let has_gpu = |out: &Output| String::from_utf8_lossy(&out.stderr).contains("GPUs: 1");
    let per_process = |out: &Output| String::from_utf8_lossy(&out.stdout).contains("4194401");
    let json = [
        "--once",
        "--format",
        "json",
        "--no-otlp",
        "--families",
        "gpu",
    ];

    // The TOML file.
    let cfg = fake.dir.path().join("agent.toml");
    std::fs::write(&cfg, format!("nvml_lib = {lib:?}\nper_process = true\n")).unwrap();
    let mut args = json.to_vec();
    args.extend(["--config", cfg.to_str().unwrap()]);
    let out = agent(&args).output().unwrap();
    assert!(out.status.success() && has_gpu(&out) && per_process(&out));

    // The environment beats the file.
    let out = agent(&args)
        .env("OTEL_GPU_RECEIVER_NVML_LIB", &missing)
        .env("OTEL_GPU_RECEIVER_PER_PROCESS", "false")
        .output()
        .unwrap();
    assert!(out.status.success() && !has_gpu(&out) && !per_process(&out));

    // A flag beats the environment.
    let mut flagged = args.clone();
    flagged.extend(["--nvml-lib", lib, "--per-process"]);
    let out = agent(&flagged)
        .env("OTEL_GPU_RECEIVER_NVML_LIB", &missing)
        .env("OTEL_GPU_RECEIVER_PER_PROCESS", "false")
        .output()
        .unwrap();
    assert!(out.status.success() && has_gpu(&out) && per_process(&out));

    // A bad value exits 2 and names the variable and the value.
    let out = agent(&json)
        .env("OTEL_GPU_RECEIVER_PER_PROCESS", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OTEL_GPU_RECEIVER_PER_PROCESS") && stderr.contains("maybe"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Issue 13: the real binary follows NVML coming and going, and says so on /healthz.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (status, body) of a GET on the agent's pull endpoint, `None` while it does not answer.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn healthz_stays_200_but_says_degraded_while_the_gpu_source_has_no_nvml() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libnvidia-ml.so.1");
    let port = free_port();
    let agent = Agent::start(
        &[
            "--interval",
            "1s",
            "--no-otlp",
            "--families",
            "gpu,uptime",
            "--prometheus",
            &format!("127.0.0.1:{port}"),
            "--nvml-lib",
            missing.to_str().unwrap(),
        ],
        dir.path(),
    );
    // Alive and ready (200: a restart brings no driver back), and degraded.
    let got = poll(Duration::from_secs(30), || {
        http_get(port, "/healthz").filter(|(_, b)| b.starts_with("degraded"))
    });
    let (status, body) = got.unwrap_or_else(|| panic!("no degraded /healthz: {}", agent.stderr()));
    assert_eq!(status, 200);
    assert_eq!(
        body.trim(),
        "degraded: gpu source: no_library (NVML cannot be loaded)"
    );
    // The same state on /metrics, under the name the alert rules use.
    let metrics = poll(Duration::from_secs(20), || {
        http_get(port, "/metrics")
            .filter(|(_, b)| b.contains("otel_gpu_receiver_gpu_source_state{"))
    })
    .unwrap()
    .1;
    let on: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("otel_gpu_receiver_gpu_source_state{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(on.len(), 1, "{metrics}");
    assert!(on[0].contains("state=\"no_library\""), "{}", on[0]);

    // With NVML there, plain "ok".
    let fake = FakeNvml::new("devices 1");
    let port = free_port();
    let _agent = Agent::start(
        &[
            "--interval",
            "1s",
            "--no-otlp",
            "--families",
            "gpu",
            "--prometheus",
            &format!("127.0.0.1:{port}"),
            "--nvml-lib",
            fake.lib.to_str().unwrap(),
        ],
        fake.dir.path(),
    );
    let got = poll(Duration::from_secs(30), || {
        http_get(port, "/metrics")
            .filter(|(_, b)| b.contains("hw_status"))
            .and_then(|_| http_get(port, "/healthz"))
    });
    assert_eq!(got, Some((200, "ok\n".to_owned())));
}

#[test]
fn the_otlp_sink_follows_a_late_driver_and_a_driver_reload() {
    // nvmlInit_v2 refuses twice (the driver is not loaded yet); three cycles after it
    // comes up, the driver goes away (DRIVER_NOT_LOADED), refuses one attempt, and comes
    // back. The agent's default backoff (1 s, doubling) spaces the attempts.
    let fake = FakeNvml::new("devices 2\ninit_fail 2 9\ndriver_gone 4 1 9");
    let sink = OtlpSink::start().unwrap();
    let agent = Agent::start(
        &[
            "--interval",
            "1s",
            "--source-timeout",
            "1s",
            "--families",
            "gpu",
            "--otlp-endpoint",
            &sink.endpoint(),
            "--nvml-lib",
            fake.lib.to_str().unwrap(),
        ],
        fake.dir.path(),
    );
    let state = |q: &Request| -> Option<String> {
        q.iter()
            .find(|((n, _), (_, v))| n == "otel_gpu_receiver.gpu.source.state" && *v == 1.0)
            .map(|((_, a), _)| a["state"].clone())
    };
    // The states in the order the exports showed them, repeats folded.
    let history = |r: &Received| -> Vec<String> {
        let mut h: Vec<String> = Vec::new();
        for s in requests(r).iter().filter_map(state) {
            if h.last() != Some(&s) {
                h.push(s);
            }
        }
        h
    };
    let got = sink
        .wait_until(Duration::from_secs(60), |r| {
            history(r).len() >= 4
                && requests(r).last().is_some_and(|q| {
                    state(q).as_deref() == Some("up")
                        && find(q, "hw.status", &[("hw.id", &uuid(1)), ("hw.state", "ok")])
                            .is_some_and(|v| v.1 == 1.0)
                })
        })
        .unwrap_or_else(|| panic!("the agent never came back; it said:\n{}", agent.stderr()));
    assert_eq!(history(&got), ["no_driver", "up", "no_driver", "up"]);
    let reqs = requests(&got);
    // The GPU series go while the driver is missing. (Each instrument reads the latest
    // snapshot when it is collected, so an export taken as a cycle ends may mix two
    // snapshots: tests/gpu.rs checks each snapshot; here, some export shows it.)
    let without_gpu = reqs
        .iter()
        .filter(|q| state(q).as_deref() == Some("no_driver"))
        .filter(|q| {
            q.keys()
                .all(|(n, _)| !n.starts_with("hw.") && !n.starts_with("nvidia.gpu."))
        })
        .count();
    assert!(without_gpu >= 1);
    let last = reqs.last().unwrap();
    assert_eq!(
        find(
            last,
            "otel_gpu_receiver.nvml.errors",
            &[("nvml.call", "nvmlInit_v2")]
        )
        .map(|v| v.1),
        Some(3.0)
    );
    let lost = last
        .iter()
        .filter(|((n, a), _)| {
            n == "otel_gpu_receiver.nvml.errors"
                && a.get("error.type").map(String::as_str) == Some("driver_not_loaded")
                && a.get("nvml.call").map(String::as_str) != Some("nvmlInit_v2")
        })
        .map(|(_, v)| v.1)
        .sum::<f64>();
    assert_eq!(lost, 1.0);
    // Logged: one warning that NVML is unavailable, one that the driver was lost, and
    // no warning per refused attempt.
    drop(agent);
    let stderr = std::fs::read_to_string(fake.dir.path().join("agent.stderr")).unwrap();
    assert_eq!(
        stderr.matches("NVML is not available").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("NVML lost the driver").count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("NVML initialised; GPU metrics are on")
            .count(),
        2,
        "{stderr}"
    );
}

#[test]
fn every_flag_in_the_kubernetes_snippets_is_one_the_agent_accepts() {
    use clap::Parser as _;
    let doc = include_str!("../KUBERNETES.md");
    let mut checked = 0;
    for block in doc.split("```yaml").skip(1) {
        let yaml = block.split("```").next().unwrap();
        let args: Vec<String> = yaml
            .lines()
            .map(str::trim)
            // A list item (`- --flag`), or the value of a JSON patch operation that
            // appends one to the args (`value: "--flag=…"`).
            .filter_map(|l| {
                l.strip_prefix("- --").or_else(|| {
                    l.strip_prefix("value: \"--")
                        .and_then(|a| a.strip_suffix('"'))
                })
            })
            .map(|a| format!("--{a}"))
            .collect();
        let argv = std::iter::once("otel-gpu-receiver".to_owned()).chain(args.iter().cloned());
        otel_gpu_receiver::config::Flags::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        checked += args.len();
    }
    // The late-driver snippet's; the DaemonSet's own flags live in deploy/kubernetes,
    // checked by attribution_config and `cargo test -p e2e --test kubernetes`.
    assert!(checked >= 1, "{checked}");
    assert!(doc.contains("--nvml-lib=/run/nvidia/driver/"));
    assert!(doc.contains("mountPropagation: HostToContainer"));
}
