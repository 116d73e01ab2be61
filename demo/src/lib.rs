//! The stack's demo: two real services and a load client, instrumented with
//! `otel-instrument`, so one trace crosses HTTP and gRPC and three processes.
//!
//! ```text
//! demo-load ──HTTP──▶ demo-gateway (axum) ──gRPC──▶ demo-backend (tonic)
//!   visit              GET /items/{id}                demo.v1.Inventory/GetItem
//!   └ GET (client)     └ show_item                    └ get_item
//!                        ├ demo.v1.Inventory/GetItem    ├ lookup_catalogue
//!                        │   (client)                   └ read_stock
//!                        └ record_view (spawned)
//! ```
//!
//! - [`backend`]: a tonic server behind `propagation::ServerLayer`, with
//!   `#[monitored]` handlers calling `#[monitored]` helpers (`caller.function`).
//!   Unknown ids are `NOT_FOUND`; [`ids::SLOW`] takes 50 ms; [`ids::OFFLINE`]
//!   is `UNAVAILABLE` (its warehouse is down).
//! - [`gateway`]: an axum server behind `ServerLayer`, calling the backend over
//!   a channel wrapped in `propagation::ClientLayer`; NOT_FOUND becomes 404,
//!   UNAVAILABLE 503. It records views on a task started with
//!   `monitored::spawn`, which stays in the request's trace.
//! - [`load`]: drives the gateway over HTTP at a given rate through a hyper
//!   client wrapped in `ClientLayer`, so its spans are the traces' roots.
//!
//! Each binary sets up telemetry with [`telemetry`] (the `OTEL_*` variables,
//! OTLP to `OTEL_EXPORTER_OTLP_ENDPOINT`) and takes its addresses from flags or
//! `DEMO_*` variables (`--help`).

use std::net::SocketAddr;
use std::process::ExitCode;

pub mod backend;
pub mod gateway;
pub mod load;

/// The code blocks of the project's documentation, compiled (`no_run` blocks)
/// and run as doc tests here, where real axum and tonic services and the
/// demo's generated gRPC code are at hand. A snippet that stops compiling
/// fails `cargo test`.
#[cfg(doctest)]
pub mod docs {
    #[doc = include_str!("../../README.md")]
    pub struct Readme;
    #[doc = include_str!("../../otel-instrument/README.md")]
    pub struct InstrumentReadme;
    #[doc = include_str!("../../otel-instrument/MONITORED.md")]
    pub struct Monitored;
}

/// The generated gRPC code for `proto/demo/v1/inventory.proto`.
#[allow(missing_docs, missing_debug_implementations, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("demo.v1");
}

/// The item ids the backend knows and the ones that misbehave on purpose.
pub mod ids {
    /// Items in the catalogue, answered at once.
    pub const KNOWN: [&str; 3] = ["a100", "h100", "l4"];
    /// An item whose stock comes from a slow store: 50 ms.
    pub const SLOW: &str = "slow";
    /// An item whose warehouse does not answer: `UNAVAILABLE`, HTTP 503.
    pub const OFFLINE: &str = "offline";
    /// An id the catalogue does not have: `NOT_FOUND`, HTTP 404.
    pub const MISSING: &str = "missing";
}

/// Why a demo process stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Telemetry could not be set up (a bad `OTEL_*` value, for example).
    #[error("cannot set up telemetry")]
    Telemetry(#[from] otel_instrument::InitError),
    /// `--prometheus` was given to a build without the `prometheus` feature.
    #[error("--prometheus needs the `prometheus` feature; build with `--features prometheus`")]
    NoPrometheus,
    /// A URL flag is not an `http://host:port` URL.
    #[error("{flag} {url:?} is not an http:// or https:// URL; for example {example}")]
    Url {
        /// The flag or variable.
        flag: &'static str,
        /// What it was given.
        url: String,
        /// A valid value.
        example: &'static str,
    },
    /// The tokio runtime could not start.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
}

impl RunError {
    /// Usage and configuration errors exit with 2, everything else with 1.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Telemetry(_) | Self::NoPrometheus | Self::Url { .. } => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Prints a failed run's error with its causes and gives the exit code.
pub fn exit(result: Result<(), RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("error: {message}");
            e.exit_code()
        }
    }
}

/// Sets up telemetry for one of the demo's processes: `service` is the
/// default `service.name` (`OTEL_SERVICE_NAME` wins), and `prometheus`, when
/// given, also serves `/metrics` there. It is set up inside `runtime`, so the
/// runtime's `tokio.*` metrics are exported beside the process's own.
///
/// # Errors
/// A bad `OTEL_*` value, or `prometheus` without the feature.
pub fn telemetry(
    service: &str,
    prometheus: Option<SocketAddr>,
    runtime: &tokio::runtime::Runtime,
) -> Result<otel_instrument::TelemetryGuard, RunError> {
    let _inside = runtime.enter();
    #[allow(unused_mut)]
    let mut builder =
        otel_instrument::Telemetry::builder().default_service(service, env!("CARGO_PKG_VERSION"));
    if let Some(addr) = prometheus {
        #[cfg(feature = "prometheus")]
        {
            builder = builder.prometheus_endpoint(addr);
        }
        #[cfg(not(feature = "prometheus"))]
        {
            let _ = addr;
            return Err(RunError::NoPrometheus);
        }
    }
    Ok(builder.install()?)
}

/// A multi-threaded runtime with two workers: the demo is small, and the
/// machines that run the stack's tests are too.
///
/// # Errors
/// The runtime cannot start.
pub fn runtime() -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)
}

/// Resolves on Ctrl-C or SIGTERM (`docker stop`), so servers stop gracefully
/// and the telemetry guard flushes what is left.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Checks that `url` is an `http://` or `https://` URL with a host.
///
/// # Errors
/// [`RunError::Url`], naming `flag` and showing `example`.
pub fn parse_url(
    flag: &'static str,
    url: &str,
    example: &'static str,
) -> Result<http::Uri, RunError> {
    let bad = || RunError::Url {
        flag,
        url: url.to_owned(),
        example,
    };
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_http_or_https_and_a_host() {
        assert!(parse_url("--x", "http://127.0.0.1:8080", "e").is_ok());
        assert!(parse_url("--x", "https://gw", "e").is_ok());
        for bad in ["127.0.0.1:8080", "ftp://gw", "http://", "not a url"] {
            let e = parse_url("--x", bad, "http://gw:8080").unwrap_err();
            let message = e.to_string();
            assert!(
                message.contains("--x") && message.contains("http://gw:8080"),
                "{bad}: {message}"
            );
            assert_eq!(e.exit_code(), ExitCode::from(2));
        }
    }
}
