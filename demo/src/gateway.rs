//! `demo-gateway`: the HTTP front, an axum server that asks the backend.
//!
//! `ServerLayer` on the router opens the server span (`GET /items/{id}`, with
//! `http.route`); [`show_item`] is the `#[monitored]` handler inside it. It
//! calls the backend through a tonic channel wrapped in `ClientLayer`, which
//! opens the client span and sends `traceparent`, and records the view on a
//! task started with `monitored::spawn`, which stays in the request's trace.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use otel_instrument::propagation::{ClientLayer, ServerLayer, TracedClient};
use otel_instrument::{Categorize, monitored};
use tonic::transport::Channel;
use tower::Layer as _;

use crate::RunError;
use crate::proto::GetItemRequest;
use crate::proto::inventory_client::InventoryClient;

/// `demo-gateway`'s settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "demo-gateway", version, about = "The demo's HTTP gateway")]
pub struct Settings {
    /// Where to serve HTTP (port 0: any free port; the bound address is
    /// printed as `demo-gateway listening on ADDR`).
    #[arg(long, env = "DEMO_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The backend's gRPC URL.
    #[arg(
        long,
        env = "DEMO_BACKEND_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub backend: String,
    /// Also serve Prometheus `/metrics` here.
    #[arg(long, env = "DEMO_PROMETHEUS_ADDR")]
    pub prometheus: Option<SocketAddr>,
}

/// The backend client: every call gets a client span and carries the trace.
pub type Backend = InventoryClient<TracedClient<Channel>>;

/// A JSON response body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: serde::Serialize> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => ([(http::header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

/// What the gateway answers for an item.
#[derive(Debug, serde::Serialize)]
pub struct ItemView {
    /// The item's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Units in stock.
    pub stock: u32,
}

/// Why a gateway request failed; each maps to one HTTP status.
/// `error.type` is the variant's name.
#[derive(Debug, thiserror::Error, Categorize)]
#[non_exhaustive]
pub enum AppError {
    /// The backend has no such item: 404.
    #[error("no such item")]
    #[category(not_found)]
    NotFound(#[source] tonic::Status),
    /// The backend or its dependency is down: 503.
    #[error("the inventory is unavailable")]
    #[category(unavailable)]
    Unavailable(#[source] tonic::Status),
    /// Any other backend failure: 502, categorised by the backend's status.
    #[error("the inventory failed")]
    #[category(source)]
    Backend(#[source] tonic::Status),
}

impl From<tonic::Status> for AppError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::NotFound => Self::NotFound(status),
            tonic::Code::Unavailable => Self::Unavailable(status),
            _ => Self::Backend(status),
        }
    }
}

impl AppError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Backend(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), JsonBody(body)).into_response()
    }
}

/// Records that an item was viewed. Started with `monitored::spawn`, so it is
/// a child of the request's handler in the same trace, after the response.
#[monitored]
async fn record_view(id: String) {
    // Stands in for a write to an audit log.
    tokio::time::sleep(Duration::from_millis(1)).await;
    otel_instrument::counter!("demo.item.views", 1);
    tracing::info!(item.id = %id, "view recorded");
}

/// `GET /items/{id}`: the item from the backend; 404 when it has none, 503
/// when it is unavailable.
///
/// The axum shape `Result<impl IntoResponse, AppError>`: the error type is
/// known from the signature, so an `Err` is classified by `AppError`.
///
/// # Errors
/// [`AppError`], answered with its status.
#[monitored]
pub async fn show_item(
    State(backend): State<Backend>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, AppError> {
    let mut backend = backend;
    let item = backend.get_item(GetItemRequest { id }).await?.into_inner();
    otel_instrument::monitored::spawn(record_view(item.id.clone()));
    Ok(JsonBody(ItemView {
        id: item.id,
        name: item.name,
        stock: item.stock,
    }))
}

/// The gateway's router, calling `backend`.
pub fn router(backend: Backend) -> axum::Router {
    axum::Router::new()
        .route("/items/{id}", axum::routing::get(show_item))
        .with_state(backend)
        // `Router::layer` runs inside the router, so the span gets `http.route`.
        .layer(ServerLayer::new())
}

/// A client for the backend at `url` that connects on first use, so the
/// gateway can start before the backend does.
///
/// # Errors
/// `url` is not an `http://host:port` URL.
pub fn backend_client(url: &str) -> Result<Backend, RunError> {
    let example = "http://127.0.0.1:50051";
    let uri = crate::parse_url("--backend (DEMO_BACKEND_URL)", url, example)?;
    let channel = Channel::builder(uri)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    Ok(InventoryClient::new(ClientLayer::new().layer(channel)))
}

/// Serves the gateway until Ctrl-C or SIGTERM.
///
/// # Errors
/// The backend URL is bad, the address cannot be bound or the server fails.
pub async fn serve(settings: &Settings) -> Result<(), RunError> {
    let backend = backend_client(&settings.backend)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: settings.listen,
        source,
    })?;
    println!("demo-gateway listening on {addr}");
    axum::serve(listener, router(backend))
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .map_err(RunError::Http)
}

/// `demo-gateway`'s `main`: telemetry, then [`serve`].
///
/// # Errors
/// See [`RunError`].
pub fn main(settings: &Settings) -> Result<(), RunError> {
    let runtime = crate::runtime()?;
    let guard = crate::telemetry("demo-gateway", settings.prometheus, &runtime)?;
    let result = runtime.block_on(serve(settings));
    guard.shutdown();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use otel_instrument::ErrorCategory;

    #[test]
    fn grpc_codes_become_http_statuses_and_categories() {
        let cases = [
            (
                tonic::Code::NotFound,
                404,
                ErrorCategory::NotFound,
                "NotFound",
            ),
            (
                tonic::Code::Unavailable,
                503,
                ErrorCategory::Unavailable,
                "Unavailable",
            ),
            (
                tonic::Code::Internal,
                502,
                ErrorCategory::Internal,
                "Backend",
            ),
        ];
        for (code, status, category, error_type) in cases {
            let e = AppError::from(tonic::Status::new(code, "x"));
            assert_eq!(e.status().as_u16(), status, "{code:?}");
            assert_eq!(e.category(), category, "{code:?}");
            assert_eq!(e.error_type(), error_type, "{code:?}");
        }
    }

    #[test]
    fn a_backend_url_needs_a_scheme_and_a_host() {
        assert!(backend_client("demo-backend:50051").is_err());
        assert!(backend_client("ftp://demo-backend:50051").is_err());
    }
}
