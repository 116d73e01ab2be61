//! gRPC: `tonic::Code` and `tonic::Status` by code, and tonic's transport,
//! connect and timeout errors.

use tonic::Code;

use super::verdict::Verdict;
use super::{Categorize, ErrorCategory as C};

/// The categories mirror the codes one to one; `OUT_OF_RANGE` joins
/// `INVALID_ARGUMENT`, and `OK` (never an error) is `unknown`.
impl Categorize for Code {
    fn category(&self) -> C {
        match self {
            Code::Ok | Code::Unknown => C::Unknown,
            Code::Cancelled => C::Cancelled,
            Code::InvalidArgument | Code::OutOfRange => C::InvalidArgument,
            Code::DeadlineExceeded => C::Timeout,
            Code::NotFound => C::NotFound,
            Code::AlreadyExists => C::AlreadyExists,
            Code::PermissionDenied => C::PermissionDenied,
            Code::ResourceExhausted => C::ResourceExhausted,
            Code::FailedPrecondition => C::FailedPrecondition,
            Code::Aborted => C::Aborted,
            Code::Unimplemented => C::Unimplemented,
            Code::Internal => C::Internal,
            Code::Unavailable => C::Unavailable,
            Code::DataLoss => C::DataLoss,
            Code::Unauthenticated => C::Unauthenticated,
        }
    }

    /// The code's canonical name, such as `"DEADLINE_EXCEEDED"`.
    ///
    /// The semantic conventions say that when a response carries a status code,
    /// `error.type` is that status code. For gRPC its string form is the name:
    /// `rpc.response.status_code` holds `"DEADLINE_EXCEEDED"`, and it replaced the
    /// numeric `rpc.grpc.status_code` (`4`), which is deprecated. The name is as
    /// low-cardinality as the number, and reads without a lookup table.
    fn error_type(&self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// A status decides by its code, except `UNKNOWN` (and `OK`), which is what
/// tonic gives an error it could not map: its source may know more.
pub(super) fn status_verdict(s: &tonic::Status) -> Verdict {
    let code = s.code();
    Verdict::unless_unknown(code.category(), code.error_type())
}

/// The peer could not be reached or the connection failed, unless its cause
/// (an io error, an invalid URI, ...) says more.
pub(super) fn transport_verdict(_: &tonic::transport::Error) -> Verdict {
    Verdict::Fallback(C::Unavailable, "tonic::transport::Error")
}

/// Connecting failed: `unavailable`, unless the cause says more.
pub(super) fn connect_verdict(_: &tonic::ConnectError) -> Verdict {
    Verdict::Fallback(C::Unavailable, "ConnectError")
}

/// The request's deadline (`grpc-timeout`) passed.
impl Categorize for tonic::TimeoutExpired {
    fn category(&self) -> C {
        C::Timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_status_is_categorised_by_code_and_named_as_semconv_says() {
        let s = tonic::Status::unavailable("down");
        assert_eq!(
            (s.category(), s.error_type()),
            (C::Unavailable, "UNAVAILABLE")
        );
        let s = tonic::Status::deadline_exceeded("x");
        assert_eq!(
            (s.category(), s.error_type()),
            (C::Timeout, "DEADLINE_EXCEEDED")
        );
        let s = tonic::Status::out_of_range("x");
        assert_eq!(
            (s.category(), s.error_type()),
            (C::InvalidArgument, "OUT_OF_RANGE")
        );
    }

    #[test]
    fn every_grpc_code_has_its_canonical_name() {
        for n in 0..=16 {
            let code = Code::from_i32(n);
            // The canonical name is tonic's variant name in SCREAMING_SNAKE_CASE.
            let mut want = String::new();
            for (i, c) in format!("{code:?}").chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    want.push('_');
                }
                want.push(c.to_ascii_uppercase());
            }
            assert_eq!(code.error_type(), want, "code {n}");
        }
    }

    #[test]
    fn grpc_timeouts_and_connect_errors_are_classified() {
        let t = tonic::TimeoutExpired(());
        assert_eq!(
            (t.category(), t.error_type()),
            (C::Timeout, "TimeoutExpired")
        );
        let c = tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(
            (c.category(), c.error_type()),
            (C::Unavailable, "ConnectionRefused")
        );
        let c = tonic::ConnectError("no route".into());
        assert_eq!(
            (c.category(), c.error_type()),
            (C::Unavailable, "ConnectError")
        );
    }

    #[test]
    fn tonic_transport_errors_are_classified_by_their_cause() {
        let e = tonic::transport::Endpoint::from_shared("not a uri\n").unwrap_err();
        assert_eq!(
            (e.category(), e.error_type()),
            (C::InvalidArgument, "InvalidUri")
        );
    }

    #[tokio::test]
    async fn a_refused_grpc_connection_is_unavailable() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert_eq!(e.category(), C::Unavailable, "{e:?}");
        assert_eq!(e.error_type(), "ConnectionRefused", "{e:?}");
    }
}
