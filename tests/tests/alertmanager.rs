//! Alert routing end to end: Debian's Alertmanager runs `stack/alertmanager.yml`
//! beside a real Prometheus (Debian's 2.42) that evaluates `stack/rules/alerts.yml`
//! on synthetic series and sends to it as `stack/prometheus.yml` says; the test's own
//! webhook stands in for the stack's. `amtool check-config` validates the file.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use e2e::{KillOnDrop, Prometheus, free_addr, http_get, repo_root, run_ok, tool, yaml};
use serde_json::Value as J;
use serde_yaml_ng::Value;

#[test]
fn amtool_accepts_the_config() {
    let amtool = tool("amtool", "Debian's prometheus-alertmanager package");
    let out = run_ok(
        Command::new(amtool)
            .current_dir(repo_root())
            .args(["check-config", "stack/alertmanager.yml"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
    // amtool can fail: a route to a receiver that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "route:\n  receiver: nobody\nreceivers:\n  - name: webhook\n",
    )
    .unwrap();
    let out = Command::new(tool("amtool", "prometheus-alertmanager"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "amtool passed an undefined receiver");
}

/// The routing tree says what the issue asks for: severities routed, a cooldown per
/// severity (critical repeats soonest), grouping by target, warnings inhibited by a
/// critical alert on the same target, and Slack and e-mail left as commented examples.
#[test]
fn routes_follow_severity_and_inhibit_warnings_under_a_critical_alert() {
    let am = yaml("stack/alertmanager.yml");
    let route = &am["route"];
    let group_by = strings(&route["group_by"]);
    for l in ["alertname", "instance"] {
        assert!(group_by.iter().any(|g| g == l), "group_by lacks {l}");
    }
    let repeat = |severity: &str| -> Duration {
        let r = route["routes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| strings(&r["matchers"]).contains(&format!("severity=\"{severity}\"")))
            .unwrap_or_else(|| panic!("no route for severity {severity}"));
        duration(
            r["repeat_interval"]
                .as_str()
                .or(route["repeat_interval"].as_str())
                .unwrap(),
        )
    };
    assert!(repeat("critical") < repeat("warning") && repeat("warning") < repeat("info"));
    // Every severity the rules use has a route.
    let rules = yaml("stack/rules/alerts.yml");
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            if let Some(s) = r["labels"]["severity"].as_str() {
                repeat(s);
            }
        }
    }
    let inhibit = am["inhibit_rules"].as_sequence().unwrap();
    assert!(inhibit.iter().any(|r| {
        strings(&r["source_matchers"]).contains(&"severity=\"critical\"".to_owned())
            && strings(&r["equal"]) == ["instance"]
    }));
    let text = std::fs::read_to_string(repo_root().join("stack/alertmanager.yml")).unwrap();
    for example in ["# slack_configs:", "# email_configs:"] {
        assert!(text.contains(example), "no commented {example}");
    }
    // Prometheus sends to the compose service.
    let prom = yaml("stack/prometheus.yml");
    let targets = strings(&prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, ["alertmanager:9093"]);
}

#[test]
fn a_firing_rule_reaches_the_webhook_grouped_routed_and_inhibited() {
    let am_bin = tool(
        "prometheus-alertmanager",
        "Debian's prometheus-alertmanager package",
    );
    // The synthetic target and the webhook share one small HTTP server.
    let server = TestServer::start();
    let am_addr = free_addr();
    let dir = tempfile::tempdir().unwrap();

    // Our config as it is, with the webhook URLs pointing at the test.
    let mut am_cfg = yaml("stack/alertmanager.yml");
    for r in am_cfg["receivers"].as_sequence_mut().unwrap() {
        for w in r["webhook_configs"].as_sequence_mut().into_iter().flatten() {
            w["url"] = Value::from(format!("http://{}/alerts", server.addr));
        }
    }
    let am_path = dir.path().join("alertmanager.yml");
    std::fs::write(&am_path, serde_yaml_ng::to_string(&am_cfg).unwrap()).unwrap();
    let _am = KillOnDrop(
        Command::new(am_bin)
            .arg(format!("--config.file={}", am_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={am_addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-alertmanager"),
    );
    wait_for(Duration::from_secs(30), "alertmanager ready", || {
        matches!(http_get(am_addr, "/-/ready"), Ok((200, _)))
    });

    // stack/prometheus.yml's alerting block, the real rules, our synthetic target.
    let prom_cfg = yaml("stack/prometheus.yml");
    let mut alerting = prom_cfg["alerting"].clone();
    alerting["alertmanagers"][0]["static_configs"][0]["targets"] =
        Value::Sequence(vec![Value::from(am_addr.to_string())]);
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n{alerting}scrape_configs:\n  - job_name: synthetic\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n",
        rules = repo_root().join("stack/rules/alerts.yml").display(),
        alerting = serde_yaml_ng::to_string(&serde_yaml_ng::Mapping::from_iter([(
            Value::from("alerting"),
            alerting
        )]))
        .unwrap(),
        target = server.addr,
    );
    let _prom = Prometheus::start(&config);

    // node-a: Xid events on two GPUs, a warning each: one notification, grouped.
    // node-b: an Xid warning and uncorrected ECC errors (critical) on the same node:
    // the critical alert pages and the warning is inhibited.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen: Vec<J> = Vec::new();
    let find = |seen: &[J], alertname: &str, instance: &str| -> Option<J> {
        seen.iter()
            .find(|n| {
                n["status"] == "firing"
                    && n["groupLabels"]["alertname"] == alertname
                    && n["groupLabels"]["instance"] == instance
            })
            .cloned()
    };
    while find(&seen, "GpuXidErrors", "node-a").is_none()
        || find(&seen, "GpuEccUncorrectedErrors", "node-b").is_none()
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.notifications.recv_timeout(left) {
            Ok(n) => seen.push(n),
            Err(_) => panic!(
                "no notification for both alerts within 180 s; received {seen:#?}; alertmanager has {}",
                http_get(am_addr, "/api/v2/alerts")
                    .map(|r| r.1)
                    .unwrap_or_default()
            ),
        }
    }

    let xid = find(&seen, "GpuXidErrors", "node-a").unwrap();
    assert_eq!(xid["receiver"], "webhook", "{xid:#}");
    let alerts = xid["alerts"].as_array().unwrap();
    let gpus: BTreeSet<&str> = alerts
        .iter()
        .filter_map(|a| a["labels"]["hw_id"].as_str())
        .collect();
    assert_eq!(
        gpus,
        BTreeSet::from(["gpu0", "gpu1"]),
        "one notification for both GPUs: {xid:#}"
    );
    for a in alerts {
        assert_eq!(a["labels"]["severity"], "warning");
        assert_eq!(a["labels"]["nvidia_gpu_xid_code"], "48");
        let summary = a["annotations"]["summary"].as_str().unwrap_or_default();
        assert!(
            summary.starts_with("Xid 48 on GPU gpu") && summary.contains("node-a"),
            "{summary:?}"
        );
        assert!(a["annotations"]["description"].is_string());
    }
    assert_eq!(xid["commonLabels"]["severity"], "warning");

    let ecc = find(&seen, "GpuEccUncorrectedErrors", "node-b").unwrap();
    assert_eq!(ecc["receiver"], "webhook-critical", "{ecc:#}");
    assert_eq!(ecc["commonLabels"]["severity"], "critical");
    assert_eq!(ecc["alerts"][0]["labels"]["hw_id"], "gpu0");
    assert!(
        ecc["alerts"][0]["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("Uncorrected ECC errors") && s.contains("node-b")),
        "{ecc:#}"
    );

    // node-b's Xid warning is held back by its critical alert: Alertmanager reports it
    // suppressed by an inhibition, and no notification carried it.
    // (The state is set when the group flushes, so it is polled.)
    let mut held = J::Null;
    wait_for(
        Duration::from_secs(120),
        "node-b's Xid alert suppressed",
        || {
            let Ok((_, body)) = http_get(am_addr, "/api/v2/alerts") else {
                return false;
            };
            let all: J = serde_json::from_str(&body).unwrap_or_default();
            held = all
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| {
                    a["labels"]["alertname"] == "GpuXidErrors"
                        && a["labels"]["instance"] == "node-b"
                })
                .cloned()
                .unwrap_or_default();
            held["status"]["state"] == "suppressed"
        },
    );
    assert!(
        held["status"]["inhibitedBy"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{held:#}"
    );
    while let Ok(n) = server.notifications.try_recv() {
        seen.push(n);
    }
    assert!(
        find(&seen, "GpuXidErrors", "node-b").is_none(),
        "the inhibited warning was sent: {seen:#?}"
    );
    assert!(server.scrapes.load(Ordering::Relaxed) >= 2);
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

/// An Alertmanager duration (`30s`, `5m`, `4h`, `1d`).
fn duration(s: &str) -> Duration {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap());
    let n: u64 = n.parse().unwrap();
    Duration::from_secs(
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => panic!("unit {unit:?} in {s:?}"),
        },
    )
}

fn wait_for(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves the synthetic series on `GET /metrics` (the ECC counter grows by one per
/// scrape) and takes Alertmanager's notifications on `POST /alerts`.
struct TestServer {
    addr: SocketAddr,
    notifications: mpsc::Receiver<J>,
    scrapes: Arc<AtomicU64>,
}

impl TestServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let scrapes = Arc::new(AtomicU64::new(0));
        let count = scrapes.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let tx = tx.clone();
                let count = count.clone();
                std::thread::spawn(move || serve(conn, &tx, &count));
            }
        });
        Self {
            addr,
            notifications: rx,
            scrapes,
        }
    }
}

fn serve(conn: TcpStream, tx: &mpsc::Sender<J>, scrapes: &AtomicU64) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let reply = if request_line.starts_with("POST /alerts") {
        if let Ok(n) = serde_json::from_slice::<J>(&body) {
            let _ = tx.send(n);
        }
        String::new()
    } else if request_line.starts_with("GET /metrics") {
        let n = scrapes.fetch_add(1, Ordering::Relaxed);
        format!(
            "# TYPE nvidia_gpu_xid_events_total counter\n\
             nvidia_gpu_xid_events_total{{instance=\"node-a\",hw_id=\"gpu0\",nvidia_gpu_xid_code=\"48\"}} 1\n\
             nvidia_gpu_xid_events_total{{instance=\"node-a\",hw_id=\"gpu1\",nvidia_gpu_xid_code=\"48\"}} 1\n\
             nvidia_gpu_xid_events_total{{instance=\"node-b\",hw_id=\"gpu0\",nvidia_gpu_xid_code=\"48\"}} 1\n\
             # TYPE hw_errors_total counter\n\
             hw_errors_total{{instance=\"node-b\",hw_id=\"gpu0\",hw_type=\"gpu\",error_type=\"uncorrected\",nvidia_gpu_ecc_counter=\"volatile\"}} {n}\n"
        )
    } else {
        String::new()
    };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}
