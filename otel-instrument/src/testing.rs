//! An in-process OTLP collector for tests (feature `testing`), over gRPC or HTTP,
//! plain or TLS.
//!
//! [`OtlpSink`] binds `127.0.0.1:0`, serves opentelemetry-proto's trace, metrics and
//! logs services ([`OtlpSink::start_http`]: their OTLP/HTTP form) on a thread of its own, and keeps every request it receives. Tests
//! wait for what they expect with a timeout. Because the sink owns its runtime, it
//! works from sync tests and from any kind of async test alike.
//!
//! A sink can also play a collector in trouble ([`OtlpSink::set_behaviour`]):
//! one that refuses (UNAVAILABLE), hangs, or answers slowly. A collector that is
//! absent is a sink that was [shut down](OtlpSink::shutdown); one that comes back
//! is [`OtlpSink::start_at`] on the same address.
//!
//! ```
//! use otel_instrument::testing::OtlpSink;
//! use std::time::Duration;
//!
//! let sink = OtlpSink::start().unwrap();
//! assert!(sink.endpoint().starts_with("http://127.0.0.1:"));
//! assert!(sink.wait_for_span("never-sent", Duration::from_millis(10)).is_none());
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::codec::CompressionEncoding;

pub use opentelemetry_proto::tonic as proto;

pub mod soak;

/// Everything the sink has received, request by request.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Trace export requests.
    pub traces: Vec<ExportTraceServiceRequest>,
    /// Metric export requests.
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// Log export requests.
    pub logs: Vec<ExportLogsServiceRequest>,
    /// The gRPC metadata (headers) of every request, in arrival order.
    pub headers: Vec<BTreeMap<String, String>>,
    /// Requests answered UNAVAILABLE by [`Behaviour::Refuse`] or
    /// RESOURCE_EXHAUSTED by [`Behaviour::Throttle`] (and not kept).
    pub refused: usize,
    /// When each request arrived, and its signal (`traces`, `metrics` or
    /// `logs`), whatever the answer: retries and their backoff show here.
    pub attempts: Vec<(&'static str, Instant)>,
    /// Indexes into `traces` of the gRPC requests that [`Behaviour::Hang`] held
    /// before they were kept. The client may have given up on such a request
    /// before it was answered and counted it failed: the collector got it, the
    /// client never learned so, as on a real network.
    pub traces_held: Vec<usize>,
}

/// How an [`OtlpSink`] answers export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Behaviour {
    /// Keep every request and answer OK. The default.
    #[default]
    Accept,
    /// Answer UNAVAILABLE and keep nothing, like a collector that is overloaded
    /// or restarting.
    Refuse,
    /// Take the request and do not answer while this behaviour lasts, like a
    /// collector stuck on a full pipeline. Held requests are then answered
    /// under the next behaviour (unless the client gave up first).
    Hang,
    /// Keep the request, but answer only after the given delay.
    Slow(Duration),
    /// Answer RESOURCE_EXHAUSTED with a gRPC `RetryInfo` asking the client to
    /// wait the given delay before retrying (the OTLP throttling signal), and
    /// keep nothing.
    Throttle(Duration),
    /// Keep the request and answer OK with a `partial_success` that rejects the given
    /// number of data points (metrics) or spans (traces).
    PartialSuccess(i64),
}

/// One received span with its resource and scope, flattened for assertions.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Resource attributes, rendered as strings.
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name.
    pub scope: String,
    /// The span as sent.
    pub span: Span,
}

impl SpanRecord {
    /// The span's attributes, rendered as strings.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        attributes(&self.span.attributes)
    }
}

/// One received metric with its resource and scope, flattened for assertions.
#[derive(Debug, Clone)]
pub struct MetricRecord {
    /// Resource attributes, rendered as strings.
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name.
    pub scope: String,
    /// The metric as sent.
    pub metric: Metric,
}

impl Received {
    /// All spans, in arrival order.
    pub fn spans(&self) -> Vec<SpanRecord> {
        let mut out = Vec::new();
        for req in &self.traces {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    let scope = ss
                        .scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    for span in &ss.spans {
                        out.push(SpanRecord {
                            resource: resource.clone(),
                            scope: scope.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// All metrics, in arrival order (one entry per metric per request).
    pub fn metrics(&self) -> Vec<MetricRecord> {
        let mut out = Vec::new();
        for req in &self.metrics {
            for rm in &req.resource_metrics {
                let resource = rm
                    .resource
                    .as_ref()
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                for sm in &rm.scope_metrics {
                    let scope = sm
                        .scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    for metric in &sm.metrics {
                        out.push(MetricRecord {
                            resource: resource.clone(),
                            scope: scope.clone(),
                            metric: metric.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// All log records, in arrival order.
    pub fn log_records(&self) -> Vec<LogRecord> {
        self.logs
            .iter()
            .flat_map(|req| &req.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| sl.log_records.iter().cloned())
            .collect()
    }

    /// The most recent report of the named metric.
    pub fn last_metric(&self, name: &str) -> Option<MetricRecord> {
        self.metrics()
            .into_iter()
            .rev()
            .find(|m| m.metric.name == name)
    }
}

/// A log record's body: its text, or the value's debug form when it is not a string.
pub fn log_body(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Renders OTLP attributes as a sorted map of strings (arrays as `[a,b]`).
pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(render).unwrap_or_default(),
            )
        })
        .collect()
}

fn render(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(render).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::BytesValue(b)) => format!("{b:02x?}"),
        Some(any_value::Value::KvlistValue(l)) => format!("{:?}", attributes(&l.values)),
        Some(any_value::Value::StringValueStrindex(i)) => format!("strindex:{i}"),
        None => String::new(),
    }
}

fn metadata_map(m: &tonic::metadata::MetadataMap) -> BTreeMap<String, String> {
    m.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[derive(Debug)]
struct Shared {
    received: Mutex<Received>,
    changed: Condvar,
    behaviour: tokio::sync::watch::Sender<Behaviour>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            received: Mutex::default(),
            changed: Condvar::new(),
            behaviour: tokio::sync::watch::Sender::new(Behaviour::Accept),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Received> {
        // A panicking test thread must not poison every later assertion.
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, f: impl FnOnce(&mut Received)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Applies the current behaviour to one request: `Ok` means keep it and
    /// answer OK, with that many items rejected in a `partial_success` if `Some`,
    /// and whether [`Behaviour::Hang`] held it first.
    async fn gate(&self, signal: &'static str) -> Result<(Option<i64>, bool), tonic::Status> {
        let mut rx = self.behaviour.subscribe();
        // The behaviour is read before the attempt is published, so a test that
        // changes it on seeing the attempt never changes this answer.
        let mut now = *rx.borrow_and_update();
        self.push(|r| r.attempts.push((signal, Instant::now())));
        let mut held = false;
        loop {
            match now {
                Behaviour::Accept => return Ok((None, held)),
                Behaviour::PartialSuccess(n) => return Ok((Some(n), held)),
                Behaviour::Refuse => {
                    self.push(|r| r.refused += 1);
                    return Err(tonic::Status::unavailable("OtlpSink refuses (test)"));
                }
                Behaviour::Hang => {
                    held = true;
                    if rx.changed().await.is_err() {
                        return Err(tonic::Status::unavailable("OtlpSink stopped"));
                    }
                    now = *rx.borrow_and_update();
                }
                Behaviour::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    return Ok((None, held));
                }
                Behaviour::Throttle(delay) => {
                    use tonic_types::{ErrorDetails, StatusExt as _};
                    self.push(|r| r.refused += 1);
                    return Err(tonic::Status::with_error_details(
                        tonic::Code::ResourceExhausted,
                        "OtlpSink throttles (test)",
                        ErrorDetails::with_retry_info(Some(delay)),
                    ));
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Services(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Services {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (rejected, held) = self.0.gate("traces").await?;
        let headers = metadata_map(request.metadata());
        let req = request.into_inner();
        self.0.push(|r| {
            r.headers.push(headers);
            if held {
                r.traces_held.push(r.traces.len());
            }
            r.traces.push(req);
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: rejected.map(|n| {
                opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: n,
                    error_message: "OtlpSink rejects part (test)".into(),
                }
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Services {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let (rejected, _) = self.0.gate("metrics").await?;
        let headers = metadata_map(request.metadata());
        let req = request.into_inner();
        self.0.push(|r| {
            r.headers.push(headers);
            r.metrics.push(req);
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: rejected.map(|n| {
                opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                    rejected_data_points: n,
                    error_message: "OtlpSink rejects part (test)".into(),
                }
            }),
        }))
    }
}

#[tonic::async_trait]
impl LogsService for Services {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.gate("logs").await?;
        let headers = metadata_map(request.metadata());
        let req = request.into_inner();
        self.0.push(|r| {
            r.headers.push(headers);
            r.logs.push(req);
        });
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// An in-process OTLP/gRPC collector. See the [module docs](self).
#[derive(Debug)]
pub struct OtlpSink {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl OtlpSink {
    /// Starts a sink on `127.0.0.1:0`.
    ///
    /// # Errors
    /// The socket cannot be bound or the server thread cannot start.
    pub fn start() -> std::io::Result<Self> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a sink on a given address, for example the address of a sink that
    /// was shut down, to simulate a collector restart.
    ///
    /// # Errors
    /// The socket cannot be bound or the server thread cannot start.
    pub fn start_at(addr: SocketAddr) -> std::io::Result<Self> {
        Self::spawn(addr, None)
    }

    /// Starts a sink on `127.0.0.1:0` that serves TLS with the given PEM
    /// certificate and key; with `client_ca`, it also requires a client
    /// certificate signed by that CA (mTLS). Its [`endpoint`](Self::endpoint)
    /// is `https://127.0.0.1:<port>`.
    ///
    /// # Errors
    /// The socket cannot be bound, the server thread cannot start, or the PEM
    /// material is unusable.
    pub fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        client_ca: Option<&str>,
    ) -> std::io::Result<Self> {
        let mut tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        Self::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), Some(tls))
    }

    fn spawn(
        addr: SocketAddr,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> std::io::Result<Self> {
        let is_tls = tls.is_some();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server
                .tls_config(tls)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        Self::serve_on_thread(
            addr,
            is_tls,
            "otlp-sink",
            move |listener, shared, stop| async move {
                let services = Services(shared);
                // TCP_NODELAY, as a real collector sets it: with Nagle on, small
                // answers wait for delayed ACKs and exports serialise on them.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                server
                    .add_service(
                        TraceServiceServer::new(services.clone())
                            .accept_compressed(CompressionEncoding::Gzip),
                    )
                    .add_service(
                        MetricsServiceServer::new(services.clone())
                            .accept_compressed(CompressionEncoding::Gzip),
                    )
                    .add_service(
                        LogsServiceServer::new(services)
                            .accept_compressed(CompressionEncoding::Gzip),
                    )
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
            },
        )
    }

    /// Starts a sink on `127.0.0.1:0` that speaks OTLP over HTTP with protobuf
    /// bodies (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`, gzip accepted).
    /// Its [`endpoint`](Self::endpoint) is the base URL to give an
    /// `http/protobuf` exporter. Refusing answers 503, throttling 429 with
    /// `Retry-After`, as the OTLP specification says.
    ///
    /// # Errors
    /// The socket cannot be bound or the server thread cannot start.
    pub fn start_http() -> std::io::Result<Self> {
        Self::spawn_http(None)
    }

    /// [`start_http`](Self::start_http) over TLS, with the given PEM certificate
    /// and key; with `client_ca`, it also requires a client certificate signed by
    /// that CA (mTLS). Its [`endpoint`](Self::endpoint) is
    /// `https://127.0.0.1:<port>`. A client whose handshake fails is dropped
    /// without an answer.
    ///
    /// # Errors
    /// The socket cannot be bound, the server thread cannot start, or the PEM
    /// material is unusable.
    pub fn start_http_tls(
        cert_pem: &str,
        key_pem: &str,
        client_ca: Option<&str>,
    ) -> std::io::Result<Self> {
        Self::spawn_http(Some(server_tls(cert_pem, key_pem, client_ca)?))
    }

    fn spawn_http(tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::serve_on_thread(
            addr,
            tls.is_some(),
            "otlp-http-sink",
            |listener, shared, stop| async move {
                let app = axum::Router::new()
                    .route(
                        "/v1/traces",
                        axum::routing::post(http_export::<ExportTraceServiceRequest>),
                    )
                    .route(
                        "/v1/metrics",
                        axum::routing::post(http_export::<ExportMetricsServiceRequest>),
                    )
                    .route(
                        "/v1/logs",
                        axum::routing::post(http_export::<ExportLogsServiceRequest>),
                    )
                    .with_state(shared);
                let stopped = async {
                    let _ = stop.await;
                };
                match tls {
                    None => {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await
                    }
                    Some(acceptor) => {
                        let listener = TlsListener { listener, acceptor };
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await
                    }
                }
                .map_err(|e| e.to_string())
            },
        )
    }

    /// Binds `addr` and runs `serve` on a current-thread runtime of its own, on
    /// a thread named `<name>-<port>`, until the sink is stopped.
    fn serve_on_thread<F, Fut>(
        addr: SocketAddr,
        tls: bool,
        name: &str,
        serve: F,
    ) -> std::io::Result<Self>
    where
        F: FnOnce(tokio::net::TcpListener, Arc<Shared>, tokio::sync::oneshot::Receiver<()>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let std_listener = bind_reusable(addr)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = thread::Builder::new()
            .name(format!("{name}-{}", addr.port()))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("OtlpSink: cannot build a runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("OtlpSink: cannot register the listener: {e}");
                            return;
                        }
                    };
                    if let Err(e) = serve(listener, state, stop_rx).await {
                        eprintln!("OtlpSink: server stopped: {e}");
                    }
                });
            })?;
        Ok(Self {
            addr,
            tls,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The socket address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint to give an OTLP/gRPC exporter, `http://127.0.0.1:<port>`
    /// (`https://` for a TLS sink).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Changes how the sink answers from now on. Requests held by
    /// [`Behaviour::Hang`] are answered under the new behaviour.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.behaviour.send_replace(behaviour);
    }

    /// How the sink answers now.
    pub fn behaviour(&self) -> Behaviour {
        *self.shared.behaviour.borrow()
    }

    /// A copy of everything received so far.
    pub fn received(&self) -> Received {
        self.shared.lock().clone()
    }

    /// Forgets everything received so far.
    pub fn clear(&self) {
        *self.shared.lock() = Received::default();
    }

    /// Blocks until `done` holds for what was received, or `timeout` passes.
    /// Returns what was received when `done` first held, or `None` on timeout.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.lock();
        loop {
            if done(&guard) {
                return Some(guard.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = self
                .shared
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for a span with the given name.
    pub fn wait_for_span(&self, name: &str, timeout: Duration) -> Option<SpanRecord> {
        let got = self.wait_until(timeout, |r| r.spans().iter().any(|s| s.span.name == name))?;
        got.spans().into_iter().find(|s| s.span.name == name)
    }

    /// Waits for a metric with the given name and returns its latest report.
    pub fn wait_for_metric(&self, name: &str, timeout: Duration) -> Option<MetricRecord> {
        let got = self.wait_until(timeout, |r| r.last_metric(name).is_some())?;
        got.last_metric(name)
    }

    /// Stops the server, waits for its thread and returns everything it received
    /// (requests in flight when it stopped included).
    pub fn shutdown(mut self) -> Received {
        self.stop_now();
        self.received()
    }

    fn stop_now(&mut self) {
        // Release held requests, so the server can stop.
        self.shared.behaviour.send_replace(Behaviour::Refuse);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The server side of TLS for the HTTP sink (ring, as everywhere else here).
fn server_tls(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots
                    .add(cert.map_err(|e| invalid(&e))?)
                    .map_err(|e| invalid(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| invalid(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// TCP connections that completed a TLS handshake, for `axum::serve`.
struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // A client that fails the handshake (untrusted, or without the client
            // certificate mTLS asks for) gets nothing; the next one is served.
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Binds, retrying briefly while a previous sink on the same port lets go of it
/// (std sets SO_REUSEADDR on Unix, so TIME_WAIT does not block the bind).
fn bind_reusable(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                return Ok(l);
            }
            // The old server's socket may take a moment to close.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An OTLP/HTTP request body, gunzipped if the client compressed it.
fn http_body(headers: &http::HeaderMap, body: &[u8]) -> Result<Vec<u8>, http::StatusCode> {
    let gzip = headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzip {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)
        .map_err(|_| http::StatusCode::BAD_REQUEST)?;
    Ok(out)
}

/// The HTTP answer for a refusal, as the OTLP/HTTP specification maps them.
fn http_refusal(status: &tonic::Status) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match status.code() {
        tonic::Code::ResourceExhausted => {
            use tonic_types::StatusExt as _;
            let secs = status
                .get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .map_or(1, |d| d.as_secs().max(1));
            (
                http::StatusCode::TOO_MANY_REQUESTS,
                [(http::header::RETRY_AFTER, secs.to_string())],
            )
                .into_response()
        }
        _ => http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn http_headers(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// An OTLP export request the HTTP side of the sink accepts.
trait HttpExport: prost::Message + Default + Send + 'static {
    /// The signal, as [`Received::attempts`] names it.
    const SIGNAL: &'static str;
    /// Keeps the request.
    fn keep(self, r: &mut Received);
}

impl HttpExport for ExportTraceServiceRequest {
    const SIGNAL: &'static str = "traces";
    fn keep(self, r: &mut Received) {
        r.traces.push(self);
    }
}

impl HttpExport for ExportMetricsServiceRequest {
    const SIGNAL: &'static str = "metrics";
    fn keep(self, r: &mut Received) {
        r.metrics.push(self);
    }
}

impl HttpExport for ExportLogsServiceRequest {
    const SIGNAL: &'static str = "logs";
    fn keep(self, r: &mut Received) {
        r.logs.push(self);
    }
}

/// One OTLP/HTTP export: gate, decode, keep.
async fn http_export<M: HttpExport>(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if let Err(status) = shared.gate(M::SIGNAL).await {
        return http_refusal(&status);
    }
    let bytes = match http_body(&headers, &body) {
        Ok(b) => b,
        Err(code) => return code.into_response(),
    };
    let Ok(message) = M::decode(bytes.as_slice()) else {
        return http::StatusCode::BAD_REQUEST.into_response();
    };
    let headers = http_headers(&headers);
    shared.push(|r| {
        r.headers.push(headers);
        message.keep(r);
    });
    // An empty Export*ServiceResponse: full success.
    (
        [(http::header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}
