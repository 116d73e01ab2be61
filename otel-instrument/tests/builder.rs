//! The builder: one precedence rule (builder > environment > detection), a
//! setter for everything the environment can set, and a guard that cannot be
//! lost in a method chain.

mod monitored_common;

use monitored_common::{closed_port, env, serial};
use std::time::Duration;

use opentelemetry_sdk::metrics::Temporality;
use otel_instrument::config::Config;
use otel_instrument::testing::OtlpSink;
use otel_instrument::{
    Compression, ExemplarFilter, ParentRoot, Propagator, Protocol, SamplerConfig, Telemetry,
    TelemetryBuilder,
};
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(10);

fn attr(t: &Telemetry, key: &'static str) -> Option<String> {
    t.resource()
        .get(&opentelemetry::Key::from_static_str(key))
        .map(|v| v.to_string())
}

/// Issue 22, point 2: `build()?.layer()` used to drop the guard with the
/// temporary, shutting every provider down before the first span.
#[test]
fn a_layer_taken_in_one_chain_keeps_exporting_while_its_guard_lives() {
    let _s = serial();
    let sink = OtlpSink::start().unwrap();
    let (layer, guard) = otel_instrument::builder!()
        .env_lookup(env(&[]))
        .endpoint(sink.endpoint())
        .build()
        .unwrap()
        .into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("chained").in_scope(|| tracing::info!("inside"));
    });
    assert!(guard.flush());
    assert!(
        sink.wait_for_span("chained", WAIT).is_some(),
        "the span must be exported while the guard is alive"
    );
    assert!(guard.tracer_provider().is_some());
}

/// Issue 22, point 5: one rule for every resource attribute.
#[test]
fn resource_precedence_is_builder_over_environment_over_detection() {
    let _s = serial();
    let dead = format!("http://{}", closed_port());
    let build = |b: TelemetryBuilder| b.endpoint(dead.clone()).build().unwrap();

    // init!()/builder!()'s crate version is detection: the environment beats it.
    let t = build(otel_instrument::builder!().env_lookup(env(&[(
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.version=9.9.9,team=gpu",
    )])));
    assert_eq!(attr(&t, "service.version").as_deref(), Some("9.9.9"));
    assert_eq!(attr(&t, "service.name").as_deref(), Some("otel-instrument"));
    assert_eq!(attr(&t, "team").as_deref(), Some("gpu"));
    drop(t);

    // Without the environment, the crate's version and name.
    let t = build(otel_instrument::builder!().env_lookup(env(&[])));
    assert_eq!(
        attr(&t, "service.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    drop(t);

    // OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES (the spec).
    let t = build(otel_instrument::builder!().env_lookup(env(&[
        ("OTEL_SERVICE_NAME", "from-service-name"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes"),
    ])));
    assert_eq!(
        attr(&t, "service.name").as_deref(),
        Some("from-service-name")
    );
    drop(t);

    // The builder beats the environment, through either setter.
    let env_both = env(&[
        ("OTEL_SERVICE_NAME", "from-env"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.version=1.0.0,team=env,host.name=env-host",
        ),
    ]);
    let t = build(
        otel_instrument::builder!()
            .env_lookup(env_both)
            .resource_attribute("service.name", "from-builder")
            .resource_attribute("service.version", "2.0.0")
            .resource_attribute("team", "builder"),
    );
    assert_eq!(attr(&t, "service.name").as_deref(), Some("from-builder"));
    assert_eq!(attr(&t, "service.version").as_deref(), Some("2.0.0"));
    assert_eq!(attr(&t, "team").as_deref(), Some("builder"));
    // The environment beats detection for any key.
    assert_eq!(attr(&t, "host.name").as_deref(), Some("env-host"));
    drop(t);

    // Within the builder, the dedicated setters beat resource_attribute.
    let t = build(
        Telemetry::builder()
            .env_lookup(env(&[]))
            .resource_attribute("service.name", "attr")
            .service_name("setter")
            .resource_attribute("service.version", "attr")
            .service_version("setter"),
    );
    assert_eq!(attr(&t, "service.name").as_deref(), Some("setter"));
    assert_eq!(attr(&t, "service.version").as_deref(), Some("setter"));
}

/// Issue 22, point 7: `Telemetry::builder()` knows no crate name; it warns
/// instead of exporting `unknown_service` silently. `builder!()` names the crate.
#[test]
fn a_builder_without_a_service_name_warns_and_builder_macro_names_the_crate() {
    let _s = serial();
    let dead = format!("http://{}", closed_port());
    let t = Telemetry::builder()
        .env_lookup(env(&[]))
        .endpoint(dead.clone())
        .build()
        .unwrap();
    assert_eq!(attr(&t, "service.name").as_deref(), Some("unknown_service"));
    assert!(
        t.warnings()
            .iter()
            .any(|w| w.contains("unknown_service") && w.contains("builder!()")),
        "{:?}",
        t.warnings()
    );
    drop(t);

    let t = otel_instrument::builder!()
        .env_lookup(env(&[]))
        .endpoint(dead)
        .build()
        .unwrap();
    assert_eq!(attr(&t, "service.name").as_deref(), Some("otel-instrument"));
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

/// Issue 22, point 6: every variable has a setter, and the setter beats the
/// variable. For each case the settings resolved from the variable alone must
/// equal those resolved from the setter with a different value in the
/// variable.
#[test]
fn the_builder_sets_everything_the_environment_can() {
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    // Certificate files are parsed when the settings are read: real PEM.
    let issued = |host: &str| {
        let c = rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let (ca_pem, _) = issued("ca");
    let (other_pem, other_key_pem) = issued("other");
    let (cert_pem, key_pem) = issued("client");
    let ca = pem("ca.pem", &ca_pem);
    let other = pem("other.pem", &other_pem);
    let other_key = pem("other.key", &other_key_pem);
    let cert = pem("client.pem", &cert_pem);
    let key = pem("client.key", &key_pem);
    let other_key_s = other_key.display().to_string();
    let (ca_s, other_s) = (ca.display().to_string(), other.display().to_string());
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());

    type Setter = Box<dyn Fn(TelemetryBuilder) -> TelemetryBuilder>;
    type Vars<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vars<'_>, Vars<'_>, Setter)> = vec![
        (
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317")],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4317")],
            Box::new(|b| b.endpoint("http://a:4317")),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317")],
            vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:4317")],
            Box::new(|b| b.traces_endpoint("http://t:4317")),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317")],
            vec![("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://x:4317")],
            Box::new(|b| b.metrics_endpoint("http://m:4317")),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l:4317")],
            vec![("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://x:4317")],
            Box::new(|b| b.logs_endpoint("http://l:4317")),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a")],
            vec![("OTEL_EXPORTER_OTLP_HEADERS", "api-key=b")],
            Box::new(|b| b.headers([("api-key".to_owned(), "a".to_owned())])),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "1234")],
            vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "99")],
            Box::new(|b| b.timeout(Duration::from_millis(1234))),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")],
            vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "none")],
            Box::new(|b| b.compression(Some(Compression::Gzip))),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            Box::new(|b| b.protocol(Protocol::HttpProtobuf)),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_s)],
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", &other_s)],
            Box::new({
                let ca = ca.clone();
                move |b| b.certificate(&ca)
            }),
        ),
        (
            vec![
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert_s),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key_s),
            ],
            vec![
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &other_s),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &other_key_s),
            ],
            Box::new({
                let (cert, key) = (cert.clone(), key.clone());
                move |b| b.client_certificate(&cert, &key)
            }),
        ),
        (
            vec![("OTEL_SDK_DISABLED", "true")],
            vec![("OTEL_SDK_DISABLED", "false")],
            Box::new(|b| b.disabled(true)),
        ),
        (
            vec![("OTEL_SERVICE_NAME", "svc")],
            vec![("OTEL_SERVICE_NAME", "other")],
            Box::new(|b| b.service_name("svc")),
        ),
        (
            vec![("OTEL_TRACES_EXPORTER", "none")],
            vec![("OTEL_TRACES_EXPORTER", "otlp")],
            Box::new(|b| b.traces_export(false)),
        ),
        (
            vec![("OTEL_METRICS_EXPORTER", "none")],
            vec![("OTEL_METRICS_EXPORTER", "otlp")],
            Box::new(|b| b.metrics_export(false)),
        ),
        (
            vec![("OTEL_LOGS_EXPORTER", "none")],
            vec![("OTEL_LOGS_EXPORTER", "otlp")],
            Box::new(|b| b.logs_export(false)),
        ),
        (
            vec![("OTEL_PROPAGATORS", "tracecontext")],
            vec![("OTEL_PROPAGATORS", "baggage")],
            Box::new(|b| b.propagators([Propagator::TraceContext])),
        ),
        (
            vec![("OTEL_PROPAGATORS", "none")],
            vec![("OTEL_PROPAGATORS", "tracecontext")],
            Box::new(|b| b.propagators([])),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")],
            vec![(
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "cumulative",
            )],
            Box::new(|b| b.metrics_temporality(Temporality::Delta)),
        ),
        (
            vec![("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")],
            vec![("OTEL_METRICS_EXEMPLAR_FILTER", "always_on")],
            Box::new(|b| b.exemplar_filter(ExemplarFilter::AlwaysOff)),
        ),
        (
            vec![
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
            vec![("OTEL_TRACES_SAMPLER", "always_off")],
            Box::new(|b| b.sampler(SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.25)))),
        ),
        (
            vec![("OTEL_METRIC_EXPORT_INTERVAL", "1500")],
            vec![("OTEL_METRIC_EXPORT_INTERVAL", "99")],
            Box::new(|b| b.metric_export_interval(Duration::from_millis(1500))),
        ),
        (
            vec![("OTEL_BSP_MAX_QUEUE_SIZE", "77")],
            vec![("OTEL_BSP_MAX_QUEUE_SIZE", "5")],
            Box::new(|b| b.span_queue_size(77)),
        ),
        (
            vec![("OTEL_BLRP_MAX_QUEUE_SIZE", "78")],
            vec![("OTEL_BLRP_MAX_QUEUE_SIZE", "5")],
            Box::new(|b| b.log_queue_size(78)),
        ),
        (
            vec![
                ("OTEL_BSP_SCHEDULE_DELAY", "250"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
            ],
            vec![("OTEL_BSP_SCHEDULE_DELAY", "9")],
            Box::new(|b| b.span_batch(Duration::from_millis(250), 64)),
        ),
        (
            vec![
                ("OTEL_BLRP_SCHEDULE_DELAY", "300"),
                ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "65"),
            ],
            vec![("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "9")],
            Box::new(|b| b.log_batch(Duration::from_millis(300), 65)),
        ),
    ];
    let resolved = |b: TelemetryBuilder| -> Config {
        let mut c = b.config().unwrap();
        c.warnings.clear();
        c
    };
    let defaults = resolved(Telemetry::builder().env_lookup(env(&[])));
    for (from_env, conflicting_env, setter) in cases {
        let by_env = resolved(Telemetry::builder().env_lookup(env(&from_env)));
        let by_builder = resolved(setter(
            Telemetry::builder().env_lookup(env(&conflicting_env)),
        ));
        assert_ne!(by_env, defaults, "{from_env:?} must change something");
        assert_eq!(
            by_builder, by_env,
            "the setter for {from_env:?} must set what the variable sets, and beat {conflicting_env:?}"
        );
    }
}
