//! Error categorisation for `#[monitored]`: a closed set of categories, the
//! [`Categorize`] trait for the error types we know, and a fallback that walks
//! an error's `source()` chain.
//!
//! `error.type` stays low-cardinality: it is the enum variant name where
//! [`Categorize`] gives one, else the error's type name, never its message.

use std::error::Error;
use std::fmt;

/// What kind of failure an error is, modelled on gRPC status codes.
///
/// The set is closed on purpose: dashboards and alerts match on these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCategory {
    /// The operation was cancelled, typically by the caller.
    Cancelled,
    /// The caller gave an invalid argument.
    InvalidArgument,
    /// Something requested was not found.
    NotFound,
    /// Something the caller tried to create already exists.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// The caller is not authenticated.
    Unauthenticated,
    /// A quota or resource ran out.
    ResourceExhausted,
    /// The system is not in a state where this can be done.
    FailedPrecondition,
    /// The operation was aborted, for example by a concurrency conflict.
    Aborted,
    /// A deadline passed.
    Timeout,
    /// The service is unavailable; retrying may help.
    Unavailable,
    /// The operation is not implemented or supported.
    Unimplemented,
    /// An internal invariant broke.
    Internal,
    /// Data was lost or corrupted.
    DataLoss,
    /// Nothing more is known.
    Unknown,
}

impl ErrorCategory {
    /// The label value, as used in `error.category`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::Unauthenticated => "unauthenticated",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Aborted => "aborted",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::DataLoss => "data_loss",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that knows its [`ErrorCategory`] and a low-cardinality type name.
pub trait Categorize {
    /// The error's category.
    fn category(&self) -> ErrorCategory;

    /// The value of `error.type`: a variant or type name, never the message.
    fn error_type(&self) -> &'static str {
        short_type_name::<Self>()
    }
}

impl<T: Categorize + ?Sized> Categorize for &T {
    fn category(&self) -> ErrorCategory {
        (**self).category()
    }
    fn error_type(&self) -> &'static str {
        (**self).error_type()
    }
}

impl<T: Categorize + ?Sized> Categorize for Box<T> {
    fn category(&self) -> ErrorCategory {
        (**self).category()
    }
    fn error_type(&self) -> &'static str {
        (**self).error_type()
    }
}

impl Categorize for std::io::ErrorKind {
    fn category(&self) -> ErrorCategory {
        use std::io::ErrorKind as K;
        match self {
            K::NotFound => ErrorCategory::NotFound,
            K::PermissionDenied | K::ReadOnlyFilesystem => ErrorCategory::PermissionDenied,
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
            | K::AddrNotAvailable
            | K::ResourceBusy => ErrorCategory::Unavailable,
            K::AlreadyExists => ErrorCategory::AlreadyExists,
            K::WouldBlock | K::Interrupted => ErrorCategory::Aborted,
            K::InvalidInput | K::InvalidFilename | K::NotADirectory | K::IsADirectory => {
                ErrorCategory::InvalidArgument
            }
            K::InvalidData => ErrorCategory::DataLoss,
            K::UnexpectedEof => ErrorCategory::DataLoss,
            K::TimedOut => ErrorCategory::Timeout,
            K::WriteZero | K::StorageFull | K::QuotaExceeded | K::FileTooLarge | K::OutOfMemory => {
                ErrorCategory::ResourceExhausted
            }
            K::DirectoryNotEmpty | K::AddrInUse | K::CrossesDevices | K::ExecutableFileBusy => {
                ErrorCategory::FailedPrecondition
            }
            K::Unsupported => ErrorCategory::Unimplemented,
            K::Deadlock | K::StaleNetworkFileHandle | K::TooManyLinks | K::ArgumentListTooLong => {
                ErrorCategory::Internal
            }
            _ => ErrorCategory::Unknown,
        }
    }

    fn error_type(&self) -> &'static str {
        use std::io::ErrorKind as K;
        match self {
            K::NotFound => "NotFound",
            K::PermissionDenied => "PermissionDenied",
            K::ConnectionRefused => "ConnectionRefused",
            K::ConnectionReset => "ConnectionReset",
            K::ConnectionAborted => "ConnectionAborted",
            K::NotConnected => "NotConnected",
            K::AddrInUse => "AddrInUse",
            K::AddrNotAvailable => "AddrNotAvailable",
            K::BrokenPipe => "BrokenPipe",
            K::AlreadyExists => "AlreadyExists",
            K::WouldBlock => "WouldBlock",
            K::InvalidInput => "InvalidInput",
            K::InvalidData => "InvalidData",
            K::TimedOut => "TimedOut",
            K::WriteZero => "WriteZero",
            K::Interrupted => "Interrupted",
            K::Unsupported => "Unsupported",
            K::UnexpectedEof => "UnexpectedEof",
            K::OutOfMemory => "OutOfMemory",
            K::StorageFull => "StorageFull",
            K::HostUnreachable => "HostUnreachable",
            K::NetworkUnreachable => "NetworkUnreachable",
            K::NetworkDown => "NetworkDown",
            K::ResourceBusy => "ResourceBusy",
            K::Other => "Other",
            _ => "io::Error",
        }
    }
}

impl Categorize for std::io::Error {
    fn category(&self) -> ErrorCategory {
        self.kind().category()
    }
    fn error_type(&self) -> &'static str {
        self.kind().error_type()
    }
}

impl Categorize for tonic::Code {
    fn category(&self) -> ErrorCategory {
        use tonic::Code as C;
        match self {
            C::Ok | C::Unknown => ErrorCategory::Unknown,
            C::Cancelled => ErrorCategory::Cancelled,
            C::InvalidArgument | C::OutOfRange => ErrorCategory::InvalidArgument,
            C::DeadlineExceeded => ErrorCategory::Timeout,
            C::NotFound => ErrorCategory::NotFound,
            C::AlreadyExists => ErrorCategory::AlreadyExists,
            C::PermissionDenied => ErrorCategory::PermissionDenied,
            C::ResourceExhausted => ErrorCategory::ResourceExhausted,
            C::FailedPrecondition => ErrorCategory::FailedPrecondition,
            C::Aborted => ErrorCategory::Aborted,
            C::Unimplemented => ErrorCategory::Unimplemented,
            C::Internal => ErrorCategory::Internal,
            C::Unavailable => ErrorCategory::Unavailable,
            C::DataLoss => ErrorCategory::DataLoss,
            C::Unauthenticated => ErrorCategory::Unauthenticated,
        }
    }

    fn error_type(&self) -> &'static str {
        use tonic::Code as C;
        match self {
            C::Ok => "Ok",
            C::Cancelled => "Cancelled",
            C::Unknown => "Unknown",
            C::InvalidArgument => "InvalidArgument",
            C::DeadlineExceeded => "DeadlineExceeded",
            C::NotFound => "NotFound",
            C::AlreadyExists => "AlreadyExists",
            C::PermissionDenied => "PermissionDenied",
            C::ResourceExhausted => "ResourceExhausted",
            C::FailedPrecondition => "FailedPrecondition",
            C::Aborted => "Aborted",
            C::OutOfRange => "OutOfRange",
            C::Unimplemented => "Unimplemented",
            C::Internal => "Internal",
            C::Unavailable => "Unavailable",
            C::DataLoss => "DataLoss",
            C::Unauthenticated => "Unauthenticated",
        }
    }
}

impl Categorize for tonic::Status {
    fn category(&self) -> ErrorCategory {
        self.code().category()
    }
    fn error_type(&self) -> &'static str {
        self.code().error_type()
    }
}

impl Categorize for http::StatusCode {
    fn category(&self) -> ErrorCategory {
        match self.as_u16() {
            400 | 422 => ErrorCategory::InvalidArgument,
            401 => ErrorCategory::Unauthenticated,
            403 => ErrorCategory::PermissionDenied,
            404 | 410 => ErrorCategory::NotFound,
            408 | 504 => ErrorCategory::Timeout,
            409 => ErrorCategory::AlreadyExists,
            412 | 428 => ErrorCategory::FailedPrecondition,
            413 | 429 => ErrorCategory::ResourceExhausted,
            499 => ErrorCategory::Cancelled,
            501 => ErrorCategory::Unimplemented,
            502 | 503 => ErrorCategory::Unavailable,
            500 => ErrorCategory::Internal,
            _ => ErrorCategory::Unknown,
        }
    }

    fn error_type(&self) -> &'static str {
        // The canonical reason is a `&'static str` and as low-cardinality as the code.
        self.canonical_reason().unwrap_or("StatusCode")
    }
}

/// Classifies an error that does not implement [`Categorize`] by walking its
/// `source()` chain, downcasting each link to the types we know.
///
/// Returns [`ErrorCategory::Unknown`] when nothing in the chain is known.
pub fn categorize_chain(err: &(dyn Error + 'static)) -> ErrorCategory {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<std::io::Error>() {
            return e.category();
        }
        if let Some(e) = e.downcast_ref::<tonic::Status>() {
            return e.category();
        }
        if let Some(e) = e.downcast_ref::<tonic::transport::Error>() {
            // A transport error means the peer could not be reached.
            let _ = e;
            return ErrorCategory::Unavailable;
        }
        if e.downcast_ref::<std::num::ParseIntError>().is_some()
            || e.downcast_ref::<std::num::ParseFloatError>().is_some()
            || e.downcast_ref::<std::str::Utf8Error>().is_some()
            || e.downcast_ref::<std::string::FromUtf8Error>().is_some()
        {
            return ErrorCategory::InvalidArgument;
        }
        next = e.source();
    }
    ErrorCategory::Unknown
}

/// The last path segment of a type's name, without generic arguments:
/// `my_crate::db::QueryError<T>` gives `QueryError`.
pub fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// Support for `#[monitored]`: picks [`Categorize`] when the error implements it,
/// else the `source()` walk for `std::error::Error`s, else `unknown` (autoref
/// specialisation, resolved at compile time).
#[doc(hidden)]
pub mod probe {
    use super::{Categorize, ErrorCategory, categorize_chain, short_type_name};

    /// Wraps the error being classified.
    #[derive(Debug)]
    pub struct Probe<'a, E: ?Sized>(pub &'a E);

    /// Chosen when the error implements [`Categorize`].
    pub trait ViaCategorize {
        /// Category and `error.type`.
        fn classify(&self) -> (ErrorCategory, &'static str);
    }
    impl<E: Categorize + ?Sized> ViaCategorize for &&Probe<'_, E> {
        fn classify(&self) -> (ErrorCategory, &'static str) {
            (self.0.category(), self.0.error_type())
        }
    }

    /// Chosen when the error is a `std::error::Error`.
    pub trait ViaError {
        /// Category and `error.type`.
        fn classify(&self) -> (ErrorCategory, &'static str);
    }
    impl<E: std::error::Error + 'static> ViaError for &Probe<'_, E> {
        fn classify(&self) -> (ErrorCategory, &'static str) {
            (categorize_chain(self.0), short_type_name::<E>())
        }
    }

    /// Chosen for anything else.
    pub trait ViaAny {
        /// Category and `error.type`.
        fn classify(&self) -> (ErrorCategory, &'static str);
    }
    impl<E: ?Sized> ViaAny for Probe<'_, E> {
        fn classify(&self) -> (ErrorCategory, &'static str) {
            (ErrorCategory::Unknown, short_type_name::<E>())
        }
    }
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // autoref specialisation needs the exact references
mod tests {
    use super::probe::{Probe, ViaAny as _, ViaCategorize as _, ViaError as _};
    use super::*;

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn io_errors_are_categorised_by_kind() {
        let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert_eq!(e.category(), ErrorCategory::Timeout);
        assert_eq!(e.error_type(), "TimedOut");
    }

    #[test]
    fn tonic_status_is_categorised_by_code() {
        let s = tonic::Status::unavailable("down");
        assert_eq!(s.category(), ErrorCategory::Unavailable);
        assert_eq!(s.error_type(), "Unavailable");
        assert_eq!(
            tonic::Status::deadline_exceeded("x").category(),
            ErrorCategory::Timeout
        );
    }

    #[test]
    fn http_status_codes_are_categorised() {
        assert_eq!(
            http::StatusCode::NOT_FOUND.category(),
            ErrorCategory::NotFound
        );
        assert_eq!(
            http::StatusCode::TOO_MANY_REQUESTS.category(),
            ErrorCategory::ResourceExhausted
        );
        assert_eq!(http::StatusCode::NOT_FOUND.error_type(), "Not Found");
    }

    #[test]
    fn unknown_errors_are_classified_through_their_source_chain() {
        let e = Wrapper(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(categorize_chain(&e), ErrorCategory::PermissionDenied);
        let (cat, ty) = (&&&Probe(&e)).classify();
        assert_eq!((cat, ty), (ErrorCategory::PermissionDenied, "Wrapper"));
    }

    #[test]
    fn the_probe_prefers_categorize_then_error_then_anything() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(
            (&&&Probe(&io)).classify(),
            (ErrorCategory::NotFound, "NotFound")
        );
        let s = String::from("message never leaks");
        assert_eq!(
            (&&&Probe(&s)).classify(),
            (ErrorCategory::Unknown, "String")
        );
        let p = "x".parse::<u8>().unwrap_err();
        assert_eq!(
            (&&&Probe(&p)).classify(),
            (ErrorCategory::InvalidArgument, "ParseIntError")
        );
    }

    #[test]
    fn short_type_names_drop_paths_and_generics() {
        assert_eq!(short_type_name::<std::io::Error>(), "Error");
        assert_eq!(short_type_name::<Vec<String>>(), "Vec");
    }
}
