//! A real axum 0.8 handler: `Router::route` accepts the monitored fn, which
//! proves it is a `Handler` (its future is `Send`). `AppError` implements
//! neither `Categorize` nor `std::error::Error`.
#![deny(warnings)]
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use otel_instrument::monitored;

#[derive(Debug)]
struct AppError;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[monitored(kind = server)]
async fn handler(Path(id): Path<u32>) -> Result<impl IntoResponse, AppError> {
    if id == 0 {
        return Err(AppError);
    }
    Ok((StatusCode::OK, format!("item {id}")))
}

#[monitored(kind = server, fields(id = id))]
async fn by_name(Path(id): Path<String>) -> impl IntoResponse {
    id
}

fn main() {
    let _app: axum::Router = axum::Router::new()
        .route("/x/{id}", get(handler))
        .route("/y/{id}", get(by_name));
}
