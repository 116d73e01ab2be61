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
//!
//! Over `http/protobuf` the client is ours (`http_client`): hyper with rustls, the
//! configured certificates and the timeout, running on the [`ExportRuntime`]. It also
//! keeps the cause of each failed attempt, which opentelemetry-otlp's HTTP exporter
//! reduces to "network error", so the outage line says why on both transports.
//!
//! When the guard's shutdown deadline passes with exports still being retried (a
//! short-lived program and a dead collector: the export timeout, 10 s by default,
//! outlasts the 5 s deadline), what is abandoned is counted and logged as a failure
//! too ([`ExportStats::shutdown_deadline_passed`]); otherwise such a program would exit
//! without a word about the telemetry it lost.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

#[cfg(feature = "http-proto")]
mod http_client;
#[cfg(feature = "http-proto")]
pub(crate) use http_client::Connector as HttpsConnector;

/// Why an exporter or the runtime it runs on could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The OTLP wire client (the metrics export with exemplars) could not be built.
    #[error(transparent)]
    Wire(#[from] crate::otlp::BuildError),
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
    /// The OTLP/HTTP client could not be built (its TLS settings).
    #[error("cannot build the OTLP/HTTP client of the {signal} exporter for {endpoint}")]
    HttpClient {
        /// traces, metrics or logs.
        signal: Signal,
        /// The endpoint in use.
        endpoint: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
/// The lines carry the error: the transport's own cause of the last failed attempt
/// when it left one ([`Self::attempt_failed`]), the exporter's error otherwise.
#[derive(Debug, Default)]
struct OutageLog {
    failing: AtomicBool,
    /// Failures counted before the outage started.
    base: AtomicU64,
    /// When it started and when the last line was written, seconds since the epoch.
    since: AtomicU64,
    logged_at: AtomicU64,
    /// Why the last attempt failed, as the transport saw it; cleared by an answer.
    cause: Mutex<Option<String>>,
}

impl OutageLog {
    fn cause(&self) -> MutexGuard<'_, Option<String>> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt got no answer, for this reason (the exporter may still retry).
    #[cfg_attr(not(feature = "http-proto"), allow(dead_code))]
    fn attempt_failed(&self, cause: String) {
        *self.cause() = Some(cause);
    }

    /// An attempt got an answer (whatever its status: the exporter's error says it).
    #[cfg_attr(not(feature = "http-proto"), allow(dead_code))]
    fn attempt_answered(&self) {
        *self.cause() = None;
    }

    /// What to say about a failed export whose own error is `error`.
    fn error(&self, error: &dyn std::fmt::Display) -> String {
        match self.cause().take() {
            Some(cause) => cause,
            None => error.to_string(),
        }
    }

    /// One more failed export; `failures` is the count including it.
    #[cold]
    fn failed(&self, signal: Signal, failures: u64, error: &str) {
        let _sdk = crate::monitored::SdkScope::enter();
        let now = unix_secs();
        if !self.failing.swap(true, Ordering::AcqRel) {
            self.base.store(failures - 1, Ordering::Relaxed);
            self.since.store(now, Ordering::Relaxed);
            self.logged_at.store(now, Ordering::Relaxed);
            tracing::warn!(
                signal = signal.as_str(),
                error,
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
                error,
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
    /// Items handed to the exporter whose export has not returned yet.
    in_flight: AtomicU64,
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

    /// Takes `n` items at once into a queue of `capacity`, or counts all `n`
    /// as dropped.
    #[inline]
    fn admit_n(&self, n: usize, capacity: usize) -> bool {
        if self.queued.fetch_add(n, Ordering::AcqRel) + n <= capacity {
            return true;
        }
        self.queued.fetch_sub(n, Ordering::AcqRel);
        self.queue_full.fetch_add(n as u64, Ordering::Relaxed);
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
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if log {
                    self.outage
                        .succeeded(signal, self.failures.load(Ordering::Relaxed));
                }
            }
            Err(e) => {
                self.failed(n);
                let error = self.outage.error(e);
                if log {
                    self.outage
                        .failed(signal, self.failures.load(Ordering::Relaxed), &error);
                }
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
    /// Metric exports that have not returned yet.
    metric_in_flight: AtomicU64,
    /// Whether the shutdown deadline passed; held while an export's result is
    /// counted, so an export is counted once, by itself or as abandoned.
    abandoned: Mutex<bool>,
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
    /// [`CountingMetricExporter`]. `failure` is why it failed, `None` when it succeeded.
    pub fn metrics_exported(&self, failure: Option<&str>) {
        if let Some(error) = failure {
            let failures = self.metric_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.outages_logged_elsewhere {
                self.metric_outage.failed(Signal::Metrics, failures, error);
            }
        } else {
            self.metric_ok.fetch_add(1, Ordering::Relaxed);
            if !self.outages_logged_elsewhere {
                self.metric_outage.succeeded(
                    Signal::Metrics,
                    self.metric_failures.load(Ordering::Relaxed),
                );
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

    /// The outage log of a signal, where its transport leaves causes.
    #[cfg_attr(not(feature = "http-proto"), allow(dead_code))]
    fn outage(&self, signal: Signal) -> &OutageLog {
        match signal {
            Signal::Traces => &self.spans.outage,
            Signal::Metrics => &self.metric_outage,
            Signal::Logs => &self.logs.outage,
        }
    }

    fn abandoned(&self) -> MutexGuard<'_, bool> {
        self.abandoned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The telemetry guard's shutdown deadline (`deadline`) passed before every export
    /// returned. What is still queued or being exported will never arrive (the export
    /// runtime goes next): each signal with such items counts one failed export and
    /// its items as lost, and logs its outage, as a failed export would have. From
    /// now on, exports that return are not counted again. Call it once, after the
    /// deadline.
    pub fn shutdown_deadline_passed(&self, deadline: Duration) {
        let mut abandoned = self.abandoned();
        if std::mem::replace(&mut *abandoned, true) {
            return;
        }
        let log = !self.outages_logged_elsewhere;
        let why = |outage: &OutageLog| {
            let last = outage.error(&"");
            let mut why = format!(
                "the export was still being retried when the shutdown deadline ({deadline:?}) passed"
            );
            if !last.is_empty() {
                why.push_str("; last attempt: ");
                why.push_str(&last);
            }
            why
        };
        for (signal, b) in [(Signal::Traces, &self.spans), (Signal::Logs, &self.logs)] {
            let in_flight = b.in_flight.load(Ordering::Acquire);
            let pending = in_flight + b.queued.load(Ordering::Acquire) as u64;
            if pending == 0 {
                continue;
            }
            b.failed(pending);
            if log {
                b.outage
                    .failed(signal, b.failures.load(Ordering::Relaxed), &why(&b.outage));
            }
        }
        if self.metric_in_flight.load(Ordering::Acquire) > 0 {
            let failures = self.metric_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if log {
                self.metric_outage
                    .failed(Signal::Metrics, failures, &why(&self.metric_outage));
            }
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
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        // Off the caller's thread: only exported spans pay for redaction.
        crate::redact::spans(&mut batch);
        let n = batch.len();
        let s = &self.stats;
        s.spans.in_flight.fetch_add(n as u64, Ordering::AcqRel);
        s.spans.handed_over(n);
        let result = self.inner.export(batch).await;
        let abandoned = s.abandoned();
        s.spans.in_flight.fetch_sub(n as u64, Ordering::AcqRel);
        if !*abandoned {
            let log = !s.outages_logged_elsewhere;
            s.spans.exported(Signal::Traces, &result, n as u64, log);
        }
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

thread_local! {
    /// Set while the tail keeper hands over spans it admitted already (see
    /// [`SpanAdmission`]): [`QueueLimit`] does not count them a second time.
    static PRE_ADMITTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the spans it ends counted as admitted already.
pub(crate) fn pre_admitted<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            PRE_ADMITTED.with(|p| p.set(self.0));
        }
    }
    let _reset = Reset(PRE_ADMITTED.with(|p| p.replace(true)));
    f()
}

/// The span queue's bound, taken where the native recorder and the tail keeper
/// hand their records over: spans waiting for conversion already hold their
/// places in the batch queue, so the hand-off and the queue are one queue with
/// one bound and one count, and an overloaded exporter costs a recorded root
/// one atomic add and a count, not a conversion.
#[derive(Debug)]
pub(crate) struct SpanAdmission {
    stats: Arc<ExportStats>,
    capacity: usize,
}

impl SpanAdmission {
    pub(crate) fn new(stats: Arc<ExportStats>, capacity: usize) -> Self {
        Self { stats, capacity }
    }

    /// Takes the `n` spans of one hand-off into the queue, or counts them all
    /// as dropped (`reason="queue_full"`).
    pub(crate) fn admit(&self, n: usize) -> bool {
        let b = self.stats.batched(Signal::Traces);
        let admitted = b.admit_n(n, self.capacity);
        if !admitted {
            b.warn_queue_full(Signal::Traces, self.capacity);
        }
        admitted
    }

    /// Gives back the places of `n` admitted spans that will not be handed on.
    pub(crate) fn release(&self, n: usize) {
        self.stats.batched(Signal::Traces).handed_over(n);
    }
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
        let span_id = u64::from_be_bytes(span.span_context.span_id().to_bytes());
        if PRE_ADMITTED.with(std::cell::Cell::get) || self.admit() {
            // Admitted: on its way to the exporter, so it may stand for its
            // latency bucket, and so may the `histogram!` points recorded in it.
            crate::exemplars::offer(&span);
            crate::exemplars::span_ended(span_id, true);
            self.inner.on_end(span);
        } else {
            crate::exemplars::span_ended(span_id, false);
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

/// A span processor shared by the tracer provider and the tail keeper (which
/// hands it the traces it keeps). The resource is set on the inner processor
/// before it is shared: this wrapper cannot reach it through the `Arc`.
#[derive(Debug)]
pub struct SharedProcessor<P>(Arc<P>);

impl<P> SharedProcessor<P> {
    /// Shares `inner`, whose resource is already set.
    pub fn new(inner: Arc<P>) -> Self {
        Self(inner)
    }
}

impl<P: SpanProcessor> SpanProcessor for SharedProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Recorded and kept spans still on their way reach the processor first.
        crate::monitored::flush_tail(Duration::from_secs(1));
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Traces kept by the tail keeper reach the processor before it shuts down.
        crate::monitored::flush_tail(timeout / 4);
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, _resource: &opentelemetry_sdk::Resource) {}
}

impl<P: LogProcessor> LogProcessor for QueueLimit<P> {
    fn emit(&self, record: &mut SdkLogRecord, scope: &opentelemetry::InstrumentationScope) {
        let _sdk = crate::monitored::SdkScope::enter();
        // A record inside a monitored call without an SDK span (unsampled, or
        // recorded natively) carries its trace id, and its span id when the
        // tail keeper records the call: the SDK only looks for an active
        // span, which such a call has not.
        if record.trace_context().is_none()
            && let Some((trace_id, span_id, flags)) = crate::monitored::spanless_trace()
        {
            use opentelemetry::logs::LogRecord as _;
            record.set_trace_context(trace_id, span_id, Some(flags));
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

/// A log exporter that redacts and counts failed batches.
#[derive(Debug)]
pub struct CountingLogExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
    redactor: crate::redact::LogRedactor,
}

impl<E> CountingLogExporter<E> {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: E, stats: Arc<ExportStats>) -> Self {
        Self {
            inner,
            stats,
            redactor: crate::redact::LogRedactor::default(),
        }
    }
}

impl<E: LogExporter> LogExporter for CountingLogExporter<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        let s = &self.stats;
        s.logs.in_flight.fetch_add(n as u64, Ordering::AcqRel);
        s.logs.handed_over(n);
        // Off the caller's thread: a record with something to redact is
        // rebuilt (the SDK's records cannot have an attribute replaced).
        let redacted: Vec<Option<SdkLogRecord>> =
            batch.iter().map(|(r, _)| self.redactor.record(r)).collect();
        let result = if redacted.iter().all(Option::is_none) {
            self.inner.export(batch).await
        } else {
            let items: Vec<(&SdkLogRecord, &opentelemetry::InstrumentationScope)> = batch
                .iter()
                .zip(&redacted)
                .map(|((r, scope), new)| (new.as_ref().unwrap_or(r), scope))
                .collect();
            self.inner.export(LogBatch::new(&items)).await
        };
        let abandoned = s.abandoned();
        s.logs.in_flight.fetch_sub(n as u64, Ordering::AcqRel);
        if !*abandoned {
            let log = !s.outages_logged_elsewhere;
            s.logs.exported(Signal::Logs, &result, n as u64, log);
        }
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
        let s = &self.stats;
        s.metric_in_flight.fetch_add(1, Ordering::AcqRel);
        let result = self.inner.export(metrics).await;
        let abandoned = s.abandoned();
        s.metric_in_flight.fetch_sub(1, Ordering::AcqRel);
        if *abandoned {
            return result;
        }
        match &result {
            Ok(()) => {
                s.metric_ok.fetch_add(1, Ordering::Relaxed);
                if !s.outages_logged_elsewhere {
                    s.metric_outage
                        .succeeded(Signal::Metrics, s.metric_failures.load(Ordering::Relaxed));
                }
            }
            Err(e) => {
                let failures = s.metric_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let error = s.metric_outage.error(e);
                if !s.outages_logged_elsewhere {
                    s.metric_outage.failed(Signal::Metrics, failures, &error);
                }
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

/// How transient export failures are retried: exponential backoff from 25 ms,
/// doubling up to 100 ms, with up to 25 ms of jitter and never more than 100 ms
/// between attempts; a collector's RetryInfo (throttling) raises the delay to
/// what it asks. opentelemetry-otlp classifies the codes as the OTLP
/// specification says and stops when the export timeout
/// (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default) is spent, so the retry count is
/// only a backstop sized to outlast that timeout.
///
/// The cap is short because the batch queue stays full while the exporter
/// sleeps: everything issued between the collector's return and the next
/// attempt is dropped. A 1 s cap lost up to a second of spans after every
/// collector restart (6,000–9,000 spans at 10,000 spans/s); at 100 ms the loss
/// after the return is bounded by a tenth of that. An attempt against a
/// collector that is down costs a refused connection.
pub fn retry_policy() -> RetryPolicy {
    use crate::otlp::retry::{INITIAL_DELAY, MAX_DELAY, MAX_JITTER};
    RetryPolicy::recommended()
        .with_max_retries(400)
        .with_initial_delay(INITIAL_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_max_jitter(MAX_JITTER)
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

/// Applies endpoint, timeout, headers and compression to an HTTP builder, and our
/// own client ([`http_client::Transport`]): TLS, certificates and the timeout, with its
/// failures' causes left in `stats`.
#[cfg(feature = "http-proto")]
fn http_settings<B: opentelemetry_otlp::WithHttpConfig + WithExportConfig>(
    b: B,
    rt: &ExportRuntime,
    signal: Signal,
    cfg: &ExporterConfig,
    stats: &Arc<ExportStats>,
) -> Result<B, ExportError> {
    let client = http_client::Transport::new(rt, signal, cfg, stats.clone())?;
    let mut b = b
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_headers(cfg.headers.iter().cloned().collect())
        .with_retry_policy(retry_policy());
    if let Some(Compression::Gzip) = cfg.compression {
        b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    Ok(b)
}

/// Builds an OTLP exporter from a signal's builder: gRPC inside the export runtime
/// (tonic's channel lives there), HTTP with a client whose requests run on it. The
/// span and metric builders are distinct types with the same methods, hence a macro.
macro_rules! build_exporter {
    ($builder:expr, $signal:expr, $rt:expr, $cfg:expr, $stats:expr) => {{
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
            Protocol::HttpProtobuf => http_settings(builder.with_http(), $rt, signal, cfg, $stats)?
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
    let exporter = build_exporter!(builder, Signal::Traces, rt, cfg, &stats);
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
    let exporter = build_exporter!(builder, Signal::Metrics, rt, cfg, &stats);
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
    let exporter = build_exporter!(builder, Signal::Logs, rt, cfg, &stats);
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
    fn the_outage_line_gives_the_transports_cause_over_the_exporters_error() {
        let b = Batched::default();
        let failed: OTelSdkResult = Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
            "HTTP export failed: network error".into(),
        ));
        b.outage
            .attempt_failed("tcp connect error: Connection refused".into());
        let log = logged(|| b.exported(Signal::Traces, &failed, 1, true));
        assert!(
            log.contains("OTLP export is failing")
                && log.contains("error=\"tcp connect error: Connection refused\""),
            "{log}"
        );
        // Without a cause from the transport, the exporter's error is given.
        let b = Batched::default();
        b.outage.attempt_failed("stale".into());
        b.outage.attempt_answered();
        let log = logged(|| b.exported(Signal::Traces, &failed, 1, true));
        assert!(
            log.contains("network error") && !log.contains("stale"),
            "{log}"
        );
    }

    #[derive(Debug)]
    struct Failing;

    impl SpanExporter for Failing {
        async fn export(&self, _: Vec<SpanData>) -> OTelSdkResult {
            Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                "late".into(),
            ))
        }
    }

    #[test]
    fn what_the_shutdown_deadline_cuts_off_is_counted_once_and_logged() {
        let stats = Arc::new(ExportStats::default());
        stats.spans.queued.store(3, Ordering::Relaxed);
        stats.spans.in_flight.store(2, Ordering::Relaxed);
        stats.metric_in_flight.store(1, Ordering::Relaxed);
        let log = logged(|| stats.shutdown_deadline_passed(Duration::from_secs(5)));
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        for (line, signal) in lines.iter().zip(["traces", "metrics"]) {
            assert!(
                line.contains("OTLP export is failing")
                    && line.contains(&format!("signal=\"{signal}\""))
                    && line.contains("shutdown deadline (5s) passed"),
                "{log}"
            );
        }
        assert_eq!(stats.failures(Signal::Traces), 1);
        assert_eq!(stats.spans_lost(), 5, "in flight and queued");
        assert_eq!(stats.failures(Signal::Metrics), 1);
        assert_eq!(stats.failures(Signal::Logs), 0);

        // The abandoned export returning later, or the deadline reported twice,
        // counts nothing more.
        let exporter = CountingSpanExporter::new(Failing, stats.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(exporter.export(Vec::new())).is_err());
        stats.shutdown_deadline_passed(Duration::from_secs(5));
        assert_eq!(stats.failures(Signal::Traces), 1);
        assert_eq!(stats.spans_lost(), 5);
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
