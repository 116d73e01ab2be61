//! What one link of an error chain says: the vocabulary shared by the per-type
//! mappings (`grpc`, `http`, `io`, `parse`) and the walk (`chain`).

use super::ErrorCategory;

/// What one known link of an error chain says about the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// This link decides: the walk stops here.
    Decided(ErrorCategory, &'static str),
    /// A generic wrapper (a transport error, `io::ErrorKind::Other`, gRPC
    /// `UNKNOWN`): it counts only when no deeper link decides.
    Fallback(ErrorCategory, &'static str),
}

impl Verdict {
    /// The category and `error.type` this link gives.
    pub(super) fn pair(self) -> (ErrorCategory, &'static str) {
        match self {
            Self::Decided(c, t) | Self::Fallback(c, t) => (c, t),
        }
    }

    /// `Decided`, unless the category is unknown: then deeper links may know better.
    pub(super) fn unless_unknown(category: ErrorCategory, name: &'static str) -> Self {
        if category == ErrorCategory::Unknown {
            Self::Fallback(category, name)
        } else {
            Self::Decided(category, name)
        }
    }
}
