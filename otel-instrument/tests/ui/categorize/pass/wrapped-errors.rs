//! `source` and `transparent` find the wrapped error: the field marked
//! `#[source]` or `#[from]`, the only field, or the field named `source`; as a
//! default on the enum too. `crate = path` works through a re-export.
use std::io::{Error as IoError, ErrorKind};

use otel_instrument::errors::{Categorize, ErrorCategory};

mod reexport {
    pub use otel_instrument as otel;
}

#[derive(Debug, thiserror::Error, Categorize)]
#[category(crate = reexport::otel, internal)]
enum Db {
    #[error("io")]
    #[category(source)]
    Marked(#[from] IoError),
    #[error("grpc")]
    #[category(transparent)]
    MarkedSource {
        table: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("named")]
    #[category(source)]
    Named {
        attempt: u32,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("other")]
    Other,
}

/// Without thiserror: the only field, and the enum-wide default.
#[derive(Debug, Categorize)]
#[category(transparent)]
enum Plain {
    Io(IoError),
    Parse(std::num::ParseIntError),
    #[category(internal)]
    Bug,
}

fn main() {
    let e = Db::from(IoError::from(ErrorKind::NotFound));
    assert_eq!((e.category(), e.error_type()), (ErrorCategory::NotFound, "Marked"));
    let e = Db::MarkedSource { table: "t", status: tonic::Status::aborted("x") };
    let _ = e.to_string();
    assert_eq!((e.category(), e.error_type()), (ErrorCategory::Aborted, "ABORTED"));
    let e = Db::Named { attempt: 1, source: Box::new(IoError::from(ErrorKind::TimedOut)) };
    assert_eq!((e.category(), e.error_type()), (ErrorCategory::Timeout, "Named"));
    assert_eq!(Db::Other.category(), ErrorCategory::Internal);
    if let Db::Named { attempt, .. } = e {
        assert_eq!(attempt, 1);
    }
    if let Db::MarkedSource { table, .. } = (Db::MarkedSource { table: "t", status: tonic::Status::ok("") }) {
        assert_eq!(table, "t");
    }

    let e = Plain::Io(IoError::from(ErrorKind::ConnectionRefused));
    assert_eq!((e.category(), e.error_type()), (ErrorCategory::Unavailable, "ConnectionRefused"));
    let e = Plain::Parse("x".parse::<u8>().unwrap_err());
    assert_eq!((e.category(), e.error_type()), (ErrorCategory::InvalidArgument, "ParseIntError"));
    assert_eq!((Plain::Bug.category(), Plain::Bug.error_type()), (ErrorCategory::Internal, "Bug"));
    let _ = format!("{:?}", Plain::Bug);
}
