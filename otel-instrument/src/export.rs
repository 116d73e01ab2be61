//! OTLP exporters that run on a runtime of their own and count their failures.
//!
//! opentelemetry-otlp's tonic exporter must be built inside a tokio runtime, and its
//! channel then lives on that runtime. Borrowing the caller's runtime deadlocks a
//! current-thread runtime at shutdown (opentelemetry-rust #2583, #2580, #2056) and
//! panics when there is no runtime at all. So every exporter here is built inside an
//! [`ExportRuntime`]: one worker thread owned by the telemetry guard. The SDK's batch
//! span processor and periodic metric reader drive exports from their own threads.
//!
//! Both exporters are wrapped so that every failed export is counted in
//! [`ExportStats`], which the setup publishes as metrics, and the batch span
//! queue is bounded by [`QueueLimit`], which counts what it turns away. Nothing
//! is dropped silently.
//!
//! Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED with
//! the collector's RetryInfo, ...) are retried by opentelemetry-otlp itself, with
//! exponential backoff and jitter and within the export timeout ([`retry_policy`]),
//! so a short outage whose spans fit in the queue loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};

use crate::config::{Compression, ExporterConfig, Protocol, Signal};

/// Why an exporter or the runtime it runs on could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The export runtime thread could not start.
    #[error("cannot start the OTLP export runtime")]
    Runtime(#[source] std::io::Error),
    /// opentelemetry-otlp rejected the settings.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}")]
    Build {
        /// traces or metrics.
        signal: Signal,
        /// The endpoint in use.
        endpoint: String,
        /// The exporter's own error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A header is not valid gRPC metadata.
    #[error("OTEL_EXPORTER_OTLP_{}HEADERS: header {name:?} cannot be sent as gRPC metadata", signal_infix(*.signal))]
    Header {
        /// traces or metrics.
        signal: Signal,
        /// The header name.
        name: String,
    },
    /// `http/protobuf` was asked for without the `http-proto` feature.
    #[error(
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs otel-instrument's \"http-proto\" feature; \
         enable it or use OTEL_EXPORTER_OTLP_PROTOCOL=grpc"
    )]
    HttpNotEnabled,
}

fn signal_infix(s: Signal) -> &'static str {
    match s {
        Signal::Traces => "TRACES_",
        Signal::Metrics => "METRICS_",
        Signal::Logs => "LOGS_",
    }
}

/// A small tokio runtime on a dedicated thread, on which exporters are built and
/// their network I/O runs. Independent of whatever runtime the application uses.
#[derive(Debug)]
pub struct ExportRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl ExportRuntime {
    /// Starts the runtime (one worker thread named `otel-export`).
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn new() -> Result<Self, ExportError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("otel-export")
            .enable_all()
            .build()
            .map_err(ExportError::Runtime)?;
        Ok(Self { rt: Some(rt) })
    }

    /// A handle to spawn work on the export runtime.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt
            .as_ref()
            .map(tokio::runtime::Runtime::handle)
            .expect("the runtime is only taken in drop")
    }

    /// Runs `f` with the export runtime as the current tokio context.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.handle().enter();
        f()
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        // Never block here: drop may run inside the application's async context,
        // where blocking on a runtime shutdown panics.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The shortest time between two log lines about one ongoing problem (an export
/// outage, a full queue): a collector down for a night writes a dozen lines an hour.
pub const SUMMARY_EVERY_SECS: u64 = 5 * 60;

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logs an export outage of one signal: once when it starts, a summary at most every
/// [`SUMMARY_EVERY_SECS`] while it lasts, once when an export succeeds again (with
/// the count). Every failure is counted in `otel_instrument.export.failures` anyway.
#[derive(Debug, Default)]
struct OutageLog {
    failing: AtomicBool,
    /// Failures counted before the outage started.
    base: AtomicU64,
    /// When it started and when the last line was written, seconds since the epoch.
    since: AtomicU64,
    logged_at: AtomicU64,
}

impl OutageLog {
    /// One more failed export; `failures` is the count including it.
    #[cold]
    fn failed(&self, signal: Signal, failures: u64) {
        let _sdk = crate::monitored::SdkScope::enter();
        let now = unix_secs();
        if !self.failing.swap(true, Ordering::AcqRel) {
            self.base.store(failures - 1, Ordering::Relaxed);
            self.since.store(now, Ordering::Relaxed);
            self.logged_at.store(now, Ordering::Relaxed);
            tracing::warn!(
                signal = signal.as_str(),
                "OTLP export is failing (the collector is down, hanging or refusing); failures \
                 are counted in otel_instrument.export.failures (logged again when export \
                 recovers, and every 5 minutes until then)"
            );
            return;
        }
        let last = self.logged_at.load(Ordering::Relaxed);
        if now >= last.saturating_add(SUMMARY_EVERY_SECS)
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                signal = signal.as_str(),
                failures = failures - self.base.load(Ordering::Relaxed),
                for_s = now.saturating_sub(self.since.load(Ordering::Relaxed)),
                "OTLP export is still failing"
            );
        }
    }

    /// An export succeeded; `failures` is the signal's failure count.
    #[inline]
    fn succeeded(&self, signal: Signal, failures: u64) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::AcqRel) {
            let _sdk = crate::monitored::SdkScope::enter();
            tracing::info!(
                signal = signal.as_str(),
                failures = failures - self.base.load(Ordering::Relaxed),
                lasted_s = unix_secs().saturating_sub(self.since.load(Ordering::Relaxed)),
                "OTLP export recovered"
            );
        }
    }
}

/// What became of the items of one batched signal (spans or logs).
#[derive(Debug, Default)]
struct Batched {
    /// Export requests that failed (after retries).
    failures: AtomicU64,
    /// Export requests that succeeded.
    ok: AtomicU64,
    /// Items in batches whose export failed.
    lost: AtomicU64,
    /// Items turned away by a full queue.
    queue_full: AtomicU64,
    /// Items in the batch queue: admitted by [`QueueLimit`], not yet handed to
    /// the exporter.
    queued: AtomicUsize,
    /// When the queue-full warning was last logged, in seconds since the epoch.
    warned_at: AtomicU64,
    outage: OutageLog,
}

impl Batched {
    /// Takes one item into a queue of `capacity`, or counts it as dropped.
    #[inline]
    fn admit(&self, capacity: usize) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) < capacity {
            return true;
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.queue_full.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// `n` items left the queue for the exporter.
    fn handed_over(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Counts (and, at an outage's start and end, logs) the result of one export of
    /// `n` items.
    fn exported(&self, signal: Signal, result: &OTelSdkResult, n: u64, log: bool) {
        if result.is_ok() {
            self.ok.fetch_add(1, Ordering::Relaxed);
            if log {
                self.outage
                    .succeeded(signal, self.failures.load(Ordering::Relaxed));
            }
        } else {
            self.failed(n);
            if log {
                self.outage
                    .failed(signal, self.failures.load(Ordering::Relaxed));
            }
        }
    }

    /// Counts a failed export of `n` items.
    fn failed(&self, n: u64) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Logs that the queue is full at most every [`SUMMARY_EVERY_SECS`], with the
    /// running total.
    #[cold]
    fn warn_queue_full(&self, signal: Signal, capacity: usize) {
        let now = unix_secs();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now < last.saturating_add(SUMMARY_EVERY_SECS)
            || self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let dropped = self.queue_full.load(Ordering::Relaxed);
        match signal {
            Signal::Logs => tracing::warn!(
                dropped,
                capacity,
                "the log queue is full (the collector is down or slow): log records are dropped \
                 and counted in otel_instrument.logs.dropped{{reason=\"queue_full\"}}; raise \
                 OTEL_BLRP_MAX_QUEUE_SIZE to ride out longer outages"
            ),
            _ => tracing::warn!(
                dropped,
                capacity,
                "the span queue is full (the collector is down or slow): spans are dropped and \
                 counted in otel_instrument.spans.dropped{{reason=\"queue_full\"}}; raise \
                 OTEL_BSP_MAX_QUEUE_SIZE to ride out longer outages"
            ),
        }
    }
}

/// Counts of what failed to export, shared by the exporters and published as metrics.
#[derive(Debug, Default)]
pub struct ExportStats {
    spans: Batched,
    logs: Batched,
    metric_failures: AtomicU64,
    metric_ok: AtomicU64,
    metric_outage: OutageLog,
    /// Metric data points a collector rejected in a `partial_success` answer.
    metric_points_rejected: AtomicU64,
    /// The owner logs outages itself (from [`Self::failures`] and [`Self::successes`]).
    outages_logged_elsewhere: bool,
}

impl ExportStats {
    /// Stats whose exporters count but do not log outages, for an owner that logs them
    /// itself from [`Self::failures`] and [`Self::successes`] (the GPU receiver does, in
    /// its own words).
    pub fn without_outage_log() -> Self {
        Self {
            outages_logged_elsewhere: true,
            ..Self::default()
        }
    }

    /// Failed export requests for a signal.
    pub fn failures(&self, signal: Signal) -> u64 {
        match signal {
            Signal::Traces => self.spans.failures.load(Ordering::Relaxed),
            Signal::Metrics => self.metric_failures.load(Ordering::Relaxed),
            Signal::Logs => self.logs.failures.load(Ordering::Relaxed),
        }
    }

    /// Export requests that succeeded, for a signal: with [`Self::failures`], this tells
    /// an outage that goes on (failures grow, successes do not) from one that is over.
    pub fn successes(&self, signal: Signal) -> u64 {
        match signal {
            Signal::Traces => self.spans.ok.load(Ordering::Relaxed),
            Signal::Metrics => self.metric_ok.load(Ordering::Relaxed),
            Signal::Logs => self.logs.ok.load(Ordering::Relaxed),
        }
    }

    /// Counts one metric export request sent by a client outside the SDK (the
    /// [`crate::otlp`] wire client): the same counters and outage log lines as
    /// [`CountingMetricExporter`].
    pub fn metrics_exported(&self, ok: bool) {
        if ok {
            self.metric_ok.fetch_add(1, Ordering::Relaxed);
            if !self.outages_logged_elsewhere {
                self.metric_outage.succeeded(
                    Signal::Metrics,
                    self.metric_failures.load(Ordering::Relaxed),
                );
            }
        } else {
            let failures = self.metric_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.outages_logged_elsewhere {
                self.metric_outage.failed(Signal::Metrics, failures);
            }
        }
    }

    /// Counts metric data points that a collector rejected (`partial_success`).
    pub fn metric_points_rejected_add(&self, n: u64) {
        self.metric_points_rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Metric data points that collectors rejected (`partial_success`), since start.
    pub fn metric_points_rejected(&self) -> u64 {
        self.metric_points_rejected.load(Ordering::Relaxed)
    }

    /// Spans in batches whose export failed.
    pub fn spans_lost(&self) -> u64 {
        self.spans.lost.load(Ordering::Relaxed)
    }

    /// Spans turned away because the batch queue was full.
    pub fn spans_queue_full(&self) -> u64 {
        self.spans.queue_full.load(Ordering::Relaxed)
    }

    /// Every span that ended but will never reach the collector.
    pub fn spans_dropped(&self) -> u64 {
        self.spans_lost() + self.spans_queue_full()
    }

    /// Log records in batches whose export failed.
    pub fn logs_lost(&self) -> u64 {
        self.logs.lost.load(Ordering::Relaxed)
    }

    /// Log records turned away because the batch queue was full.
    pub fn logs_queue_full(&self) -> u64 {
        self.logs.queue_full.load(Ordering::Relaxed)
    }

    /// Every log record that was emitted but will never reach the collector.
    pub fn logs_dropped(&self) -> u64 {
        self.logs_lost() + self.logs_queue_full()
    }

    /// Registers observable counters over these stats on `meter`:
    /// `otel_instrument.export.failures{signal}`,
    /// `otel_instrument.spans.dropped{reason}` and
    /// `otel_instrument.logs.dropped{reason}` (`queue_full`, `export_failed`).
    pub fn register(self: &Arc<Self>, meter: &Meter) {
        let stats = self.clone();
        meter
            .u64_observable_counter(crate::names::EXPORT_FAILURES)
            .with_unit("{request}")
            .with_description("OTLP export requests that failed, by signal")
            .with_callback(move |o| {
                for signal in [Signal::Traces, Signal::Metrics, Signal::Logs] {
                    o.observe(
                        stats.failures(signal),
                        &[KeyValue::new("signal", signal.as_str())],
                    );
                }
            })
            .build();
        for (name, unit, description, signal) in [
            (
                crate::names::SPANS_DROPPED,
                "{span}",
                "Spans that never reached the collector, by reason",
                Signal::Traces,
            ),
            (
                crate::names::LOGS_DROPPED,
                "{log_record}",
                "Log records that never reached the collector, by reason",
                Signal::Logs,
            ),
        ] {
            let stats = self.clone();
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |o| {
                    let b = stats.batched(signal);
                    o.observe(
                        b.lost.load(Ordering::Relaxed),
                        &[KeyValue::new("reason", "export_failed")],
                    );
                    o.observe(
                        b.queue_full.load(Ordering::Relaxed),
                        &[KeyValue::new("reason", "queue_full")],
                    );
                })
                .build();
        }
    }

    fn batched(&self, signal: Signal) -> &Batched {
        match signal {
            Signal::Logs => &self.logs,
            _ => &self.spans,
        }
    }
}

/// A span exporter that counts failed batches.
#[derive(Debug)]
pub struct CountingSpanExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E> CountingSpanExporter<E> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: E, stats: Arc<ExportStats>) -> Self {
        Self { inner, stats }
    }
}

impl<E: SpanExporter> SpanExporter for CountingSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.stats.spans.handed_over(n);
        let result = self.inner.export(batch).await;
        let log = !self.stats.outages_logged_elsewhere;
        self.stats
            .spans
            .exported(Signal::Traces, &result, n as u64, log);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// A span or log processor that bounds the batch queue in front of `inner` and
/// counts every item it turns away (`otel_instrument.spans.dropped` or
/// `otel_instrument.logs.dropped`, `{reason="queue_full"}`).
///
/// The SDK's batch processors drop on a full queue too, but count only into
/// their own self-diagnostics and log from inside `Span::end`. Here the queue's
/// occupancy is known exactly (items in, minus items handed to
/// [`CountingSpanExporter`] or [`CountingLogExporter`]), so the inner queue,
/// given the same capacity, never overflows, and the count matches what the
/// collector never sees. Events logged from inside its callbacks never touch
/// span state (see `monitored::layers`).
#[derive(Debug)]
pub struct QueueLimit<P> {
    inner: P,
    capacity: usize,
    stats: Arc<ExportStats>,
    signal: Signal,
}

impl<P> QueueLimit<P> {
    /// Admits at most `capacity` spans into `inner` until the exporter takes
    /// them. Give `inner` a queue of at least `capacity`, and
    /// [`CountingSpanExporter`] with the same `stats`.
    pub fn spans(inner: P, capacity: usize, stats: Arc<ExportStats>) -> Self {
        Self {
            inner,
            capacity,
            stats,
            signal: Signal::Traces,
        }
    }

    /// The same for log records, with [`CountingLogExporter`].
    pub fn logs(inner: P, capacity: usize, stats: Arc<ExportStats>) -> Self {
        Self {
            inner,
            capacity,
            stats,
            signal: Signal::Logs,
        }
    }

    #[inline]
    fn admit(&self) -> bool {
        let b = self.stats.batched(self.signal);
        let admitted = b.admit(self.capacity);
        if !admitted {
            b.warn_queue_full(self.signal, self.capacity);
        }
        admitted
    }
}

impl<P: SpanProcessor> SpanProcessor for QueueLimit<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        let _sdk = crate::monitored::SdkScope::enter();
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let _sdk = crate::monitored::SdkScope::enter();
        if self.admit() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl<P: LogProcessor> LogProcessor for QueueLimit<P> {
    fn emit(&self, record: &mut SdkLogRecord, scope: &opentelemetry::InstrumentationScope) {
        let _sdk = crate::monitored::SdkScope::enter();
        // A record inside an unsampled monitored call carries its trace id
        // (the SDK only looks for an active span, which such a call has not).
        if record.trace_context().is_none()
            && let Some(trace_id) = crate::monitored::unsampled_trace()
        {
            use opentelemetry::logs::LogRecord as _;
            record.set_trace_context(
                trace_id,
                opentelemetry::trace::SpanId::INVALID,
                Some(opentelemetry::trace::TraceFlags::default()),
            );
        }
        if self.admit() {
            self.inner.emit(record, scope);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// A log exporter that counts failed batches.
#[derive(Debug)]
pub struct CountingLogExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E> CountingLogExporter<E> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: E, stats: Arc<ExportStats>) -> Self {
        Self { inner, stats }
    }
}

impl<E: LogExporter> LogExporter for CountingLogExporter<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        self.stats.logs.handed_over(n);
        let result = self.inner.export(batch).await;
        let log = !self.stats.outages_logged_elsewhere;
        self.stats
            .logs
            .exported(Signal::Logs, &result, n as u64, log);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// A metric exporter that counts failed exports.
#[derive(Debug)]
pub struct CountingMetricExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E> CountingMetricExporter<E> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: E, stats: Arc<ExportStats>) -> Self {
        Self { inner, stats }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        let s = &self.stats;
        if result.is_ok() {
            s.metric_ok.fetch_add(1, Ordering::Relaxed);
            if !s.outages_logged_elsewhere {
                s.metric_outage
                    .succeeded(Signal::Metrics, s.metric_failures.load(Ordering::Relaxed));
            }
        } else {
            let failures = s.metric_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if !s.outages_logged_elsewhere {
                s.metric_outage.failed(Signal::Metrics, failures);
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

fn metadata(
    signal: Signal,
    cfg: &ExporterConfig,
) -> Result<tonic::metadata::MetadataMap, ExportError> {
    let mut map = http::HeaderMap::new();
    for (k, v) in &cfg.headers {
        let bad = || ExportError::Header {
            signal,
            name: k.clone(),
        };
        let name =
            http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(v).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(tonic::metadata::MetadataMap::from_headers(map))
}

/// How transient export failures are retried: exponential backoff from 100 ms,
/// doubling up to 1 s, with up to 100 ms of jitter; a collector's RetryInfo
/// (throttling) raises the delay. opentelemetry-otlp classifies the codes as the
/// OTLP specification says and stops when the export timeout
/// (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default) is spent, so the retry count is
/// only a backstop; its own default gives up after about 0.7 s, too soon to ride
/// out a collector restart. The cap is short because the queue stays full while
/// the exporter sleeps: export resumes at most about a second after the
/// collector is back.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(32)
        .with_initial_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_jitter(Duration::from_millis(100))
}

/// Applies endpoint, timeout, headers, compression, TLS and retries to a tonic builder.
fn tonic_settings<B: WithTonicConfig + WithExportConfig>(
    b: B,
    signal: Signal,
    cfg: &ExporterConfig,
) -> Result<B, ExportError> {
    let mut b = b
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_metadata(metadata(signal, cfg)?)
        .with_retry_policy(retry_policy());
    if let Some(Compression::Gzip) = cfg.compression {
        b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    if cfg.endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &cfg.tls.ca_certificate {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &cfg.tls.client_identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        b = b.with_tls_config(tls);
    }
    Ok(b)
}

/// Applies endpoint, timeout, headers and compression to an HTTP builder.
#[cfg(feature = "http-proto")]
fn http_settings<B: opentelemetry_otlp::WithHttpConfig + WithExportConfig>(
    b: B,
    cfg: &ExporterConfig,
) -> B {
    let mut b = b
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_headers(cfg.headers.iter().cloned().collect())
        .with_retry_policy(retry_policy());
    if let Some(Compression::Gzip) = cfg.compression {
        b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    b
}

/// Builds an OTLP exporter from a signal's builder: gRPC inside the export runtime
/// (tonic's channel lives there), HTTP outside it (the blocking client owns a runtime
/// of its own). The span and metric builders are distinct types with the same
/// methods, hence a macro.
macro_rules! build_exporter {
    ($builder:expr, $signal:expr, $rt:expr, $cfg:expr) => {{
        let (builder, signal, cfg) = ($builder, $signal, $cfg);
        let build_err = |source| ExportError::Build {
            signal,
            endpoint: cfg.endpoint.clone(),
            source,
        };
        match cfg.protocol {
            Protocol::Grpc => $rt.enter(|| {
                tonic_settings(builder.with_tonic(), signal, cfg)?
                    .build()
                    .map_err(build_err)
            })?,
            #[cfg(feature = "http-proto")]
            Protocol::HttpProtobuf => http_settings(builder.with_http(), cfg)
                .build()
                .map_err(build_err)?,
            #[cfg(not(feature = "http-proto"))]
            Protocol::HttpProtobuf => return Err(ExportError::HttpNotEnabled),
        }
    }};
}

/// Builds the OTLP span exporter for `cfg`, wrapped to count failures.
///
/// # Errors
/// The settings are rejected by opentelemetry-otlp, or need a disabled feature.
pub fn span_exporter(
    rt: &ExportRuntime,
    cfg: &ExporterConfig,
    stats: Arc<ExportStats>,
) -> Result<CountingSpanExporter<opentelemetry_otlp::SpanExporter>, ExportError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let exporter = build_exporter!(builder, Signal::Traces, rt, cfg);
    Ok(CountingSpanExporter::new(exporter, stats))
}

/// Builds the OTLP metric exporter for `cfg` (cumulative temporality, so an outage
/// loses no counts), wrapped to count failures.
///
/// # Errors
/// The settings are rejected by opentelemetry-otlp, or need a disabled feature.
pub fn metric_exporter(
    rt: &ExportRuntime,
    cfg: &ExporterConfig,
    stats: Arc<ExportStats>,
) -> Result<CountingMetricExporter<opentelemetry_otlp::MetricExporter>, ExportError> {
    metric_exporter_with(rt, cfg, stats, Temporality::Cumulative)
}

/// [`metric_exporter`] with a chosen temporality
/// (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
///
/// # Errors
/// As [`metric_exporter`].
pub fn metric_exporter_with(
    rt: &ExportRuntime,
    cfg: &ExporterConfig,
    stats: Arc<ExportStats>,
    temporality: Temporality,
) -> Result<CountingMetricExporter<opentelemetry_otlp::MetricExporter>, ExportError> {
    let builder = opentelemetry_otlp::MetricExporter::builder().with_temporality(temporality);
    let exporter = build_exporter!(builder, Signal::Metrics, rt, cfg);
    Ok(CountingMetricExporter::new(exporter, stats))
}

/// Builds the OTLP log exporter for `cfg`, wrapped to count failures.
///
/// # Errors
/// The settings are rejected by opentelemetry-otlp, or need a disabled feature.
pub fn log_exporter(
    rt: &ExportRuntime,
    cfg: &ExporterConfig,
    stats: Arc<ExportStats>,
) -> Result<CountingLogExporter<opentelemetry_otlp::LogExporter>, ExportError> {
    let builder = opentelemetry_otlp::LogExporter::builder();
    let exporter = build_exporter!(builder, Signal::Logs, rt, cfg);
    Ok(CountingLogExporter::new(exporter, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Runs `f` with a fmt subscriber that writes into a string, and returns it.
    fn logged(f: impl FnOnce()) -> String {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || BufWriter(writer.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct BufWriter(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for BufWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outage_logs_when_it_starts_and_when_it_ends_with_its_count() {
        let b = Batched::default();
        let failed: OTelSdkResult = Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            "down".into(),
        ));
        let log = logged(|| {
            b.exported(Signal::Traces, &Ok(()), 10, true);
            for _ in 0..100 {
                b.exported(Signal::Traces, &failed, 10, true);
            }
            b.exported(Signal::Traces, &Ok(()), 10, true);
            b.exported(Signal::Traces, &Ok(()), 10, true);
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(lines[0].contains("OTLP export is failing"), "{log}");
        assert!(
            lines[1].contains("OTLP export recovered") && lines[1].contains("failures=100"),
            "{log}"
        );
        assert_eq!(b.failures.load(Ordering::Relaxed), 100);
        assert_eq!(b.ok.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_owner_that_logs_outages_itself_gets_no_lines_from_the_exporters() {
        let b = Batched::default();
        let failed: OTelSdkResult = Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            "down".into(),
        ));
        let log = logged(|| {
            b.exported(Signal::Logs, &failed, 1, false);
            b.exported(Signal::Logs, &Ok(()), 1, false);
        });
        assert_eq!(log, "");
        assert!(ExportStats::without_outage_log().outages_logged_elsewhere);
    }
}
