//! Error classification for `#[monitored]`: a closed set of categories, the
//! [`Categorize`](trait@Categorize) trait (and its derive) for error types
//! that know what they mean, and a walk of the `source()` chain for the rest.
//!
//! # What is classified, and how
//! - A type that implements `Categorize` says so itself: `std::io::Error` (by
//!   kind), `tonic::Status` and `tonic::Code`, `http::StatusCode`,
//!   `hyper::Error`, `tonic::transport::Error`, `tokio::time::error::Elapsed`,
//!   the std and `http` parse errors, `reqwest::Error` (feature `reqwest`), and
//!   your own types through `#[derive(Categorize)]`.
//! - `anyhow::Error` and `Box<dyn Error (+ Send + Sync)>` are classified by the
//!   most specific known error in their chain.
//! - Any other `std::error::Error` is classified by walking its `source()` chain
//!   ([`classify_chain`]), keeping its own type name as `error.type`.
//!
//! Some known types only wrap the real cause (a transport error, an
//! `io::ErrorKind::Other`, a `tonic::Status` with code `UNKNOWN`): the walk looks
//! past them, and uses them only when nothing deeper is known. The walk also
//! looks inside an `io::Error`'s and an `http::Error`'s inner error, which their
//! `source()` skips.
//!
//! # `error.type`
//! It follows the semantic conventions: predictable and low-cardinality, never
//! the message. A status code is its number (`"404"`); a gRPC status is its
//! code's name (`"DEADLINE_EXCEEDED"`); an io error is its kind (`"NotFound"`);
//! anything else is its type or variant name (`"ParseIntError"`). A dynamic
//! wrapper reports the most specific known type in its chain, else
//! `"anyhow::Error"` or `"Box<dyn Error>"`.
//!
//! # Your own errors
//! ```
//! use otel_instrument::errors::{Categorize, ErrorCategory};
//!
//! #[derive(Debug, thiserror::Error, Categorize)]
//! #[category(internal)] // the default for variants without their own
//! enum StoreError {
//!     #[error("no such key")]
//!     #[category(not_found)]
//!     Missing,
//!     #[error("reading the store")]
//!     #[category(source)] // classified by the io::Error it wraps
//!     Disk(#[from] std::io::Error),
//!     #[error("index out of date")]
//!     Stale,
//! }
//!
//! let e = StoreError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
//! assert_eq!((e.category(), e.error_type()), (ErrorCategory::Timeout, "Disk"));
//! assert_eq!(StoreError::Missing.category(), ErrorCategory::NotFound);
//! assert_eq!(StoreError::Stale.category(), ErrorCategory::Internal);
//! ```

use std::fmt;

mod chain;
pub mod fingerprint;
mod grpc;
mod http;
mod io;
mod parse;
mod verdict;

pub use chain::{categorize_chain, classify_chain};
pub use fingerprint::{DEFAULT_ERROR_GROUPS, Fingerprint, ReportLimit, fingerprint, normalise};
/// Derives [`Categorize`](trait@Categorize); see the [module docs](self#your-own-errors).
pub use otel_instrument_macros::Categorize;

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
///
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

    /// Wraps the error whose message is read.
    #[derive(Debug)]
    pub struct Message<'a, E: ?Sized>(pub &'a E);

    /// Chosen when the error implements `Display`: its message.
    pub trait ViaDisplay {
        /// The error's `Display` text.
        fn message(&self) -> Option<String>;
    }
    impl<E: std::fmt::Display + ?Sized> ViaDisplay for &Message<'_, E> {
        fn message(&self) -> Option<String> {
            Some(self.0.to_string())
        }
    }

    /// Chosen when it does not: no message.
    pub trait ViaNoDisplay {
        /// None.
        fn message(&self) -> Option<String>;
    }
    impl<E: ?Sized> ViaNoDisplay for Message<'_, E> {
        fn message(&self) -> Option<String> {
            None
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
    use std::error::Error;

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
    fn the_probe_classifies_dynamic_wrappers_with_the_macros_imports() {
        // The same expression and imports as the code `#[monitored]` generates.
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let any = anyhow::Error::from(io()).context("loading config");
        assert_eq!(
            (&&&Probe(&any)).classify(),
            (ErrorCategory::NotFound, "NotFound")
        );
        let boxed: Box<dyn Error + Send + Sync> = Box::new(Wrapper(io()));
        assert_eq!(
            (&&&Probe(&boxed)).classify(),
            (ErrorCategory::NotFound, "NotFound")
        );
        let plain: Box<dyn Error> = "no known cause".into();
        assert_eq!(
            (&&&Probe(&plain)).classify(),
            (ErrorCategory::Unknown, "Box<dyn Error>")
        );
    }

    #[test]
    fn short_type_names_drop_paths_and_generics() {
        assert_eq!(short_type_name::<std::io::Error>(), "Error");
        assert_eq!(short_type_name::<Vec<String>>(), "Vec");
    }
}
