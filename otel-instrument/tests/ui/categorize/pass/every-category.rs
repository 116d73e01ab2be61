//! Every `error.category` name is accepted and maps to its `ErrorCategory`,
//! on unit, tuple and struct variants, raw identifiers and structs.
use otel_instrument::errors::{Categorize, ErrorCategory};

#[derive(Categorize)]
enum Every {
    #[category(cancelled)]
    Cancelled,
    #[category(invalid_argument)]
    InvalidArgument(u8),
    #[category(not_found)]
    NotFound { key: String },
    #[category(already_exists)]
    AlreadyExists,
    #[category(permission_denied)]
    PermissionDenied,
    #[category(unauthenticated)]
    Unauthenticated,
    #[category(resource_exhausted)]
    ResourceExhausted,
    #[category(failed_precondition)]
    FailedPrecondition,
    #[category(aborted)]
    Aborted,
    #[category(timeout)]
    Timeout,
    #[category(unavailable)]
    Unavailable,
    #[category(unimplemented)]
    Unimplemented,
    #[category(internal)]
    Internal,
    #[category(data_loss)]
    DataLoss,
    #[category(unknown)]
    r#Unknown,
}

#[derive(Categorize)]
#[category(timeout)]
struct Unit;

#[derive(Categorize)]
#[category(unavailable)]
struct Tuple(#[allow(dead_code)] u16);

/// Generic types work when no variant needs the wrapped error.
#[derive(Categorize)]
#[category(aborted)]
enum Retry<E> {
    Exhausted(#[allow(dead_code)] E),
}

/// An empty enum is fine too.
#[derive(Categorize)]
#[category(internal)]
#[allow(dead_code)]
enum Never {}

fn main() {
    let cases = [
        (Every::Cancelled, ErrorCategory::Cancelled, "Cancelled"),
        (Every::InvalidArgument(1), ErrorCategory::InvalidArgument, "InvalidArgument"),
        (Every::NotFound { key: String::new() }, ErrorCategory::NotFound, "NotFound"),
        (Every::AlreadyExists, ErrorCategory::AlreadyExists, "AlreadyExists"),
        (Every::PermissionDenied, ErrorCategory::PermissionDenied, "PermissionDenied"),
        (Every::Unauthenticated, ErrorCategory::Unauthenticated, "Unauthenticated"),
        (Every::ResourceExhausted, ErrorCategory::ResourceExhausted, "ResourceExhausted"),
        (Every::FailedPrecondition, ErrorCategory::FailedPrecondition, "FailedPrecondition"),
        (Every::Aborted, ErrorCategory::Aborted, "Aborted"),
        (Every::Timeout, ErrorCategory::Timeout, "Timeout"),
        (Every::Unavailable, ErrorCategory::Unavailable, "Unavailable"),
        (Every::Unimplemented, ErrorCategory::Unimplemented, "Unimplemented"),
        (Every::Internal, ErrorCategory::Internal, "Internal"),
        (Every::DataLoss, ErrorCategory::DataLoss, "DataLoss"),
        (Every::Unknown, ErrorCategory::Unknown, "Unknown"),
    ];
    for (e, category, name) in cases {
        assert_eq!((e.category(), e.error_type()), (category, name));
        // The category name in the attribute is the label value.
        assert_eq!(e.category().as_str(), category.as_str());
    }
    assert_eq!((Unit.category(), Unit.error_type()), (ErrorCategory::Timeout, "Unit"));
    assert_eq!(Tuple(1).category(), ErrorCategory::Unavailable);
    let r: Retry<String> = Retry::Exhausted(String::new());
    assert_eq!((r.category(), r.error_type()), (ErrorCategory::Aborted, "Exhausted"));
}
