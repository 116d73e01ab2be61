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
