//! OTLP push: once per export interval, the latest snapshot encoded by
//! [`crate::otlp::Encoder`] and sent on otel-instrument's wire client
//! ([`otel_instrument::otlp::OtlpClient`]); no aggregation SDK sits in the data path.
//! Prometheus pull: `/metrics` serves the exposition that [`crate::exposition`]
//! renders from the snapshot, with the same names that opentelemetry-prometheus would
//! give the SDK's data, plus `/healthz`. The SDK's instruments
//! ([`register_catalogue`]) remain as the reference the golden tests compare with.
//!
//! Everything network-facing runs on the agent's own small runtime
//! ([`ExportRuntime`]), never on a caller's: the OTLP exporter is built inside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry::metrics::Meter;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_semantic_conventions::resource as res;
use otel_instrument::config::Signal;
use otel_instrument::export::{ExportError, ExportRuntime, ExportStats};
use otel_instrument::otlp::{BuildError, OtlpClient};

use crate::catalogue::{CATALOGUE, Family, Instrument, MetricDesc, Number, Origin};
use crate::config::Settings;
use crate::exposition::{self, ExpositionCell};
use crate::names;
use crate::selfmon::{ExportWatch, log_export_event};
use crate::snapshot::SnapshotCell;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The export runtime could not be built.
    #[error("cannot set up OTLP export")]
    Export(#[from] ExportError),
    /// An OTLP setting cannot be used (the message names the variable).
    #[error(transparent)]
    Client(#[from] BuildError),
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` does not parse.
    #[error(transparent)]
    Temporality(#[from] crate::otlp::TemporalityError),
    /// The pull endpoint cannot listen.
    #[error("cannot listen on {addr} for Prometheus")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// When the last cycle completed, for `/healthz`.
#[derive(Debug)]
pub struct Health {
    last_cycle_ms: AtomicU64,
    interval: Duration,
    /// Why the agent runs degraded (its GPU source is down), if it does.
    degraded: std::sync::Mutex<Option<&'static str>>,
}

impl Health {
    /// Healthy from now on for 3 intervals, until cycles complete.
    pub fn new(interval: Duration) -> Arc<Self> {
        let h = Arc::new(Self {
            last_cycle_ms: AtomicU64::new(0),
            interval,
            degraded: std::sync::Mutex::new(None),
        });
        h.beat();
        h
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Records a completed cycle.
    pub fn beat(&self) {
        self.last_cycle_ms.store(Self::now_ms(), Ordering::Relaxed);
    }

    /// True while the last cycle is at most 3 intervals old.
    pub fn healthy(&self) -> bool {
        let age = Self::now_ms().saturating_sub(self.last_cycle_ms.load(Ordering::Relaxed));
        Duration::from_millis(age) <= self.interval * 3
    }

    /// Records whether (and why) the agent runs degraded.
    pub fn set_degraded(&self, why: Option<&'static str>) {
        *self.degraded.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why the agent runs degraded, if it does.
    pub fn degraded(&self) -> Option<&'static str> {
        *self.degraded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The resource: service, host and (when set) Kubernetes node attributes. The host's
/// identity is read under `--rootfs` ([`crate::identity`]), so that it is the host's
/// and not the container's, and `service.instance.id` is stable across restarts.
///
/// The standard variables are honoured, with the specification's precedence:
/// `OTEL_SERVICE_NAME` beats `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, which beats
/// `otel-gpu-receiver`; any other key of `OTEL_RESOURCE_ATTRIBUTES` replaces the
/// receiver's own attribute of that key (`host.name`, `k8s.node.name`, …) or adds one.
/// The receiver's own `--instance-id`, when given, beats `service.instance.id` there, as
/// `OTEL_SERVICE_NAME` beats `service.name`: the dedicated setting wins over the list.
pub fn resource(settings: &Settings) -> Resource {
    let id = crate::identity::HostIdentity::detect(
        &settings.roots.rootfs,
        settings.instance_id.as_deref(),
        settings.k8s_node_name.as_deref(),
        &|| sysinfo::System::host_name().ok(),
    );
    id.log(&settings.roots.rootfs);
    let mut attrs: Vec<(String, String)> = vec![
        (res::SERVICE_NAME.into(), names::SERVICE_NAME.into()),
        (
            res::SERVICE_VERSION.into(),
            env!("CARGO_PKG_VERSION").into(),
        ),
        (res::SERVICE_INSTANCE_ID.into(), id.instance_id.clone()),
        (res::HOST_NAME.into(), id.host_name),
        (res::HOST_ARCH.into(), host_arch().into()),
        (res::OS_TYPE.into(), os_type().into()),
    ];
    if let Some(host_id) = id.host_id {
        attrs.push((res::HOST_ID.into(), host_id));
    }
    if let Some(node) = id.node_name {
        attrs.push((res::K8S_NODE_NAME.into(), node));
    }
    let mut set = |key: &str, value: &str| match attrs.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value.to_owned(),
        None => attrs.push((key.to_owned(), value.to_owned())),
    };
    for (k, v) in &settings.resource_attributes {
        set(k, v);
    }
    if let Some(name) = &settings.service_name {
        set(res::SERVICE_NAME, name);
    }
    if settings.instance_id.is_some() {
        set(res::SERVICE_INSTANCE_ID, &id.instance_id);
    }
    Resource::builder_empty()
        .with_attributes(attrs.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .build()
}

/// `host.arch` per the conventions (`amd64`, `arm64`, …).
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

/// `os.type` per the conventions.
fn os_type() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// The instrumentation scope of the agent's meter; on the pull path, the
/// `otel_scope_name`/`otel_scope_version` labels.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(names::SERVICE_NAME)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Registers one observable instrument over `cell` per catalogue entry of the enabled
/// `families` (self-monitoring entries always).
pub fn register_catalogue(meter: &Meter, families: &[Family], cell: &SnapshotCell) {
    for desc in CATALOGUE {
        let on = match desc.origin {
            Origin::Host(f) => families.contains(&f),
            Origin::SelfMonitoring => true,
        };
        if on {
            register(meter, desc, cell.clone());
        }
    }
}

/// The running export pipeline.
#[derive(Debug)]
pub struct Telemetry {
    /// Only with OTLP push.
    pusher: Option<Pusher>,
    limits: Option<Arc<crate::cardinality::Limits>>,
    runtime: ExportRuntime,
    stats: Arc<ExportStats>,
    prometheus: Option<SocketAddr>,
    http: Arc<otel_instrument::serve::Stats>,
}

impl Telemetry {
    /// With OTLP push, builds the wire client and starts pushing the snapshots stored
    /// in `cell`. With the Prometheus endpoint, renders every snapshot stored in `cell`
    /// and serves it.
    ///
    /// # Errors
    /// An OTLP setting cannot be used (the error names the variable), or the pull
    /// endpoint cannot listen.
    pub fn start(
        settings: &Settings,
        cell: SnapshotCell,
        health: Arc<Health>,
    ) -> Result<Self, TelemetryError> {
        let runtime = ExportRuntime::new()?;
        // The collection loop logs outages itself (selfmon), in the agent's words.
        let stats = Arc::new(ExportStats::without_outage_log());
        let resource = resource(settings);
        let mut pusher = None;
        let mut limits = None;
        if let Some(cfg) = &settings.otlp {
            // Per-instrument cardinality limits from the host's shape, with the SDK's
            // semantics: series beyond them fold into `otel.metric.overflow` (the
            // Prometheus exposition renders every one).
            let l = Arc::new(crate::cardinality::Limits::estimate(settings));
            let temporality = crate::otlp::Temporality::from_env(&|k| std::env::var(k).ok())?;
            let client = runtime.enter(|| OtlpClient::new(Signal::Metrics, cfg, stats.clone()))?;
            let encoder = crate::otlp::Encoder::new(
                &resource,
                &scope(),
                &settings.families,
                temporality,
                Some(l.clone()),
            );
            let seed = resource
                .get(&opentelemetry::Key::from_static_str(
                    res::SERVICE_INSTANCE_ID,
                ))
                .map(|v| v.to_string())
                .unwrap_or_default();
            pusher = Some(Pusher::start(
                &runtime,
                encoder,
                client,
                cell.clone(),
                settings.export_interval,
                settings.first_export.delay(settings.export_interval, &seed),
            ));
            limits = Some(l);
        }
        let mut prometheus = None;
        let http_stats = Arc::new(otel_instrument::serve::Stats::default());
        if let Some(addr) = settings.prometheus {
            let listener = runtime
                .handle()
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|source| TelemetryError::Listen { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| TelemetryError::Listen { addr, source })?;
            tracing::info!(%local, "serving Prometheus /metrics and /healthz");
            prometheus = Some(local);
            let app = router(&cell, &resource, health);
            // Bounded for any client that can reach the port: a connection cap, header
            // and write timeouts, small request heads (otel_instrument::serve).
            let limits = otel_instrument::serve::Limits::default();
            let serving = http_stats.clone();
            runtime.handle().spawn(async move {
                if let Err(e) = otel_instrument::serve::serve(listener, app, limits, serving).await
                {
                    tracing::error!(error = %e, "Prometheus endpoint stopped");
                }
            });
        }
        Ok(Self {
            pusher,
            limits,
            runtime,
            stats,
            prometheus,
            http: http_stats,
        })
    }

    /// The per-instrument cardinality limits of the OTLP push; `None` without it,
    /// where nothing folds series.
    pub fn limits(&self) -> Option<Arc<crate::cardinality::Limits>> {
        self.limits.clone()
    }

    /// Failure counts of the OTLP exporter.
    pub fn export_stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// The address the Prometheus endpoint listens on, when enabled.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus
    }

    /// What the `/metrics` and `/healthz` endpoint did with its clients: connections
    /// open and at most open (never above its cap of 64), closed for a stuck write or
    /// an HTTP error (a head not sent within 10 s, too large), bodies refused.
    pub fn http_stats(&self) -> Arc<otel_instrument::serve::Stats> {
        self.http.clone()
    }

    /// The agent's runtime, e.g. to wait for a signal on.
    pub fn runtime(&self) -> &ExportRuntime {
        &self.runtime
    }

    /// Pushes the latest snapshot a last time and stops, within 5 s.
    pub fn shutdown(self) {
        if let Some(p) = self.pusher {
            p.stop(&self.runtime, Duration::from_secs(5));
        }
    }
}

/// The OTLP push task: every export interval (the first at a per-agent offset), the
/// latest snapshot encoded and sent. One export at a time: a tick that comes while an
/// export is still retrying is skipped, so nothing queues up while the collector is
/// down, and the next tick after it returns sends the latest snapshot.
#[derive(Debug)]
struct Pusher {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(crate::otlp::Encoder, OtlpClient, ExportWatch)>,
    cell: SnapshotCell,
}

impl Pusher {
    fn start(
        runtime: &ExportRuntime,
        mut encoder: crate::otlp::Encoder,
        client: OtlpClient,
        cell: SnapshotCell,
        interval: Duration,
        offset: Duration,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let snapshots = cell.clone();
        let task = runtime.handle().spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watch = ExportWatch::default();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                tokio::select! {
                    () = push(&mut encoder, &client, &snapshots, &mut watch) => {}
                    _ = &mut stopped => break,
                }
            }
            (encoder, client, watch)
        });
        Self { stop, task, cell }
    }

    /// Stops the task and pushes once more, all within `deadline`.
    fn stop(self, runtime: &ExportRuntime, deadline: Duration) {
        let _ = self.stop.send(());
        let cell = self.cell;
        let task = self.task;
        let done = runtime.handle().block_on(async move {
            tokio::time::timeout(deadline, async move {
                if let Ok((mut encoder, client, mut watch)) = task.await {
                    push(&mut encoder, &client, &cell, &mut watch).await;
                }
            })
            .await
        });
        if done.is_err() {
            tracing::warn!(
                ?deadline,
                "the last OTLP export did not finish before shutdown"
            );
        }
    }
}

/// Encodes the latest snapshot and sends it; the client counts the outcome, and
/// `watch` turns the counts into the outage's lines: the one that starts an outage (and
/// each summary) names the cause of the failure that it reports.
async fn push(
    encoder: &mut crate::otlp::Encoder,
    client: &OtlpClient,
    cell: &SnapshotCell,
    watch: &mut ExportWatch,
) {
    let snapshot = cell.load();
    if snapshot.series() == 0 {
        // No cycle has completed yet.
        return;
    }
    let body = encoder.encode(&snapshot, SystemTime::now());
    drop(snapshot);
    let result = client.export(body).await;
    let stats = client.stats();
    let event = watch.observe(
        stats.failures(Signal::Metrics),
        stats.successes(Signal::Metrics),
        Instant::now(),
    );
    let error = result.as_ref().err();
    match event {
        Some(event) => log_export_event(event, error.map(|e| e as &dyn std::fmt::Display)),
        None => {
            if let Some(e) = error {
                tracing::debug!(error = %e, "OTLP export failed");
            }
        }
    }
}

/// Registers one observable instrument of the given builder that reads its
/// points from the latest snapshot. The OTel API has one builder per number type
/// and instrument kind, hence a macro rather than six copies of the callback.
macro_rules! observe {
    ($meter:expr, $builder:ident, $d:expr, $cell:expr, |$p:ident| $value:expr) => {{
        let (name, cell) = ($d.name, $cell);
        $meter
            .$builder(name)
            .with_unit($d.unit)
            .with_description($d.description)
            .with_callback(move |o| {
                for $p in cell.load().points(name) {
                    o.observe($value, &$p.attributes);
                }
            })
            .build();
    }};
}

/// Registers the observable instrument of one catalogue entry.
fn register(meter: &Meter, d: &'static MetricDesc, cell: SnapshotCell) {
    match (d.instrument, d.number) {
        (Instrument::Counter, Number::Int) => {
            observe!(
                meter,
                u64_observable_counter,
                d,
                cell,
                |p| p.value.as_i64().max(0) as u64
            )
        }
        (Instrument::Counter, Number::Float) => {
            observe!(meter, f64_observable_counter, d, cell, |p| p.value.as_f64())
        }
        (Instrument::UpDownCounter, Number::Int) => {
            observe!(meter, i64_observable_up_down_counter, d, cell, |p| p
                .value
                .as_i64())
        }
        (Instrument::UpDownCounter, Number::Float) => {
            observe!(meter, f64_observable_up_down_counter, d, cell, |p| p
                .value
                .as_f64())
        }
        (Instrument::Gauge, Number::Int) => {
            observe!(meter, i64_observable_gauge, d, cell, |p| p.value.as_i64())
        }
        (Instrument::Gauge, Number::Float) => {
            observe!(meter, f64_observable_gauge, d, cell, |p| p.value.as_f64())
        }
    }
}

/// The router of the pull endpoint: `/metrics` renders what `cell` holds, `/healthz`
/// reports `health`. Public for fuzzing the endpoint's request handling
/// ([`otel_instrument::serve::serve_connection`]).
pub fn router(cell: &SnapshotCell, resource: &Resource, health: Arc<Health>) -> axum::Router {
    let exposition = exposition::publish(cell, resource, &scope());
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .with_state(Arc::new(ServerState { exposition, health }))
}

#[derive(Debug)]
struct ServerState {
    exposition: ExpositionCell,
    health: Arc<Health>,
}

/// `/metrics`: the latest rendering; never waits on collection (the cell's lock is held
/// only to clone an `Arc`), and the body is shared bytes, so a slow client holds nothing
/// but its own copy of the pointer.
async fn metrics(
    State(s): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> axum::response::Response {
    exposition::response(&s.exposition.load(), &headers)
}

/// 503 only when cycles stop (a restart may help); a degraded agent (no GPU driver) is
/// 200 with a `degraded: …` body: restarting it brings no driver back, and a DaemonSet
/// pod that is never ready would hold up every rollout. KUBERNETES.md has the probes.
async fn healthz(State(s): State<Arc<ServerState>>) -> (StatusCode, String) {
    if s.health.healthy() {
        match s.health.degraded() {
            Some(why) => (StatusCode::OK, format!("degraded: {why}\n")),
            None => (StatusCode::OK, "ok\n".to_owned()),
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no collection cycle completed in the last 3 intervals\n".to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_turns_unhealthy_when_the_last_cycle_is_older_than_three_intervals() {
        let h = Health::new(Duration::from_millis(20));
        assert!(h.healthy());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!h.healthy());
        h.beat();
        assert!(h.healthy());
    }

    #[test]
    fn the_resource_names_the_service_and_the_host() {
        let s = Settings {
            instance_id: Some("node-7".into()),
            k8s_node_name: Some("k8s-node-7".into()),
            ..Settings::default()
        };
        let r = resource(&s);
        let get = |k: &str| {
            r.get(&opentelemetry::Key::new(k.to_owned()))
                .map(|v| v.to_string())
        };
        assert_eq!(get(res::SERVICE_NAME).as_deref(), Some("otel-gpu-receiver"));
        assert_eq!(get(res::SERVICE_INSTANCE_ID).as_deref(), Some("node-7"));
        assert_eq!(get(res::K8S_NODE_NAME).as_deref(), Some("k8s-node-7"));
        assert!(get(res::HOST_NAME).is_some() && get(res::HOST_ARCH).is_some());
    }

    #[test]
    fn resource_variables_override_the_receivers_attributes_but_not_its_instance_id_flag() {
        let s = Settings {
            instance_id: Some("node-7".into()),
            service_name: Some("from-service-name".into()),
            resource_attributes: vec![
                ("service.name".into(), "from-attributes".into()),
                ("service.instance.id".into(), "from-attributes".into()),
                ("host.arch".into(), "from-attributes".into()),
                ("team".into(), "gpu".into()),
            ],
            ..Settings::default()
        };
        let r = resource(&s);
        let get = |k: &str| {
            r.get(&opentelemetry::Key::new(k.to_owned()))
                .map(|v| v.to_string())
        };
        assert_eq!(get(res::SERVICE_NAME).as_deref(), Some("from-service-name"));
        assert_eq!(get(res::SERVICE_INSTANCE_ID).as_deref(), Some("node-7"));
        assert_eq!(get(res::HOST_ARCH).as_deref(), Some("from-attributes"));
        assert_eq!(get("team").as_deref(), Some("gpu"));
        // Without --instance-id, the detected one gives way to the variable.
        let s = Settings {
            resource_attributes: vec![("service.instance.id".into(), "from-attributes".into())],
            ..Settings::default()
        };
        let r = resource(&s);
        assert_eq!(
            r.get(&opentelemetry::Key::new(res::SERVICE_INSTANCE_ID))
                .map(|v| v.to_string())
                .as_deref(),
            Some("from-attributes")
        );
    }

    #[test]
    fn only_an_agent_that_pushes_through_the_sdk_has_cardinality_limits() {
        let pull = Settings {
            otlp: None,
            prometheus: Some("127.0.0.1:0".parse().unwrap()),
            ..Settings::default()
        };
        let t =
            Telemetry::start(&pull, SnapshotCell::default(), Health::new(pull.interval)).unwrap();
        assert!(
            t.limits().is_none(),
            "a pull-only agent folds nothing, so it must count no overflow"
        );
        t.shutdown();
        let push = Settings::default();
        assert!(push.otlp.is_some());
        let t =
            Telemetry::start(&push, SnapshotCell::default(), Health::new(push.interval)).unwrap();
        assert!(t.limits().is_some());
        t.shutdown();
    }
}
