//! The demo over the wire: `demo-load`, `demo-gateway` and `demo-backend` as
//! real processes, exporting to one in-process OTLP sink. One trace covers all
//! three with the right parents and kinds; a root that samples out leaves no
//! span anywhere; the slow handler, the error categories and the caller links
//! show in the spans and in `function.calls`/`function.calls.duration`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, Metric};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use otel_instrument::testing::{OtlpSink, Received, SpanRecord, attributes};

/// How long a process may take to start, a load run to finish, and the sink
/// to see what the processes export: generous, for a loaded 2-core machine.
const START: Duration = Duration::from_secs(60);
const RUN: Duration = Duration::from_secs(60);
const EXPORT: Duration = Duration::from_secs(60);

const GATEWAY: &str = "demo-gateway";
const BACKEND: &str = "demo-backend";
const LOAD: &str = "demo-load";
/// The gRPC method, as span name of both the gateway's client span and the
/// backend's server span.
const GET_ITEM_RPC: &str = "demo.v1.Inventory/GetItem";

/// A child process, killed on drop, whose stdout lines arrive on a channel.
struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(name: &'static str, bin: &str, sink: &OtlpSink, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())
            // Short batching and export intervals, so the test is quick.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_BLRP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            // Not `warn`: a `#[monitored]` span has level info, and its OTel
            // span follows the subscriber's maximum level (MONITORED.md, Limits).
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({bin}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { name, child, lines }
    }

    /// Waits for the `<name> listening on <addr>` line and returns the address.
    fn listening_on(&mut self) -> String {
        let prefix = format!("{} listening on ", self.name);
        let deadline = Instant::now() + START;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(&prefix) {
                        return addr.trim().to_owned();
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{} did not print {prefix:?} within {START:?} (exited: {status:?}); its stderr is above",
                        self.name
                    );
                }
            }
        }
    }

    /// Waits for the process to exit successfully; returns its stdout lines.
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + RUN;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {RUN:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let lines: Vec<String> = self.lines.try_iter().collect();
        assert!(
            status.success(),
            "{} failed ({status}); stdout:\n{}",
            self.name,
            lines.join("\n")
        );
        lines
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the load client made: `visit id=.. status=.. trace_id=..`.
#[derive(Debug, Clone)]
struct Visit {
    id: String,
    status: u16,
    trace_id: String,
}

fn visits(lines: &[String]) -> Vec<Visit> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("visit "))
        .map(|l| {
            let fields: BTreeMap<&str, &str> = l
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .collect();
            Visit {
                id: fields["id"].to_owned(),
                status: fields["status"].parse().unwrap(),
                trace_id: fields["trace_id"].to_owned(),
            }
        })
        .collect()
}

fn run_load(sink: &OtlpSink, gateway: &str, ids: &str, sampler: &str) -> Vec<Visit> {
    let count = ids.split(',').count().to_string();
    let load = Proc::start(
        LOAD,
        env!("CARGO_BIN_EXE_demo-load"),
        sink,
        &[
            ("DEMO_GATEWAY_URL", &format!("http://{gateway}")),
            ("DEMO_LOAD_IDS", ids),
            ("DEMO_LOAD_REQUESTS", &count),
            ("DEMO_LOAD_RATE", "50"),
            ("OTEL_TRACES_SAMPLER", sampler),
        ],
    );
    let visits = visits(&load.finish());
    assert_eq!(
        visits.len(),
        ids.split(',').count(),
        "one visit line per request: {visits:?}"
    );
    visits
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn service(s: &SpanRecord) -> &str {
    s.resource.get("service.name").map_or("", String::as_str)
}

/// The spans of one trace.
fn trace(r: &Received, trace_id: &str) -> Vec<SpanRecord> {
    r.spans()
        .into_iter()
        .filter(|s| hex(&s.span.trace_id) == trace_id)
        .collect()
}

fn find<'a>(spans: &'a [SpanRecord], svc: &str, name: &str) -> Option<&'a SpanRecord> {
    spans
        .iter()
        .find(|s| service(s) == svc && s.span.name == name)
}

fn get<'a>(spans: &'a [SpanRecord], svc: &str, name: &str) -> &'a SpanRecord {
    find(spans, svc, name).unwrap_or_else(|| {
        panic!(
            "no {svc} span {name:?} in the trace; it has {:?}",
            summary(spans)
        )
    })
}

fn summary(spans: &[SpanRecord]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{}:{}", service(s), s.span.name))
        .collect()
}

/// The spans every sampled request leaves, by service and name.
fn chain(id: &str) -> Vec<(&'static str, &'static str)> {
    let mut chain = vec![
        (LOAD, "visit"),
        (LOAD, "GET"),
        (GATEWAY, "GET /items/{id}"),
        (GATEWAY, "show_item"),
        (GATEWAY, GET_ITEM_RPC),
        (BACKEND, GET_ITEM_RPC),
        (BACKEND, "get_item"),
        (BACKEND, "lookup_catalogue"),
    ];
    if id != demo::ids::MISSING {
        chain.push((BACKEND, "read_stock"));
    }
    if id != demo::ids::MISSING && id != demo::ids::OFFLINE {
        chain.push((GATEWAY, "record_view"));
    }
    chain
}

/// The points of `name` that `svc` reported, in any export.
fn metric_reports(r: &Received, svc: &str, name: &str) -> Vec<Metric> {
    r.metrics()
        .into_iter()
        .filter(|m| {
            m.metric.name == name && m.resource.get("service.name").map(String::as_str) == Some(svc)
        })
        .map(|m| m.metric)
        .collect()
}

fn sum_points(m: &Metric) -> Vec<(BTreeMap<String, String>, f64)> {
    let Some(Data::Sum(s)) = &m.data else {
        return Vec::new();
    };
    s.data_points
        .iter()
        .map(|p| {
            let v = match p.value {
                Some(Value::AsInt(i)) => i as f64,
                Some(Value::AsDouble(d)) => d,
                None => 0.0,
            };
            (attributes(&p.attributes), v)
        })
        .collect()
}

fn histogram_points(m: &Metric) -> Vec<(BTreeMap<String, String>, HistogramDataPoint)> {
    let Some(Data::Histogram(h)) = &m.data else {
        return Vec::new();
    };
    h.data_points
        .iter()
        .map(|p| (attributes(&p.attributes), p.clone()))
        .collect()
}

fn has_labels(attrs: &BTreeMap<String, String>, labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .all(|(k, v)| attrs.get(*k).map(String::as_str) == Some(*v))
}

/// Whether `svc` counted a call of `function` with these labels (and the
/// value of the largest such count).
fn calls(r: &Received, svc: &str, function: &str, labels: &[(&str, &str)]) -> f64 {
    metric_reports(r, svc, "function.calls")
        .iter()
        .flat_map(sum_points)
        .filter(|(a, _)| {
            a.get("function").map(String::as_str) == Some(function) && has_labels(a, labels)
        })
        .map(|(_, v)| v)
        .fold(0.0, f64::max)
}

/// How many calls of `function` took over 50 ms, by `svc`'s
/// `function.calls.duration` (the largest count in any report).
fn slow_calls(r: &Received, svc: &str, function: &str) -> u64 {
    metric_reports(r, svc, "function.calls.duration")
        .iter()
        .flat_map(histogram_points)
        .filter(|(a, _)| a.get("function").map(String::as_str) == Some(function))
        .map(|(_, p)| {
            // Bucket i holds (bounds[i-1], bounds[i]]: count those above 50 ms.
            let first = p
                .explicit_bounds
                .iter()
                .position(|b| *b >= 0.05)
                .map_or(p.bucket_counts.len(), |i| i + 1);
            p.bucket_counts.iter().skip(first).sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

/// The expected error points on `function.calls`: (service, function,
/// error.category, error.type).
const ERROR_POINTS: [(&str, &str, &str, &str); 7] = [
    (BACKEND, "get_item", "not_found", "NOT_FOUND"),
    (BACKEND, "get_item", "unavailable", "UNAVAILABLE"),
    (BACKEND, "read_stock", "unavailable", "Offline"),
    (GATEWAY, "show_item", "not_found", "NotFound"),
    (GATEWAY, "show_item", "unavailable", "Unavailable"),
    (LOAD, "visit", "not_found", "404"),
    (LOAD, "visit", "unavailable", "503"),
];

/// The caller links on `function.calls`: (service, callee, caller).
const CALLER_POINTS: [(&str, &str, &str); 3] = [
    (BACKEND, "lookup_catalogue", "get_item"),
    (BACKEND, "read_stock", "get_item"),
    // Spawned with monitored::spawn: still the handler's callee.
    (GATEWAY, "record_view", "show_item"),
];

/// What is still missing from the sink for the sampled visits.
fn missing(r: &Received, sampled: &[Visit]) -> Vec<String> {
    let mut out = Vec::new();
    for v in sampled {
        let spans = trace(r, &v.trace_id);
        for (svc, name) in chain(&v.id) {
            if find(&spans, svc, name).is_none() {
                out.push(format!("span {svc}:{name} of the {} visit", v.id));
            }
        }
    }
    for (svc, function, category, error_type) in ERROR_POINTS {
        let labels = [
            ("result", "error"),
            ("error.category", category),
            ("error.type", error_type),
        ];
        if calls(r, svc, function, &labels) < 1.0 {
            out.push(format!("function.calls {svc}:{function} {labels:?}"));
        }
    }
    for (svc, function, caller) in CALLER_POINTS {
        if calls(r, svc, function, &[("caller.function", caller)]) < 1.0 {
            out.push(format!(
                "function.calls {svc}:{function} caller.function={caller}"
            ));
        }
    }
    if slow_calls(r, BACKEND, "get_item") < 1 {
        out.push(format!(
            "function.calls.duration {BACKEND}:get_item with a call over 50 ms"
        ));
    }
    // a100 twice (sampled and not), slow once.
    if calls(r, GATEWAY, "show_item", &[("result", "ok")]) < 3.0 {
        out.push(format!(
            "function.calls {GATEWAY}:show_item result=ok 3 times"
        ));
    }
    out
}

fn parent_of<'a>(child: &SpanRecord, parent: &'a SpanRecord) -> &'a SpanRecord {
    assert_eq!(
        hex(&child.span.parent_span_id),
        hex(&parent.span.span_id),
        "{}:{} should be the child of {}:{}",
        service(child),
        child.span.name,
        service(parent),
        parent.span.name
    );
    parent
}

fn kind(s: &SpanRecord, expected: SpanKind) {
    assert_eq!(
        s.span.kind,
        expected as i32,
        "kind of {}:{}",
        service(s),
        s.span.name
    );
}

fn attr(s: &SpanRecord, key: &str) -> Option<String> {
    s.attributes().get(key).cloned()
}

fn is_error(s: &SpanRecord) -> bool {
    s.span.status.as_ref().map(|st| st.code) == Some(SpanStatus::Error as i32)
}

fn duration(s: &SpanRecord) -> Duration {
    Duration::from_nanos(
        s.span
            .end_time_unix_nano
            .saturating_sub(s.span.start_time_unix_nano),
    )
}

#[test]
fn the_demo_traces_and_measures_a_request_across_three_processes() {
    let started = Instant::now();
    let sink = OtlpSink::start().expect("start the OTLP sink");

    let mut backend = Proc::start(
        BACKEND,
        env!("CARGO_BIN_EXE_demo-backend"),
        &sink,
        &[("DEMO_BACKEND_ADDR", "127.0.0.1:0")],
    );
    let backend_addr = backend.listening_on();
    let mut gateway = Proc::start(
        GATEWAY,
        env!("CARGO_BIN_EXE_demo-gateway"),
        &sink,
        &[
            ("DEMO_GATEWAY_ADDR", "127.0.0.1:0"),
            ("DEMO_BACKEND_URL", &format!("http://{backend_addr}")),
        ],
    );
    let gateway_addr = gateway.listening_on();

    // A root that samples out, while the services keep parentbased_always_on.
    let unsampled = run_load(&sink, &gateway_addr, "a100", "always_off");
    assert_eq!(
        unsampled[0].status, 200,
        "the unsampled request is served all the same"
    );
    // Then sampled requests: found, not found, unavailable, slow.
    let ids = [
        "a100",
        demo::ids::MISSING,
        demo::ids::OFFLINE,
        demo::ids::SLOW,
    ];
    let sampled = run_load(
        &sink,
        &gateway_addr,
        &ids.join(","),
        "parentbased_always_on",
    );
    let by_id: BTreeMap<&str, &Visit> = sampled.iter().map(|v| (v.id.as_str(), v)).collect();
    let expected_status = [
        ("a100", 200),
        ("missing", 404),
        ("offline", 503),
        ("slow", 200),
    ];
    for (id, status) in expected_status {
        assert_eq!(by_id[id].status, status, "HTTP status of the {id} visit");
    }

    let r = sink.wait_until(EXPORT, |r| missing(r, &sampled).is_empty());
    let r = r.unwrap_or_else(|| {
        let r = sink.received();
        let got: Vec<String> = r
            .spans()
            .iter()
            .map(|s| {
                format!(
                    "{}:{} trace {}",
                    service(s),
                    s.span.name,
                    hex(&s.span.trace_id)
                )
            })
            .collect();
        panic!(
            "within {EXPORT:?} the sink did not get:\n  {}\nvisits: {sampled:?}\nit got:\n  {}",
            missing(&r, &sampled).join("\n  "),
            got.join("\n  ")
        )
    });

    // 1. One trace id covers the three processes, parent by parent.
    let ok = trace(&r, &by_id["a100"].trace_id);
    let services: BTreeSet<&str> = ok.iter().map(service).collect();
    assert_eq!(
        services,
        BTreeSet::from([LOAD, GATEWAY, BACKEND]),
        "{:?}",
        summary(&ok)
    );
    let visit = get(&ok, LOAD, "visit");
    assert!(
        visit.span.parent_span_id.is_empty(),
        "the load client's visit is the trace's root"
    );
    kind(visit, SpanKind::Internal);
    let load_client = get(&ok, LOAD, "GET");
    kind(load_client, SpanKind::Client);
    parent_of(load_client, visit);
    let gw_server = get(&ok, GATEWAY, "GET /items/{id}");
    kind(gw_server, SpanKind::Server);
    parent_of(gw_server, load_client);
    assert_eq!(
        attr(gw_server, "http.route").as_deref(),
        Some("/items/{id}")
    );
    assert_eq!(
        attr(gw_server, "http.response.status_code").as_deref(),
        Some("200")
    );
    let gw_handler = get(&ok, GATEWAY, "show_item");
    kind(gw_handler, SpanKind::Internal);
    parent_of(gw_handler, gw_server);
    let gw_client = get(&ok, GATEWAY, GET_ITEM_RPC);
    kind(gw_client, SpanKind::Client);
    parent_of(gw_client, gw_handler);
    assert_eq!(attr(gw_client, "rpc.system").as_deref(), Some("grpc"));
    let be_server = get(&ok, BACKEND, GET_ITEM_RPC);
    kind(be_server, SpanKind::Server);
    parent_of(be_server, gw_client);
    assert_eq!(
        attr(be_server, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let be_handler = get(&ok, BACKEND, "get_item");
    kind(be_handler, SpanKind::Internal);
    parent_of(be_handler, be_server);
    parent_of(get(&ok, BACKEND, "lookup_catalogue"), be_handler);
    parent_of(get(&ok, BACKEND, "read_stock"), be_handler);
    // The spawned audit task stays in the request's trace.
    parent_of(get(&ok, GATEWAY, "record_view"), gw_handler);

    // 2. The root that sampled out left no span in any process. Each process
    //    exports in order, and the sampled requests came after it.
    let leaked = summary(&trace(&r, &unsampled[0].trace_id));
    assert!(
        leaked.is_empty(),
        "an unsampled root's trace was exported: {leaked:?}"
    );
    // Every call is counted, sampled or not: `missing` waited for show_item's
    // three successes (a100 twice, slow once).

    // 3. The slow handler: its span and its duration histogram.
    let slow = trace(&r, &by_id["slow"].trace_id);
    let slow_handler = get(&slow, BACKEND, "get_item");
    assert!(
        duration(slow_handler) >= Duration::from_millis(50),
        "the slow get_item span lasted {:?}",
        duration(slow_handler)
    );
    let slow_calls = slow_calls(&r, BACKEND, "get_item");
    assert!(
        slow_calls >= 1,
        "get_item's duration histogram has no call over 50 ms"
    );
    let max = metric_reports(&r, BACKEND, "function.calls.duration")
        .iter()
        .flat_map(histogram_points)
        .filter(|(a, _)| a.get("function").map(String::as_str) == Some("get_item"))
        .filter_map(|(_, p)| p.max)
        .fold(0.0, f64::max);
    assert!(max >= 0.05, "get_item's largest duration is {max} s");

    // 4. NOT_FOUND and 503 in the right category and type, on spans and metrics.
    let not_found = trace(&r, &by_id["missing"].trace_id);
    let be_handler = get(&not_found, BACKEND, "get_item");
    assert_eq!(
        attr(be_handler, "error.category").as_deref(),
        Some("not_found")
    );
    assert_eq!(attr(be_handler, "error.type").as_deref(), Some("NOT_FOUND"));
    assert_eq!(
        attr(
            get(&not_found, BACKEND, GET_ITEM_RPC),
            "rpc.grpc.status_code"
        )
        .as_deref(),
        Some("5")
    );
    let gw_handler = get(&not_found, GATEWAY, "show_item");
    assert_eq!(
        attr(gw_handler, "error.category").as_deref(),
        Some("not_found")
    );
    assert_eq!(
        attr(
            get(&not_found, GATEWAY, "GET /items/{id}"),
            "http.response.status_code"
        )
        .as_deref(),
        Some("404")
    );

    let unavailable = trace(&r, &by_id["offline"].trace_id);
    let gw_handler = get(&unavailable, GATEWAY, "show_item");
    assert!(is_error(gw_handler), "the 503 handler span is an error");
    assert_eq!(
        attr(gw_handler, "error.category").as_deref(),
        Some("unavailable")
    );
    assert_eq!(
        attr(gw_handler, "error.type").as_deref(),
        Some("Unavailable")
    );
    let gw_server = get(&unavailable, GATEWAY, "GET /items/{id}");
    assert_eq!(
        attr(gw_server, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert!(is_error(gw_server), "a 503 fails the server span");
    assert_eq!(
        attr(
            get(&unavailable, BACKEND, GET_ITEM_RPC),
            "rpc.grpc.status_code"
        )
        .as_deref(),
        Some("14")
    );
    let read_stock = get(&unavailable, BACKEND, "read_stock");
    assert_eq!(attr(read_stock, "error.type").as_deref(), Some("Offline"));
    // ERROR_POINTS were waited for; the 404 is not counted as unavailable.
    assert_eq!(
        calls(
            &r,
            GATEWAY,
            "show_item",
            &[("result", "error"), ("error.category", "unavailable")]
        ),
        1.0
    );

    // 5. caller.function links a handler to what it calls (waited for above);
    //    a handler called from another process is a local root: no caller.
    let handler_points: Vec<_> = metric_reports(&r, BACKEND, "function.calls")
        .iter()
        .flat_map(sum_points)
        .filter(|(a, _)| a.get("function").map(String::as_str) == Some("get_item"))
        .collect();
    assert!(!handler_points.is_empty());
    for (a, _) in &handler_points {
        assert!(
            !a.contains_key("caller.function"),
            "get_item is a local root: {a:?}"
        );
    }

    drop((gateway, backend));
    eprintln!("e2e: {:?}", started.elapsed());
}
