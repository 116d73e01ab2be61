//! `OTEL_*` environment parsing into one typed [`Config`], with errors that name
//! the variable, quote the bad value and show a valid example.
//!
//! Unlike opentelemetry-rust, which ignores a value it cannot parse, every bad
//! value here is an error. The environment is read through an injectable lookup
//! ([`Config::from_lookup`]) so tests never touch the process environment.

use std::fmt;
use std::time::Duration;

/// The generic OTLP endpoint variable.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Default OTLP/gRPC endpoint.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// Default OTLP/HTTP endpoint.
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";

/// An environment value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A variable holds a value that cannot be used.
    #[error("{var}={value:?} is invalid: {reason}. Example of a valid value: {var}={example}")]
    Invalid {
        /// The variable (or builder setting) at fault.
        var: String,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
        /// A value that would be accepted.
        example: &'static str,
    },
}

impl ConfigError {
    fn invalid(var: &str, value: &str, reason: impl Into<String>, example: &'static str) -> Self {
        Self::Invalid {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
            example,
        }
    }

    /// The variable the error is about.
    pub fn variable(&self) -> &str {
        match self {
            Self::Invalid { var, .. } => var,
        }
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// OTLP over gRPC (tonic). The default. Default endpoint:
    /// `http://localhost:4317`.
    #[default]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (feature `http-proto`). Default
    /// endpoint: `http://localhost:4318`, plus `/v1/<signal>`.
    HttpProtobuf,
}

impl Protocol {
    fn parse(var: &str, value: &str) -> Result<Self, ConfigError> {
        match value.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => Err(ConfigError::invalid(
                var,
                value,
                "http/json is not supported; use grpc or http/protobuf",
                "grpc",
            )),
            _ => Err(ConfigError::invalid(
                var,
                value,
                "unknown protocol; expected grpc or http/protobuf",
                "grpc",
            )),
        }
    }
}

/// Payload compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip.
    Gzip,
}

/// Which sampler to use for new traces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    /// Record and export every trace.
    AlwaysOn,
    /// Export nothing.
    AlwaysOff,
    /// Keep the given fraction of traces, by trace id.
    TraceIdRatio(f64),
    /// Follow the parent's decision; use the inner sampler for roots.
    ParentBased(ParentRoot),
}

impl Default for SamplerConfig {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Self::ParentBased(ParentRoot::AlwaysOn)
    }
}

/// The root sampler of a parent-based sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentRoot {
    /// Sample every root.
    AlwaysOn,
    /// Sample no root.
    AlwaysOff,
    /// Sample a fraction of roots by trace id.
    TraceIdRatio(f64),
}

const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

impl SamplerConfig {
    fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let Some(name) = non_empty(lookup(OTEL_TRACES_SAMPLER)) else {
            return Ok(Self::default());
        };
        let arg = non_empty(lookup(OTEL_TRACES_SAMPLER_ARG));
        let ratio = || -> Result<f64, ConfigError> {
            match &arg {
                None => Ok(1.0),
                Some(a) => parse_ratio(OTEL_TRACES_SAMPLER_ARG, a),
            }
        };
        Ok(match name.trim() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Self::ParentBased(ParentRoot::AlwaysOn),
            "parentbased_always_off" => Self::ParentBased(ParentRoot::AlwaysOff),
            "parentbased_traceidratio" => Self::ParentBased(ParentRoot::TraceIdRatio(ratio()?)),
            _ => {
                return Err(ConfigError::invalid(
                    OTEL_TRACES_SAMPLER,
                    &name,
                    "unknown sampler; expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
                    "parentbased_traceidratio",
                ));
            }
        })
    }
}

/// Parses a sampling ratio in [0, 1].
pub(crate) fn parse_ratio(var: &str, value: &str) -> Result<f64, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Ok(_) => Err(ConfigError::invalid(
            var,
            value,
            "the ratio must be between 0 and 1",
            "0.25",
        )),
        Err(_) => Err(ConfigError::invalid(var, value, "not a number", "0.25")),
    }
}

/// Settings for one signal's OTLP exporter, after precedence is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterConfig {
    /// Where to send. Default: `http://localhost:4317` (gRPC) or
    /// `http://localhost:4318/v1/<signal>` (HTTP).
    pub endpoint: String,
    /// Extra request headers (gRPC metadata). Default: none.
    pub headers: Vec<(String, String)>,
    /// Deadline of one export. Default: 10 s.
    pub timeout: Duration,
    /// Payload compression. Default: none.
    pub compression: Option<Compression>,
    /// Transport. Default: gRPC.
    pub protocol: Protocol,
    /// TLS material for `https://` endpoints. Default: the system's roots, no
    /// client certificate.
    pub tls: TlsFiles,
}

/// PEM contents read from `OTEL_EXPORTER_OTLP_{,<SIGNAL>_}CERTIFICATE`,
/// `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// A CA certificate to trust besides the system's roots.
    pub ca_certificate: Option<Vec<u8>>,
    /// A client certificate and its key, for mTLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Which signal a setting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Traces.
    Traces,
    /// Metrics.
    Metrics,
    /// Logs.
    Logs,
}

impl Signal {
    fn env_infix(self) -> &'static str {
        match self {
            Self::Traces => "TRACES_",
            Self::Metrics => "METRICS_",
            Self::Logs => "LOGS_",
        }
    }

    fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "v1/traces",
            Self::Metrics => "v1/metrics",
            Self::Logs => "v1/logs",
        }
    }

    /// The signal's name as used in attributes: `traces`, `metrics` or `logs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Metrics => "metrics",
            Self::Logs => "logs",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Values set in code, which beat every environment variable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Generic endpoint for both signals.
    pub endpoint: Option<String>,
    /// Traces endpoint.
    pub traces_endpoint: Option<String>,
    /// Metrics endpoint.
    pub metrics_endpoint: Option<String>,
    /// Logs endpoint.
    pub logs_endpoint: Option<String>,
    /// Whether `tracing` events are exported as OTLP logs.
    pub logs_export: Option<bool>,
    /// Extra headers for both signals.
    pub headers: Option<Vec<(String, String)>>,
    /// Export timeout for both signals.
    pub timeout: Option<Duration>,
    /// Compression for both signals (`Some(None)` turns it off).
    pub compression: Option<Option<Compression>>,
    /// Transport for both signals.
    pub protocol: Option<Protocol>,
    /// Sampler.
    pub sampler: Option<SamplerConfig>,
    /// Metric export interval.
    pub metric_export_interval: Option<Duration>,
    /// Capacity of the batch span queue.
    pub span_queue_size: Option<usize>,
    /// Service name.
    pub service_name: Option<String>,
    /// Disables the SDK.
    pub disabled: Option<bool>,
    /// Whether spans are exported over OTLP.
    pub traces_export: Option<bool>,
    /// Whether metrics are exported over OTLP.
    pub metrics_export: Option<bool>,
    /// Context propagators (an empty list turns propagation off).
    pub propagators: Option<Vec<Propagator>>,
    /// Metric temporality.
    pub metrics_temporality: Option<opentelemetry_sdk::metrics::Temporality>,
    /// Exemplar filter.
    pub exemplar_filter: Option<ExemplarFilter>,
    /// A PEM CA certificate file to trust, for every signal.
    pub certificate: Option<std::path::PathBuf>,
    /// A PEM client certificate file and its key file (mTLS), for every signal.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Capacity of the batch log record queue.
    pub log_queue_size: Option<usize>,
    /// How spans are batched.
    pub span_batch: Option<BatchSettings>,
    /// How log records are batched.
    pub log_batch: Option<BatchSettings>,
    /// Whether the tail keeper runs.
    pub tail_keeper: Option<bool>,
    /// The tail keeper's fixed slow threshold (`Some(None)`: each function's p99).
    pub tail_slow: Option<Option<Duration>>,
    /// Most traces the tail keeper keeps per second.
    pub tail_rate: Option<u32>,
    /// Most new traces the head sampler samples per second (`Some(None)`: no limit).
    pub traces_per_second: Option<Option<u32>>,
    /// Redaction rules (replace `OTEL_INSTRUMENT_REDACT`).
    pub redaction: Option<crate::redact::Redaction>,
    /// Error fingerprints with their own series per function.
    pub error_groups: Option<usize>,
    /// Error reports per fingerprint and interval.
    pub error_reports: Option<crate::errors::ReportLimit>,
}

/// Everything `otel-instrument` reads from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `OTEL_SDK_DISABLED`: export nothing. Default: false.
    pub disabled: bool,
    /// `OTEL_SERVICE_NAME`. Default: none (the crate name from `init!()`).
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, in order. Default: none.
    pub resource_attributes: Vec<(String, String)>,
    /// The traces exporter.
    pub traces: ExporterConfig,
    /// The metrics exporter.
    pub metrics: ExporterConfig,
    /// The logs exporter.
    pub logs: ExporterConfig,
    /// `OTEL_LOGS_EXPORTER`: `otlp` exports `tracing` events (as filtered by
    /// `RUST_LOG`) as OTLP logs, `none` does not. Default: `otlp`.
    pub logs_export: bool,
    /// `OTEL_TRACES_EXPORTER`: `otlp` or `none`. Default: `otlp`.
    pub traces_export: bool,
    /// `OTEL_METRICS_EXPORTER`: `otlp` or `none` (the Prometheus endpoint, if
    /// any, still serves). Default: `otlp`.
    pub metrics_export: bool,
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: `cumulative`,
    /// `delta` or `lowmemory`. Default: `cumulative` (an outage loses no counts).
    pub metrics_temporality: opentelemetry_sdk::metrics::Temporality,
    /// `OTEL_METRICS_EXEMPLAR_FILTER`: `trace_based` and `always_on` add
    /// exemplars naming exported spans to `function.calls.duration` in the OTLP
    /// metrics (see `otel_instrument::exemplars`); `always_off` adds none.
    /// Default: `trace_based`.
    pub exemplar_filter: ExemplarFilter,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub span_batch: BatchSettings,
    /// `OTEL_BLRP_SCHEDULE_DELAY` (ms), `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE`.
    pub log_batch: BatchSettings,
    /// Values that were read leniently, as the specification asks (an
    /// unknown `OTEL_SDK_DISABLED`), to be logged once telemetry is up.
    pub warnings: Vec<String>,
    /// `OTEL_TRACES_SAMPLER` (+`_ARG`). Default: parentbased_always_on.
    pub sampler: SamplerConfig,
    /// `OTEL_PROPAGATORS`: `tracecontext`, `baggage`, or `none`, comma
    /// separated. Default: `tracecontext,baggage`.
    pub propagators: Vec<Propagator>,
    /// `OTEL_METRIC_EXPORT_INTERVAL` in ms. Default: 60 s.
    pub metric_export_interval: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans held while the collector is slow or
    /// down; more are dropped and counted. Default: 2048.
    pub span_queue_size: usize,
    /// `OTEL_BLRP_MAX_QUEUE_SIZE`: the same for log records. Default: 2048.
    pub log_queue_size: usize,
    /// The tail keeper: `OTEL_INSTRUMENT_TAIL_KEEPER` (`on`/`off`),
    /// `OTEL_INSTRUMENT_TAIL_SLOW` (`p99` or a duration such as `250ms`),
    /// `OTEL_INSTRUMENT_TAIL_SLOW_FLOOR`, `OTEL_INSTRUMENT_TAIL_RATE` (traces
    /// per second), `OTEL_INSTRUMENT_TAIL_MAX_SPANS` (per root),
    /// `OTEL_INSTRUMENT_TAIL_MAX_HELD` and `OTEL_INSTRUMENT_TAIL_MAX_HOLD`.
    pub tail: crate::monitored::TailSettings,
    /// `OTEL_INSTRUMENT_TRACES_PER_SECOND`: at most this many new traces are
    /// sampled per second in this process, on top of `OTEL_TRACES_SAMPLER`.
    /// Default: no limit.
    pub traces_per_second: Option<u32>,
    /// `OTEL_INSTRUMENT_REDACT`: the redaction rules applied before export
    /// (see [`Redaction::parse`](crate::redact::Redaction::parse)). Default: on,
    /// with every built-in rule.
    pub redaction: crate::redact::Redaction,
    /// `OTEL_INSTRUMENT_ERROR_GROUPS`: per function, how many error
    /// fingerprints get their own `function.errors` series; the rest share
    /// `error.fingerprint="overflow"`. Default: 20.
    pub error_groups: usize,
    /// `OTEL_INSTRUMENT_ERROR_REPORTS`: error reports (log line and `exception`
    /// event) per fingerprint and interval, as `<n>/<duration>` (`10/1m`), or
    /// `off`. Default: 10 per minute.
    pub error_reports: crate::errors::ReportLimit,
}

/// The SDK's default batch span queue capacity.
pub const DEFAULT_SPAN_QUEUE_SIZE: usize = 2048;

/// How a batch processor groups what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Longest wait before a partial batch is exported. Default: 5 s for
    /// spans, 1 s for logs (the SDK's).
    pub schedule_delay: Duration,
    /// Largest batch. Default: 512.
    pub max_export_batch_size: usize,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable whose value does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok(), &Overrides::default())
    }

    /// Reads variables through `lookup`, then applies `overrides` set in code.
    ///
    /// Precedence: overrides > signal-specific variable > generic variable > default.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable whose value does not parse.
    pub fn from_lookup(
        lookup: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let disabled = match overrides.disabled {
            Some(d) => d,
            // The specification: only "true" (any case) disables; anything
            // else is read as false with a warning, so a typo never stops a
            // service.
            None => match non_empty(lookup("OTEL_SDK_DISABLED")) {
                None => false,
                Some(v) if v.trim().eq_ignore_ascii_case("true") => true,
                Some(v) if v.trim().eq_ignore_ascii_case("false") => false,
                Some(v) => {
                    warnings.push(format!(
                        "OTEL_SDK_DISABLED={v:?} is not true or false; telemetry stays enabled. \
                         Example of a valid value: OTEL_SDK_DISABLED=true"
                    ));
                    false
                }
            },
        };
        let service_name = overrides
            .service_name
            .clone()
            .or_else(|| non_empty(lookup("OTEL_SERVICE_NAME")));
        let resource_attributes = match non_empty(lookup("OTEL_RESOURCE_ATTRIBUTES")) {
            None => Vec::new(),
            Some(v) => parse_key_values(
                "OTEL_RESOURCE_ATTRIBUTES",
                &v,
                "deployment.environment.name=prod,team=gpu",
            )?,
        };
        let sampler = match overrides.sampler {
            Some(s) => s,
            None => SamplerConfig::from_env(lookup)?,
        };
        let metric_export_interval = match overrides.metric_export_interval {
            Some(d) => d,
            None => match non_empty(lookup("OTEL_METRIC_EXPORT_INTERVAL")) {
                None => Duration::from_secs(60),
                Some(v) => {
                    let d = parse_millis("OTEL_METRIC_EXPORT_INTERVAL", &v, "10000")?;
                    if d.is_zero() {
                        return Err(ConfigError::invalid(
                            "OTEL_METRIC_EXPORT_INTERVAL",
                            &v,
                            "the interval must be greater than zero",
                            "10000",
                        ));
                    }
                    d
                }
            },
        };
        let logs_export = match overrides.logs_export {
            Some(on) => on,
            None => parse_exporter(lookup, "OTEL_LOGS_EXPORTER")?,
        };
        let traces_export = match overrides.traces_export {
            Some(on) => on,
            None => parse_exporter(lookup, "OTEL_TRACES_EXPORTER")?,
        };
        let propagators = match &overrides.propagators {
            Some(p) => p.clone(),
            None => parse_propagators(lookup)?,
        };
        let metrics_export = match overrides.metrics_export {
            Some(on) => on,
            None => parse_exporter(lookup, "OTEL_METRICS_EXPORTER")?,
        };
        let metrics_temporality = match overrides.metrics_temporality {
            Some(t) => t,
            None => match non_empty(lookup("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")) {
                None => opentelemetry_sdk::metrics::Temporality::Cumulative,
                Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                    "cumulative" => opentelemetry_sdk::metrics::Temporality::Cumulative,
                    "delta" => opentelemetry_sdk::metrics::Temporality::Delta,
                    "lowmemory" => opentelemetry_sdk::metrics::Temporality::LowMemory,
                    _ => {
                        return Err(ConfigError::invalid(
                            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                            &v,
                            "expected cumulative, delta or lowmemory",
                            "cumulative",
                        ));
                    }
                },
            },
        };
        let exemplar_filter = match overrides.exemplar_filter {
            Some(f) => f,
            None => match non_empty(lookup("OTEL_METRICS_EXEMPLAR_FILTER")) {
                None => ExemplarFilter::TraceBased,
                Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                    "always_on" => ExemplarFilter::AlwaysOn,
                    "always_off" => ExemplarFilter::AlwaysOff,
                    "trace_based" => ExemplarFilter::TraceBased,
                    _ => {
                        return Err(ConfigError::invalid(
                            "OTEL_METRICS_EXEMPLAR_FILTER",
                            &v,
                            "expected always_on, always_off or trace_based",
                            "trace_based",
                        ));
                    }
                },
            },
        };
        let batch = |prefix: &str, delay_ms: u64| -> Result<BatchSettings, ConfigError> {
            let delay_var = format!("{prefix}_SCHEDULE_DELAY");
            let size_var = format!("{prefix}_MAX_EXPORT_BATCH_SIZE");
            let schedule_delay = match non_empty(lookup(&delay_var)) {
                None => Duration::from_millis(delay_ms),
                Some(v) => parse_millis(&delay_var, &v, "5000")?,
            };
            let max_export_batch_size = match non_empty(lookup(&size_var)) {
                None => 512,
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        return Err(ConfigError::invalid(
                            &size_var,
                            &v,
                            "expected a whole number of items greater than zero",
                            "512",
                        ));
                    }
                },
            };
            Ok(BatchSettings {
                schedule_delay,
                max_export_batch_size,
            })
        };
        let span_batch = match overrides.span_batch {
            Some(b) => b,
            None => batch("OTEL_BSP", 5000)?,
        };
        let log_batch = match overrides.log_batch {
            Some(b) => b,
            None => batch("OTEL_BLRP", 1000)?,
        };
        let queue_size = |var: &str| -> Result<usize, ConfigError> {
            match non_empty(lookup(var)) {
                None => Ok(DEFAULT_SPAN_QUEUE_SIZE),
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(ConfigError::invalid(
                        var,
                        &v,
                        "expected a whole number of items greater than zero",
                        "2048",
                    )),
                },
            }
        };
        let span_queue_size = match overrides.span_queue_size {
            Some(n) => n,
            None => queue_size("OTEL_BSP_MAX_QUEUE_SIZE")?,
        };
        let log_queue_size = match overrides.log_queue_size {
            Some(n) => n,
            None => queue_size("OTEL_BLRP_MAX_QUEUE_SIZE")?,
        };
        let tail = tail_settings(lookup, overrides)?;
        let traces_per_second = match overrides.traces_per_second {
            Some(limit) => limit,
            None => match non_empty(lookup("OTEL_INSTRUMENT_TRACES_PER_SECOND")) {
                None => None,
                Some(v) => match v.trim().parse::<u32>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => {
                        return Err(ConfigError::invalid(
                            "OTEL_INSTRUMENT_TRACES_PER_SECOND",
                            &v,
                            "expected a whole number of traces per second, at least 1",
                            "50",
                        ));
                    }
                },
            },
        };
        let redaction = match &overrides.redaction {
            Some(r) => r.clone(),
            None => match non_empty(lookup(crate::redact::ENV)) {
                None => crate::redact::Redaction::default(),
                Some(v) => crate::redact::Redaction::default().parse(&v).map_err(|e| {
                    ConfigError::invalid(
                        crate::redact::ENV,
                        &v,
                        format!("{:?}: {}", e.item, e.reason),
                        "'-email;key:customer_ref;value:order_ref=ORD-[0-9]{8}'",
                    )
                })?,
            },
        };
        let error_groups = match overrides.error_groups {
            Some(n) => n.max(1),
            None => match non_empty(lookup("OTEL_INSTRUMENT_ERROR_GROUPS")) {
                None => crate::errors::DEFAULT_ERROR_GROUPS,
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) if (1..=10_000).contains(&n) => n,
                    _ => {
                        return Err(ConfigError::invalid(
                            "OTEL_INSTRUMENT_ERROR_GROUPS",
                            &v,
                            "expected a whole number of fingerprints per function, 1 to 10000",
                            "20",
                        ));
                    }
                },
            },
        };
        let error_reports = match overrides.error_reports {
            Some(r) => r,
            None => match non_empty(lookup("OTEL_INSTRUMENT_ERROR_REPORTS")) {
                None => crate::errors::ReportLimit::default(),
                Some(v) => parse_report_limit("OTEL_INSTRUMENT_ERROR_REPORTS", &v)?,
            },
        };
        let mut config = Self {
            redaction,
            error_groups,
            error_reports,
            tail,
            traces_per_second,
            disabled,
            service_name,
            resource_attributes,
            traces: ExporterConfig::resolve(Signal::Traces, lookup, overrides)?,
            metrics: ExporterConfig::resolve(Signal::Metrics, lookup, overrides)?,
            logs: ExporterConfig::resolve(Signal::Logs, lookup, overrides)?,
            logs_export,
            sampler,
            metric_export_interval,
            span_queue_size,
            log_queue_size,
            traces_export,
            propagators,
            metrics_export,
            metrics_temporality,
            exemplar_filter,
            span_batch,
            log_batch,
            warnings,
        };
        let unused = unused_tls_settings(lookup, &config);
        config.warnings.extend(unused);
        Ok(config)
    }
}

/// TLS variables that would change nothing, as warnings rather than silence:
/// `OTEL_EXPORTER_OTLP_*INSECURE`, which the specification applies only to an
/// endpoint without a scheme (ours always have one, and the scheme decides), and
/// certificates for a signal whose endpoint is `http://`.
fn unused_tls_settings(lookup: &dyn Fn(&str) -> Option<String>, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for infix in ["", "TRACES_", "METRICS_", "LOGS_"] {
        let var = format!("OTEL_EXPORTER_OTLP_{infix}INSECURE");
        if let Some(v) = non_empty(lookup(&var)) {
            out.push(format!(
                "{var}={v:?} has no effect: the endpoint's scheme decides, http:// is plain \
                 and https:// is TLS. Example of a valid endpoint: https://collector:4317"
            ));
        }
    }
    for (signal, exporter) in [
        (Signal::Traces, &config.traces),
        (Signal::Metrics, &config.metrics),
        (Signal::Logs, &config.logs),
    ] {
        if exporter.endpoint.starts_with("https://") {
            continue;
        }
        for suffix in ["CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"] {
            let specific = format!("OTEL_EXPORTER_OTLP_{}{suffix}", signal.env_infix());
            let generic = format!("OTEL_EXPORTER_OTLP_{suffix}");
            let Some(var) = [specific, generic]
                .into_iter()
                .find(|v| non_empty(lookup(v)).is_some())
            else {
                continue;
            };
            out.push(format!(
                "{var} is set, but the {signal} endpoint {} is not https://, so it is not \
                 used; give an https:// endpoint to export over TLS",
                exporter.endpoint
            ));
        }
    }
    out
}

impl ExporterConfig {
    /// Resolves one signal's exporter settings.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable whose value does not parse.
    pub fn resolve(
        signal: Signal,
        lookup: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let signal_var =
            |suffix: &str| format!("OTEL_EXPORTER_OTLP_{}{suffix}", signal.env_infix());
        let generic_var = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{suffix}");
        // The first of (signal-specific, generic) variables that is set, with its name.
        let pick = |suffix: &str| -> Option<(String, String)> {
            let s = signal_var(suffix);
            if let Some(v) = non_empty(lookup(&s)) {
                return Some((s, v));
            }
            let g = generic_var(suffix);
            non_empty(lookup(&g)).map(|v| (g, v))
        };

        let protocol = match overrides.protocol {
            Some(p) => p,
            None => match pick("PROTOCOL") {
                None => Protocol::Grpc,
                Some((var, v)) => Protocol::parse(&var, &v)?,
            },
        };

        let signal_override = match signal {
            Signal::Traces => overrides.traces_endpoint.as_ref(),
            Signal::Metrics => overrides.metrics_endpoint.as_ref(),
            Signal::Logs => overrides.logs_endpoint.as_ref(),
        };
        let endpoint = if let Some(e) = signal_override.or(overrides.endpoint.as_ref()) {
            validate_endpoint("endpoint", e)?;
            if signal_override.is_none() && protocol == Protocol::HttpProtobuf {
                append_path(e, signal.http_path())
            } else {
                e.clone()
            }
        } else if let Some(v) = non_empty(lookup(&signal_var("ENDPOINT"))) {
            validate_endpoint(&signal_var("ENDPOINT"), &v)?;
            v
        } else if let Some(v) = non_empty(lookup(&generic_var("ENDPOINT"))) {
            validate_endpoint(&generic_var("ENDPOINT"), &v)?;
            // Per the spec, the generic endpoint is a base URL for HTTP.
            match protocol {
                Protocol::Grpc => v,
                Protocol::HttpProtobuf => append_path(&v, signal.http_path()),
            }
        } else {
            match protocol {
                Protocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_owned(),
                Protocol::HttpProtobuf => append_path(DEFAULT_HTTP_ENDPOINT, signal.http_path()),
            }
        };

        let headers = match &overrides.headers {
            Some(h) => h.clone(),
            None => match pick("HEADERS") {
                None => Vec::new(),
                Some((var, v)) => parse_headers(&var, &v)?,
            },
        };

        // The processors' own export timeouts (OTEL_BSP_EXPORT_TIMEOUT,
        // OTEL_METRIC_EXPORT_TIMEOUT, OTEL_BLRP_EXPORT_TIMEOUT) sit between the
        // signal-specific and the generic OTLP timeout.
        let processor_var = match signal {
            Signal::Traces => "OTEL_BSP_EXPORT_TIMEOUT",
            Signal::Metrics => "OTEL_METRIC_EXPORT_TIMEOUT",
            Signal::Logs => "OTEL_BLRP_EXPORT_TIMEOUT",
        };
        let timeout = match overrides.timeout {
            Some(t) => t,
            None => {
                let specific = non_empty(lookup(&signal_var("TIMEOUT")))
                    .map(|v| (signal_var("TIMEOUT"), v))
                    .or_else(|| {
                        non_empty(lookup(processor_var)).map(|v| (processor_var.to_owned(), v))
                    })
                    .or_else(|| {
                        non_empty(lookup(&generic_var("TIMEOUT")))
                            .map(|v| (generic_var("TIMEOUT"), v))
                    });
                match specific {
                    None => Duration::from_secs(10),
                    Some((var, v)) => parse_millis(&var, &v, "10000")?,
                }
            }
        };

        let compression = match overrides.compression {
            Some(c) => c,
            None => match pick("COMPRESSION") {
                None => None,
                Some((var, v)) => match v.trim() {
                    "gzip" => Some(Compression::Gzip),
                    "none" => None,
                    _ => {
                        return Err(ConfigError::invalid(
                            &var,
                            &v,
                            "unknown compression; expected gzip or none",
                            "gzip",
                        ));
                    }
                },
            },
        };

        let read = |var: String, path: String| -> Result<Vec<u8>, ConfigError> {
            std::fs::read(path.trim()).map_err(|e| {
                ConfigError::invalid(
                    &var,
                    &path,
                    format!("cannot read the PEM file ({e})"),
                    "/etc/otel/ca.pem",
                )
            })
        };
        // The builder's files beat the variables; each error names where the path came from.
        let ca_source = match &overrides.certificate {
            Some(path) => Some((
                "TelemetryBuilder::certificate".to_owned(),
                path.display().to_string(),
            )),
            None => pick("CERTIFICATE"),
        };
        let ca_certificate = match ca_source {
            None => None,
            Some((var, path)) => {
                let pem = read(var.clone(), path.clone())?;
                crate::tls::check_ca(&pem).map_err(|reason| {
                    ConfigError::invalid(&var, &path, reason, "/etc/otel/ca.pem")
                })?;
                Some(pem)
            }
        };
        let identity_source = match &overrides.client_identity {
            Some((cert, key)) => (
                Some((
                    "TelemetryBuilder::client_certificate (certificate)".to_owned(),
                    cert.display().to_string(),
                )),
                Some((
                    "TelemetryBuilder::client_certificate (key)".to_owned(),
                    key.display().to_string(),
                )),
            ),
            None => (pick("CLIENT_CERTIFICATE"), pick("CLIENT_KEY")),
        };
        let client_identity = match identity_source {
            (None, None) => None,
            (Some((cv, cp)), Some((kv, kp))) => {
                let (cert, key) = (read(cv.clone(), cp.clone())?, read(kv.clone(), kp.clone())?);
                crate::tls::check_identity(&cert, &key).map_err(|e| match e {
                    crate::tls::IdentityError::Certificate(reason) => {
                        ConfigError::invalid(&cv, &cp, reason, "/etc/otel/client.pem")
                    }
                    crate::tls::IdentityError::Key(reason) => {
                        ConfigError::invalid(&kv, &kp, reason, "/etc/otel/client.key")
                    }
                })?;
                Some((cert, key))
            }
            (None, Some((var, path))) => {
                return Err(ConfigError::invalid(
                    &var,
                    &path,
                    format!(
                        "a client key needs its certificate: set {} too",
                        var.replace("CLIENT_KEY", "CLIENT_CERTIFICATE")
                    ),
                    "/etc/otel/client.key",
                ));
            }
            (Some((var, path)), None) => {
                return Err(ConfigError::invalid(
                    &var,
                    &path,
                    format!(
                        "a client certificate needs its key: set {} too",
                        var.replace("CLIENT_CERTIFICATE", "CLIENT_KEY")
                    ),
                    "/etc/otel/client.pem",
                ));
            }
        };

        Ok(Self {
            endpoint,
            headers,
            timeout,
            compression,
            protocol,
            tls: TlsFiles {
                ca_certificate,
                client_identity,
            },
        })
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn append_path(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

/// `OTEL_{TRACES,METRICS,LOGS}_EXPORTER`: whether the signal is exported over OTLP.
/// A context propagator that `OTEL_PROPAGATORS` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Propagator {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    TraceContext,
    /// W3C Baggage: `baggage`.
    Baggage,
}

/// `OTEL_METRICS_EXEMPLAR_FILTER`: which measurements may become exemplars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExemplarFilter {
    /// Only measurements made inside a sampled span (the default).
    #[default]
    TraceBased,
    /// Every measurement.
    AlwaysOn,
    /// None.
    AlwaysOff,
}

/// `OTEL_PROPAGATORS`: a comma-separated list; `none` alone turns
/// propagation off. The specification's other values (`b3`, `jaeger`, ...)
/// are rejected by name rather than ignored, so a mesh that expects them is
/// not silently cut off.
fn parse_propagators(
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Propagator>, ConfigError> {
    const VAR: &str = "OTEL_PROPAGATORS";
    const EXAMPLE: &str = "tracecontext,baggage";
    let Some(v) = non_empty(lookup(VAR)) else {
        return Ok(vec![Propagator::TraceContext, Propagator::Baggage]);
    };
    let mut out = Vec::new();
    for name in v.split(',').map(|n| n.trim().to_ascii_lowercase()) {
        let p = match name.as_str() {
            "tracecontext" => Propagator::TraceContext,
            "baggage" => Propagator::Baggage,
            "none" => continue,
            "" => {
                return Err(ConfigError::invalid(
                    VAR,
                    &v,
                    "empty entry in the list",
                    EXAMPLE,
                ));
            }
            "b3" | "b3multi" | "jaeger" | "xray" | "ottrace" => {
                return Err(ConfigError::invalid(
                    VAR,
                    &v,
                    format!(
                        "the {name} propagator is not supported; supported: tracecontext, \
                         baggage, none (the Collector can translate other formats at the edge)"
                    ),
                    EXAMPLE,
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    VAR,
                    &v,
                    format!("unknown propagator {name:?}; expected tracecontext, baggage or none"),
                    EXAMPLE,
                ));
            }
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() || v.split(',').all(|n| n.trim().eq_ignore_ascii_case("none")) {
        return Ok(Vec::new());
    }
    if v.split(',').any(|n| n.trim().eq_ignore_ascii_case("none")) {
        return Err(ConfigError::invalid(
            VAR,
            &v,
            "none cannot be combined with other propagators",
            EXAMPLE,
        ));
    }
    Ok(out)
}

fn parse_exporter(lookup: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<bool, ConfigError> {
    let Some(v) = non_empty(lookup(var)) else {
        return Ok(true);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "otlp" => Ok(true),
        "none" => Ok(false),
        "console" => Err(ConfigError::invalid(
            var,
            &v,
            "console is not supported (the fmt layer prints events; the in-process \
             OtlpSink shows the rest); expected otlp or none",
            "otlp",
        )),
        _ => Err(ConfigError::invalid(
            var,
            &v,
            "unknown exporter; expected otlp or none",
            "otlp",
        )),
    }
}

/// The tail keeper's settings: builder, then `OTEL_INSTRUMENT_TAIL_*`, then defaults.
fn tail_settings(
    lookup: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<crate::monitored::TailSettings, ConfigError> {
    let mut t = crate::monitored::TailSettings::default();
    let whole = |var: &str, example: &'static str| -> Result<Option<u64>, ConfigError> {
        non_empty(lookup(var))
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ConfigError::invalid(var, &v, "expected a whole number", example))
            })
            .transpose()
    };
    let duration = |var: &str, example: &'static str| -> Result<Option<Duration>, ConfigError> {
        non_empty(lookup(var))
            .map(|v| parse_duration(var, &v, example))
            .transpose()
    };
    t.enabled = match overrides.tail_keeper {
        Some(on) => on,
        None => match non_empty(lookup("OTEL_INSTRUMENT_TAIL_KEEPER")) {
            None => true,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "on" | "true" => true,
                "off" | "false" => false,
                _ => {
                    return Err(ConfigError::invalid(
                        "OTEL_INSTRUMENT_TAIL_KEEPER",
                        &v,
                        "expected on or off",
                        "off",
                    ));
                }
            },
        },
    };
    t.slow = match overrides.tail_slow {
        Some(slow) => slow,
        None => match non_empty(lookup("OTEL_INSTRUMENT_TAIL_SLOW")) {
            None => None,
            Some(v) if v.trim().eq_ignore_ascii_case("p99") => None,
            Some(v) => Some(parse_duration("OTEL_INSTRUMENT_TAIL_SLOW", &v, "250ms")?),
        },
    };
    if let Some(d) = duration("OTEL_INSTRUMENT_TAIL_SLOW_FLOOR", "5ms")? {
        t.slow_floor = d;
    }
    t.rate = match overrides.tail_rate {
        Some(r) => r,
        None => match whole("OTEL_INSTRUMENT_TAIL_RATE", "100")? {
            None => t.rate,
            Some(r) => u32::try_from(r).map_err(|_| {
                ConfigError::invalid(
                    "OTEL_INSTRUMENT_TAIL_RATE",
                    &r.to_string(),
                    "more traces per second than can be counted",
                    "100",
                )
            })?,
        },
    };
    if let Some(n) = whole("OTEL_INSTRUMENT_TAIL_MAX_SPANS", "512")? {
        if n == 0 {
            return Err(ConfigError::invalid(
                "OTEL_INSTRUMENT_TAIL_MAX_SPANS",
                &lookup("OTEL_INSTRUMENT_TAIL_MAX_SPANS").unwrap_or_default(),
                "a root needs room for its own span; give at least 1",
                "512",
            ));
        }
        t.max_spans_per_root = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = whole("OTEL_INSTRUMENT_TAIL_MAX_HELD", "65536")? {
        t.max_held_spans = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(d) = duration("OTEL_INSTRUMENT_TAIL_MAX_HOLD", "30s")? {
        if d.is_zero() {
            return Err(ConfigError::invalid(
                "OTEL_INSTRUMENT_TAIL_MAX_HOLD",
                &lookup("OTEL_INSTRUMENT_TAIL_MAX_HOLD").unwrap_or_default(),
                "an async root must be held for some time; give a positive duration",
                "30s",
            ));
        }
        t.max_hold = d;
    }
    Ok(t)
}

/// A duration with its unit: `250ms`, `1.5s`, `500us`, `2m`, `100ns`.
/// `<n>/<duration>` (`10/1m`) or `off`.
fn parse_report_limit(var: &str, value: &str) -> Result<crate::errors::ReportLimit, ConfigError> {
    const EXAMPLE: &str = "10/1m";
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(crate::errors::ReportLimit::off());
    }
    let Some((n, interval)) = v.split_once('/') else {
        return Err(ConfigError::invalid(
            var,
            value,
            "expected <reports>/<interval> or off",
            EXAMPLE,
        ));
    };
    let per_interval = n.trim().parse::<u32>().map_err(|_| {
        ConfigError::invalid(
            var,
            value,
            "the number of reports is not a whole number",
            EXAMPLE,
        )
    })?;
    let interval = parse_duration(var, interval, EXAMPLE)?;
    if interval.is_zero() {
        return Err(ConfigError::invalid(
            var,
            value,
            "the interval must be greater than zero",
            EXAMPLE,
        ));
    }
    Ok(crate::errors::ReportLimit {
        per_interval,
        interval,
    })
}

pub(crate) fn parse_duration(
    var: &str,
    value: &str,
    example: &'static str,
) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "" => {
            return Err(ConfigError::invalid(
                var,
                value,
                "a duration needs its unit (ns, us, ms, s or m)",
                example,
            ));
        }
        _ => {
            return Err(ConfigError::invalid(
                var,
                value,
                "unknown unit; use ns, us, ms, s or m",
                example,
            ));
        }
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && n * scale < 1e9 => {
            Ok(Duration::from_secs_f64(n * scale))
        }
        _ => Err(ConfigError::invalid(
            var,
            value,
            "expected a non-negative number followed by its unit",
            example,
        )),
    }
}

fn parse_millis(var: &str, value: &str, example: &'static str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    if v.starts_with('-') {
        return Err(ConfigError::invalid(
            var,
            value,
            "a duration cannot be negative; give whole milliseconds",
            example,
        ));
    }
    v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
        ConfigError::invalid(
            var,
            value,
            "expected a whole number of milliseconds",
            example,
        )
    })
}

/// Checks that an endpoint is an absolute http(s) URL with a host.
pub(crate) fn validate_endpoint(var: &str, value: &str) -> Result<(), ConfigError> {
    const EXAMPLE: &str = "http://localhost:4317";
    let uri: http::Uri = value.trim().parse().map_err(|e: http::uri::InvalidUri| {
        ConfigError::invalid(var, value, format!("not a URL ({e})"), EXAMPLE)
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(ConfigError::invalid(
                var,
                value,
                format!("unsupported scheme {other:?}; use http:// or https://"),
                EXAMPLE,
            ));
        }
        None => {
            return Err(ConfigError::invalid(
                var,
                value,
                "the endpoint needs a scheme (http:// or https://)",
                EXAMPLE,
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::invalid(
            var,
            value,
            "the endpoint has no host",
            EXAMPLE,
        ));
    }
    Ok(())
}

/// Parses `k1=v1,k2=v2` (W3C baggage style, values percent-decoded).
fn parse_key_values(
    var: &str,
    value: &str,
    example: &'static str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in value.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(ConfigError::invalid(
                var,
                value,
                format!("entry {item:?} is not key=value"),
                example,
            ));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(ConfigError::invalid(
                var,
                value,
                format!("entry {item:?} has an empty key"),
                example,
            ));
        }
        let v = percent_decode(v.trim()).ok_or_else(|| {
            ConfigError::invalid(
                var,
                value,
                format!("entry {item:?} has a bad percent escape"),
                example,
            )
        })?;
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

fn parse_headers(var: &str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    const EXAMPLE: &str = "api-key=secret,x-tenant=gpu";
    let pairs = parse_key_values(var, value, EXAMPLE)?;
    for (k, v) in &pairs {
        let lower = k.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                var,
                value,
                format!("{k:?} is not a valid header name"),
                EXAMPLE,
            ));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(ConfigError::invalid(
                var,
                value,
                format!("the value of {k:?} is not a valid header value"),
                EXAMPLE,
            ));
        }
    }
    Ok(pairs)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        cfg_with(vars, &Overrides::default())
    }

    fn cfg_with(vars: &[(&str, &str)], o: &Overrides) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(&|k| map.get(k).cloned(), o)
    }

    #[test]
    fn defaults_without_any_variable() {
        let c = cfg(&[]).unwrap();
        assert!(!c.disabled);
        assert_eq!(c.traces.endpoint, "http://localhost:4317");
        assert_eq!(c.metrics.timeout, Duration::from_secs(10));
        assert_eq!(c.sampler, SamplerConfig::ParentBased(ParentRoot::AlwaysOn));
        assert_eq!(c.metric_export_interval, Duration::from_secs(60));
        assert_eq!(c.traces.protocol, Protocol::Grpc);
        assert_eq!(c.traces.compression, None);
    }

    #[test]
    fn signal_env_overrides_generic_env() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "3000"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip"),
        ])
        .unwrap();
        assert_eq!(c.traces.endpoint, "http://traces:4317");
        assert_eq!(c.metrics.endpoint, "http://generic:4317");
        assert_eq!(c.traces.timeout, Duration::from_secs(2));
        assert_eq!(c.metrics.timeout, Duration::from_secs(3));
        assert_eq!(c.traces.headers, vec![("b".into(), "2".into())]);
        assert_eq!(c.metrics.headers, vec![("a".into(), "1".into())]);
        assert_eq!(c.metrics.compression, Some(Compression::Gzip));
        assert_eq!(c.traces.compression, None);
    }

    #[test]
    fn builder_overrides_beat_both_env_levels() {
        let o = Overrides {
            endpoint: Some("http://code:4317".into()),
            timeout: Some(Duration::from_millis(500)),
            sampler: Some(SamplerConfig::AlwaysOff),
            service_name: Some("from-code".into()),
            ..Default::default()
        };
        let c = cfg_with(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2000"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_SERVICE_NAME", "from-env"),
            ],
            &o,
        )
        .unwrap();
        assert_eq!(c.traces.endpoint, "http://code:4317");
        assert_eq!(c.metrics.endpoint, "http://code:4317");
        assert_eq!(c.traces.timeout, Duration::from_millis(500));
        assert_eq!(c.sampler, SamplerConfig::AlwaysOff);
        assert_eq!(c.service_name.as_deref(), Some("from-code"));
    }

    #[test]
    fn http_protocol_appends_signal_paths_to_the_generic_endpoint_only() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318/"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:4318/custom",
            ),
        ])
        .unwrap();
        assert_eq!(c.traces.endpoint, "http://col:4318/v1/traces");
        assert_eq!(c.metrics.endpoint, "http://m:4318/custom");
        assert_eq!(c.traces.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn samplers_parse_with_their_arguments() {
        let c = cfg(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(
            c.sampler,
            SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.25))
        );
        let c = cfg(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).unwrap();
        assert_eq!(c.sampler, SamplerConfig::TraceIdRatio(1.0));
        let c = cfg(&[("OTEL_TRACES_SAMPLER", "always_off")]).unwrap();
        assert_eq!(c.sampler, SamplerConfig::AlwaysOff);
    }

    #[test]
    fn resource_attributes_are_percent_decoded_in_order() {
        let c = cfg(&[("OTEL_RESOURCE_ATTRIBUTES", "a=1, team=gpu%20infra,b=x=y")]).unwrap();
        assert_eq!(
            c.resource_attributes,
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("team".to_owned(), "gpu infra".to_owned()),
                ("b".to_owned(), "x=y".to_owned()),
            ]
        );
    }

    #[test]
    fn the_tail_keeper_is_on_by_default_and_its_variables_are_read() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.tail, crate::monitored::TailSettings::default());
        assert!(c.tail.enabled);
        let c = cfg(&[
            ("OTEL_INSTRUMENT_TAIL_KEEPER", "off"),
            ("OTEL_INSTRUMENT_TAIL_SLOW", "250ms"),
            ("OTEL_INSTRUMENT_TAIL_SLOW_FLOOR", "1.5ms"),
            ("OTEL_INSTRUMENT_TAIL_RATE", "20"),
            ("OTEL_INSTRUMENT_TAIL_MAX_SPANS", "64"),
            ("OTEL_INSTRUMENT_TAIL_MAX_HELD", "1000"),
            ("OTEL_INSTRUMENT_TAIL_MAX_HOLD", "2m"),
        ])
        .unwrap();
        assert!(!c.tail.enabled);
        assert_eq!(c.tail.slow, Some(Duration::from_millis(250)));
        assert_eq!(c.tail.slow_floor, Duration::from_micros(1500));
        assert_eq!(c.tail.rate, 20);
        assert_eq!(c.tail.max_spans_per_root, 64);
        assert_eq!(c.tail.max_held_spans, 1000);
        assert_eq!(c.tail.max_hold, Duration::from_secs(120));
        let c = cfg(&[("OTEL_INSTRUMENT_TAIL_SLOW", "p99")]).unwrap();
        assert_eq!(c.tail.slow, None);
        // The builder beats the environment.
        let overrides = Overrides {
            tail_keeper: Some(true),
            tail_slow: Some(Some(Duration::from_millis(40))),
            tail_rate: Some(7),
            ..Overrides::default()
        };
        let c = Config::from_lookup(
            &|k| match k {
                "OTEL_INSTRUMENT_TAIL_KEEPER" => Some("off".into()),
                "OTEL_INSTRUMENT_TAIL_RATE" => Some("20".into()),
                _ => None,
            },
            &overrides,
        )
        .unwrap();
        assert!(c.tail.enabled);
        assert_eq!(c.tail.slow, Some(Duration::from_millis(40)));
        assert_eq!(c.tail.rate, 7);
    }

    #[test]
    fn bad_tail_keeper_values_name_their_variable() {
        rejected(&[("OTEL_INSTRUMENT_TAIL_KEEPER", "sometimes")]);
        let msg = rejected(&[("OTEL_INSTRUMENT_TAIL_SLOW", "250")]);
        assert!(msg.contains("unit"), "{msg}");
        rejected(&[("OTEL_INSTRUMENT_TAIL_SLOW", "fast")]);
        rejected(&[("OTEL_INSTRUMENT_TAIL_SLOW", "-5ms")]);
        rejected(&[("OTEL_INSTRUMENT_TAIL_SLOW_FLOOR", "5 parsecs")]);
        rejected(&[("OTEL_INSTRUMENT_TAIL_RATE", "lots")]);
        rejected(&[("OTEL_INSTRUMENT_TAIL_MAX_SPANS", "0")]);
        rejected(&[("OTEL_INSTRUMENT_TAIL_MAX_HOLD", "0s")]);
        rejected(&[("OTEL_INSTRUMENT_TRACES_PER_SECOND", "0")]);
        rejected(&[("OTEL_INSTRUMENT_TRACES_PER_SECOND", "many")]);
        let c = cfg(&[("OTEL_INSTRUMENT_TRACES_PER_SECOND", "50")]).unwrap();
        assert_eq!(c.traces_per_second, Some(50));
        assert_eq!(cfg(&[]).unwrap().traces_per_second, None);
    }

    fn rejected(vars: &[(&str, &str)]) -> String {
        let err = cfg(vars).expect_err("value must be rejected");
        let msg = err.to_string();
        let (var, value) = vars.last().unwrap();
        assert_eq!(err.variable(), *var, "{msg}");
        assert!(msg.contains(var), "message must name {var}: {msg}");
        assert!(
            msg.contains(&format!("{value:?}")),
            "message must quote the value: {msg}"
        );
        assert!(msg.contains("Example of a valid value"), "{msg}");
        msg
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        rejected(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")]);
        rejected(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x:1")]);
        rejected(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "-5")]);
        rejected(&[("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "10s")]);
        rejected(&[("OTEL_TRACES_SAMPLER", "sometimes")]);
        rejected(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ]);
        rejected(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]);
        rejected(&[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "bad key=1")]);
        rejected(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")]);
        rejected(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")]);
        rejected(&[("OTEL_TRACES_EXPORTER", "zipkin")]);
        assert!(
            rejected(&[("OTEL_PROPAGATORS", "tracecontext,b3")])
                .contains("b3 propagator is not supported")
        );
        rejected(&[("OTEL_PROPAGATORS", "w3c")]);
        rejected(&[("OTEL_PROPAGATORS", "none,baggage")]);
        rejected(&[("OTEL_PROPAGATORS", "tracecontext,,baggage")]);
        rejected(&[("OTEL_METRICS_EXPORTER", "console")]);
        rejected(&[(
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "sometimes",
        )]);
        rejected(&[("OTEL_METRICS_EXEMPLAR_FILTER", "all")]);
        rejected(&[("OTEL_BSP_SCHEDULE_DELAY", "5s")]);
        rejected(&[("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "0")]);
        rejected(&[("OTEL_BSP_EXPORT_TIMEOUT", "-1")]);
        rejected(&[("OTEL_METRIC_EXPORT_TIMEOUT", "soon")]);
        rejected(&[("OTEL_METRIC_EXPORT_INTERVAL", "0")]);
        rejected(&[("OTEL_RESOURCE_ATTRIBUTES", "=x")]);
        rejected(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]);
        rejected(&[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")]);
        rejected(&[("OTEL_LOGS_EXPORTER", "console")]);
        rejected(&[("OTEL_BLRP_MAX_QUEUE_SIZE", "-1")]);
        rejected(&[("OTEL_LOGS_EXPORTER", "syslog")]);
        rejected(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "collector:4317")]);
    }

    #[test]
    fn logs_are_exported_by_default_and_have_their_own_endpoint() {
        let c = cfg(&[]).unwrap();
        assert!(c.logs_export);
        assert_eq!(c.logs.endpoint, DEFAULT_GRPC_ENDPOINT);
        let c = cfg(&[
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:4317"),
        ])
        .unwrap();
        assert!(!c.logs_export);
        assert_eq!(c.logs.endpoint, "http://logs:4317");
        assert_eq!(c.traces.endpoint, "http://collector:4317");
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ])
        .unwrap();
        assert_eq!(c.logs.endpoint, "http://collector:4318/v1/logs");
    }

    #[test]
    fn http_protobuf_defaults_to_port_4318_and_grpc_to_4317() {
        let c = cfg(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap();
        assert_eq!(c.traces.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(c.metrics.endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!(c.logs.endpoint, "http://localhost:4318/v1/logs");
        let c = cfg(&[("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")]).unwrap();
        assert_eq!(c.logs.endpoint, "http://localhost:4318/v1/logs");
        assert_eq!(c.traces.endpoint, "http://localhost:4317");
    }

    #[test]
    fn tls_variables_that_change_nothing_are_warnings() {
        let dir = std::env::temp_dir().join(format!("otel-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        // A self-signed CA certificate, so the file passes its check.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let ca = ca.display().to_string();
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://plain:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ])
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("OTEL_EXPORTER_OTLP_INSECURE=\"true\" has no effect"),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings[1].contains(
                "OTEL_EXPORTER_OTLP_CERTIFICATE is set, but the metrics endpoint http://plain:4317"
            ),
            "{:?}",
            c.warnings
        );
        assert!(cfg(&[]).unwrap().warnings.is_empty());
    }

    #[test]
    fn span_queue_size_is_read_and_defaults_to_the_sdk_default() {
        assert_eq!(cfg(&[]).unwrap().span_queue_size, DEFAULT_SPAN_QUEUE_SIZE);
        let c = cfg(&[("OTEL_BSP_MAX_QUEUE_SIZE", "64")]).unwrap();
        assert_eq!(c.span_queue_size, 64);
    }

    #[test]
    fn sdk_disabled_is_read() {
        assert!(cfg(&[("OTEL_SDK_DISABLED", "TRUE")]).unwrap().disabled);
    }

    #[test]
    fn a_typo_in_sdk_disabled_never_stops_telemetry_but_warns() {
        let c = cfg(&[("OTEL_SDK_DISABLED", "yes")]).unwrap();
        assert!(!c.disabled);
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].contains("OTEL_SDK_DISABLED"),
            "{:?}",
            c.warnings
        );
        let c = cfg(&[("OTEL_SDK_DISABLED", "false")]).unwrap();
        assert!(!c.disabled && c.warnings.is_empty());
    }

    #[test]
    fn exporters_temporality_and_batches_are_read() {
        let c = cfg(&[]).unwrap();
        assert!(c.traces_export && c.metrics_export && c.logs_export);
        assert_eq!(
            c.metrics_temporality,
            opentelemetry_sdk::metrics::Temporality::Cumulative
        );
        assert_eq!(c.span_batch.schedule_delay, Duration::from_secs(5));
        assert_eq!(c.log_batch.schedule_delay, Duration::from_secs(1));
        assert_eq!(c.exemplar_filter, ExemplarFilter::TraceBased);
        let c = cfg(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "NONE"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
            ("OTEL_METRICS_EXEMPLAR_FILTER", "always_off"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1024"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "50"),
        ])
        .unwrap();
        assert!(!c.traces_export && !c.metrics_export);
        assert_eq!(
            c.metrics_temporality,
            opentelemetry_sdk::metrics::Temporality::Delta
        );
        assert_eq!(c.exemplar_filter, ExemplarFilter::AlwaysOff);
        assert_eq!(c.span_batch.schedule_delay, Duration::from_millis(200));
        assert_eq!(c.span_batch.max_export_batch_size, 1024);
        assert_eq!(c.log_batch.schedule_delay, Duration::from_millis(50));
    }

    #[test]
    fn processor_export_timeouts_sit_between_signal_and_generic_timeouts() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "3000"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "4000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2000"),
        ])
        .unwrap();
        assert_eq!(c.traces.timeout, Duration::from_secs(3));
        assert_eq!(c.metrics.timeout, Duration::from_secs(2));
        assert_eq!(c.logs.timeout, Duration::from_secs(10));
    }

    #[test]
    fn propagators_default_to_tracecontext_and_baggage_and_none_turns_them_off() {
        use Propagator::*;
        assert_eq!(cfg(&[]).unwrap().propagators, [TraceContext, Baggage]);
        let c = cfg(&[("OTEL_PROPAGATORS", " TraceContext ")]).unwrap();
        assert_eq!(c.propagators, [TraceContext]);
        let c = cfg(&[("OTEL_PROPAGATORS", "baggage,tracecontext,baggage")]).unwrap();
        assert_eq!(c.propagators, [Baggage, TraceContext]);
        assert!(
            cfg(&[("OTEL_PROPAGATORS", "none")])
                .unwrap()
                .propagators
                .is_empty()
        );
    }
}
