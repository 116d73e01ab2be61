use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use otel_gpu_receiver::catalogue::{CATALOGUE, FROM_THE_FIRST_ERROR, Instrument, WHERE_SUPPORTED};
use otel_instrument::testing::proto::metrics::v1::metric::Data;
use otel_instrument::testing::proto::metrics::v1::number_data_point::Value;
use otel_instrument::testing::proto::metrics::v1::{AggregationTemporality, NumberDataPoint};
use otel_instrument::testing::{OtlpSink, Received, attributes};

use crate::common::start_agent;

fn points(data: &Data) -> &[NumberDataPoint] {
    match data {
        Data::Sum(s) => &s.data_points,
        Data::Gauge(g) => &g.data_points,
        _ => &[],
    }
}

fn value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(Value::AsDouble(d)) => d,
        Some(Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

/// Names that every agent run must emit (optional rows excluded).
fn required_names() -> BTreeSet<&'static str> {
    CATALOGUE
        .iter()
        .filter(|d| {
            !d.description.contains(WHERE_SUPPORTED)
                && !d.description.contains(FROM_THE_FIRST_ERROR)
                // No GPU here: tests/gpu_cli.rs covers the gpu family with the fake NVML.
                && d.origin
                    != otel_gpu_receiver::catalogue::Origin::Host(
                        otel_gpu_receiver::catalogue::Family::Gpu,
                    )
        })
        .map(|d| d.name)
        .collect()
}

fn names_in_last_request(r: &Received) -> BTreeSet<String> {
    r.metrics
        .last()
        .into_iter()
        .flat_map(|req| &req.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.clone())
        .collect()
}

#[test]
fn the_sink_receives_the_catalogue_with_units_kinds_attributes_and_resource() {
    let sink = OtlpSink::start().unwrap();
    let _agent = start_agent(
        &["--interval", "1s", "--otlp-endpoint", &sink.endpoint()],
        &[("OTEL_GPU_RECEIVER_INSTANCE_ID", "test-host-1")],
    );
    let required = required_names();
    let got = sink
        .wait_until(Duration::from_secs(30), |r| {
            let names = names_in_last_request(r);
            required.iter().all(|n| names.contains(*n))
        })
        .unwrap_or_else(|| {
            let names = names_in_last_request(&sink.received());
            let missing: Vec<_> = required.iter().filter(|n| !names.contains(**n)).collect();
            panic!("the sink never received the whole catalogue; missing {missing:?}")
        });
    let metrics = got.metrics();
    for d in CATALOGUE {
        let Some(m) = metrics.iter().rev().find(|m| m.metric.name == d.name) else {
            continue;
        };
        assert_eq!(m.metric.unit, d.unit, "unit of {}", d.name);
        let data = m.metric.data.as_ref().expect("data");
        match (d.instrument, data) {
            (Instrument::Counter, Data::Sum(s)) => {
                assert!(s.is_monotonic, "{} is a monotonic sum", d.name);
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32,
                    "{} is cumulative",
                    d.name
                );
            }
            (Instrument::UpDownCounter, Data::Sum(s)) => {
                assert!(!s.is_monotonic, "{} is a non-monotonic sum", d.name);
            }
            (Instrument::Gauge, Data::Gauge(_)) => {}
            (kind, other) => panic!("{} should be a {kind}, got {other:?}", d.name),
        }
        let want: BTreeSet<&str> = d.attributes.iter().copied().collect();
        for p in points(data) {
            let attrs = attributes(&p.attributes);
            let keys: BTreeSet<&str> = attrs.keys().map(String::as_str).collect();
            assert_eq!(keys, want, "attributes of {}", d.name);
        }
        assert_eq!(m.scope, "otel-gpu-receiver");
    }
    let cpu = metrics
        .iter()
        .rev()
        .find(|m| m.metric.name == "system.cpu.time")
        .unwrap();
    let modes: BTreeSet<String> = points(cpu.metric.data.as_ref().unwrap())
        .iter()
        .map(|p| attributes(&p.attributes)["cpu.mode"].clone())
        .collect();
    assert!(
        modes.contains("user") && modes.contains("idle"),
        "{modes:?}"
    );

    let res = &cpu.resource;
    assert_eq!(res["service.name"], "otel-gpu-receiver");
    assert_eq!(res["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(res["service.instance.id"], "test-host-1");
    for key in ["host.name", "host.arch", "os.type"] {
        assert!(
            !res.get(key).is_none_or(String::is_empty),
            "resource lacks {key}: {res:?}"
        );
    }
    assert_eq!(res["os.type"], std::env::consts::OS);
}

#[test]
fn cumulative_counters_are_monotonic_across_cycles() {
    let sink = OtlpSink::start().unwrap();
    let _agent = start_agent(
        &["--interval", "500ms", "--otlp-endpoint", &sink.endpoint()],
        &[],
    );
    let got = sink
        .wait_until(Duration::from_secs(30), |r| r.metrics.len() >= 4)
        .expect("at least 4 exports");
    let counters: BTreeSet<&str> = CATALOGUE
        .iter()
        .filter(|d| d.instrument == Instrument::Counter)
        .map(|d| d.name)
        .collect();
    // (metric, attributes) -> values in arrival order.
    let mut series: BTreeMap<(String, BTreeMap<String, String>), Vec<f64>> = BTreeMap::new();
    for m in got.metrics() {
        if !counters.contains(m.metric.name.as_str()) {
            continue;
        }
        for p in points(m.metric.data.as_ref().unwrap()) {
            series
                .entry((m.metric.name.clone(), attributes(&p.attributes)))
                .or_default()
                .push(value(p));
        }
    }
    assert!(
        series.len() > 20,
        "too few counter series: {}",
        series.len()
    );
    let cycles = series
        .iter()
        .find(|((n, _), _)| n == "otel_gpu_receiver.cycles")
        .map(|(_, v)| v.clone())
        .expect("cycles counter exported");
    assert!(cycles.last() > cycles.first(), "cycles advance: {cycles:?}");
    for ((name, attrs), values) in &series {
        for w in values.windows(2) {
            assert!(w[1] >= w[0], "{name} {attrs:?} went down: {values:?}");
        }
    }
}

#[test]
fn headers_from_env_and_file_and_gzip_reach_the_collector() {
    use std::io::Write as _;
    let sink = OtlpSink::start().unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "interval = \"500ms\"\nfamilies = [\"memory\"]\n[otlp]\nendpoint = \"{}\"\nheaders = {{ x-tenant = \"from-file\" }}\n",
        sink.endpoint()
    )
    .unwrap();
    let _agent = start_agent(
        &["--config", file.path().to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=from-env"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    let got = sink
        .wait_for_metric("system.memory.usage", Duration::from_secs(20))
        .is_some();
    assert!(got, "no gzip export arrived");
    let headers = sink.received().headers;
    let first = headers.first().expect("request headers");
    // The signal-specific variable beats the file's generic headers.
    assert_eq!(first.get("api-key").map(String::as_str), Some("from-env"));
    assert_eq!(first.get("grpc-encoding").map(String::as_str), Some("gzip"));
}

/// The resource of the first request the sink gets from an agent run with `env`.
fn exported_resource(env: &[(&str, &str)]) -> BTreeMap<String, String> {
    let sink = OtlpSink::start().unwrap();
    let mut agent = start_agent(
        &[
            "--interval",
            "500ms",
            "--families",
            "memory",
            "--otlp-endpoint",
            &sink.endpoint(),
        ],
        env,
    );
    let Some(m) = sink.wait_for_metric("system.memory.usage", Duration::from_secs(20)) else {
        panic!(
            "no export arrived (agent alive: {}):\n{}",
            agent.alive(),
            agent.stderr()
        );
    };
    m.resource
}

#[test]
fn otel_service_name_and_resource_attributes_reach_the_exported_resource() {
    // Without them: the receiver's own service name and host attributes.
    let plain = exported_resource(&[]);
    assert_eq!(plain["service.name"], "otel-gpu-receiver");
    assert!(
        !plain.contains_key("deployment.environment.name"),
        "{plain:?}"
    );

    // OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES; the other keys
    // are added (percent-decoded) or replace the receiver's own; what they do not name
    // stays as the receiver detected it.
    let res = exported_resource(&[
        ("OTEL_SERVICE_NAME", "gpu-fleet"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attributes,deployment.environment.name=prod,\
             team=gpu%20infra,host.name=named-by-user",
        ),
    ]);
    assert_eq!(res["service.name"], "gpu-fleet", "{res:?}");
    assert_eq!(res["deployment.environment.name"], "prod", "{res:?}");
    assert_eq!(res["team"], "gpu infra", "{res:?}");
    assert_eq!(res["host.name"], "named-by-user", "{res:?}");
    for key in [
        "service.version",
        "service.instance.id",
        "host.arch",
        "os.type",
    ] {
        assert_eq!(res.get(key), plain.get(key), "{key} changed: {res:?}");
    }

    // Without OTEL_SERVICE_NAME, service.name in OTEL_RESOURCE_ATTRIBUTES beats the
    // receiver's default.
    let res = exported_resource(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")]);
    assert_eq!(res["service.name"], "from-attributes", "{res:?}");
    assert_eq!(res["host.name"], plain["host.name"], "{res:?}");
}

#[test]
fn a_bad_otel_resource_attributes_exits_2_naming_the_variable() {
    let out = crate::common::run(
        &["--check-config"],
        &[("OTEL_RESOURCE_ATTRIBUTES", "team=gpu,=no-key")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("OTEL_RESOURCE_ATTRIBUTES"), "{err}");
}

#[test]
fn http_protobuf_is_checked_as_ok_and_then_exports_to_an_otlp_http_collector() {
    let sink = OtlpSink::start_http().unwrap();
    let endpoint = sink.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    // --check-config says the settings are good ...
    let out = crate::common::run(&["--check-config"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    // ... and they are: the agent starts and its metrics arrive over OTLP/HTTP.
    let mut agent = start_agent(&["--interval", "500ms", "--families", "memory"], &env);
    let got = sink.wait_for_metric("system.memory.usage", Duration::from_secs(20));
    assert!(
        got.is_some(),
        "no OTLP/HTTP export arrived (agent alive: {}):\n{}",
        agent.alive(),
        agent.stderr()
    );
    assert_eq!(got.unwrap().resource["service.name"], "otel-gpu-receiver");

    // A workspace build (`cargo test --workspace --all-features`) unifies features, so
    // the run above passes there even when only another crate asks for http-proto; the
    // agent's own manifest must ask for it, or `cargo build -p otel-gpu-receiver` (the
    // image, `cargo install`) has no OTLP/HTTP.
    let manifest: toml::Table =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let features = manifest["dependencies"]["otel-instrument"]
        .get("features")
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    assert!(
        features.iter().any(|f| f.as_str() == Some("http-proto")),
        "otel-gpu-receiver's otel-instrument dependency lacks the http-proto feature: {features:?}"
    );
}

#[test]
fn http_protobuf_push_reaches_an_otlp_http_collector_and_delta_is_honoured() {
    let sink = OtlpSink::start_http().unwrap();
    let _agent = start_agent(
        &["--interval", "500ms"],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
        ],
    );
    let got = sink
        .wait_until(Duration::from_secs(30), |r| {
            r.metrics.len() >= 2 && names_in_last_request(r).contains("otel_gpu_receiver.cycles")
        })
        .expect("two requests over OTLP/HTTP");
    let cycles = got.last_metric("otel_gpu_receiver.cycles").unwrap();
    let Some(Data::Sum(s)) = &cycles.metric.data else {
        panic!("cycles is a sum")
    };
    assert_eq!(
        s.aggregation_temporality,
        AggregationTemporality::Delta as i32
    );
    // A delta of cycles between two exports half a second apart is a few, not the total.
    let v = value(&s.data_points[0]);
    assert!((0.0..=4.0).contains(&v), "cycles delta {v}");
    let p = &s.data_points[0];
    assert!(p.start_time_unix_nano < p.time_unix_nano);
}
