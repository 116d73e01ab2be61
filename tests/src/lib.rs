//! Helpers for the workspace-level end-to-end checks: repository paths, external
//! tools (promtool, prometheus, check-jsonschema, tsc) and a real Prometheus
//! server that is stopped when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Reads a YAML file of the repository into a generic value.
pub fn yaml(rel: &str) -> serde_yaml_ng::Value {
    let path = repo_root().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// Finds an external tool or fails with the package that provides it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&dirs) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run ./test.sh, which installs {package}");
}

/// Runs a command and returns its output, failing with stdout/stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free TCP port on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
}

/// A minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus server on 127.0.0.1 with a temporary data directory.
#[derive(Debug)]
pub struct Prometheus {
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with the given configuration text and waits until it is ready.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// [`start`](Self::start) with extra flags (`--enable-feature=exemplar-storage`).
    pub fn start_with(config: &str, flags: &[&str]) -> Self {
        let bin = tool("prometheus", "Debian's prometheus package");
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write config");
        let addr = free_addr();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prom = Self {
            addr,
            _child: KillOnDrop(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prom
    }

    /// Evaluates an instant query; returns the number of series or samples in the result.
    ///
    /// # Panics
    /// When the query is rejected.
    pub fn query_len(&self, expr: &str) -> usize {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", urlencode(expr)),
        )
        .expect("query prometheus");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("bad response ({status}) for {expr}: {e}: {body}"));
        assert_eq!(json["status"], "success", "query {expr} failed: {body}");
        match &json["data"]["result"] {
            serde_json::Value::Array(a) => a.len(),
            // scalar or string results are a single value.
            serde_json::Value::Null => 0,
            _ => 1,
        }
    }

    /// Waits until every scrape target is up.
    pub fn wait_targets_up(&self, jobs: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for job in jobs {
            while self.query_len(&format!("up{{job=\"{job}\"}} == 1")) == 0 {
                assert!(Instant::now() < deadline, "scrape job {job} never came up");
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// Every key path of a YAML document (`a.b.c`; list items share their list's path).
pub fn key_paths(
    v: &serde_yaml_ng::Value,
    prefix: &str,
    out: &mut std::collections::BTreeSet<String>,
) {
    use serde_yaml_ng::Value;
    match v {
        Value::Mapping(m) => {
            for (k, x) in m {
                let k = k
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{k:?}"));
                let path = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(path.clone());
                key_paths(x, &path, out);
            }
        }
        Value::Sequence(s) => {
            for x in s {
                key_paths(x, prefix, out);
            }
        }
        _ => {}
    }
}

/// Keys of the Collector components our configs use (the stack's and the Kubernetes
/// examples'), as the pinned Collector's sources define them: opentelemetry-collector
/// and -contrib v0.157.0, the `mapstructure` tags of each component's config struct
/// or its generated `config.schema.yaml`. Jaeger 2.19's own components (its config is
/// a Collector config too) are checked against jaegertracing/jaeger v2.19.0
/// (`cmd/jaeger/config-opensearch.yaml`, `internal/storage/elasticsearch/config`).
/// A key added to a config must be looked up there and added here.
pub const COLLECTOR_0_157_KEYS: &[(&str, &[&str])] = &[
    (
        "otlp",
        &[
            "protocols",
            "protocols.grpc",
            "protocols.grpc.endpoint",
            "protocols.http",
            "protocols.http.endpoint",
        ],
    ),
    ("webhookevent", &["endpoint", "path", "health_path"]),
    (
        "memory_limiter",
        &["check_interval", "limit_mib", "spike_limit_mib"],
    ),
    ("batch", &[]),
    // processor/transformprocessor/config.go (Config) and internal/common
    // (ContextStatements: context, conditions, statements, error_mode).
    (
        "transform",
        &[
            "error_mode",
            "flatten_data",
            "trace_statements",
            "trace_statements.context",
            "trace_statements.conditions",
            "trace_statements.statements",
            "trace_statements.error_mode",
            "metric_statements",
            "metric_statements.context",
            "metric_statements.conditions",
            "metric_statements.statements",
            "metric_statements.error_mode",
            "log_statements",
            "log_statements.context",
            "log_statements.conditions",
            "log_statements.statements",
            "log_statements.error_mode",
        ],
    ),
    (
        "resource",
        &[
            "attributes",
            "attributes.key",
            "attributes.value",
            "attributes.action",
        ],
    ),
    (
        "tail_sampling",
        &[
            "decision_wait",
            "num_traces",
            "expected_new_traces_per_sec",
            "policies",
            "policies.name",
            "policies.type",
            "policies.status_code",
            "policies.status_code.status_codes",
            "policies.latency",
            "policies.latency.threshold_ms",
            "policies.boolean_attribute",
            "policies.boolean_attribute.key",
            "policies.boolean_attribute.value",
            "policies.probabilistic",
            "policies.probabilistic.sampling_percentage",
        ],
    ),
    (
        "otlp_grpc",
        &[
            "endpoint",
            "tls",
            "tls.insecure",
            "sending_queue",
            "sending_queue.enabled",
            "sending_queue.storage",
            "sending_queue.sizer",
            "sending_queue.queue_size",
            "retry_on_failure",
            "retry_on_failure.enabled",
            "retry_on_failure.max_interval",
            "retry_on_failure.max_elapsed_time",
        ],
    ),
    (
        "otlp_http",
        &[
            "endpoint",
            "tls",
            "tls.insecure",
            "sending_queue",
            "sending_queue.enabled",
            "sending_queue.storage",
            "sending_queue.sizer",
            "sending_queue.queue_size",
            "retry_on_failure",
            "retry_on_failure.enabled",
            "retry_on_failure.max_interval",
            "retry_on_failure.max_elapsed_time",
        ],
    ),
    (
        "loadbalancing",
        &[
            "routing_key",
            "protocol",
            "protocol.otlp",
            "protocol.otlp.tls",
            "protocol.otlp.tls.insecure",
            "sending_queue",
            "sending_queue.enabled",
            "sending_queue.storage",
            "sending_queue.sizer",
            "sending_queue.queue_size",
            "retry_on_failure",
            "retry_on_failure.enabled",
            "retry_on_failure.max_elapsed_time",
            "resolver",
            "resolver.dns",
            "resolver.dns.hostname",
            "resolver.dns.port",
        ],
    ),
    (
        "prometheusremotewrite",
        &[
            "endpoint",
            "resource_to_telemetry_conversion",
            "resource_to_telemetry_conversion.enabled",
            "retry_on_failure",
            "retry_on_failure.enabled",
            "retry_on_failure.max_elapsed_time",
        ],
    ),
    ("health_check", &["endpoint"]),
    (
        "file_storage",
        &[
            "directory",
            "create_directory",
            "timeout",
            "compaction",
            "compaction.on_start",
            "compaction.on_rebound",
            "compaction.directory",
        ],
    ),
    // Jaeger 2.19's components.
    ("healthcheckv2", &["use_v2", "http", "http.endpoint"]),
    ("jaeger_query", &["storage", "storage.traces"]),
    (
        "jaeger_storage",
        &[
            "backends",
            "backends.*",
            "backends.*.opensearch",
            "backends.*.opensearch.server_urls",
            "backends.*.opensearch.indices",
            "backends.*.opensearch.indices.index_prefix",
            "backends.*.opensearch.indices.spans",
            "backends.*.opensearch.indices.spans.shards",
            "backends.*.opensearch.indices.spans.replicas",
            "backends.*.opensearch.indices.services",
            "backends.*.opensearch.indices.services.shards",
            "backends.*.opensearch.indices.services.replicas",
        ],
    ),
    ("jaeger_storage_exporter", &["trace_storage"]),
];

/// Checks the components of a Collector config (receivers, processors, exporters,
/// extensions) against [`COLLECTOR_0_157_KEYS`]; returns how many keys it checked.
///
/// # Panics
/// On a component or key that is not in the list, naming it.
pub fn check_collector_keys(what: &str, col: &serde_yaml_ng::Value) -> usize {
    let mut checked = 0;
    for section in ["receivers", "processors", "exporters", "extensions"] {
        for (id, cfg) in col[section].as_mapping().into_iter().flatten() {
            let id = id.as_str().unwrap_or_default();
            let kind = id.split('/').next().unwrap_or_default();
            let known = COLLECTOR_0_157_KEYS
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, keys)| *keys)
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: {section}.{id}: component {kind} not checked against its sources"
                    )
                });
            let mut paths = std::collections::BTreeSet::new();
            key_paths(cfg, "", &mut paths);
            for p in paths {
                // Names the user picks (a storage backend's) stand as `*`.
                let generic = match kind {
                    "jaeger_storage" => {
                        let mut parts: Vec<&str> = p.split('.').collect();
                        if parts.len() > 1 {
                            parts[1] = "*";
                        }
                        parts.join(".")
                    }
                    _ => p.clone(),
                };
                assert!(
                    known.contains(&generic.as_str()),
                    "{what}: {section}.{id}: {p} is not a key of {kind} in the pinned version (or not yet checked)"
                );
                checked += 1;
            }
        }
    }
    checked
}
