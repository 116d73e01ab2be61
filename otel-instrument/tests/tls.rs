//! OTLP over TLS on the real wire: certificates generated here (rcgen), a sink
//! that serves TLS (and requires client certificates for mTLS), and the
//! exporter configured only through `OTEL_EXPORTER_OTLP_*` variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use otel_instrument::Telemetry;
use otel_instrument::config::Signal;
use otel_instrument::testing::OtlpSink;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tracing_subscriber::layer::SubscriberExt;

/// A certificate authority and what it signed, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }
}

fn write(dir: &Path, name: &str, pem: &str) {
    std::fs::write(dir.join(name), pem).unwrap();
}

/// `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1) and `client.pem`/
/// `client.key`, all signed by `ca.pem`.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "otel-instrument test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    write(dir.path(), "ca.pem", &ca.pem());

    for (name, sans, usage) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        ("client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca).unwrap();
        write(dir.path(), &format!("{name}.pem"), &cert.pem());
        write(dir.path(), &format!("{name}.key"), &key.serialize_pem());
    }
    Pki { dir }
}

type Vars = Vec<(&'static str, String)>;

fn env(vars: Vars) -> impl Fn(&str) -> Option<String> + Send + Sync {
    move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
}

/// Sends one span through a pipeline built from `vars`; returns whether it
/// arrived and how many trace exports failed.
fn send_one(sink: &OtlpSink, vars: Vec<(&'static str, String)>, name: &str) -> (bool, u64) {
    let t = Telemetry::builder()
        .env_lookup(env(vars))
        .timeout(Duration::from_secs(2))
        .build()
        .expect("telemetry");
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("tls_span", which = name).in_scope(|| {});
    });
    guard.flush();
    let arrived = sink
        .wait_until(Duration::from_secs(3), |r| {
            r.spans()
                .iter()
                .any(|s| s.attributes().get("which").map(String::as_str) == Some(name))
        })
        .is_some();
    let failures = guard.stats().failures(Signal::Traces);
    (arrived, failures)
}

#[test]
fn a_custom_ca_mtls_and_a_wrong_ca_over_the_wire() {
    let ours = pki();
    let other = pki();

    // Server-side TLS, trusted through OTEL_EXPORTER_OTLP_CERTIFICATE.
    let sink = OtlpSink::start_tls(&ours.pem("server.pem"), &ours.pem("server.key"), None).unwrap();
    assert!(sink.endpoint().starts_with("https://127.0.0.1:"));
    let (arrived, failures) = send_one(
        &sink,
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ours.path("ca.pem").display().to_string(),
            ),
        ],
        "custom-ca",
    );
    assert!(arrived && failures == 0, "custom CA: {arrived} {failures}");

    // A CA that did not sign the server's certificate: the export fails and
    // is counted; nothing arrives.
    let (arrived, failures) = send_one(
        &sink,
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                other.path("ca.pem").display().to_string(),
            ),
        ],
        "wrong-ca",
    );
    assert!(!arrived, "a server the CA did not sign must not be trusted");
    assert!(failures >= 1, "the failed export is counted");
    drop(sink);

    // mTLS: the sink requires a client certificate signed by our CA.
    let sink = OtlpSink::start_tls(
        &ours.pem("server.pem"),
        &ours.pem("server.key"),
        Some(&ours.pem("ca.pem")),
    )
    .unwrap();
    let (arrived, failures) = send_one(
        &sink,
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ours.path("ca.pem").display().to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                ours.path("client.pem").display().to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                ours.path("client.key").display().to_string(),
            ),
        ],
        "mtls",
    );
    assert!(arrived && failures == 0, "mTLS: {arrived} {failures}");

    // Without the client certificate, the same sink refuses the connection.
    let (arrived, failures) = send_one(
        &sink,
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ours.path("ca.pem").display().to_string(),
            ),
        ],
        "no-client-cert",
    );
    assert!(
        !arrived && failures >= 1,
        "mTLS without a client cert: {arrived} {failures}"
    );
}

#[test]
fn unreadable_or_half_given_certificates_are_errors_naming_the_variable() {
    let err = Telemetry::builder()
        .env_lookup(env(vec![(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem".to_owned(),
        )]))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    let pki = pki();
    let err = Telemetry::builder()
        .env_lookup(env(vec![(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            pki.path("client.key").display().to_string(),
        )]))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
        "{err}"
    );
}

/// The same certificate failures under `http/protobuf` and gRPC: a file that is
/// not what its variable says is an error naming that variable and its path.
#[test]
fn garbled_certificate_files_are_errors_naming_the_variable_on_both_transports() {
    let ours = pki();
    let other = pki();
    write(ours.dir.path(), "garbage.pem", "not a certificate\n");
    // PEM, but not a certificate inside.
    write(
        ours.dir.path(),
        "empty-cert.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let path = |pki: &Pki, name: &str| pki.path(name).display().to_string();
    // The variables set, the one at fault and its file.
    let cases: Vec<(Vars, &str, String)> = vec![
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&ours, "garbage.pem"))],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            path(&ours, "garbage.pem"),
        ),
        (
            vec![(
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                path(&ours, "empty-cert.pem"),
            )],
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            path(&ours, "empty-cert.pem"),
        ),
        (
            // A key where the CA should be.
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", path(&ours, "client.key"))],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            path(&ours, "client.key"),
        ),
        (
            vec![
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    path(&ours, "garbage.pem"),
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path(&ours, "client.key")),
            ],
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            path(&ours, "garbage.pem"),
        ),
        (
            vec![
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    path(&ours, "client.pem"),
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path(&ours, "garbage.pem")),
            ],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            path(&ours, "garbage.pem"),
        ),
        (
            // Another pair's key: well-formed, but not this certificate's.
            vec![
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    path(&ours, "client.pem"),
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", path(&other, "client.key")),
            ],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            path(&other, "client.key"),
        ),
    ];
    for protocol in ["http/protobuf", "grpc"] {
        for (vars, var, file) in &cases {
            let mut vars = vars.clone();
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()));
            vars.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://127.0.0.1:4318".into(),
            ));
            let err = match Telemetry::builder().env_lookup(env(vars)).build() {
                Ok(_) => panic!("{protocol}: {var}={file} must be rejected"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&format!("{var}={file:?} is invalid")),
                "{protocol}: the error must name {var} and its file: {err}"
            );
        }
    }
}

/// OTLP/HTTP over TLS, end to end (feature `http-proto`).
#[cfg(feature = "http-proto")]
mod http {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;

    fn vars(sink: &OtlpSink, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
        ];
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn spans_metrics_and_logs_arrive_over_https_trusting_the_ca_from_the_environment() {
        let pki = pki();
        let sink =
            OtlpSink::start_http_tls(&pki.pem("server.pem"), &pki.pem("server.key"), None).unwrap();
        assert!(sink.endpoint().starts_with("https://127.0.0.1:"));
        let t = Telemetry::builder()
            .env_lookup(env(vars(
                &sink,
                &[(
                    "OTEL_EXPORTER_OTLP_CERTIFICATE",
                    pki.path("ca.pem").display().to_string(),
                )],
            )))
            .build()
            .expect("telemetry");
        let (layer, guard) = t.into_layer();
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            tracing::info_span!("over_https").in_scope(|| tracing::warn!("logged over https"));
        });
        guard
            .meter_provider()
            .unwrap()
            .meter("tls-test")
            .u64_counter("tls_test.ticks")
            .build()
            .add(3, &[]);
        assert!(guard.flush(), "flush timed out");
        let got = sink
            .wait_until(Duration::from_secs(10), |r| {
                r.spans().iter().any(|s| s.span.name == "over_https")
                    && !r.logs.is_empty()
                    && r.last_metric("tls_test.ticks").is_some()
            })
            .unwrap_or_else(|| {
                let r = sink.received();
                panic!(
                    "not everything arrived over https: {} trace, {} metric, {} log requests; \
                     failures: traces {}, metrics {}, logs {}",
                    r.traces.len(),
                    r.metrics.len(),
                    r.logs.len(),
                    guard.stats().failures(Signal::Traces),
                    guard.stats().failures(Signal::Metrics),
                    guard.stats().failures(Signal::Logs),
                )
            });
        assert!(!got.headers.is_empty());
        for signal in [Signal::Traces, Signal::Metrics, Signal::Logs] {
            assert_eq!(guard.stats().failures(signal), 0, "{signal}");
        }
    }

    #[test]
    fn mtls_and_a_wrong_ca_over_https() {
        let ours = pki();
        let other = pki();
        let ca = ours.path("ca.pem").display().to_string();

        // A CA that did not sign the server's certificate: nothing arrives, and
        // the failure is counted.
        let sink = OtlpSink::start_http_tls(&ours.pem("server.pem"), &ours.pem("server.key"), None)
            .unwrap();
        let (arrived, failures) = send_one(
            &sink,
            vars(
                &sink,
                &[(
                    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                    other.path("ca.pem").display().to_string(),
                )],
            ),
            "http-wrong-ca",
        );
        assert!(!arrived, "a server the CA did not sign must not be trusted");
        assert!(failures >= 1, "the failed export is counted");
        drop(sink);

        // mTLS: the sink requires a client certificate signed by our CA.
        let sink = OtlpSink::start_http_tls(
            &ours.pem("server.pem"),
            &ours.pem("server.key"),
            Some(&ours.pem("ca.pem")),
        )
        .unwrap();
        let (arrived, failures) = send_one(
            &sink,
            vars(
                &sink,
                &[
                    ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.clone()),
                    (
                        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
                        ours.path("client.pem").display().to_string(),
                    ),
                    (
                        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
                        ours.path("client.key").display().to_string(),
                    ),
                ],
            ),
            "http-mtls",
        );
        assert!(arrived && failures == 0, "mTLS: {arrived} {failures}");

        // Without the client certificate, the same sink refuses the connection.
        let (arrived, failures) = send_one(
            &sink,
            vars(&sink, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)]),
            "http-no-client-cert",
        );
        assert!(
            !arrived && failures >= 1,
            "mTLS without a client cert: {arrived} {failures}"
        );
    }
}
