//! `std::io::Error` by kind, and the runtime's timeout (`tokio::time::error::Elapsed`).

use std::io::ErrorKind as K;

use super::verdict::Verdict;
use super::{Categorize, ErrorCategory as C};

/// The category and `error.type` of each io error kind.
///
/// The lens: what should an alert on the category do? Malformed or truncated
/// input (`InvalidData`, `UnexpectedEof`) is the caller's fault, so it is
/// `invalid_argument`, not `data_loss`, which pages someone about corruption.
/// Nothing in io means data loss. "Try again later" kinds (`WouldBlock`, a busy
/// resource, a stale NFS handle) are `unavailable`; the state of the system (a
/// read-only file system, a port in use) is `failed_precondition`, not the
/// caller's permissions; limits that ran out are `resource_exhausted`.
/// `Other`, and kinds std adds later, are `unknown`: the walk then looks at the
/// inner error.
fn kind(kind: K) -> (C, &'static str) {
    match kind {
        K::NotFound => (C::NotFound, "NotFound"),
        K::PermissionDenied => (C::PermissionDenied, "PermissionDenied"),
        K::AlreadyExists => (C::AlreadyExists, "AlreadyExists"),
        K::TimedOut => (C::Timeout, "TimedOut"),
        K::Unsupported => (C::Unimplemented, "Unsupported"),

        K::ConnectionRefused => (C::Unavailable, "ConnectionRefused"),
        K::ConnectionReset => (C::Unavailable, "ConnectionReset"),
        K::ConnectionAborted => (C::Unavailable, "ConnectionAborted"),
        K::NotConnected => (C::Unavailable, "NotConnected"),
        K::BrokenPipe => (C::Unavailable, "BrokenPipe"),
        K::HostUnreachable => (C::Unavailable, "HostUnreachable"),
        K::NetworkUnreachable => (C::Unavailable, "NetworkUnreachable"),
        K::NetworkDown => (C::Unavailable, "NetworkDown"),
        K::AddrNotAvailable => (C::Unavailable, "AddrNotAvailable"),
        K::ResourceBusy => (C::Unavailable, "ResourceBusy"),
        K::WouldBlock => (C::Unavailable, "WouldBlock"),
        K::StaleNetworkFileHandle => (C::Unavailable, "StaleNetworkFileHandle"),

        K::InvalidInput => (C::InvalidArgument, "InvalidInput"),
        K::InvalidData => (C::InvalidArgument, "InvalidData"),
        K::UnexpectedEof => (C::InvalidArgument, "UnexpectedEof"),
        K::InvalidFilename => (C::InvalidArgument, "InvalidFilename"),
        K::NotADirectory => (C::InvalidArgument, "NotADirectory"),
        K::IsADirectory => (C::InvalidArgument, "IsADirectory"),
        K::NotSeekable => (C::InvalidArgument, "NotSeekable"),
        K::ArgumentListTooLong => (C::InvalidArgument, "ArgumentListTooLong"),

        K::StorageFull => (C::ResourceExhausted, "StorageFull"),
        K::QuotaExceeded => (C::ResourceExhausted, "QuotaExceeded"),
        K::FileTooLarge => (C::ResourceExhausted, "FileTooLarge"),
        K::OutOfMemory => (C::ResourceExhausted, "OutOfMemory"),
        K::TooManyLinks => (C::ResourceExhausted, "TooManyLinks"),
        K::WriteZero => (C::ResourceExhausted, "WriteZero"),

        K::ReadOnlyFilesystem => (C::FailedPrecondition, "ReadOnlyFilesystem"),
        K::DirectoryNotEmpty => (C::FailedPrecondition, "DirectoryNotEmpty"),
        K::AddrInUse => (C::FailedPrecondition, "AddrInUse"),
        K::CrossesDevices => (C::FailedPrecondition, "CrossesDevices"),
        K::ExecutableFileBusy => (C::FailedPrecondition, "ExecutableFileBusy"),

        K::Interrupted => (C::Aborted, "Interrupted"),
        K::Deadlock => (C::Aborted, "Deadlock"),

        K::Other => (C::Unknown, "Other"),
        _ => (C::Unknown, "io::Error"),
    }
}

impl Categorize for K {
    fn category(&self) -> C {
        kind(*self).0
    }
    fn error_type(&self) -> &'static str {
        kind(*self).1
    }
}

/// An io error decides by its kind, unless the kind says nothing (`Other`).
pub(super) fn verdict(e: &std::io::Error) -> Verdict {
    let (category, name) = kind(e.kind());
    Verdict::unless_unknown(category, name)
}

pub(super) fn elapsed_verdict(_: &tokio::time::error::Elapsed) -> Verdict {
    Verdict::Decided(C::Timeout, "Elapsed")
}

/// `tokio::time::timeout` ran out: a timeout.
impl Categorize for tokio::time::error::Elapsed {
    fn category(&self) -> C {
        C::Timeout
    }
    fn error_type(&self) -> &'static str {
        "Elapsed"
    }
}

#[cfg(test)]
mod tests {
    use std::io::Error as IoError;

    use super::*;

    #[test]
    fn io_errors_are_categorised_by_kind() {
        let e = IoError::new(K::TimedOut, "slow");
        assert_eq!(e.category(), C::Timeout);
        assert_eq!(e.error_type(), "TimedOut");
    }

    #[test]
    fn malformed_input_is_an_invalid_argument_not_data_loss() {
        for k in [K::InvalidData, K::UnexpectedEof, K::InvalidInput] {
            let e = IoError::from(k);
            assert_eq!(e.category(), C::InvalidArgument, "{k:?}");
        }
        assert_eq!(IoError::from(K::InvalidData).error_type(), "InvalidData");
        assert_eq!(
            IoError::from(K::UnexpectedEof).error_type(),
            "UnexpectedEof"
        );
    }

    #[test]
    fn no_io_kind_is_data_loss_and_every_kind_has_a_name() {
        let all = [
            K::NotFound,
            K::PermissionDenied,
            K::ConnectionRefused,
            K::ConnectionReset,
            K::HostUnreachable,
            K::NetworkUnreachable,
            K::ConnectionAborted,
            K::NotConnected,
            K::AddrInUse,
            K::AddrNotAvailable,
            K::NetworkDown,
            K::BrokenPipe,
            K::AlreadyExists,
            K::WouldBlock,
            K::NotADirectory,
            K::IsADirectory,
            K::DirectoryNotEmpty,
            K::ReadOnlyFilesystem,
            K::StaleNetworkFileHandle,
            K::InvalidInput,
            K::InvalidData,
            K::TimedOut,
            K::WriteZero,
            K::StorageFull,
            K::NotSeekable,
            K::QuotaExceeded,
            K::FileTooLarge,
            K::ResourceBusy,
            K::ExecutableFileBusy,
            K::Deadlock,
            K::CrossesDevices,
            K::TooManyLinks,
            K::InvalidFilename,
            K::ArgumentListTooLong,
            K::Interrupted,
            K::Unsupported,
            K::UnexpectedEof,
            K::OutOfMemory,
        ];
        for k in all {
            let (category, name) = kind(k);
            assert_ne!(category, C::DataLoss, "{k:?}");
            assert_ne!(category, C::Unknown, "{k:?}");
            // The name is the kind's own (its Debug form), so dashboards can
            // look it up in std's docs.
            assert_eq!(name, format!("{k:?}"));
        }
        assert_eq!(kind(K::Other), (C::Unknown, "Other"));
    }

    #[test]
    fn io_kinds_follow_what_an_alert_should_do() {
        let cases = [
            (K::ConnectionRefused, C::Unavailable),
            (K::WouldBlock, C::Unavailable),
            (K::StaleNetworkFileHandle, C::Unavailable),
            (K::ReadOnlyFilesystem, C::FailedPrecondition),
            (K::AddrInUse, C::FailedPrecondition),
            (K::StorageFull, C::ResourceExhausted),
            (K::TooManyLinks, C::ResourceExhausted),
            (K::ArgumentListTooLong, C::InvalidArgument),
            (K::Deadlock, C::Aborted),
            (K::Interrupted, C::Aborted),
            (K::Unsupported, C::Unimplemented),
            (K::PermissionDenied, C::PermissionDenied),
        ];
        for (k, want) in cases {
            assert_eq!(k.category(), want, "{k:?}");
        }
    }

    #[tokio::test]
    async fn tokio_timeouts_are_timeouts() {
        let e = tokio::time::timeout(std::time::Duration::ZERO, std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!((e.category(), e.error_type()), (C::Timeout, "Elapsed"));
        // Also when it is the cause of something else.
        let any = anyhow::Error::from(e).context("calling the backend");
        assert_eq!((any.category(), any.error_type()), (C::Timeout, "Elapsed"));
    }
}
