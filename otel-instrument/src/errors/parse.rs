//! Malformed input: the std and `http` parse and conversion errors, all
//! `invalid_argument`, with their type name as `error.type`.

use std::error::Error;

use super::verdict::Verdict;
use super::{Categorize, ErrorCategory, short_type_name};

macro_rules! malformed_input {
    ($($ty:ty),* $(,)?) => {
        $(
            impl Categorize for $ty {
                fn category(&self) -> ErrorCategory {
                    ErrorCategory::InvalidArgument
                }
            }
        )*

        /// The verdict for the error types of this module.
        pub(super) fn verdict(e: &(dyn Error + 'static)) -> Option<Verdict> {
            $(
                if e.is::<$ty>() {
                    return Some(Verdict::Decided(
                        ErrorCategory::InvalidArgument,
                        short_type_name::<$ty>(),
                    ));
                }
            )*
            if let Some(e) = e.downcast_ref::<http::Error>() {
                return Some(http_verdict(e));
            }
            None
        }
    };
}

malformed_input!(
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::num::TryFromIntError,
    std::str::ParseBoolError,
    std::str::Utf8Error,
    std::string::FromUtf8Error,
    std::string::FromUtf16Error,
    std::char::ParseCharError,
    std::char::CharTryFromError,
    std::net::AddrParseError,
    std::ffi::NulError,
    http::uri::InvalidUri,
    http::uri::InvalidUriParts,
    http::header::InvalidHeaderName,
    http::header::InvalidHeaderValue,
    http::header::ToStrError,
    http::method::InvalidMethod,
    http::status::InvalidStatusCode,
);

/// `http::Error` only wraps one of the `Invalid*` errors above, which the walk
/// finds (its `source()` skips it); it names the inner type.
pub(super) fn http_verdict(_: &http::Error) -> Verdict {
    Verdict::Fallback(ErrorCategory::InvalidArgument, "http::Error")
}

#[cfg(test)]
mod tests {
    use super::super::classify_chain;
    use super::*;

    #[test]
    fn parse_and_utf8_errors_are_invalid_arguments() {
        let int = "x".parse::<u8>().unwrap_err();
        let float = "x".parse::<f64>().unwrap_err();
        let bool = "x".parse::<bool>().unwrap_err();
        let addr = "x".parse::<std::net::IpAddr>().unwrap_err();
        let not_utf8 = vec![0xff_u8];
        let utf8_str = std::str::from_utf8(&not_utf8).map(drop).unwrap_err();
        let utf8 = String::from_utf8(not_utf8.clone()).unwrap_err();
        let range = u8::try_from(300_u32).unwrap_err();
        let errors: [(&(dyn Error + 'static), &str); 7] = [
            (&int, "ParseIntError"),
            (&float, "ParseFloatError"),
            (&bool, "ParseBoolError"),
            (&addr, "AddrParseError"),
            (&utf8, "FromUtf8Error"),
            (&utf8_str, "Utf8Error"),
            (&range, "TryFromIntError"),
        ];
        for (e, name) in errors {
            assert_eq!(
                classify_chain(e),
                Some((ErrorCategory::InvalidArgument, name))
            );
        }
        assert_eq!(
            (int.category(), int.error_type()),
            (ErrorCategory::InvalidArgument, "ParseIntError")
        );
        assert_eq!(utf8.category(), ErrorCategory::InvalidArgument);
    }

    #[test]
    fn bad_http_parts_are_invalid_arguments_named_by_the_inner_error() {
        let uri = "http://[::1".parse::<http::Uri>().unwrap_err();
        assert_eq!(
            (uri.category(), uri.error_type()),
            (ErrorCategory::InvalidArgument, "InvalidUri")
        );
        let e = http::Request::builder()
            .header("bad header", "x")
            .body(())
            .unwrap_err();
        assert_eq!(
            (e.category(), e.error_type()),
            (ErrorCategory::InvalidArgument, "InvalidHeaderName")
        );
    }
}
