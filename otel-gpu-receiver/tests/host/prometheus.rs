use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Running, free_port, http_get, poll, start_agent};

/// Fails with a clear message when a Debian package's binary is missing.
fn require(binary: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{binary}` is not installed: this test needs Debian's `{package}` package \
         (apt-get install -y {package}; ./test.sh installs it)"
    );
}

fn start_prometheus(dir: &Path, target: SocketAddr, port: u16) -> Running {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: otel-gpu-receiver\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    Running::spawn(cmd)
}

/// `promtool query instant` for `query`: its output when it returned a series.
fn query(server: &str, query: &str) -> Option<String> {
    let out = Command::new("promtool")
        .args(["query", "instant", server, query])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && text.contains("=>")).then_some(text)
}

#[test]
fn a_real_prometheus_scrapes_the_translated_names_from_the_pull_endpoint() {
    require("prometheus", "prometheus");
    require("promtool", "prometheus");
    let agent_port = free_port();
    let agent_addr: SocketAddr = ([127, 0, 0, 1], agent_port).into();
    let mut agent = start_agent(
        &[
            "--interval",
            "1s",
            "--no-otlp",
            "--prometheus",
            &agent_addr.to_string(),
        ],
        &[],
    );
    let health = poll(Duration::from_secs(20), || http_get(agent_addr, "/healthz"));
    assert_eq!(
        health.map(|(s, _)| s),
        Some(200),
        "/healthz: {}",
        agent.stderr()
    );
    // The first cycle's snapshot appears right after start.
    let body = poll(Duration::from_secs(20), || {
        http_get(agent_addr, "/metrics")
            .filter(|(s, b)| *s == 200 && b.contains("system_cpu_time_seconds_total{"))
    });
    assert!(
        body.is_some(),
        "/metrics never served system_cpu_time_seconds_total"
    );

    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    let mut prom = start_prometheus(dir.path(), agent_addr, prom_port);
    let server = format!("http://127.0.0.1:{prom_port}");
    for name in ["system_cpu_utilization_ratio", "system_memory_usage_bytes"] {
        let q = format!("{name}{{job=\"otel-gpu-receiver\"}}");
        let got = poll(Duration::from_secs(60), || query(&server, &q));
        let text = got.unwrap_or_else(|| {
            panic!(
                "Prometheus never returned {name}; prometheus alive: {}, agent alive: {}\n{}",
                prom.alive(),
                agent.alive(),
                prom.stderr()
            )
        });
        assert!(text.contains(name), "{text}");
        assert!(text.contains("job=\"otel-gpu-receiver\""), "{text}");
    }
    // Counters keep their `_total` and the unit suffix.
    let got = poll(Duration::from_secs(20), || {
        query(&server, "system_cpu_time_seconds_total")
    });
    assert!(got.is_some(), "system_cpu_time_seconds_total not found");
}

/// GET `path` with extra request headers over HTTP/1.0: (status, response head, raw body).
fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    s.write_all(format!("{req}\r\n").as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, buf[split + 4..].to_vec())
}

#[test]
fn the_endpoint_negotiates_openmetrics_and_gzip_and_falls_back_to_plain_text() {
    use std::io::Read as _;
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let agent = start_agent(
        &[
            "--interval",
            "1s",
            "--no-otlp",
            "--prometheus",
            &addr.to_string(),
        ],
        &[],
    );
    let ready = poll(Duration::from_secs(20), || {
        http_get(addr, "/metrics").filter(|(s, b)| *s == 200 && b.contains("system_cpu_time"))
    });
    assert!(ready.is_some(), "no /metrics: {}", agent.stderr());

    // What Prometheus sends: OpenMetrics preferred, gzip accepted.
    let (status, head, body) = get_with(
        addr,
        "/metrics",
        &[
            (
                "Accept",
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            ("Accept-Encoding", "gzip"),
        ],
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(head.contains("content-encoding: gzip"), "{head}");
    let mut om = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut om)
        .expect("a gzip body");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE system_cpu_time_seconds counter\n"),
        "{om}"
    );
    assert!(om.contains("\nsystem_cpu_time_seconds_total{"), "{om}");

    // A malformed Accept and gzip refused: plain text, not compressed.
    for headers in [
        vec![
            ("Accept", "application/openmetrics-text;q=banana"),
            ("Accept-Encoding", "gzip;q=0"),
        ],
        vec![
            ("Accept", "application/openmetrics-text; ü"),
            ("Accept-Encoding", "br, gzip;q=zero"),
        ],
        vec![],
    ] {
        let (status, head, body) = get_with(addr, "/metrics", &headers);
        assert_eq!(status, 200, "{headers:?}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{headers:?}: {head}"
        );
        assert!(!head.contains("content-encoding"), "{headers:?}: {head}");
        let text = String::from_utf8(body).expect("plain text");
        assert!(text.contains("# TYPE system_cpu_time_seconds_total counter\n"));
        assert!(!text.contains("# EOF"));
    }
}

/// Reads until the server closes the connection; false if it is still open at the
/// (generous) deadline.
fn closed_by_agent(mut s: std::net::TcpStream) -> bool {
    use std::io::Read as _;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn idle_and_slowloris_connections_past_the_cap_do_not_stop_scrapes() {
    use std::io::{Read as _, Write as _};
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut agent = start_agent(
        &[
            "--interval",
            "1s",
            "--no-otlp",
            "--prometheus",
            &addr.to_string(),
        ],
        &[],
    );
    let body = poll(Duration::from_secs(20), || {
        http_get(addr, "/metrics").filter(|(s, b)| *s == 200 && b.contains("system_cpu_time"))
    });
    assert!(
        body.is_some(),
        "/metrics never answered: {}",
        agent.stderr()
    );
    let rss_before = crate::common::rss_bytes(agent.pid());

    // 80 connections against a cap of 64: half send nothing, half a head that never
    // ends (a line at a time).
    let mut attackers = Vec::new();
    for i in 0..80 {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: 1\r\n")
                .unwrap();
        }
        attackers.push(s);
    }
    // A well-behaved scrape with Prometheus's default timeout waits behind them for the
    // agent's 10 s header timeout at most; the deadline here is far longer.
    for path in ["/healthz", "/metrics"] {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(
            text.split_whitespace().nth(1),
            Some("200"),
            "{path}: {text:.80}"
        );
    }
    // Every attacker is closed by the agent, which stays up, without growing.
    for s in attackers {
        assert!(
            closed_by_agent(s),
            "an idle or slowloris connection stayed open"
        );
    }
    assert!(agent.alive(), "{}", agent.stderr());
    let grown = crate::common::rss_bytes(agent.pid()).saturating_sub(rss_before);
    assert!(
        grown < 32 << 20,
        "the agent's RSS grew by {} MiB",
        grown >> 20
    );
    // And counted: every one of the 80 ended in a header timeout.
    let counted = poll(Duration::from_secs(20), || {
        let (_, body) = http_get(addr, "/metrics")?;
        body.lines()
            .find(|l| {
                l.starts_with("otel_gpu_receiver_http_connections_closed_total{")
                    && l.contains("reason=\"http_error\"")
            })?
            .rsplit(' ')
            .next()?
            .parse::<f64>()
            .ok()
            .filter(|n| *n >= 80.0)
    });
    assert!(
        counted.is_some(),
        "the closed connections are not counted in /metrics"
    );
}
