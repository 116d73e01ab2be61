//! The `source()` walk, and the classification of the dynamic wrappers
//! (`anyhow::Error`, `Box<dyn Error>`) that go through it.

use std::error::Error;

use super::verdict::Verdict;
use super::{Categorize, ErrorCategory};

/// `error.type` of a `dyn Error` whose chain holds no known error. Boxes are
/// the usual way to hold one, so the name says so.
const DYN_ERROR: &str = "Box<dyn Error>";
/// `error.type` of an `anyhow::Error` whose chain holds no known error.
const ANYHOW_ERROR: &str = "anyhow::Error";

/// At most this many links are looked at: a `source()` that cycles back on
/// itself must not hang the caller.
const MAX_LINKS: usize = 64;

/// The category and `error.type` of the most specific known error in `err`'s
/// chain (`err` itself included), or `None` when no link is known.
///
/// Links are looked at outermost first. The first one that decides wins; a
/// generic wrapper (say a `tonic::transport::Error` over a connection refusal)
/// is used only when nothing deeper decides, the outermost one with a known
/// category first. Besides `source()`, the walk follows the inner error of an
/// `io::Error` and of an `http::Error`, which their `source()` skips.
pub fn classify_chain(err: &(dyn Error + 'static)) -> Option<(ErrorCategory, &'static str)> {
    let mut fallback: Option<(ErrorCategory, &'static str)> = None;
    let mut next = Some(err);
    for _ in 0..MAX_LINKS {
        let Some(e) = next else { break };
        match inspect(e) {
            Some(Verdict::Decided(c, t)) => return Some((c, t)),
            Some(Verdict::Fallback(c, t)) => {
                let better = match fallback {
                    None => true,
                    Some((old, _)) => old == ErrorCategory::Unknown && c != ErrorCategory::Unknown,
                };
                if better {
                    fallback = Some((c, t));
                }
            }
            None => {}
        }
        next = step(e);
    }
    fallback
}

/// The category of the most specific known error in `err`'s chain (see
/// [`classify_chain`]); [`ErrorCategory::Unknown`] when nothing in it is known.
pub fn categorize_chain(err: &(dyn Error + 'static)) -> ErrorCategory {
    classify_chain(err).map_or(ErrorCategory::Unknown, |(c, _)| c)
}

/// For a known type: the walk from `err`, which always finds at least `err`.
pub(super) fn classify_known<E: Error + 'static>(
    err: &E,
    own: impl FnOnce(&E) -> Verdict,
) -> (ErrorCategory, &'static str) {
    classify_chain(err).unwrap_or_else(|| own(err).pair())
}

/// The verdict of each type we know, by downcasting.
fn inspect(e: &(dyn Error + 'static)) -> Option<Verdict> {
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        return Some(super::io::verdict(e));
    }
    if let Some(e) = e.downcast_ref::<tonic::Status>() {
        return Some(super::grpc::status_verdict(e));
    }
    if let Some(e) = e.downcast_ref::<tonic::transport::Error>() {
        return Some(super::grpc::transport_verdict(e));
    }
    if let Some(e) = e.downcast_ref::<tonic::ConnectError>() {
        return Some(super::grpc::connect_verdict(e));
    }
    if e.is::<tonic::TimeoutExpired>() {
        return Some(Verdict::Decided(ErrorCategory::Timeout, "TimeoutExpired"));
    }
    if let Some(e) = e.downcast_ref::<hyper::Error>() {
        return Some(super::http::hyper_verdict(e));
    }
    #[cfg(feature = "reqwest")]
    if let Some(e) = e.downcast_ref::<reqwest::Error>() {
        return Some(super::http::reqwest_verdict(e));
    }
    if let Some(e) = e.downcast_ref::<tokio::time::error::Elapsed>() {
        return Some(super::io::elapsed_verdict(e));
    }
    super::parse::verdict(e)
}

/// The next link. `io::Error::source()` and `http::Error::source()` return the
/// *inner* error's source and so skip the inner error itself: look at it instead.
fn step<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return io.get_ref().map(|inner| inner as &(dyn Error + 'static));
    }
    if let Some(http) = e.downcast_ref::<http::Error>() {
        return Some(http.get_ref());
    }
    e.source()
}

/// `Box<dyn Error>`, `Box<dyn Error + Send + Sync>` (through the `Box<T>` impl)
/// and `&dyn Error`: classified by their chain, since std's `impl Error for
/// Box<T>` needs `T: Sized` and so never reaches the probe's `Error` level.
macro_rules! categorize_dyn_error {
    ($($ty:ty),* $(,)?) => {$(
        impl Categorize for $ty {
            fn category(&self) -> ErrorCategory {
                categorize_chain(self)
            }
            fn error_type(&self) -> &'static str {
                classify_chain(self).map_or(DYN_ERROR, |(_, t)| t)
            }
        }
    )*};
}
categorize_dyn_error!(
    dyn Error + 'static,
    dyn Error + Send + 'static,
    dyn Error + Send + Sync + 'static,
);

/// `anyhow::Error` derefs to its outermost error (a context, or the error it
/// was made from) but is no `Error` itself: walk from there.
impl Categorize for anyhow::Error {
    fn category(&self) -> ErrorCategory {
        categorize_chain(&**self)
    }
    fn error_type(&self) -> &'static str {
        classify_chain(&**self).map_or(ANYHOW_ERROR, |(_, t)| t)
    }
}

// ---------------------------------------------------------------------------
// The known types whose own classification is the walk from themselves (a
// status over a deeper cause, a transport error over a refused connection).

/// By code (see `Code`'s impl); a status with code `UNKNOWN` by its source.
impl Categorize for tonic::Status {
    fn category(&self) -> ErrorCategory {
        classify_known(self, super::grpc::status_verdict).0
    }
    fn error_type(&self) -> &'static str {
        classify_known(self, super::grpc::status_verdict).1
    }
}

/// `unavailable`, or what its cause says (an invalid URI is `invalid_argument`,
/// a refused connection `unavailable` named `ConnectionRefused`).
impl Categorize for tonic::transport::Error {
    fn category(&self) -> ErrorCategory {
        classify_known(self, super::grpc::transport_verdict).0
    }
    fn error_type(&self) -> &'static str {
        classify_known(self, super::grpc::transport_verdict).1
    }
}

/// `unavailable`, or what its cause says.
impl Categorize for tonic::ConnectError {
    fn category(&self) -> ErrorCategory {
        classify_known(self, super::grpc::connect_verdict).0
    }
    fn error_type(&self) -> &'static str {
        classify_known(self, super::grpc::connect_verdict).1
    }
}

/// See `hyper_verdict`'s table; `error.type` is `"hyper::Error"` unless a
/// deeper cause is known (`"ConnectionReset"`, or the service's own error).
impl Categorize for hyper::Error {
    fn category(&self) -> ErrorCategory {
        classify_known(self, super::http::hyper_verdict).0
    }
    fn error_type(&self) -> &'static str {
        classify_known(self, super::http::hyper_verdict).1
    }
}

/// See `reqwest_verdict`; `error.type` is the status code (`"503"`), else
/// the deepest known cause (`"ConnectionRefused"`), else `"reqwest::Error"`.
#[cfg(feature = "reqwest")]
impl Categorize for reqwest::Error {
    fn category(&self) -> ErrorCategory {
        classify_known(self, super::http::reqwest_verdict).0
    }
    fn error_type(&self) -> &'static str {
        classify_known(self, super::http::reqwest_verdict).1
    }
}

/// By kind; for `ErrorKind::Other`, by the error inside (`get_ref()`), which
/// is how hyper, tonic and most libraries pass their errors through io.
impl Categorize for std::io::Error {
    fn category(&self) -> ErrorCategory {
        classify_known(self, super::io::verdict).0
    }
    fn error_type(&self) -> &'static str {
        classify_known(self, super::io::verdict).1
    }
}

/// A request or response that could not be built from bad parts.
impl Categorize for http::Error {
    fn category(&self) -> ErrorCategory {
        classify_known(self, super::parse::http_verdict).0
    }
    fn error_type(&self) -> &'static str {
        classify_known(self, super::parse::http_verdict).1
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::io::{Error as IoError, ErrorKind};

    use super::*;

    /// An error type we know nothing about, with an optional cause.
    #[derive(Debug)]
    struct Opaque(Option<Box<dyn Error + Send + Sync>>);
    impl fmt::Display for Opaque {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("opaque")
        }
    }
    impl Error for Opaque {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.0.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    fn opaque(cause: impl Error + Send + Sync + 'static) -> Opaque {
        Opaque(Some(Box::new(cause)))
    }

    #[test]
    fn anyhow_errors_are_classified_through_their_chain() {
        let e = anyhow::Error::from(IoError::from(ErrorKind::NotFound))
            .context("reading /etc/app.toml")
            .context("loading config");
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::NotFound, "NotFound")
        );
        // Below an unknown error too.
        let e = anyhow::Error::from(opaque(tonic::Status::unavailable("down")));
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::Unavailable, "UNAVAILABLE")
        );
    }

    #[test]
    fn anyhow_errors_with_nothing_known_report_a_stable_name_not_the_message() {
        let e = anyhow::anyhow!("user 42 not found");
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::Unknown, "anyhow::Error")
        );
        let e = anyhow::Error::from(opaque(Opaque(None))).context("with context");
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::Unknown, "anyhow::Error")
        );
    }

    #[test]
    fn boxed_dyn_errors_are_classified_through_their_chain() {
        let e: Box<dyn Error + Send + Sync> = Box::new(opaque(IoError::from(ErrorKind::TimedOut)));
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::Timeout, "TimedOut")
        );
        let e: Box<dyn Error> = Box::new(IoError::from(ErrorKind::PermissionDenied));
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::PermissionDenied, "PermissionDenied")
        );
        let e: Box<dyn Error + Send> = Box::new("x".parse::<u32>().unwrap_err());
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::InvalidArgument, "ParseIntError")
        );
        let e: Box<dyn Error + Send + Sync> = "disk on fire".into();
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::Unknown, "Box<dyn Error>")
        );
    }

    #[test]
    fn an_anyhow_error_turned_into_a_box_still_shows_its_context_chain() {
        // anyhow boxes its own wrapper, whose `source()` skips the first error:
        // what lies below it is still found.
        let e = anyhow::Error::from(opaque(IoError::from(ErrorKind::NotFound)));
        let boxed: Box<dyn Error + Send + Sync> = e.into();
        assert_eq!(boxed.category(), ErrorCategory::NotFound);
    }

    #[test]
    fn the_inner_error_of_an_io_error_is_classified_when_its_kind_says_nothing() {
        let e = IoError::other(tonic::Status::not_found("no row"));
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::NotFound, "NOT_FOUND")
        );
        // An io kind that means something wins over its inner error.
        let e = IoError::new(ErrorKind::TimedOut, tonic::Status::not_found("no row"));
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::Timeout, "TimedOut")
        );
        // Nothing known inside: the kind, unknown.
        let e = IoError::other("boom");
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::Unknown, "Other")
        );
    }

    #[test]
    fn a_generic_wrapper_yields_to_a_deeper_error_that_decides() {
        // gRPC UNKNOWN over a refused connection.
        let status = tonic::Status::from_error(Box::new(opaque(IoError::from(
            ErrorKind::ConnectionRefused,
        ))));
        assert_eq!(status.code(), tonic::Code::Unknown);
        assert_eq!(
            (status.category(), status.error_type()),
            (ErrorCategory::Unavailable, "ConnectionRefused")
        );
        // Nothing deeper: the wrapper's own verdict.
        let status = tonic::Status::unknown("?");
        assert_eq!(
            (status.category(), status.error_type()),
            (ErrorCategory::Unknown, "UNKNOWN")
        );
    }

    #[test]
    fn the_outermost_deciding_error_wins() {
        // Someone reported a timeout as bad data on purpose: believe them.
        let e = opaque(IoError::new(
            ErrorKind::InvalidData,
            IoError::from(ErrorKind::TimedOut),
        ));
        assert_eq!(
            classify_chain(&e),
            Some((ErrorCategory::InvalidArgument, "InvalidData"))
        );
    }

    #[test]
    fn an_unknown_chain_classifies_as_nothing() {
        assert_eq!(classify_chain(&Opaque(None)), None);
        assert_eq!(categorize_chain(&Opaque(None)), ErrorCategory::Unknown);
    }

    #[test]
    fn a_cyclic_source_chain_does_not_hang() {
        #[derive(Debug)]
        struct Cycle;
        impl fmt::Display for Cycle {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("cycle")
            }
        }
        impl Error for Cycle {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&Cycle)
            }
        }
        assert_eq!(classify_chain(&Cycle), None);
    }
}
