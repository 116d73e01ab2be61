//! The one OTLP wire client, for requests we encode ourselves.
//!
//! The receiver encodes its `ExportMetricsServiceRequest` straight from its snapshot
//! (and the span recorder will encode `ExportTraceServiceRequest`s); this client sends
//! those bytes. It reads like the Collector's exporterhelper, one stage per job, each
//! wrapping the next:
//!
//! - **outcome** ([`OtlpClient::export`]): counts the result in [`ExportStats`] (the
//!   same counters and "OTLP export is failing" lines as the SDK's exporters), and
//!   counts and logs a collector's `partial_success`;
//! - **retry** ([`retry`]): the OTLP specification's transient failures, retried with
//!   backoff and jitter, `RetryInfo` / `Retry-After` honoured, all within the export
//!   timeout;
//! - **timeout**: each attempt gets what is left of the export timeout;
//! - **transport**: gRPC (tonic, with a codec that sends the bytes as they are), or
//!   OTLP/HTTP with protobuf bodies (`POST /v1/<signal>`, hyper's client; plain
//!   `http://` only so far, `https://` is refused at start naming the variable).
//!
//! There is no queue stage: a caller sends one request at a time (the receiver sends
//! the latest snapshot once per interval and skips a tick while an export is still in
//! flight, so nothing piles up while the collector is down).
//!
//! Settings come from [`ExporterConfig`] (`ExporterConfig::resolve`), the same parser
//! as the SDK path: endpoint, headers, gzip, timeout, CA and client certificate.

mod grpc;
mod http;
pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::{ExporterConfig, Protocol, Signal};
use crate::export::ExportStats;

/// Why the client could not be built. Each message names the variables that hold
/// the bad setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The endpoint is not a URL the client can use.
    #[error(
        "{vars}: {value:?} is not a usable OTLP endpoint ({reason}); example: http://localhost:4317"
    )]
    Endpoint {
        /// The variables that set it.
        vars: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate, client certificate or key cannot be used.
    #[error("{vars}: the TLS settings cannot be used: {reason}")]
    Tls {
        /// The variables that set them.
        vars: String,
        /// What is wrong with them.
        reason: String,
    },
    /// TLS material was given for a plain-text endpoint.
    #[error(
        "{vars} are set but the endpoint {endpoint} is not https://: use an https:// endpoint \
         or unset them"
    )]
    TlsOnPlainEndpoint {
        /// The TLS variables.
        vars: String,
        /// The endpoint.
        endpoint: String,
    },
    /// A header is not valid gRPC metadata.
    #[error("{vars}: header {name:?} cannot be sent as gRPC metadata; example: api-key=secret")]
    Header {
        /// The variables that set it.
        vars: String,
        /// The header name.
        name: String,
    },
}

/// The variables behind each setting of a signal, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct EnvNames {
    endpoint: String,
    headers: String,
    tls: String,
}

pub(crate) fn env_names(signal: Signal) -> EnvNames {
    let infix = match signal {
        Signal::Traces => "TRACES_",
        Signal::Metrics => "METRICS_",
        Signal::Logs => "LOGS_",
    };
    let pair = |s: &str| format!("OTEL_EXPORTER_OTLP_{infix}{s} or OTEL_EXPORTER_OTLP_{s}");
    EnvNames {
        endpoint: pair("ENDPOINT"),
        headers: pair("HEADERS"),
        tls: format!(
            "{} / {} / {}",
            pair("CERTIFICATE"),
            pair("CLIENT_CERTIFICATE"),
            pair("CLIENT_KEY")
        ),
    }
}

/// An error and its sources, `a: b: c`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = s.source();
    }
    out
}

/// What a collector said it rejected in a `partial_success`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Rejected data points (metrics) or spans (traces).
    pub count: u64,
    /// The collector's explanation.
    pub message: String,
}

/// A successful attempt's answer.
#[derive(Debug)]
pub(crate) struct Reply {
    rejected: Option<Rejected>,
}

/// One attempt: the answer, or how it failed and why.
pub(crate) type Attempt = Result<Reply, (retry::Verdict, String)>;

/// An export the collector took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Attempts it took (1 without a retry).
    pub attempts: u32,
    /// What the collector rejected of it, if anything.
    pub rejected: Option<Rejected>,
}

/// An export that failed after its retries.
#[derive(Debug, Clone, thiserror::Error)]
#[error("OTLP export failed after {attempts} attempt(s): {last}")]
pub struct ExportFailed {
    /// Attempts made.
    pub attempts: u32,
    /// Whether the last failure was permanent (not worth retrying).
    pub permanent: bool,
    /// The last failure.
    pub last: String,
}

#[derive(Debug, Clone)]
enum Transport {
    Grpc(Box<grpc::GrpcTransport>),
    Http(Box<http::HttpTransport>),
}

/// Sends OTLP requests encoded by the caller, with the retry policy, the timeout and
/// the counters of this crate's exporters. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct OtlpClient {
    transport: Transport,
    signal: Signal,
    timeout: Duration,
    stats: Arc<ExportStats>,
    partial: Arc<PartialLog>,
}

impl OtlpClient {
    /// A client of `signal` (metrics now; traces next) for `cfg`. Call it inside a tokio
    /// runtime (the gRPC channel's worker lives there); the collector need not be up.
    ///
    /// # Errors
    /// A setting cannot be used: the error names its variables.
    pub fn new(
        signal: Signal,
        cfg: &ExporterConfig,
        stats: Arc<ExportStats>,
    ) -> Result<Self, BuildError> {
        let transport = match cfg.protocol {
            Protocol::Grpc => Transport::Grpc(Box::new(grpc::GrpcTransport::new(signal, cfg)?)),
            Protocol::HttpProtobuf => {
                Transport::Http(Box::new(http::HttpTransport::new(signal, cfg)?))
            }
        };
        Ok(Self {
            transport,
            signal,
            timeout: cfg.timeout,
            stats,
            partial: Arc::default(),
        })
    }

    /// The export timeout: every export, retries included, ends within it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The counters this client counts into.
    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// Sends one encoded `ExportMetricsServiceRequest` (for a metrics client), retrying
    /// transient failures until the export timeout; counts the outcome.
    ///
    /// # Errors
    /// Every attempt failed, or one failed for good.
    pub async fn export(&self, body: Bytes) -> Result<Delivered, ExportFailed> {
        let result = self.with_retry(body).await;
        if self.signal == Signal::Metrics {
            self.stats
                .metrics_exported(result.as_ref().err().map(|e| e.last.as_str()));
        }
        if let Ok(d) = &result {
            self.partial
                .observe(self.signal, d.rejected.as_ref(), &self.stats);
        }
        result
    }

    /// Sends one encoded request with the retry and timeout stages, counting a
    /// `partial_success` but not the outcome: for callers that count it
    /// themselves (the metrics exporter with exemplars, wrapped in
    /// `CountingMetricExporter`).
    ///
    /// # Errors
    /// Every attempt failed, or one failed for good.
    pub async fn send(&self, body: Bytes) -> Result<Delivered, ExportFailed> {
        let result = self.with_retry(body).await;
        if let Ok(d) = &result {
            self.partial
                .observe(self.signal, d.rejected.as_ref(), &self.stats);
        }
        result
    }

    /// The retry and timeout stages.
    async fn with_retry(&self, body: Bytes) -> Result<Delivered, ExportFailed> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = retry::Backoff::default();
        let mut attempts = 0;
        // The last attempt's failure: when the timeout runs out, it is still the cause.
        let mut last_why: Option<String> = None;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = if left.is_zero() {
                Err((
                    retry::Verdict::Permanent,
                    match last_why.take() {
                        Some(why) => format!("{why} (and the export timeout is spent)"),
                        None => "the export timeout is spent".into(),
                    },
                ))
            } else {
                self.attempt(body.clone(), left).await
            };
            let (verdict, why) = match outcome {
                Ok(reply) => {
                    return Ok(Delivered {
                        attempts,
                        rejected: reply.rejected,
                    });
                }
                Err(e) => e,
            };
            last_why = Some(why.clone());
            let fail = |permanent| ExportFailed {
                attempts,
                permanent,
                last: why.clone(),
            };
            let Some(delay) = backoff.delay(verdict) else {
                return Err(fail(true));
            };
            if Instant::now() + delay >= deadline {
                // The next attempt could not start before the deadline.
                return Err(fail(false));
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, body: Bytes, timeout: Duration) -> Attempt {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse as Metrics;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse as Traces;
        match (&self.transport, self.signal) {
            (Transport::Grpc(t), Signal::Traces) => t.send::<Traces>(body, timeout).await,
            (Transport::Grpc(t), _) => t.send::<Metrics>(body, timeout).await,
            (Transport::Http(t), Signal::Traces) => t.send::<Traces>(body, timeout).await,
            (Transport::Http(t), _) => t.send::<Metrics>(body, timeout).await,
        }
    }
}

/// Logs rejected data once per spell of `partial_success` answers (as an outage is
/// logged once), and counts every rejected point.
#[derive(Debug, Default)]
struct PartialLog {
    rejecting: AtomicBool,
}

impl PartialLog {
    fn observe(&self, signal: Signal, rejected: Option<&Rejected>, stats: &ExportStats) {
        match rejected {
            Some(r) if r.count > 0 || !r.message.is_empty() => {
                if signal == Signal::Metrics {
                    stats.metric_points_rejected_add(r.count);
                }
                if !self.rejecting.swap(true, Ordering::AcqRel) {
                    let _sdk = crate::monitored::SdkScope::enter();
                    tracing::warn!(
                        signal = signal.as_str(),
                        rejected = r.count,
                        message = %r.message,
                        "the collector rejected part of an OTLP export (partial_success); \
                         rejected points are counted (logged again after a clean export)"
                    );
                }
            }
            _ => {
                if self.rejecting.load(Ordering::Relaxed) {
                    self.rejecting.store(false, Ordering::Release);
                }
            }
        }
    }
}
