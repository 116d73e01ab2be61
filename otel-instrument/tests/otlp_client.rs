//! The OTLP wire client (`otel_instrument::otlp`) against the in-process sink: it
//! delivers the bytes it is given with headers and gzip, retries what the OTLP
//! specification calls transient within the export timeout, honours `RetryInfo`,
//! counts failures and `partial_success` into `ExportStats` with the same outage log
//! lines as the SDK's exporters, and refuses unusable settings naming the variable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use otel_instrument::config::{ExporterConfig, Overrides, Protocol, Signal};
use otel_instrument::export::ExportStats;
use otel_instrument::otlp::{BuildError, OtlpClient};
use otel_instrument::testing::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use otel_instrument::testing::proto::common::v1::{AnyValue, KeyValue, any_value};
use otel_instrument::testing::proto::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use otel_instrument::testing::{Behaviour, OtlpSink};
use prost::Message as _;

fn request(value: f64) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "test.gauge".into(),
                    unit: "1".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            attributes: vec![KeyValue {
                                key: "k".into(),
                                value: Some(AnyValue {
                                    value: Some(any_value::Value::StringValue("v".into())),
                                }),
                                ..Default::default()
                            }],
                            time_unix_nano: 1,
                            value: Some(number_data_point::Value::AsDouble(value)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn body(value: f64) -> Bytes {
    Bytes::from(request(value).encode_to_vec())
}

fn config(env: &[(&str, &str)]) -> ExporterConfig {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    ExporterConfig::resolve(Signal::Metrics, &lookup, &Overrides::default()).unwrap()
}

/// Runs `f` on a current-thread runtime with a fmt subscriber on this thread; returns
/// its result and what it logged.
fn logged<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::default());
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(f);
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, log)
}

#[test]
fn the_client_delivers_our_bytes_with_headers_and_gzip() {
    let sink = OtlpSink::start().unwrap();
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=secret"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        client.export(body(0.5)).await
    });
    let delivered = result.unwrap();
    assert_eq!(delivered.attempts, 1);
    assert_eq!(delivered.rejected, None);
    let r = sink.received();
    assert_eq!(r.metrics, vec![request(0.5)]);
    assert_eq!(
        r.headers[0].get("api-key").map(String::as_str),
        Some("secret")
    );
    assert_eq!(
        r.headers[0].get("grpc-encoding").map(String::as_str),
        Some("gzip")
    );
    assert_eq!(stats.successes(Signal::Metrics), 1);
    assert_eq!(stats.failures(Signal::Metrics), 0);
}

#[test]
fn without_compression_the_client_delivers_our_bytes_with_headers_and_its_deadline() {
    // The path that writes the request bytes to the stream without a codec.
    let sink = OtlpSink::start().unwrap();
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=secret"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        let first = client.export(body(0.25)).await;
        let second = client.export(body(0.75)).await;
        (first, second)
    });
    assert_eq!(result.0.unwrap().attempts, 1);
    assert_eq!(result.1.unwrap().attempts, 1);
    let r = sink.received();
    assert_eq!(r.metrics, vec![request(0.25), request(0.75)]);
    let h = &r.headers[0];
    assert_eq!(h.get("api-key").map(String::as_str), Some("secret"));
    assert_eq!(h.get("grpc-encoding"), None);
    assert_eq!(
        h.get("content-type").map(String::as_str),
        Some("application/grpc")
    );
    let deadline = h.get("grpc-timeout").expect("the deadline is sent");
    assert!(deadline.ends_with(['m', 'u', 'n', 'S']), "{deadline}");
    assert_eq!(stats.successes(Signal::Metrics), 2);
    assert_eq!(stats.failures(Signal::Metrics), 0);
}

#[test]
fn a_refusing_collector_is_retried_with_backoff_until_the_timeout_then_counted_and_logged_once() {
    let sink = OtlpSink::start().unwrap();
    sink.set_behaviour(Behaviour::Refuse);
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let ((first, took, second), log) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        let start = Instant::now();
        let first = client.export(body(1.0)).await;
        let took = start.elapsed();
        let second = client.export(body(2.0)).await;
        (first, took, second)
    });
    let failed = first.unwrap_err();
    assert!(!failed.permanent);
    // 25, 50, then at most 100 ms of backoff (jitter included) between attempts: about
    // ten fit in one second (a 1 s cap would allow 3 to 5), never more than 1000/25.
    assert!(
        (6..=41).contains(&failed.attempts),
        "{} attempts",
        failed.attempts
    );
    assert!(
        took < Duration::from_millis(1300),
        "the export outlived its timeout: {took:?}"
    );
    assert!(second.is_err());
    let r = sink.received();
    assert!(r.refused >= 6, "{} refused", r.refused);
    assert!(r.metrics.is_empty());
    assert_eq!(stats.failures(Signal::Metrics), 2);
    assert_eq!(log.matches("OTLP export is failing").count(), 1, "{log}");

    // Back: the next export succeeds and the recovery is logged with the count.
    sink.set_behaviour(Behaviour::Accept);
    let (ok, log) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        client.export(body(3.0)).await
    });
    assert!(ok.is_ok());
    assert!(
        log.contains("OTLP export recovered") && log.contains("failures=2"),
        "{log}"
    );
}

#[test]
fn a_throttling_collector_is_retried_after_its_retry_info_delay() {
    let sink = OtlpSink::start().unwrap();
    sink.set_behaviour(Behaviour::Throttle(Duration::from_millis(700)));
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let (result, _) = std::thread::scope(|scope| {
        // Throttled once, then the collector takes it.
        scope.spawn(|| {
            sink.wait_until(Duration::from_secs(3), |r| r.refused >= 1)
                .expect("a first attempt");
            sink.set_behaviour(Behaviour::Accept);
        });
        logged(async {
            let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
            client.export(body(4.0)).await
        })
    });
    let d = result.unwrap();
    assert_eq!(d.attempts, 2);
    let r = sink.received();
    let gap = r.attempts[1].1 - r.attempts[0].1;
    assert!(
        gap >= Duration::from_millis(690),
        "the retry came {gap:?} after the throttled attempt, before RetryInfo's 700 ms"
    );
    assert_eq!(r.metrics.len(), 1);
}

#[test]
fn throttling_longer_than_the_timeout_fails_without_waiting_it_out() {
    let sink = OtlpSink::start().unwrap();
    sink.set_behaviour(Behaviour::Throttle(Duration::from_secs(30)));
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let start = Instant::now();
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        client.export(body(4.0)).await
    });
    assert_eq!(result.unwrap_err().attempts, 1);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(stats.failures(Signal::Metrics), 1);
}

#[test]
fn a_hanging_collector_costs_one_timeout_and_an_absent_one_is_a_counted_failure() {
    let sink = OtlpSink::start().unwrap();
    sink.set_behaviour(Behaviour::Hang);
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "600"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let start = Instant::now();
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        client.export(body(5.0)).await
    });
    let took = start.elapsed();
    assert!(result.is_err());
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(1200),
        "{took:?}"
    );
    sink.set_behaviour(Behaviour::Accept);
    let addr = sink.endpoint();
    drop(sink.shutdown());
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &addr),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
    ]);
    let start = Instant::now();
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        client.export(body(6.0)).await
    });
    let failed = result.unwrap_err();
    assert!(
        failed.attempts >= 2,
        "connection refused is transient: {failed}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(stats.failures(Signal::Metrics), 2);
}

#[test]
fn partial_success_is_counted_and_logged_once_per_spell() {
    let sink = OtlpSink::start().unwrap();
    sink.set_behaviour(Behaviour::PartialSuccess(7));
    let cfg = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint())]);
    let stats = Arc::new(ExportStats::default());
    let s2 = &sink;
    let (results, log) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        let mut out = Vec::new();
        for i in 0..3 {
            out.push(client.export(body(f64::from(i))).await);
        }
        s2.set_behaviour(Behaviour::Accept);
        out.push(client.export(body(9.0)).await);
        s2.set_behaviour(Behaviour::PartialSuccess(2));
        out.push(client.export(body(10.0)).await);
        out
    });
    let rejected: Vec<u64> = results
        .iter()
        .map(|r| r.as_ref().unwrap().rejected.as_ref().map_or(0, |r| r.count))
        .collect();
    assert_eq!(rejected, [7, 7, 7, 0, 2]);
    assert_eq!(stats.metric_points_rejected(), 23);
    // A partial success is a success: the request arrived.
    assert_eq!(stats.successes(Signal::Metrics), 5);
    assert_eq!(stats.failures(Signal::Metrics), 0);
    assert_eq!(
        log.matches("rejected part of an OTLP export").count(),
        2,
        "{log}"
    );
}

#[test]
fn unusable_settings_are_errors_that_name_the_variable() {
    let stats = Arc::new(ExportStats::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in = rt.enter();
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
    ]);
    assert_eq!(cfg.protocol, Protocol::HttpProtobuf);
    if cfg!(feature = "http-proto") {
        assert!(OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).is_ok());
    } else {
        let e = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap_err();
        assert!(matches!(e, BuildError::Tls { .. }), "{e}");
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{e}");
    }

    let mut cfg = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4317")]);
    cfg.tls.ca_certificate = Some(b"not a certificate".to_vec());
    let e = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap_err();
    assert!(
        e.to_string().contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{e}"
    );

    let mut cfg = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")]);
    cfg.tls.ca_certificate = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
    let e = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap_err();
    assert!(matches!(e, BuildError::TlsOnPlainEndpoint { .. }), "{e}");

    let mut cfg = config(&[]);
    cfg.headers = vec![("bad header".into(), "x".into())];
    let e = OtlpClient::new(Signal::Metrics, &cfg, stats).unwrap_err();
    assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"), "{e}");
}

#[test]
fn over_http_the_client_posts_our_bytes_gzipped_to_v1_metrics() {
    let sink = OtlpSink::start_http().unwrap();
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
    ]);
    assert!(cfg.endpoint.ends_with("/v1/metrics"), "{}", cfg.endpoint);
    let stats = Arc::new(ExportStats::default());
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        client.export(body(0.25)).await
    });
    assert_eq!(result.unwrap().attempts, 1);
    let r = sink.received();
    assert_eq!(r.metrics, vec![request(0.25)]);
    assert_eq!(
        r.headers[0].get("api-key").map(String::as_str),
        Some("secret")
    );
    assert_eq!(
        r.headers[0].get("content-encoding").map(String::as_str),
        Some("gzip")
    );
    assert_eq!(stats.successes(Signal::Metrics), 1);
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM.
#[cfg(feature = "http-proto")]
fn ca_and_server() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[cfg(feature = "http-proto")]
#[test]
fn over_https_the_client_trusts_the_configured_ca_and_nothing_else() {
    let (ca, cert, key) = ca_and_server();
    let sink = OtlpSink::start_http_tls(&cert, &key, None).unwrap();
    let endpoint = sink.endpoint().replace("http://", "https://");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let ca_path = ca_path.display().to_string();

    let trusted = config(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_path),
    ]);
    let stats = Arc::new(ExportStats::default());
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &trusted, stats.clone()).unwrap();
        client.export(body(0.75)).await
    });
    assert_eq!(result.unwrap().attempts, 1);
    assert_eq!(sink.received().metrics, vec![request(0.75)]);

    // Without the CA the server's certificate is not trusted: the export fails
    // within its timeout, is counted, and the log says why.
    let untrusted = config(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let (result, log) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &untrusted, stats.clone()).unwrap();
        client.export(body(1.0)).await
    });
    let e = result.unwrap_err();
    assert!(e.last.to_lowercase().contains("certificate"), "{e:?}");
    assert_eq!(stats.failures(Signal::Metrics), 1);
    assert!(log.contains("OTLP export is failing"), "{log}");
    assert_eq!(sink.received().metrics.len(), 1, "nothing more arrived");
}

#[test]
fn over_http_503_is_retried_and_429_waits_for_retry_after() {
    let sink = OtlpSink::start_http().unwrap();
    sink.set_behaviour(Behaviour::Refuse);
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "800"),
    ]);
    let stats = Arc::new(ExportStats::default());
    let (result, _) = logged(async {
        let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
        client.export(body(1.0)).await
    });
    let failed = result.unwrap_err();
    assert!(failed.attempts >= 3, "{failed}");
    assert!(failed.last.contains("503"), "{failed}");
    assert_eq!(stats.failures(Signal::Metrics), 1);

    // 429 with Retry-After: 1 (seconds): the retry comes no sooner.
    sink.clear();
    sink.set_behaviour(Behaviour::Throttle(Duration::from_secs(1)));
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
    ]);
    let (result, _) = std::thread::scope(|scope| {
        scope.spawn(|| {
            sink.wait_until(Duration::from_secs(3), |r| r.refused >= 1)
                .expect("a first attempt");
            sink.set_behaviour(Behaviour::Accept);
        });
        logged(async {
            let client = OtlpClient::new(Signal::Metrics, &cfg, stats.clone()).unwrap();
            client.export(body(2.0)).await
        })
    });
    assert_eq!(result.unwrap().attempts, 2);
    let r = sink.received();
    let gap = r.attempts[1].1 - r.attempts[0].1;
    assert!(gap >= Duration::from_millis(990), "retried after {gap:?}");
}
