//! Exemplars end to end on the pull path: a real Prometheus (Debian's 2.42, with
//! `--enable-feature=exemplar-storage`) scrapes the demo gateway's OpenMetrics
//! endpoint, and every exemplar `/api/v1/query_exemplars` returns names a trace
//! that the gateway exported to the OTLP sink.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{KillOnDrop, Prometheus, free_addr, http_get, urlencode};
use otel_instrument::testing::OtlpSink;

/// What the endpoint serves to a scraper that asks for OpenMetrics, as Prometheus does.
fn openmetrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        conn,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.contains(" # {"))
        .take(12)
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn prometheus_keeps_exemplars_that_name_exported_traces() {
    let sink = OtlpSink::start().unwrap();
    let (backend_addr, gateway_addr, gateway_metrics) = (free_addr(), free_addr(), free_addr());
    let demo = |bin: &str, service: &str| {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            // Not `warn`: the spans of #[monitored] calls (info) would be off,
            // and with them the exemplars.
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let _backend = KillOnDrop(
        demo(env!("CARGO_BIN_EXE_e2e-demo-backend"), "demo-backend")
            .env("DEMO_BACKEND_ADDR", backend_addr.to_string())
            .spawn()
            .expect("start demo-backend"),
    );
    let _gateway = KillOnDrop(
        demo(env!("CARGO_BIN_EXE_e2e-demo-gateway"), "demo-gateway")
            .env("DEMO_GATEWAY_ADDR", gateway_addr.to_string())
            .env("DEMO_BACKEND_URL", format!("http://{backend_addr}"))
            .env("DEMO_PROMETHEUS_ADDR", gateway_metrics.to_string())
            .spawn()
            .expect("start demo-gateway"),
    );
    let _load = KillOnDrop(
        demo(env!("CARGO_BIN_EXE_e2e-demo-load"), "demo-load")
            .env("DEMO_GATEWAY_URL", format!("http://{gateway_addr}"))
            .env("DEMO_LOAD_RATE", "50")
            .spawn()
            .expect("start demo-load"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(gateway_metrics, "/metrics"), Ok((200, _))) {
        assert!(Instant::now() < deadline, "no /metrics from the gateway");
        std::thread::sleep(Duration::from_millis(200));
    }
    let prom = Prometheus::start_with(
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: demo-gateway\n    static_configs:\n      - targets: ['{gateway_metrics}']\n"
        ),
        &["--enable-feature=exemplar-storage"],
    );
    let query = urlencode("function_calls_duration_seconds_bucket");
    let deadline = Instant::now() + Duration::from_secs(60);
    let exemplars: Vec<(String, f64)> = loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (status, body) = http_get(
            prom.addr,
            &format!(
                "/api/v1/query_exemplars?query={query}&start={}&end={}",
                now - 600,
                now + 60
            ),
        )
        .expect("query_exemplars");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status}: {e}: {body}"));
        assert_eq!(json["status"], "success", "{body}");
        let found: Vec<(String, f64)> = json["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["labels"]["trace_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    e["value"]
                        .as_str()
                        .unwrap_or("NaN")
                        .parse::<f64>()
                        .unwrap_or(f64::NAN),
                )
            })
            .collect();
        if found.len() >= 5 {
            break found;
        }
        if Instant::now() >= deadline {
            let targets = http_get(prom.addr, "/api/v1/targets").map(|r| r.1);
            let scraped = http_get(
                prom.addr,
                &format!("/api/v1/query?query={}", urlencode("function_calls_total")),
            )
            .map(|r| r.1);
            let _ = scraped;
            panic!(
                "Prometheus kept no exemplars from the gateway's OpenMetrics endpoint: {body}\ntargets: {targets:?}\nthe endpoint served: {}",
                openmetrics(gateway_metrics)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Every exemplar names a trace the sink received (spans reach it within the
    // batch delay; wait for the last ones).
    let wanted: BTreeSet<String> = exemplars.iter().map(|(t, _)| t.clone()).collect();
    let received = sink
        .wait_until(Duration::from_secs(20), |r| {
            let got: BTreeSet<String> = r.spans().iter().map(|s| hex(&s.span.trace_id)).collect();
            wanted.is_subset(&got)
        })
        .unwrap_or_else(|| {
            let got: BTreeSet<String> = sink
                .received()
                .spans()
                .iter()
                .map(|s| hex(&s.span.trace_id))
                .collect();
            panic!(
                "exemplars name traces the sink never received: {:?}",
                wanted.difference(&got).collect::<Vec<_>>()
            )
        });
    assert!(!received.spans().is_empty());
    for (trace, value) in &exemplars {
        assert_eq!(trace.len(), 32, "{trace}");
        assert!(value.is_finite() && *value >= 0.0, "{trace}: {value}");
    }
}
