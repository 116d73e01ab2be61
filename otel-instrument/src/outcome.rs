//! What a monitored call returned: whether it failed, and with which error.
//!
//! `#[monitored]` decides by the return *type*, not by how it is spelt: any
//! return type that implements [`Fallible`] is classified (`Result`, a
//! `type AppResult<T> = Result<T, AppError>` alias, `std::io::Result`, your
//! own outcome types), and anything else counts as `result="ok"`.

use std::convert::Infallible;

/// A return value that can say it failed.
///
/// Implemented for `Result<T, E>` (an `Err` is a failure). Implement it for
/// your own outcome types so that `#[monitored]` counts their failures as
/// errors; the error is then classified like an `Err`'s: by
/// [`Categorize`](crate::Categorize) when it implements it, else through
/// `std::error::Error::source()`, else as `unknown` with its type name.
///
/// ```
/// use otel_instrument::{Fallible, monitored};
///
/// #[derive(Debug)]
/// enum Reply {
///     Done(u32),
///     Rejected(std::io::Error),
/// }
///
/// impl Fallible for Reply {
///     type Error = std::io::Error;
///     fn failure(&self) -> Option<&std::io::Error> {
///         match self {
///             Reply::Rejected(e) => Some(e),
///             Reply::Done(_) => None,
///         }
///     }
/// }
///
/// #[monitored(err)] // `err` is the default here; written, it demands `Fallible`.
/// fn handle(n: u32) -> Reply {
///     if n == 0 {
///         Reply::Rejected(std::io::Error::from(std::io::ErrorKind::InvalidInput))
///     } else {
///         Reply::Done(n)
///     }
/// }
/// # assert!(matches!(handle(1), Reply::Done(1)));
/// ```
#[diagnostic::on_unimplemented(
    message = "`#[monitored(err)]` needs a return type that can fail, but `{Self}` does not implement `Fallible`",
    label = "`err` asks to record the failures of `{Self}`",
    note = "return a `Result`, implement `otel_instrument::Fallible` for `{Self}`, or remove `err`"
)]
pub trait Fallible {
    /// The error of a failed value.
    type Error: ?Sized;

    /// The error when this value is a failure, `None` when it is a success.
    fn failure(&self) -> Option<&Self::Error>;
}

impl<T, E> Fallible for Result<T, E> {
    type Error = E;

    #[inline]
    fn failure(&self) -> Option<&E> {
        self.as_ref().err()
    }
}

/// The autoref probe that the code `#[monitored]` generates calls as
/// `(&&Ret(&value)).failure()`: [`ViaFallible`](probe::ViaFallible) is picked when the (concrete)
/// return type implements [`Fallible`], [`ViaInfallible`](probe::ViaInfallible) otherwise. Not public
/// API.
#[doc(hidden)]
pub mod probe {
    pub use super::Fallible;
    use super::Infallible;

    /// Wraps the value a monitored call returned.
    #[derive(Debug)]
    pub struct Ret<'a, R: ?Sized>(pub &'a R);

    /// Chosen when the return type implements [`Fallible`].
    pub trait ViaFallible<'a> {
        /// The error type.
        type Error: ?Sized;
        /// The error of a failed value.
        fn failure(&self) -> Option<&'a Self::Error>;
    }
    impl<'a, R: Fallible + ?Sized> ViaFallible<'a> for &Ret<'a, R> {
        type Error = R::Error;
        #[inline]
        fn failure(&self) -> Option<&'a R::Error> {
            self.0.failure()
        }
    }

    /// Chosen for any other return type: never a failure.
    pub trait ViaInfallible<'a> {
        /// Always `None`.
        fn failure(&self) -> Option<&'a Infallible>;
    }
    impl<'a, R: ?Sized> ViaInfallible<'a> for Ret<'a, R> {
        #[inline]
        fn failure(&self) -> Option<&'a Infallible> {
            None
        }
    }

    /// Compiles only for a [`Fallible`] return type: the check behind an
    /// explicit `#[monitored(err)]`, whose error message `Fallible` words.
    #[inline(always)]
    pub fn require_fallible<R: Fallible + ?Sized>(_: &R) {}

    /// Runs a sync body. Taking `FnOnce` makes the body's closure `FnOnce`,
    /// so it may return a borrow of a `&mut` parameter it captured.
    #[inline(always)]
    pub fn run_body<R>(body: impl FnOnce() -> R) -> R {
        body()
    }
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // autoref specialisation needs the exact references
mod tests {
    use super::probe::{Ret, ViaFallible as _, ViaInfallible as _};

    type AppResult<T> = Result<T, String>;

    #[test]
    fn a_result_behind_an_alias_is_fallible() {
        let failed: AppResult<u32> = Err("no".into());
        assert_eq!((&&Ret(&failed)).failure(), Some(&"no".to_owned()));
        let fine: AppResult<u32> = Ok(1);
        assert_eq!((&&Ret(&fine)).failure(), None);
    }

    #[test]
    fn other_return_types_never_fail() {
        assert!((&&Ret(&7_u32)).failure().is_none());
        assert!((&&Ret(&Some(1))).failure().is_none());
    }
}
