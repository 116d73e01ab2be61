//! otel-instrument setup against the real OTLP wire (an in-process OtlpSink).

mod monitored_common;

use monitored_common::{closed_port, env, serial};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use otel_instrument::Telemetry;
use otel_instrument::config::Signal;
use otel_instrument::testing::{OtlpSink, Received, SpanRecord};
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(10);

fn sum_value(r: &Received, name: &str, attr: Option<(&str, &str)>) -> Option<f64> {
    let m = r.last_metric(name)?;
    let points: Vec<_> = match m.metric.data? {
        Data::Sum(s) => s.data_points,
        Data::Gauge(g) => g.data_points,
        _ => return None,
    };
    let mut total = None;
    for p in points {
        let attrs = otel_instrument::testing::attributes(&p.attributes);
        if let Some((k, v)) = attr
            && attrs.get(k).map(String::as_str) != Some(v)
        {
            continue;
        }
        let v = match p.value? {
            opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i) => i as f64,
            opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d) => d,
        };
        *total.get_or_insert(0.0) += v;
    }
    total
}

fn quickstart_binary() -> std::path::PathBuf {
    // cargo test builds examples next to the test binaries: target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples")
        .join(format!("quickstart{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn quickstart_spans_and_metrics_arrive_with_the_crate_as_service() {
    let sink = OtlpSink::start().unwrap();
    let bin = quickstart_binary();
    assert!(
        bin.exists(),
        "{} is missing; run through cargo test",
        bin.display()
    );
    let out = std::process::Command::new(&bin)
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=ci,team=gpu%20infra,host.name=ci-host",
        )
        .env("RUST_LOG", "info")
        .env("AUTOMETRICS_COMMIT", "0123abc")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quickstart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The guard flushed before exit, so everything is already here.
    let got = sink.received();
    let spans = got.spans();
    assert!(!spans.is_empty(), "no spans arrived");
    let res = &spans[0].resource;
    assert_eq!(
        res.get("service.name").map(String::as_str),
        Some("otel-instrument")
    );
    assert_eq!(
        res.get("service.version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        res.get("deployment.environment.name").map(String::as_str),
        Some("ci")
    );
    assert_eq!(res.get("team").map(String::as_str), Some("gpu infra"));
    // Detected attributes, with OTEL_RESOURCE_ATTRIBUTES winning over detection.
    assert_eq!(res.get("host.name").map(String::as_str), Some("ci-host"));
    let instance = res.get("service.instance.id").expect("service.instance.id");
    assert_eq!(instance.len(), 36, "a UUID: {instance}");
    assert_eq!(instance.as_bytes()[14], b'4', "version 4: {instance}");
    assert!(
        res.get("process.pid")
            .is_some_and(|p| p.parse::<u32>().is_ok_and(|p| p > 0))
    );
    assert_eq!(
        res.get("os.type").map(String::as_str),
        Some(std::env::consts::OS)
    );
    assert!(res.contains_key("host.arch") && res.contains_key("process.runtime.name"));
    let failed: Vec<_> = spans
        .iter()
        .filter(|s| s.span.status.as_ref().map(|st| st.code) == Some(StatusCode::Error as i32))
        .collect();
    assert!(
        !failed.is_empty(),
        "the failing operation's span must have status Error"
    );
    let ok = spans
        .iter()
        .filter(|s| {
            s.span
                .status
                .as_ref()
                .is_none_or(|st| st.code != StatusCode::Error as i32)
        })
        .count();
    assert!(ok >= 1, "the successful work must export spans too");
    let metrics = got.metrics();
    assert!(!metrics.is_empty(), "no metrics arrived");
    // Autometrics' build_info: 1, with the version and commit.
    let build_info = got.last_metric("build_info").expect("build_info");
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Gauge(g)) =
        build_info.metric.data
    else {
        panic!("build_info must be a gauge");
    };
    let point = &g.data_points[0];
    let labels = otel_instrument::testing::attributes(&point.attributes);
    assert_eq!(
        point.value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1))
    );
    assert_eq!(labels["service.name"], "otel-instrument");
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["commit"], "0123abc");
    assert_eq!(labels["autometrics.version"], "1.0.0");
    assert_eq!(
        metrics[0].resource.get("service.name").map(String::as_str),
        Some("otel-instrument")
    );

    // The default fmt lines name the monitored call and carry its trace
    // context, the same ids as the exported span: logs and Jaeger join up.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let jobs: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.span.name == "process_job")
        .collect();
    assert!(!jobs.is_empty(), "process_job spans must arrive");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("job done")).collect();
    assert_eq!(lines.len(), jobs.len(), "{stdout}");
    for job in jobs {
        let ids = format!(
            "function=process_job trace_id={} span_id={}",
            hex(&job.span.trace_id),
            hex(&job.span.span_id)
        );
        assert!(
            lines.iter().any(|l| l.ends_with(&ids)),
            "no log line ends with {ids:?}:\n{stdout}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn builder_endpoint_beats_both_environment_levels_on_the_wire() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let dead = format!("http://{}", closed_port());
    let t = Telemetry::builder()
        .env_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &dead),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &dead),
            ("OTEL_SERVICE_NAME", "from-env"),
        ]))
        .traces_endpoint(sink.endpoint())
        .service_name("from-builder")
        .build()
        .unwrap();
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("precedence").in_scope(|| {});
    });
    guard.shutdown();
    let span = sink
        .wait_for_span("precedence", WAIT)
        .expect("span must reach the builder's endpoint");
    assert_eq!(
        span.resource.get("service.name").map(String::as_str),
        Some("from-builder")
    );
}

#[test]
fn signal_specific_env_beats_generic_env_on_the_wire() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let dead = format!("http://{}", closed_port());
    let t = Telemetry::builder()
        .env_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &dead),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &sink.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "x-tenant=gpu,api-key=s3cret",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ]))
        .build()
        .unwrap();
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("signal-env").in_scope(|| {});
    });
    guard.shutdown();
    assert!(sink.wait_for_span("signal-env", WAIT).is_some());
    let got = sink.received();
    let h = &got.headers[0];
    assert_eq!(h.get("x-tenant").map(String::as_str), Some("gpu"));
    assert_eq!(h.get("api-key").map(String::as_str), Some("s3cret"));
    assert_eq!(h.get("grpc-encoding").map(String::as_str), Some("gzip"));
}

#[test]
fn bad_environment_values_are_errors_naming_the_variable() {
    let cases = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1"),
        ("OTEL_TRACES_SAMPLER", "maybe"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "just-a-key"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
    ];
    for (var, value) in cases {
        let err = Telemetry::builder()
            .env_lookup(env(&[(var, value)]))
            .build()
            .expect_err(var)
            .to_string();
        assert!(err.contains(var) && err.contains(value), "{err}");
    }
    let err = Telemetry::builder()
        .env_lookup(env(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]))
        .build()
        .expect_err("ratio above 1")
        .to_string();
    assert!(
        err.contains("OTEL_TRACES_SAMPLER_ARG") && err.contains("\"2\""),
        "{err}"
    );
    let err = Telemetry::builder()
        .env_lookup(env(&[("RUST_LOG", "info,[[[")]))
        .build()
        .expect_err("bad filter")
        .to_string();
    assert!(err.contains("RUST_LOG"), "{err}");
}

#[test]
fn sdk_disabled_exports_nothing_and_is_not_an_error() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let t = Telemetry::builder()
        .env_lookup(env(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ]))
        .metric_export_interval(Duration::from_millis(50))
        .build()
        .expect("a disabled SDK is not an error");
    assert!(t.guard().tracer_provider().is_none());
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("invisible").in_scope(|| {});
    });
    guard.shutdown();
    assert!(
        sink.wait_until(Duration::from_millis(500), |r| !r.traces.is_empty()
            || !r.metrics.is_empty())
            .is_none(),
        "nothing may be exported"
    );
}

#[test]
fn a_typo_in_sdk_disabled_keeps_telemetry_on_with_a_warning() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let t = Telemetry::builder()
        .env_lookup(env(&[
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
            ("OTEL_SERVICE_NAME", "typo-test"),
        ]))
        .build()
        .expect("a typo must not stop the service");
    assert_eq!(t.warnings().len(), 1);
    assert!(t.warnings()[0].contains("OTEL_SDK_DISABLED=\"yes\""));
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("still_exported").in_scope(|| {});
    });
    assert!(guard.flush());
    assert!(
        sink.wait_for_span("still_exported", WAIT).is_some(),
        "telemetry stays on"
    );
}

#[test]
fn traces_exporter_none_exports_metrics_but_no_spans() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let t = Telemetry::builder()
        .env_lookup(env(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ]))
        .build()
        .unwrap();
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("not_exported").in_scope(|| {});
    });
    opentelemetry::global::meter("none-test")
        .u64_counter("none_test.ticks")
        .build()
        .add(1, &[]);
    assert!(guard.flush());
    assert!(sink.wait_for_metric("none_test.ticks", WAIT).is_some());
    assert!(sink.received().traces.is_empty(), "no span may be exported");
}

/// Emits a span and a metric, then times the guard's drop.
fn drop_time_with_collector_absent(shutdown_timeout: Duration) -> Duration {
    let t = Telemetry::builder()
        .env_lookup(env(&[]))
        .endpoint(format!("http://{}", closed_port()))
        .timeout(Duration::from_secs(30))
        .shutdown_timeout(shutdown_timeout)
        .build()
        .unwrap();
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    let started = Instant::now();
    tracing::subscriber::with_default(sub, || {
        for _ in 0..100 {
            tracing::info_span!("unsent").in_scope(|| {});
        }
    });
    opentelemetry::global::meter("t")
        .u64_counter("unsent")
        .build()
        .add(1, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "telemetry calls must not block"
    );
    let guard = guard;
    let started = Instant::now();
    drop(guard);
    started.elapsed()
}

#[test]
fn guard_drop_is_bounded_with_the_collector_absent_and_no_runtime() {
    let _s = serial();
    let timeout = Duration::from_secs(1);
    let took = drop_time_with_collector_absent(timeout);
    eprintln!("guard drop, no runtime: {took:?}");
    assert!(took <= timeout + Duration::from_secs(1), "took {took:?}");
}

#[test]
fn guard_drop_is_bounded_with_the_collector_absent_on_a_current_thread_runtime() {
    let _s = serial();
    let timeout = Duration::from_secs(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let took = rt.block_on(async { drop_time_with_collector_absent(timeout) });
    eprintln!("guard drop, current-thread runtime: {took:?}");
    assert!(took <= timeout + Duration::from_secs(1), "took {took:?}");
}

#[test]
fn guard_drop_is_bounded_with_the_collector_absent_on_a_multi_thread_runtime() {
    let _s = serial();
    let timeout = Duration::from_secs(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let took = rt.block_on(async { drop_time_with_collector_absent(timeout) });
    eprintln!("guard drop, multi-thread runtime (1 worker): {took:?}");
    assert!(took <= timeout + Duration::from_secs(1), "took {took:?}");
}

#[test]
fn export_resumes_after_the_collector_restarts_and_failures_are_counted() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let addr = sink.addr();
    let t = Telemetry::builder()
        .env_lookup(env(&[]))
        .endpoint(sink.endpoint())
        .timeout(Duration::from_millis(500))
        .metric_export_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let counter = opentelemetry::global::meter("restart")
        .u64_counter("restart.ticks")
        .build();
    counter.add(1, &[]);
    assert!(sink.wait_for_metric("restart.ticks", WAIT).is_some());

    sink.shutdown();
    let deadline = Instant::now() + WAIT;
    while t.guard().stats().failures(Signal::Metrics) == 0 {
        assert!(
            Instant::now() < deadline,
            "export failures were not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let sink = OtlpSink::start_at(addr).unwrap();
    counter.add(1, &[]);
    // An export retried from the outage may arrive first; wait for a fresh one.
    let got = sink.wait_until(WAIT, |r| {
        sum_value(r, "restart.ticks", None).is_some_and(|v| v >= 2.0)
            && sum_value(
                r,
                "otel_instrument.export.failures",
                Some(("signal", "metrics")),
            )
            .is_some_and(|v| v >= 1.0)
    });
    assert!(
        got.is_some(),
        "export must resume with the new count and report the failures"
    );
    drop(t);
}

#[test]
fn spans_dropped_by_a_full_queue_are_counted_exactly() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let t = Telemetry::builder()
        .env_lookup(env(&[]))
        .endpoint(sink.endpoint())
        .span_queue_size(1)
        .metric_export_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        for _ in 0..2000 {
            tracing::info_span!("flood").in_scope(|| {});
        }
    });
    assert!(guard.flush(), "flush timed out");
    let dropped = guard.stats().spans_queue_full();
    let got = sink
        .wait_until(WAIT, |r| {
            sum_value(
                r,
                "otel_instrument.spans.dropped",
                Some(("reason", "queue_full")),
            )
            .is_some()
        })
        .expect("queue-full drops must be exported as otel_instrument.spans.dropped");
    let exported = got
        .spans()
        .iter()
        .filter(|s| s.span.name == "flood")
        .count() as u64;
    assert!(dropped >= 1, "a queue of one must overflow");
    assert_eq!(exported + dropped, 2000, "every span arrives or is counted");
    assert_eq!(
        sum_value(
            &got,
            "otel_instrument.spans.dropped",
            Some(("reason", "queue_full"))
        ),
        Some(dropped as f64)
    );
    drop(guard);
}

#[cfg(feature = "prometheus")]
#[test]
fn prometheus_endpoint_serves_collector_style_names() {
    use std::io::{Read, Write};
    let _s = serial();
    let t = Telemetry::builder()
        .env_lookup(env(&[("OTEL_SERVICE_NAME", "pull-test")]))
        .endpoint(format!("http://{}", closed_port()))
        .prometheus_endpoint("127.0.0.1:0".parse().unwrap())
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let addr = t.guard().prometheus_addr().expect("bound address");
    let meter = opentelemetry::global::meter("pull");
    meter
        .u64_counter("jobs.done")
        .with_unit("{job}")
        .build()
        .add(3, &[]);
    meter
        .f64_histogram("work.duration")
        .with_unit("s")
        .build()
        .record(0.2, &[]);
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("jobs_done_total{"), "{body}");
    assert!(body.contains("work_duration_seconds_bucket{"), "{body}");
    assert!(body.contains("service_name=\"pull-test\""), "{body}");
    // Autometrics' build_info on the pull path too, under its own name.
    assert!(
        body.lines().any(|l| l.starts_with("build_info{")
            && l.contains("autometrics_version=\"1.0.0\"")
            && l.ends_with(" 1")),
        "{body}"
    );
    // The endpoint is held to `serve::Limits`: a request body is refused, and counted.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(
        body.lines().any(
            |l| l.starts_with("otel_instrument_prometheus_connections_closed_total{")
                && l.contains("reason=\"request_body\"")
                && l.ends_with(" 1")
        ),
        "{body}"
    );
}
