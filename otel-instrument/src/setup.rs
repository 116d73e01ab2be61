//! The [`Telemetry`] builder and its [`TelemetryGuard`]: resource, exporters,
//! providers and the `tracing` subscriber.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{BatchLogProcessor, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, Sampler, SdkTracer, SdkTracerProvider,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{
    BatchSettings, Compression, Config, ConfigError, ExemplarFilter, Overrides, ParentRoot,
    Propagator, Protocol, SamplerConfig,
};
use crate::export::{self, ExportError, ExportRuntime, ExportStats, QueueLimit};
use crate::monitored::{self, DEFAULT_HISTOGRAM_BOUNDARIES, MonitoredSettings};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// An `OTEL_*` variable (or builder value) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An exporter could not be built.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// `RUST_LOG` (or the filter given to the builder) does not parse.
    #[error(
        "RUST_LOG={value:?} is not a valid filter. Example of a valid value: RUST_LOG=info,my_crate=debug"
    )]
    Filter {
        /// The directives as given.
        value: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The Prometheus pull endpoint could not start.
    #[cfg(feature = "prometheus")]
    #[error(transparent)]
    Prometheus(#[from] crate::prometheus::PrometheusError),
    /// Histogram boundaries must be finite and strictly increasing.
    #[error(
        "histogram boundaries {0:?} must be finite and strictly increasing, for example [0.005, 0.01, 0.1, 1.0]"
    )]
    Boundaries(Vec<f64>),
    /// Another global `tracing` subscriber is already installed. Use
    /// [`TelemetryBuilder::build`] and [`Telemetry::into_layer`] to compose with it.
    #[error(
        "a global tracing subscriber is already installed; use `let (layer, guard) = otel_instrument::builder!().build()?.into_layer();`, add `layer` to it and keep `guard` alive"
    )]
    SubscriberAlreadySet(#[source] tracing_subscriber::util::TryInitError),
    /// A redaction rule given to the builder cannot be used.
    #[error(transparent)]
    Redaction(#[from] crate::redact::RedactionError),
}

type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Explicit settings for telemetry. Anything set here beats every environment
/// variable; anything left unset comes from the standard `OTEL_*` variables,
/// and what neither sets comes from detection (and, with
/// [`builder!`](crate::builder), the calling crate's name and version).
///
/// Start from [`builder!`](crate::builder), which knows your crate's name and
/// version; [`Telemetry::builder`] knows neither, so without a name from here
/// or `OTEL_SERVICE_NAME` the service is `unknown_service` (and a warning says so).
///
/// ```no_run
/// let _guard = otel_instrument::builder!()
///     .service_name("checkout")
///     .endpoint("http://collector:4317")
///     .install()?;
/// # Ok::<(), otel_instrument::InitError>(())
/// ```
pub struct TelemetryBuilder {
    lookup: Lookup,
    overrides: Overrides,
    default_service_name: Option<String>,
    default_service_version: Option<String>,
    service_version: Option<String>,
    resource: Vec<KeyValue>,
    fmt: bool,
    process_metrics: bool,
    tokio_runtimes: Vec<tokio::runtime::Handle>,
    filter: Option<String>,
    shutdown_timeout: Duration,
    histogram_boundaries: Vec<f64>,
    id_generator: Option<Box<dyn IdGenerator>>,
    cancelled: monitored::CancelledAs,
    #[cfg(feature = "prometheus")]
    prometheus: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for TelemetryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryBuilder")
            .field("overrides", &self.overrides)
            .field("default_service_name", &self.default_service_name)
            .field("service_version", &self.service_version)
            .field("fmt", &self.fmt)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for TelemetryBuilder {
    fn default() -> Self {
        Self {
            lookup: Box::new(|k| std::env::var(k).ok()),
            overrides: Overrides::default(),
            default_service_name: None,
            default_service_version: None,
            service_version: None,
            resource: Vec::new(),
            fmt: true,
            process_metrics: true,
            tokio_runtimes: Vec::new(),
            filter: None,
            shutdown_timeout: Duration::from_secs(5),
            histogram_boundaries: DEFAULT_HISTOGRAM_BOUNDARIES.to_vec(),
            id_generator: None,
            cancelled: monitored::CancelledAs::default(),
            #[cfg(feature = "prometheus")]
            prometheus: None,
        }
    }
}

impl TelemetryBuilder {
    /// Reads variables through `lookup` instead of the process environment.
    /// Default: `std::env::var`.
    pub fn env_lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.lookup = Box::new(lookup);
        self
    }

    /// Sets `service.name`, beating `OTEL_SERVICE_NAME`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.overrides.service_name = Some(name.into());
        self
    }

    /// Sets `service.version`, beating `service.version` in `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = Some(version.into());
        self
    }

    /// Service name and version used when neither the builder nor the
    /// environment names them (what [`init!`](crate::init) and
    /// [`builder!`](crate::builder) pass: the calling crate's name and version).
    #[doc(hidden)]
    pub fn default_service(mut self, name: &str, version: &str) -> Self {
        self.default_service_name = Some(name.to_owned());
        self.default_service_version = Some(version.to_owned());
        self
    }

    /// Adds a resource attribute; beats `OTEL_RESOURCE_ATTRIBUTES` and detection
    /// for that key. `service.name` and `service.version` given here lose only
    /// to [`service_name`](Self::service_name) and
    /// [`service_version`](Self::service_version).
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.resource.push(KeyValue::new(key.into(), value.into()));
        self
    }

    /// OTLP endpoint for both signals (for HTTP, a base URL to which `/v1/<signal>` is added).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.overrides.endpoint = Some(endpoint.into());
        self
    }

    /// OTLP endpoint for traces only, used as is.
    pub fn traces_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.overrides.traces_endpoint = Some(endpoint.into());
        self
    }

    /// OTLP endpoint for metrics only, used as is.
    pub fn metrics_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.overrides.metrics_endpoint = Some(endpoint.into());
        self
    }

    /// OTLP endpoint for logs only, used as is.
    pub fn logs_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.overrides.logs_endpoint = Some(endpoint.into());
        self
    }

    /// Whether spans are exported over OTLP, beating `OTEL_TRACES_EXPORTER`
    /// (`false` is `none`). Default: true.
    pub fn traces_export(mut self, enabled: bool) -> Self {
        self.overrides.traces_export = Some(enabled);
        self
    }

    /// Whether metrics are exported over OTLP, beating `OTEL_METRICS_EXPORTER`
    /// (the Prometheus endpoint, if any, still serves). Default: true.
    pub fn metrics_export(mut self, enabled: bool) -> Self {
        self.overrides.metrics_export = Some(enabled);
        self
    }

    /// Whether `tracing` events are exported as OTLP logs, beating
    /// `OTEL_LOGS_EXPORTER`. Default: true.
    pub fn logs_export(mut self, enabled: bool) -> Self {
        self.overrides.logs_export = Some(enabled);
        self
    }

    /// The context propagators, beating `OTEL_PROPAGATORS`; an empty list
    /// turns propagation off. Default: trace context and baggage.
    pub fn propagators(mut self, propagators: impl IntoIterator<Item = Propagator>) -> Self {
        self.overrides.propagators = Some(propagators.into_iter().collect());
        self
    }

    /// Metric temporality, beating `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
    /// Default: cumulative.
    pub fn metrics_temporality(mut self, temporality: Temporality) -> Self {
        self.overrides.metrics_temporality = Some(temporality);
        self
    }

    /// The exemplar filter, beating `OTEL_METRICS_EXEMPLAR_FILTER`. Default:
    /// trace based.
    pub fn exemplar_filter(mut self, filter: ExemplarFilter) -> Self {
        self.overrides.exemplar_filter = Some(filter);
        self
    }

    /// A PEM CA certificate to trust for `https://` endpoints, beating
    /// `OTEL_EXPORTER_OTLP_{,<SIGNAL>_}CERTIFICATE`. Read by `build`.
    pub fn certificate(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.overrides.certificate = Some(path.into());
        self
    }

    /// A PEM client certificate and its key, for mTLS, beating
    /// `OTEL_EXPORTER_OTLP_{,<SIGNAL>_}CLIENT_CERTIFICATE` and `..._CLIENT_KEY`.
    pub fn client_certificate(
        mut self,
        certificate: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.overrides.client_identity = Some((certificate.into(), key.into()));
        self
    }

    /// Extra headers (gRPC metadata) for both signals.
    pub fn headers(mut self, headers: impl IntoIterator<Item = (String, String)>) -> Self {
        self.overrides.headers = Some(headers.into_iter().collect());
        self
    }

    /// Deadline of one export request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.overrides.timeout = Some(timeout);
        self
    }

    /// Payload compression for both signals (`None` turns it off).
    pub fn compression(mut self, compression: Option<Compression>) -> Self {
        self.overrides.compression = Some(compression);
        self
    }

    /// The OTLP transport for both signals.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.overrides.protocol = Some(protocol);
        self
    }

    /// The head sampler.
    pub fn sampler(mut self, sampler: SamplerConfig) -> Self {
        self.overrides.sampler = Some(sampler);
        self
    }

    /// How often metrics are exported.
    pub fn metric_export_interval(mut self, interval: Duration) -> Self {
        self.overrides.metric_export_interval = Some(interval);
        self
    }

    /// Turns the SDK off (nothing is exported), like `OTEL_SDK_DISABLED=true`.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.overrides.disabled = Some(disabled);
        self
    }

    /// Whether [`install`](Self::install) adds a human-readable fmt layer. Default: true.
    pub fn fmt(mut self, enabled: bool) -> Self {
        self.fmt = enabled;
        self
    }

    /// Whether the process's own metrics (`process.cpu.time`,
    /// `process.memory.usage` and the rest of MONITORED.md's list) are
    /// exported, read from `/proc/self` at each collection. Linux only.
    /// Default: true.
    pub fn process_metrics(mut self, enabled: bool) -> Self {
        self.process_metrics = enabled;
        self
    }

    /// Also exports the `tokio.*` metrics of this runtime, read at each
    /// collection. The runtime that `build` runs inside, if any, is watched
    /// without asking. Watching never keeps a runtime alive: once it shuts
    /// down, its series stop.
    pub fn tokio_runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.tokio_runtimes.push(handle);
        self
    }

    /// Filter directives, beating `RUST_LOG`. Default: `RUST_LOG`, else `info`.
    pub fn filter(mut self, directives: impl Into<String>) -> Self {
        self.filter = Some(directives.into());
        self
    }

    /// How long dropping the guard may take to flush. Default: 5 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Boundaries of `function.calls.duration`, in seconds.
    /// Default: autometrics' 0.005, 0.01, 0.025 … 10.
    pub fn histogram_boundaries(mut self, boundaries: impl Into<Vec<f64>>) -> Self {
        self.histogram_boundaries = boundaries.into();
        self
    }

    /// What a cancelled `#[monitored]` call (an async call dropped before it
    /// finished) counts as. Default: its own `result="cancelled"`, so error
    /// ratios stay right.
    pub fn cancelled_calls(mut self, cancelled: monitored::CancelledAs) -> Self {
        self.cancelled = cancelled;
        self
    }

    /// A custom trace/span id generator (tests use a fixed one).
    pub fn id_generator(mut self, generator: impl IdGenerator + 'static) -> Self {
        self.id_generator = Some(Box::new(generator));
        self
    }

    /// Capacity of the batch span queue, beating `OTEL_BSP_MAX_QUEUE_SIZE`.
    /// Default: 2048. Spans beyond it are dropped and counted.
    pub fn span_queue_size(mut self, size: usize) -> Self {
        self.overrides.span_queue_size = Some(size.max(1));
        self
    }

    /// Capacity of the batch log record queue, beating `OTEL_BLRP_MAX_QUEUE_SIZE`.
    /// Default: 2048. Records beyond it are dropped and counted.
    pub fn log_queue_size(mut self, size: usize) -> Self {
        self.overrides.log_queue_size = Some(size.max(1));
        self
    }

    /// How spans are batched, beating `OTEL_BSP_SCHEDULE_DELAY` and
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`. Default: 5 s, 512.
    pub fn span_batch(mut self, schedule_delay: Duration, max_export_batch_size: usize) -> Self {
        self.overrides.span_batch = Some(BatchSettings {
            schedule_delay,
            max_export_batch_size: max_export_batch_size.max(1),
        });
        self
    }

    /// How log records are batched, beating `OTEL_BLRP_SCHEDULE_DELAY` and
    /// `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE`. Default: 1 s, 512.
    pub fn log_batch(mut self, schedule_delay: Duration, max_export_batch_size: usize) -> Self {
        self.overrides.log_batch = Some(BatchSettings {
            schedule_delay,
            max_export_batch_size: max_export_batch_size.max(1),
        });
        self
    }

    /// Turns the tail keeper on or off, beating `OTEL_INSTRUMENT_TAIL_KEEPER`.
    /// Default: on. With it, every `#[monitored]` trace the head sampler did
    /// not pick is still recorded, and kept when one of its calls failed or
    /// its root was slow (see MONITORED.md).
    pub fn tail_keeper(mut self, on: bool) -> Self {
        self.overrides.tail_keeper = Some(on);
        self
    }

    /// A root slower than this keeps its trace, for every function without
    /// its own `#[monitored(slow = "..")]`, beating `OTEL_INSTRUMENT_TAIL_SLOW`.
    /// Default: each function's recent p99, never below 5 ms.
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.overrides.tail_slow = Some(Some(threshold));
        self
    }

    /// Samples at most this many new traces per second in this process, on top
    /// of the sampler, beating `OTEL_INSTRUMENT_TRACES_PER_SECOND`: tracing
    /// costs stay fixed as traffic grows. Default: no limit.
    pub fn max_traces_per_second(mut self, traces: u32) -> Self {
        self.overrides.traces_per_second = Some(Some(traces.max(1)));
        self
    }

    /// Most traces the tail keeper keeps per second, beating
    /// `OTEL_INSTRUMENT_TAIL_RATE`. Default: 100. More are dropped and counted.
    pub fn tail_rate(mut self, traces_per_second: u32) -> Self {
        self.overrides.tail_rate = Some(traces_per_second);
        self
    }

    /// Sets the redaction rules applied before export, replacing
    /// `OTEL_INSTRUMENT_REDACT` (see [`crate::redact`]). Default: on, with
    /// every built-in rule. A rule that cannot be used fails `build`.
    pub fn redaction(mut self, redaction: crate::redact::Redaction) -> Self {
        self.overrides.redaction = Some(redaction);
        self
    }

    /// Per function, how many error fingerprints get their own
    /// `function.errors` series (`OTEL_INSTRUMENT_ERROR_GROUPS`). Default: 20.
    pub fn error_groups(mut self, groups: usize) -> Self {
        self.overrides.error_groups = Some(groups);
        self
    }

    /// Error reports per fingerprint and interval
    /// (`OTEL_INSTRUMENT_ERROR_REPORTS`). Default: 10 per minute.
    pub fn error_reports(mut self, limit: crate::errors::ReportLimit) -> Self {
        self.overrides.error_reports = Some(limit);
        self
    }

    /// Also serves the metrics for Prometheus at `http://<addr>/metrics`
    /// (feature `prometheus`). Bind to 127.0.0.1 unless it must be reachable.
    #[cfg(feature = "prometheus")]
    pub fn prometheus_endpoint(mut self, addr: std::net::SocketAddr) -> Self {
        self.prometheus = Some(addr);
        self
    }

    /// The settings `build` would use: builder over environment over defaults.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable or setting that is invalid.
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::from_lookup(&*self.lookup, &self.overrides)
    }

    /// Builds providers and exporters and sets them as the OpenTelemetry globals,
    /// without installing a `tracing` subscriber. Add the layer from
    /// [`Telemetry::into_layer`] to yours, and keep the guard it returns.
    ///
    /// # Errors
    /// An invalid setting or variable, or an exporter that cannot be built.
    pub fn build(self) -> Result<Telemetry, InitError> {
        let mut config = self.config()?;
        let b = &self.histogram_boundaries;
        if b.iter().any(|x| !x.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) {
            return Err(InitError::Boundaries(b.clone()));
        }
        let filter = self
            .filter
            .clone()
            .or_else(|| (self.lookup)("RUST_LOG").filter(|s| !s.trim().is_empty()))
            .unwrap_or_else(|| "info".to_owned());
        EnvFilter::try_new(&filter).map_err(|source| InitError::Filter {
            value: filter.clone(),
            source,
        })?;
        // Before anything global changes: a bad rule stops the build cleanly.
        let redactor = Arc::new(config.redaction.compile()?);

        let sampler = if config.disabled {
            SamplerConfig::AlwaysOff
        } else {
            config.sampler
        };
        monitored::configure(MonitoredSettings {
            sampler,
            histogram_boundaries: self.histogram_boundaries.clone(),
            cancelled: self.cancelled,
        });
        monitored::set_root_rate_limit(config.traces_per_second);
        crate::redact::set_active(redactor);
        crate::errors::fingerprint::set_group_cap(config.error_groups);
        crate::errors::fingerprint::set_report_limit(config.error_reports);

        let resource = self.resource(&config);
        if resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .is_some_and(|n| n.as_str() == UNKNOWN_SERVICE)
        {
            config.warnings.push(
                "service.name is not set, so telemetry is exported as \"unknown_service\"; \
                 start from otel_instrument::builder!() (the crate's name), call \
                 .service_name(..), or set OTEL_SERVICE_NAME"
                    .to_owned(),
            );
        }
        let stats = Arc::new(ExportStats::default());
        // Until a span processor exists below, the tail keeper has nowhere to
        // send what it keeps: off.
        monitored::configure_tail(&config.tail, None);
        monitored::set_tail_admission(None);
        if config.disabled {
            return Ok(Telemetry {
                tracer: None,
                filter,
                fmt: self.fmt,
                warnings: config.warnings,
                resource,
                guard: TelemetryGuard::empty(stats),
            });
        }

        // #[monitored] integration: autometrics' spec wants service.name on the function metrics.
        if let Some(name) = resource.get(&opentelemetry::Key::from_static_str("service.name")) {
            monitored::set_service_name(name.to_string());
        }
        let runtime = ExportRuntime::new()?;

        // Metrics first: the SDK's batch span processor binds its own
        // self-diagnostic counters (spans dropped on a full queue) to the global
        // meter provider when it is built.
        let mut meter_provider = SdkMeterProvider::builder().with_resource(resource.clone());
        crate::exemplars::set_feeding(config.exemplar_filter != ExemplarFilter::AlwaysOff);
        if config.metrics_export {
            // Our own OTLP request, so that exemplars (which the SDK cannot carry)
            // reach the collector; the SDK still aggregates, and the counters and
            // outage lines are those of every exporter here.
            let client = runtime
                .enter(|| {
                    crate::otlp::OtlpClient::new(
                        crate::config::Signal::Metrics,
                        &config.metrics,
                        stats.clone(),
                    )
                })
                .map_err(ExportError::from)?;
            let metric_exporter = export::CountingMetricExporter::new(
                crate::exemplars::WireMetricExporter::new(
                    client,
                    runtime.handle().clone(),
                    config.metrics_temporality,
                ),
                stats.clone(),
            );
            meter_provider = meter_provider.with_reader(
                PeriodicReader::builder(metric_exporter)
                    .with_interval(config.metric_export_interval)
                    .build(),
            );
        }
        #[cfg(feature = "prometheus")]
        let (meter_provider, prometheus_addr, prometheus_http) = match self.prometheus {
            Some(addr) => {
                let (reader, bound, http) = crate::prometheus::start(runtime.handle(), addr)?;
                (meter_provider.with_reader(reader), Some(bound), Some(http))
            }
            None => (meter_provider, None, None),
        };
        let meter_provider = meter_provider.build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        let own_meter =
            opentelemetry::metrics::MeterProvider::meter(&meter_provider, crate::names::SCOPE);
        stats.register(&own_meter);
        register_build_info(&own_meter, &resource, &*self.lookup);
        crate::process::register(
            &own_meter,
            self.process_metrics,
            crate::process::runtimes(self.tokio_runtimes),
        );
        own_meter
            .u64_observable_counter(crate::names::CLOCK_BACKWARDS)
            .with_unit("{measurement}")
            .with_description(
                "#[monitored] durations whose end read earlier than their start (cross-core clock skew), recorded as zero",
            )
            .with_callback(|o| o.observe(monitored::clock_backwards(), &[]))
            .build();
        #[cfg(feature = "prometheus")]
        if let Some(http) = prometheus_http {
            own_meter
                .u64_observable_counter(crate::names::PROMETHEUS_CONNECTIONS_CLOSED)
                .with_unit("{connection}")
                .with_description(
                    "Connections the Prometheus endpoint closed for a limit: a response write stuck past its timeout, an HTTP error (a request head not sent in time, too large, malformed), or a request body",
                )
                .with_callback(move |o| {
                    for (reason, n) in [
                        ("write_timeout", http.write_timeouts()),
                        ("http_error", http.errors()),
                        ("request_body", http.bodies_refused()),
                    ] {
                        o.observe(n, &[KeyValue::new("reason", reason)]);
                    }
                })
                .build();
        }
        own_meter
            .u64_observable_counter(crate::names::PROPAGATION_REJECTED)
            .with_unit("{item}")
            .with_description(
                "What the W3C propagators dropped: invalid traceparent headers (each started a new trace), tracestate members and baggage entries that were invalid or over the specifications' bounds",
            )
            .with_callback(|o| {
                let r = crate::propagation::w3c::rejected();
                for (header, n) in [
                    ("traceparent", r.traceparent),
                    ("tracestate", r.tracestate_members),
                    ("baggage", r.baggage_entries),
                ] {
                    o.observe(n, &[KeyValue::new("header", header)]);
                }
            })
            .build();
        own_meter
            .u64_observable_counter(crate::names::ERROR_REPORTS_SUPPRESSED)
            .with_unit("{report}")
            .with_description(
                "Error reports held back by the per-fingerprint limit (each interval's count is said in one summary line)",
            )
            .with_callback(|o| o.observe(crate::errors::fingerprint::suppressed(), &[]))
            .build();
        own_meter
            .u64_observable_counter(crate::names::ERROR_GROUPS_OVERFLOWED)
            .with_unit("{error}")
            .with_description(
                "Errors counted in a function's error.fingerprint=\"overflow\" series, past its cap of fingerprints",
            )
            .with_callback(|o| o.observe(crate::errors::fingerprint::overflowed(), &[]))
            .build();
        own_meter
            .u64_observable_counter(crate::names::TAIL_TRACES)
            .with_unit("{trace}")
            .with_description(
                "Traces the head sampler did not pick, by what the tail keeper decided: kept (a call failed, or the root was slow), dropped, or refused by its rate limit",
            )
            .with_callback(|o| {
                let t = monitored::tail_stats();
                for (decision, n) in [
                    ("kept_error", t.kept_error),
                    ("kept_slow", t.kept_slow),
                    ("kept_downstream", t.kept_downstream),
                    ("dropped", t.dropped),
                    ("refused", t.refused),
                ] {
                    o.observe(n, &[KeyValue::new("decision", decision)]);
                }
            })
            .build();
        own_meter
            .u64_observable_counter(crate::names::TAIL_SPANS_DROPPED)
            .with_unit("{span}")
            .with_description(
                "Spans the tail keeper recorded and could not keep: over the per-root or held caps, ended after their trace was dropped, or no room in the hand-off",
            )
            .with_callback(|o| {
                let t = monitored::tail_stats();
                for (reason, n) in [
                    ("root_cap", t.spans_over_root_cap),
                    ("held_cap", t.spans_over_held_cap),
                    ("late", t.spans_late),
                    ("handoff_full", t.spans_queue_full),
                ] {
                    o.observe(n, &[KeyValue::new("reason", reason)]);
                }
            })
            .build();

        let processor = if config.traces_export {
            let span_exporter = export::span_exporter(&runtime, &config.traces, stats.clone())?;
            // The SDK's queue gets the same capacity as ours, so only
            // `QueueLimit` ever drops (and counts) a span. Every batch setting
            // is set here, from our validated config: the SDK reads none behind
            // our back.
            let batch = BatchConfigBuilder::default()
                .with_max_queue_size(config.span_queue_size)
                .with_max_export_batch_size(
                    config
                        .span_batch
                        .max_export_batch_size
                        .min(config.span_queue_size),
                )
                .with_scheduled_delay(config.span_batch.schedule_delay)
                .build();
            let mut processor = QueueLimit::spans(
                BatchSpanProcessor::new(span_exporter, batch),
                config.span_queue_size,
                stats.clone(),
            );
            // Shared with the tail keeper, so its kept traces take the same
            // queue, counters and outage path as head-sampled spans; the
            // provider cannot set the resource through the `Arc`, so it is set here.
            opentelemetry_sdk::trace::SpanProcessor::set_resource(&mut processor, &resource);
            Some(Arc::new(processor))
        } else {
            None
        };
        let logger_provider = if config.logs_export {
            let log_exporter = export::log_exporter(&runtime, &config.logs, stats.clone())?;
            let batch = opentelemetry_sdk::logs::BatchConfigBuilder::default()
                .with_max_queue_size(config.log_queue_size)
                .with_max_export_batch_size(
                    config
                        .log_batch
                        .max_export_batch_size
                        .min(config.log_queue_size),
                )
                .with_scheduled_delay(config.log_batch.schedule_delay)
                .build();
            let processor = QueueLimit::logs(
                BatchLogProcessor::builder(log_exporter)
                    .with_batch_config(batch)
                    .build(),
                config.log_queue_size,
                stats.clone(),
            );
            Some(
                SdkLoggerProvider::builder()
                    .with_resource(resource.clone())
                    .with_log_processor(processor)
                    .build(),
            )
        } else {
            None
        };
        let mut tp = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_sampler(monitored::sampler(sdk_sampler(config.sampler))); // #[monitored] integration
        if let Some(processor) = &processor {
            tp = tp.with_span_processor(export::SharedProcessor::new(Arc::clone(processor)));
        }
        // #[monitored] integration (issue 3): the SDK follows #[monitored]'s
        // root decisions and uses the trace id it drew; both share one generator.
        let ids = match self.id_generator {
            Some(g) => {
                let g = IdGeneratorBox(Arc::from(g));
                monitored::set_id_generator(g.clone());
                g
            }
            None => IdGeneratorBox(Arc::new(
                opentelemetry_sdk::trace::RandomIdGenerator::default(),
            )),
        };
        tp = tp.with_id_generator(monitored::id_generator(ids));
        let tracer_provider = tp.build();
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        // Rebind #[monitored] instruments now that the meter provider is global.
        monitored::refresh_instruments();
        crate::propagation::install(&config.propagators);
        let tracer = tracer_provider.tracer(crate::names::SCOPE);
        // #[monitored] integration: sampled calls start spans on this tracer directly.
        monitored::set_tracer(tracer.clone());
        // #[monitored] integration: failing and slow calls the head sampler did
        // not pick are kept, into the same span processor.
        // What they hand over takes its place in the same queue bound first.
        monitored::set_tail_admission(
            processor
                .is_some()
                .then(|| export::SpanAdmission::new(stats.clone(), config.span_queue_size)),
        );
        monitored::configure_tail(
            &config.tail,
            processor.map(|p| p as Arc<dyn opentelemetry_sdk::trace::SpanProcessor>),
        );

        Ok(Telemetry {
            tracer: Some(tracer),
            filter,
            fmt: self.fmt,
            warnings: config.warnings,
            resource,
            guard: TelemetryGuard {
                tracer_provider: Some(tracer_provider),
                meter_provider: Some(meter_provider),
                logger_provider,
                runtime: Some(runtime),
                shutdown_timeout: self.shutdown_timeout,
                stats,
                #[cfg(feature = "prometheus")]
                prometheus_addr,
            },
        })
    }

    /// Builds everything and installs a global `tracing` subscriber:
    /// `EnvFilter` (from `RUST_LOG`), an optional fmt layer, and the OpenTelemetry layer.
    ///
    /// # Errors
    /// As [`build`](Self::build), or another global subscriber is already set.
    pub fn install(self) -> Result<TelemetryGuard, InitError> {
        let telemetry = self.build()?;
        let warnings = telemetry.warnings.clone();
        let (subscriber, guard) = telemetry.into_subscriber()?;
        subscriber
            .try_init()
            .map_err(InitError::SubscriberAlreadySet)?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        Ok(guard)
    }

    /// The resource, by one rule for every attribute: builder > environment >
    /// detection (which includes `init!()`'s crate name and version). Within
    /// the environment, `OTEL_SERVICE_NAME` beats `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, as the specification says; within the
    /// builder, `service_name`/`service_version` beat `resource_attribute`.
    fn resource(&self, config: &Config) -> Resource {
        let builder_attr = |key: &str| {
            self.resource
                .iter()
                .rev()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        let env_attr = |key: &str| {
            config
                .resource_attributes
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let name = self
            .overrides
            .service_name
            .clone()
            .or_else(|| builder_attr("service.name"))
            .or_else(|| config.service_name.clone()) // OTEL_SERVICE_NAME
            .or_else(|| env_attr("service.name"))
            .or_else(|| self.default_service_name.clone())
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
        let version = self
            .service_version
            .clone()
            .or_else(|| builder_attr("service.version"))
            .or_else(|| env_attr("service.version"))
            .or_else(|| self.default_service_version.clone());
        // Later attributes win: detection < OTEL_RESOURCE_ATTRIBUTES < builder.
        let mut builder = Resource::builder_empty()
            .with_detector(Box::new(
                opentelemetry_sdk::resource::TelemetryResourceDetector,
            ))
            .with_attributes(crate::resource::detect(&*self.lookup))
            .with_attributes(
                config
                    .resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attributes(self.resource.iter().cloned());
        if let Some(v) = version {
            builder = builder.with_attribute(KeyValue::new("service.version", v));
        }
        builder.with_service_name(name).build()
    }
}

/// The service name the specification prescribes when none is given.
const UNKNOWN_SERVICE: &str = "unknown_service";

/// Autometrics' `build_info` (spec v1.0.0): a gauge of 1 whose labels say what
/// runs, so its dashboards can join versions and commits to the function
/// metrics. `version` is the resource's `service.version`; `commit`, `branch`
/// and the repository come from `AUTOMETRICS_COMMIT`, `AUTOMETRICS_BRANCH`,
/// `AUTOMETRICS_REPOSITORY_URL` and `AUTOMETRICS_REPOSITORY_PROVIDER` (empty
/// when unset, as in autometrics-rs).
fn register_build_info(
    meter: &opentelemetry::metrics::Meter,
    resource: &Resource,
    lookup: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) {
    let attr = |key: &'static str| {
        resource
            .get(&opentelemetry::Key::from_static_str(key))
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let env = |var: &str| lookup(var).map(|v| v.trim().to_owned()).unwrap_or_default();
    let labels = vec![
        KeyValue::new("service.name", attr("service.name")),
        KeyValue::new("version", attr("service.version")),
        KeyValue::new("commit", env("AUTOMETRICS_COMMIT")),
        KeyValue::new("branch", env("AUTOMETRICS_BRANCH")),
        KeyValue::new("repository.url", env("AUTOMETRICS_REPOSITORY_URL")),
        KeyValue::new(
            "repository.provider",
            env("AUTOMETRICS_REPOSITORY_PROVIDER"),
        ),
        KeyValue::new("autometrics.version", "1.0.0"),
    ];
    meter
        .u64_observable_gauge(monitored::BUILD_INFO)
        .with_description("Autometrics info metric for tracking software version and build details")
        .with_callback(move |o| o.observe(1, &labels))
        .build();
}

#[derive(Debug, Clone)]
struct IdGeneratorBox(Arc<dyn IdGenerator>);

impl IdGenerator for IdGeneratorBox {
    fn new_trace_id(&self) -> opentelemetry::trace::TraceId {
        self.0.new_trace_id()
    }

    fn new_span_id(&self) -> opentelemetry::trace::SpanId {
        self.0.new_span_id()
    }
}

/// Converts our sampler settings into the SDK's sampler.
pub(crate) fn sdk_sampler(c: SamplerConfig) -> Sampler {
    match c {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerConfig::ParentBased(root) => Sampler::ParentBased(Box::new(match root {
            ParentRoot::AlwaysOn => Sampler::AlwaysOn,
            ParentRoot::AlwaysOff => Sampler::AlwaysOff,
            ParentRoot::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        })),
    }
}

/// Telemetry that is built but whose `tracing` layer is not yet installed.
///
/// It owns the [`TelemetryGuard`]: take the layer (or subscriber) and the guard
/// together with [`into_layer`](Self::into_layer) or
/// [`into_subscriber`](Self::into_subscriber), and keep the guard alive. Dropping
/// a `Telemetry` shuts everything down, so it is `#[must_use]`.
#[derive(Debug)]
#[must_use = "a Telemetry dropped unused shuts telemetry down: call into_layer() or into_subscriber() and keep the guard"]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    filter: String,
    fmt: bool,
    warnings: Vec<String>,
    resource: Resource,
    guard: TelemetryGuard,
}

impl Telemetry {
    /// Starts a builder with nothing set explicitly, not even the service
    /// name: prefer [`builder!`](crate::builder), which defaults
    /// `service.name` and `service.version` to your crate's.
    pub fn builder() -> TelemetryBuilder {
        TelemetryBuilder::default()
    }

    /// The OpenTelemetry layer, to compose into your own subscriber, and the
    /// guard that keeps it exporting. Keep the guard alive as long as the
    /// layer is in use: dropping it flushes and shuts telemetry down. The
    /// layer does nothing when the SDK is disabled.
    ///
    /// ```no_run
    /// use tracing_subscriber::layer::SubscriberExt as _;
    /// use tracing_subscriber::util::SubscriberInitExt as _;
    ///
    /// let (layer, _guard) = otel_instrument::builder!().build()?.into_layer();
    /// tracing_subscriber::registry().with(layer).init();
    /// # Ok::<(), otel_instrument::InitError>(())
    /// ```
    pub fn into_layer<S>(self) -> (impl Layer<S> + 'static, TelemetryGuard)
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let layer = self.otel_layer();
        (layer, self.guard)
    }

    fn otel_layer<S>(&self) -> Option<impl Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let logs = self.guard.logger_provider.as_ref().map(|p| {
            // Events become OTLP log records, with the trace context of the
            // monitored call (or span) they happen in; never the SDK's own.
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(p)
                .with_filter(monitored::log_filter())
        });
        self.tracer.clone().map(|t| {
            // #[monitored] integration: spans of unsampled monitored calls skip this
            // layer; events inside sampled monitored calls go to their OTel span.
            tracing_opentelemetry::layer()
                .with_tracer(t)
                .with_filter(monitored::otel_filter())
                .and_then(monitored::event_layer())
                .and_then(logs)
        })
    }

    /// The `tracing` subscriber that [`TelemetryBuilder::install`] makes global
    /// (`EnvFilter` from `RUST_LOG`, the fmt layer unless turned off, and the
    /// OpenTelemetry layer), with the guard that keeps it exporting. Use it
    /// with `tracing::subscriber::with_default` to get exactly the default
    /// setup without a global subscriber; keep the guard alive meanwhile.
    ///
    /// The fmt layer names the monitored call and trace context of each event
    /// from `#[monitored]`'s own frame ([`monitored::MonitoredFormat`]), so no
    /// layer needs a `tracing` span per monitored call and calls create none.
    ///
    /// # Errors
    /// The filter directives do not parse.
    pub fn into_subscriber(
        self,
    ) -> Result<
        (
            impl tracing::Subscriber + Send + Sync + 'static,
            TelemetryGuard,
        ),
        InitError,
    > {
        let filter = EnvFilter::try_new(&self.filter).map_err(|source| InitError::Filter {
            value: self.filter.clone(),
            source,
        })?;
        let fmt = self.fmt.then(|| {
            // Colour only on a terminal: logs collected from containers stay plain.
            use std::io::IsTerminal;
            tracing_subscriber::fmt::layer()
                .event_format(monitored::fmt_format())
                .with_ansi(std::io::stdout().is_terminal())
                // Redaction covers the printed lines too.
                .with_writer(crate::redact::RedactingWriter::new(std::io::stdout))
        });
        // #[monitored] integration: neither layer needs a tracing span per call.
        monitored::set_other_layers(false);
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(self.otel_layer());
        Ok((subscriber, self.guard))
    }

    /// Settings that were read leniently, as the specification asks (for
    /// example an `OTEL_SDK_DISABLED` that is neither true nor false), or
    /// left at a default that is rarely wanted (no `service.name`): what
    /// happened and what to write instead. [`TelemetryBuilder::install`] logs
    /// them; log them yourself when you compose your own subscriber.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The resource every signal is exported with.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The guard, borrowed.
    pub fn guard(&self) -> &TelemetryGuard {
        &self.guard
    }
}

/// Keeps telemetry running; dropping it flushes and shuts down within the
/// shutdown timeout, even when the collector is unreachable.
#[derive(Debug)]
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    runtime: Option<ExportRuntime>,
    shutdown_timeout: Duration,
    stats: Arc<ExportStats>,
    #[cfg(feature = "prometheus")]
    prometheus_addr: Option<std::net::SocketAddr>,
}

impl TelemetryGuard {
    fn empty(stats: Arc<ExportStats>) -> Self {
        Self {
            tracer_provider: None,
            meter_provider: None,
            logger_provider: None,
            runtime: None,
            shutdown_timeout: Duration::ZERO,
            stats,
            #[cfg(feature = "prometheus")]
            prometheus_addr: None,
        }
    }

    /// Where the Prometheus endpoint listens, when one was asked for.
    #[cfg(feature = "prometheus")]
    pub fn prometheus_addr(&self) -> Option<std::net::SocketAddr> {
        self.prometheus_addr
    }

    /// Export failure counts.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// The tracer provider, unless the SDK is disabled.
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracer_provider.as_ref()
    }

    /// The meter provider, unless the SDK is disabled.
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.meter_provider.as_ref()
    }

    /// The logger provider, unless the SDK is disabled or
    /// `OTEL_LOGS_EXPORTER=none`.
    pub fn logger_provider(&self) -> Option<&SdkLoggerProvider> {
        self.logger_provider.as_ref()
    }

    /// Exports everything pending now, waiting at most the shutdown timeout.
    /// Returns false when the deadline passed first.
    pub fn flush(&self) -> bool {
        // The summaries of suppressed error reports, so they go out with this flush.
        crate::errors::fingerprint::flush_reports();
        let tp = self.tracer_provider.clone();
        let mp = self.meter_provider.clone();
        let lp = self.logger_provider.clone();
        run_with_deadline(self.shutdown_timeout, move || {
            if let Some(tp) = tp {
                let _ = tp.force_flush();
            }
            if let Some(lp) = lp {
                let _ = lp.force_flush();
            }
            // Last: the drop counters it exports are final once the others flushed.
            if let Some(mp) = mp {
                let _ = mp.force_flush();
            }
        })
    }

    /// Flushes and shuts down now; the same as dropping the guard.
    /// Returns false when the deadline passed before everything was exported.
    pub fn shutdown(mut self) -> bool {
        self.shutdown_now()
    }

    fn shutdown_now(&mut self) -> bool {
        if self.tracer_provider.is_some() || self.logger_provider.is_some() {
            crate::errors::fingerprint::flush_reports();
        }
        let tp = self.tracer_provider.take();
        let mp = self.meter_provider.take();
        let lp = self.logger_provider.take();
        let timeout = self.shutdown_timeout;
        let done = if tp.is_none() && mp.is_none() && lp.is_none() {
            true
        } else {
            // The signals shut down side by side, so one slow signal does not
            // eat another's time. The SDK's meter provider ignores its timeout,
            // hence the outer deadline.
            run_with_deadline(timeout, move || {
                let traces = thread::Builder::new()
                    .name("otel-shutdown-traces".into())
                    .spawn(move || {
                        if let Some(tp) = tp {
                            let _ = tp.shutdown_with_timeout(timeout);
                        }
                    });
                let logs = thread::Builder::new()
                    .name("otel-shutdown-logs".into())
                    .spawn(move || {
                        if let Some(lp) = lp {
                            let _ = lp.shutdown_with_timeout(timeout);
                        }
                    });
                if let Some(mp) = mp {
                    let _ = mp.shutdown_with_timeout(timeout);
                }
                for t in [traces, logs].into_iter().flatten() {
                    let _ = t.join();
                }
            })
        };
        // What the deadline cut off is lost: counted and logged like a failed export.
        if !done {
            self.stats.shutdown_deadline_passed(timeout);
        }
        // Dropping the runtime aborts any export still in flight.
        self.runtime.take();
        done
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Runs `work` on a helper thread and waits at most `deadline` for it.
/// The work is abandoned, not joined, when the deadline passes.
fn run_with_deadline(deadline: Duration, work: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let spawned = thread::Builder::new()
        .name("otel-shutdown".into())
        .spawn(move || {
            work();
            let _ = tx.send(());
        });
    if spawned.is_err() {
        return false;
    }
    let left = deadline.saturating_sub(started.elapsed());
    rx.recv_timeout(left).is_ok()
}
