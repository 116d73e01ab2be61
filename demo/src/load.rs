//! `demo-load`: drives the gateway over HTTP.
//!
//! Each request is a `#[monitored]` [`visit`], a new local root, sampled by
//! `OTEL_TRACES_SAMPLER`; its HTTP call goes through a hyper client wrapped in
//! `ClientLayer`, which opens the client span and sends `traceparent`, sampled
//! or not, so the gateway and the backend follow the root's decision.
//!
//! Every finished request prints one line on stdout:
//! `visit id=<id> status=<http status, 0 if none> trace_id=<32 hex>`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TraceContextExt as _;
use otel_instrument::propagation::{ClientLayer, TracedClient};
use otel_instrument::{Categorize, ErrorCategory, monitored};
use tower::{Layer as _, ServiceExt as _};

use crate::{RunError, ids};

/// `demo-load`'s settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "demo-load",
    version,
    about = "Drives the demo gateway over HTTP"
)]
pub struct Settings {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "DEMO_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: String,
    /// Requests per second.
    #[arg(long, env = "DEMO_LOAD_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
    /// Stop after this many requests (and wait for them); 0: run until
    /// stopped.
    #[arg(long, env = "DEMO_LOAD_REQUESTS", default_value_t = 0)]
    pub requests: u64,
    /// Item ids to ask for, in turn (comma-separated). Default: a mix of
    /// known items (200), unknown ones (404), the offline warehouse (503) and
    /// the slow store.
    #[arg(long, env = "DEMO_LOAD_IDS", value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Also serve Prometheus `/metrics` here.
    #[arg(long, env = "DEMO_PROMETHEUS_ADDR")]
    pub prometheus: Option<std::net::SocketAddr>,
}

/// The default mix, one round of 20 requests: 13 found, 3 not found (404),
/// 2 unavailable (503), 2 slow.
pub fn default_mix() -> Vec<String> {
    let mut mix = Vec::with_capacity(20);
    for i in 0..13 {
        mix.push(ids::KNOWN[i % ids::KNOWN.len()]);
        match i {
            3 | 7 | 11 => mix.push(ids::MISSING),
            5 | 10 => mix.push(ids::OFFLINE),
            1 | 8 => mix.push(ids::SLOW),
            _ => {}
        }
    }
    mix.into_iter().map(str::to_owned).collect()
}

/// The HTTP client: every request gets a client span and carries the trace.
pub type HttpClient = TracedClient<Client<HttpConnector, Empty<Bytes>>>;

/// A client for the gateway, with the trace-propagating layer on it.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    ClientLayer::new().layer(client)
}

/// Why a visit failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VisitError {
    /// The gateway answered with an error status.
    #[error("the gateway answered {0}")]
    Status(http::StatusCode),
    /// The gateway could not be reached or the answer broke off.
    #[error("the request failed")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Categorize for VisitError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Status(code) => code.category(),
            Self::Transport(_) => ErrorCategory::Unavailable,
        }
    }
    fn error_type(&self) -> &'static str {
        match self {
            // "404", "503": the status code, as the semantic conventions ask.
            Self::Status(code) => code.error_type(),
            Self::Transport(_) => "Transport",
        }
    }
}

/// One request for item `id`; prints its `visit` line when done.
///
/// # Errors
/// A status other than 2xx, or a transport failure.
#[monitored(skip(client, gateway))]
pub async fn visit(
    client: HttpClient,
    gateway: &http::Uri,
    id: &str,
) -> Result<http::StatusCode, VisitError> {
    let trace_id = otel_instrument::monitored::current_context()
        .span()
        .span_context()
        .trace_id();
    let result = get(client, gateway, id).await;
    let status = match &result {
        Ok(s) | Err(VisitError::Status(s)) => s.as_u16(),
        Err(VisitError::Transport(_)) => 0,
    };
    println!("visit id={id} status={status} trace_id={trace_id}");
    result
}

async fn get(
    client: HttpClient,
    gateway: &http::Uri,
    id: &str,
) -> Result<http::StatusCode, VisitError> {
    let base = gateway.to_string();
    let url = format!("{}/items/{id}", base.trim_end_matches('/'));
    let req = http::Request::get(url)
        .body(Empty::new())
        .map_err(|e| VisitError::Transport(e.into()))?;
    let resp = client
        .oneshot(req)
        .await
        .map_err(|e| VisitError::Transport(e.into()))?;
    let status = resp.status();
    // Reading the body to its end ends the client span.
    resp.into_body()
        .collect()
        .await
        .map_err(|e| VisitError::Transport(e.into()))?;
    if status.is_success() {
        Ok(status)
    } else {
        Err(VisitError::Status(status))
    }
}

/// Sends requests at the configured rate until `--requests` are done, or
/// until Ctrl-C or SIGTERM.
///
/// # Errors
/// The gateway URL is bad.
pub async fn run(settings: &Settings) -> Result<(), RunError> {
    let gateway = crate::parse_url(
        "--gateway (DEMO_GATEWAY_URL)",
        &settings.gateway,
        "http://127.0.0.1:8080",
    )?;
    let mix = if settings.ids.is_empty() {
        default_mix()
    } else {
        settings.ids.clone()
    };
    let client = http_client();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / settings.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = tokio::task::JoinSet::new();
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let mut sent = 0u64;
    while settings.requests == 0 || sent < settings.requests {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {}
        }
        let id = mix[(sent % mix.len() as u64) as usize].clone();
        let (client, gateway) = (client.clone(), gateway.clone());
        // A plain spawn: every visit is a trace of its own.
        running.spawn(async move {
            let _ = visit(client, &gateway, &id).await;
        });
        sent += 1;
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

/// `demo-load`'s `main`: telemetry, then [`run`].
///
/// # Errors
/// See [`RunError`].
pub fn main(settings: &Settings) -> Result<(), RunError> {
    let runtime = crate::runtime()?;
    let guard = crate::telemetry("demo-load", settings.prometheus, &runtime)?;
    let result = runtime.block_on(run(settings));
    guard.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_has_every_outcome_in_fixed_proportions() {
        let mix = default_mix();
        let count = |id: &str| mix.iter().filter(|m| *m == id).count();
        assert_eq!(mix.len(), 20);
        assert_eq!(ids::KNOWN.iter().map(|k| count(k)).sum::<usize>(), 13);
        assert_eq!(count(ids::MISSING), 3);
        assert_eq!(count(ids::OFFLINE), 2);
        assert_eq!(count(ids::SLOW), 2);
    }

    #[test]
    fn a_failed_visit_is_categorised_by_its_http_status() {
        let e = VisitError::Status(http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.category(), ErrorCategory::Unavailable);
        assert_eq!(e.error_type(), "503");
        let e = VisitError::Status(http::StatusCode::NOT_FOUND);
        assert_eq!(e.category(), ErrorCategory::NotFound);
    }
}
