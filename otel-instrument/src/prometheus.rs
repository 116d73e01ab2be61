//! Feature `prometheus`: a `/metrics` pull endpoint for teams that scrape instead
//! of running a Collector. opentelemetry-prometheus names series the way the
//! Collector does (`function_calls_total`, `function_calls_duration_seconds_bucket`),
//! so the bundled dashboards work on either path.

use std::net::SocketAddr;

use prometheus::{Encoder, TextEncoder};

mod openmetrics;

/// Why the pull endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrometheusError {
    /// The exporter could not be built.
    #[error("cannot build the Prometheus exporter")]
    Exporter(#[source] opentelemetry_sdk::error::OTelSdkError),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr} for the Prometheus endpoint; pick a free address with .prometheus_endpoint(..)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// What [`start`] returns: the reader to add to the meter provider, the bound
/// address, and what the endpoint did with its clients.
pub(crate) type Started = (
    opentelemetry_prometheus::PrometheusExporter,
    SocketAddr,
    std::sync::Arc<crate::serve::Stats>,
);

/// Builds the reader and serves `GET /metrics` on `addr` from the given runtime,
/// within [`crate::serve::Limits::default`].
pub(crate) fn start(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
) -> Result<Started, PrometheusError> {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .map_err(PrometheusError::Exporter)?;
    let std_listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| PrometheusError::Bind { addr, source })?;
    let bound = std_listener
        .local_addr()
        .map_err(|source| PrometheusError::Bind { addr, source })?;
    let listener = {
        let _enter = rt.enter();
        tokio::net::TcpListener::from_std(std_listener)
            .map_err(|source| PrometheusError::Bind { addr, source })?
    };
    let app = router(registry);
    let stats = std::sync::Arc::new(crate::serve::Stats::default());
    let serving = stats.clone();
    rt.spawn(async move {
        let stats = serving;
        if let Err(e) =
            crate::serve::serve(listener, app, crate::serve::Limits::default(), stats).await
        {
            tracing::warn!(error = %e, "the Prometheus endpoint stopped");
        }
    });
    Ok((exporter, bound, stats))
}

/// The `/metrics` router over `registry`, as the endpoint serves it: OpenMetrics when
/// the `Accept` header asks for it, the text format otherwise. Public for fuzzing the
/// endpoint's request handling ([`crate::serve::serve_connection`]).
pub fn router(registry: prometheus::Registry) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let registry = registry.clone();
            async move {
                let accept = headers
                    .get(axum::http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                // OpenMetrics when the scraper asks for it (Prometheus does
                // first): the same series, with exemplars.
                if openmetrics::wanted(accept) {
                    let body = openmetrics::encode(&gathered(&registry)).into_bytes();
                    return (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)],
                        body,
                    );
                }
                let mut body = Vec::new();
                let status = match TextEncoder::new().encode(&gathered(&registry), &mut body) {
                    Ok(()) => axum::http::StatusCode::OK,
                    Err(e) => {
                        body = e.to_string().into_bytes();
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    }
                };
                (
                    status,
                    [(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    body,
                )
            }
        }),
    )
}

/// The registry's families with their label values redacted.
fn gathered(registry: &prometheus::Registry) -> Vec<prometheus::proto::MetricFamily> {
    let mut families = registry.gather();
    crate::redact::prometheus_families(&mut families);
    families
}
