//! Error classification end to end: `#[derive(Categorize)]` on thiserror
//! enums as services write them, and `#[monitored]` fns returning
//! `anyhow::Result` or boxed errors, checked on the OTLP wire.

mod monitored_common;

use std::error::Error;
use std::io::{Error as IoError, ErrorKind};
use std::sync::OnceLock;

use monitored_common::{Pipeline, flush_until, map, points, spans_named, value_with};
use otel_instrument::errors::{Categorize, ErrorCategory};
use otel_instrument::monitored;

#[derive(Debug, thiserror::Error, Categorize)]
#[category(internal)]
enum RepoError {
    #[error("no user {id}")]
    #[category(not_found)]
    NoSuchUser { id: u64 },
    #[error("storage")]
    #[category(source)]
    Storage(#[from] IoError),
    #[error("upstream")]
    #[category(transparent)]
    Upstream(#[source] tonic::Status),
    #[error("query {sql}")]
    #[category(source)]
    Query {
        sql: String,
        source: Box<dyn Error + Send + Sync>,
    },
    #[error("invariant broken")]
    Bug,
    #[error(transparent)]
    #[category(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error, Categorize)]
#[error("rate limited")]
#[category(resource_exhausted)]
struct RateLimited;

#[derive(Debug, thiserror::Error, Categorize)]
#[error("reading config")]
#[category(source)]
struct ConfigError(#[from] IoError);

/// The derive is also at the crate root, next to the trait.
#[derive(Debug, otel_instrument::Categorize)]
#[category(unauthenticated)]
struct NoToken;

/// A service error that wraps the repository's: its variants speak for it.
#[derive(Debug, thiserror::Error, Categorize)]
#[category(transparent)]
enum ServiceError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Limited(#[from] RateLimited),
    #[error("bad request")]
    #[category(invalid_argument)]
    BadRequest,
}

#[test]
fn derived_variants_have_their_category_and_name() {
    let e = RepoError::NoSuchUser { id: 7 };
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::NotFound, "NoSuchUser")
    );
    let e = RepoError::Bug;
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::Internal, "Bug")
    );
    assert_eq!(
        (RateLimited.category(), RateLimited.error_type()),
        (ErrorCategory::ResourceExhausted, "RateLimited")
    );
    assert_eq!(
        (NoToken.category(), NoToken.error_type()),
        (ErrorCategory::Unauthenticated, "NoToken")
    );
}

#[test]
fn a_source_variant_is_classified_by_what_it_wraps_and_keeps_its_name() {
    let e = RepoError::from(IoError::from(ErrorKind::TimedOut));
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::Timeout, "Storage")
    );
    // A boxed source, found by its field name.
    let e = RepoError::Query {
        sql: "select 1".into(),
        source: Box::new(IoError::from(ErrorKind::ConnectionReset)),
    };
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::Unavailable, "Query")
    );
    // A wrapped error nothing is known about: its chain, here empty.
    let e = RepoError::Query {
        sql: "select 1".into(),
        source: "no idea".into(),
    };
    assert_eq!(e.category(), ErrorCategory::Unknown);
    let e = ConfigError::from(IoError::from(ErrorKind::PermissionDenied));
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::PermissionDenied, "ConfigError")
    );
}

#[test]
fn a_transparent_variant_takes_the_name_of_what_it_wraps() {
    let e = RepoError::Upstream(tonic::Status::unavailable("down"));
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::Unavailable, "UNAVAILABLE")
    );
    let e = RepoError::from(anyhow::Error::from(IoError::from(ErrorKind::NotFound)).context("x"));
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::NotFound, "NotFound")
    );
    // Through two derived layers.
    let e = ServiceError::from(RepoError::NoSuchUser { id: 1 });
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::NotFound, "NoSuchUser")
    );
    let e = ServiceError::from(RateLimited);
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::ResourceExhausted, "RateLimited")
    );
    let e = ServiceError::BadRequest;
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::InvalidArgument, "BadRequest")
    );
}

#[test]
fn a_derived_error_inside_a_box_is_reached_through_its_source() {
    // The chain cannot downcast to a user type, but it walks through it.
    let e: Box<dyn Error + Send + Sync> =
        Box::new(RepoError::from(IoError::from(ErrorKind::AlreadyExists)));
    assert_eq!(
        (e.category(), e.error_type()),
        (ErrorCategory::AlreadyExists, "AlreadyExists")
    );
}

/// The pipeline is process-wide (global providers and subscriber): install it once.
fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        Pipeline::install(|b| {
            b.service_name("monitored-errors-tests")
                .fmt(false)
                .filter("errors=trace")
        })
    })
}

#[monitored]
fn load_config_anyhow() -> anyhow::Result<String> {
    let missing = IoError::from(ErrorKind::NotFound);
    Err(anyhow::Error::from(missing).context("reading /etc/app.toml"))
}

#[monitored]
fn load_config_boxed() -> Result<String, Box<dyn Error + Send + Sync>> {
    let missing = IoError::from(ErrorKind::NotFound);
    Err(Box::new(ConfigError::from(missing)))
}

#[monitored]
async fn find_user(id: u64) -> Result<String, ServiceError> {
    Err(RepoError::NoSuchUser { id }.into())
}

#[monitored]
fn vague_failure() -> anyhow::Result<()> {
    anyhow::bail!("user 42 could not be loaded")
}

/// The value of `function`'s `function.calls` point with exactly these error
/// labels; fails the test, listing the points, when there is none.
fn error_point(p: &Pipeline, function: &str, category: &str, error_type: &str) -> Option<f64> {
    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", function).is_empty()
    });
    let pts = points(&r, "function.calls", function);
    let want = map(&[
        ("function", function),
        ("module", "errors"),
        ("result", "error"),
        ("error.category", category),
        ("error.type", error_type),
    ]);
    let value = value_with(&pts, &want);
    assert!(value.is_some(), "{function}: {pts:#?}");
    value
}

#[test]
fn an_anyhow_result_records_the_io_error_inside_it() {
    let p = pipeline();
    assert!(load_config_anyhow().is_err());
    assert_eq!(
        error_point(p, "load_config_anyhow", "not_found", "NotFound"),
        Some(1.0)
    );
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "load_config_anyhow").is_empty()
    });
    let attrs = spans_named(&r, "load_config_anyhow")[0].attributes();
    assert_eq!(
        attrs.get("error.category").map(String::as_str),
        Some("not_found")
    );
    assert_eq!(
        attrs.get("error.type").map(String::as_str),
        Some("NotFound")
    );
}

#[test]
fn a_boxed_error_records_the_io_error_inside_it() {
    let p = pipeline();
    assert!(load_config_boxed().is_err());
    assert_eq!(
        error_point(p, "load_config_boxed", "not_found", "NotFound"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_derived_error_records_its_variant() {
    let p = pipeline();
    assert!(find_user(42).await.is_err());
    assert_eq!(
        error_point(p, "find_user", "not_found", "NoSuchUser"),
        Some(1.0)
    );
}

#[test]
fn an_anyhow_message_never_becomes_the_error_type() {
    let p = pipeline();
    assert!(vague_failure().is_err());
    assert_eq!(
        error_point(p, "vague_failure", "unknown", "anyhow::Error"),
        Some(1.0)
    );
}
