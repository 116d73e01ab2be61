//! HTTP: `http::StatusCode` by code, and `hyper::Error` by what went wrong.

use super::verdict::Verdict;
use super::{Categorize, ErrorCategory as C};

/// Every status code's number, three digits each: code `n` is at `(n - 100) * 3`.
/// `StatusCode::as_str` has the same table but ties the `&str` to the code.
const CODE_DIGITS: &str = {
    const BYTES: [u8; 2700] = {
        let mut b = [0u8; 2700];
        let mut i = 0;
        while i < 900 {
            let n = i + 100;
            b[i * 3] = b'0' + (n / 100) as u8;
            b[i * 3 + 1] = b'0' + (n / 10 % 10) as u8;
            b[i * 3 + 2] = b'0' + (n % 10) as u8;
            i += 1;
        }
        b
    };
    match std::str::from_utf8(&BYTES) {
        Ok(s) => s,
        Err(_) => panic!("status code digits are ASCII"),
    }
};

/// The categories follow the usual gRPC ↔ HTTP mapping; codes with no clear
/// meaning (and non-errors) are `unknown`.
impl Categorize for http::StatusCode {
    fn category(&self) -> C {
        match self.as_u16() {
            400 | 411 | 414 | 415 | 416 | 422 | 431 => C::InvalidArgument,
            401 | 511 => C::Unauthenticated,
            403 => C::PermissionDenied,
            404 | 410 => C::NotFound,
            405 | 501 | 505 => C::Unimplemented,
            408 | 504 => C::Timeout,
            409 => C::AlreadyExists,
            412 | 428 => C::FailedPrecondition,
            413 | 429 | 507 => C::ResourceExhausted,
            499 => C::Cancelled,
            500 => C::Internal,
            502 | 503 => C::Unavailable,
            _ => C::Unknown,
        }
    }

    /// The code's number, `"404"`: the semantic conventions' `error.type` for a
    /// response whose status code says it failed (their example is `"500"`).
    fn error_type(&self) -> &'static str {
        let at = usize::from(self.as_u16().saturating_sub(100)) * 3;
        CODE_DIGITS.get(at..at + 3).unwrap_or("StatusCode")
    }
}

/// `error.type` of every `hyper::Error`: its kinds are private, and the
/// category already says which one it was.
const HYPER_ERROR: &str = "hyper::Error";

/// - a timeout (a header read timeout, or hyper's timer) is `timeout`;
/// - a parse error is `invalid_argument`: hyper does not say who sent the bad
///   message, and on a server, where most of them happen, it is the caller;
/// - a request cancelled before it was sent, or a body write the sender
///   aborted, is `cancelled`;
/// - a connection closed under a message (`is_incomplete_message`) or a closed
///   channel is `unavailable`: the peer went away, and a retry may work;
/// - a failure of the user's service or body, or of a shutdown, defers to its
///   cause (`internal` or `unavailable` when the cause is unknown);
/// - anything else (io, HTTP/2 protocol errors) defers to its cause, else
///   `unavailable`.
pub(super) fn hyper_verdict(e: &hyper::Error) -> Verdict {
    if e.is_timeout() {
        Verdict::Decided(C::Timeout, HYPER_ERROR)
    } else if e.is_parse() {
        Verdict::Decided(C::InvalidArgument, HYPER_ERROR)
    } else if e.is_canceled() || e.is_body_write_aborted() {
        Verdict::Decided(C::Cancelled, HYPER_ERROR)
    } else if e.is_incomplete_message() || e.is_closed() {
        Verdict::Decided(C::Unavailable, HYPER_ERROR)
    } else if e.is_user() {
        Verdict::Fallback(C::Internal, HYPER_ERROR)
    } else {
        Verdict::Fallback(C::Unavailable, HYPER_ERROR)
    }
}

/// `error.type` of a `reqwest::Error` that carries no status code.
#[cfg(feature = "reqwest")]
const REQWEST_ERROR: &str = "reqwest::Error";

/// A status error is its status code; a timeout is `timeout`; a bad URL or
/// request (`is_builder`) and an undecodable body are `invalid_argument`; a
/// failed connection or request defers to its cause, else `unavailable`.
#[cfg(feature = "reqwest")]
pub(super) fn reqwest_verdict(e: &reqwest::Error) -> Verdict {
    if let Some(status) = e.status() {
        Verdict::Decided(status.category(), status.error_type())
    } else if e.is_timeout() {
        Verdict::Decided(C::Timeout, REQWEST_ERROR)
    } else if e.is_builder() || e.is_decode() {
        Verdict::Decided(C::InvalidArgument, REQWEST_ERROR)
    } else if e.is_connect() || e.is_request() || e.is_body() {
        Verdict::Fallback(C::Unavailable, REQWEST_ERROR)
    } else {
        Verdict::Fallback(C::Unknown, REQWEST_ERROR)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn http_status_codes_are_categorised_and_named_by_number() {
        assert_eq!(
            (
                StatusCode::NOT_FOUND.category(),
                StatusCode::NOT_FOUND.error_type()
            ),
            (C::NotFound, "404")
        );
        assert_eq!(
            StatusCode::TOO_MANY_REQUESTS.category(),
            C::ResourceExhausted
        );
        assert_eq!(StatusCode::SERVICE_UNAVAILABLE.category(), C::Unavailable);
        assert_eq!(StatusCode::GATEWAY_TIMEOUT.category(), C::Timeout);
        assert_eq!(StatusCode::METHOD_NOT_ALLOWED.category(), C::Unimplemented);
        assert_eq!(StatusCode::IM_A_TEAPOT.category(), C::Unknown);
    }

    #[test]
    fn every_status_code_is_named_by_its_own_number() {
        for n in 100..=999 {
            let code = StatusCode::from_u16(n).unwrap();
            assert_eq!(code.error_type(), code.as_str());
        }
    }

    /// Serves one connection whose client sends `input`; returns hyper's error.
    async fn serve(builder: &http1::Builder, input: &[u8], fail: bool) -> hyper::Error {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(input).await.unwrap();
        let service = hyper::service::service_fn(move |_req| async move {
            if fail {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            } else {
                Ok(http::Response::new(String::new()))
            }
        });
        let e = builder
            .serve_connection(TokioIo::new(server), service)
            .await
            .unwrap_err();
        drop(client);
        e
    }

    #[tokio::test]
    async fn a_malformed_request_is_an_invalid_argument() {
        let e = serve(&http1::Builder::new(), b"NOT HTTP AT ALL\r\n\r\n", false).await;
        assert!(e.is_parse(), "{e:?}");
        assert_eq!(
            (e.category(), e.error_type()),
            (C::InvalidArgument, "hyper::Error")
        );
    }

    #[tokio::test]
    async fn a_header_read_timeout_is_a_timeout() {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(20));
        let e = serve(&builder, b"GET / HTTP/1.1\r\n", false).await;
        assert!(e.is_timeout(), "{e:?}");
        assert_eq!((e.category(), e.error_type()), (C::Timeout, "hyper::Error"));
    }

    #[tokio::test]
    async fn a_failing_service_is_classified_by_its_own_error() {
        let e = serve(
            &http1::Builder::new(),
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
            true,
        )
        .await;
        assert!(e.is_user(), "{e:?}");
        assert_eq!((e.category(), e.error_type()), (C::NotFound, "NotFound"));
    }

    /// A client connection whose server reads the request and hangs up.
    async fn client_error(hang_up_first: bool) -> hyper::Error {
        let (client, mut server) = tokio::io::duplex(4096);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, String>(TokioIo::new(client))
                .await
                .unwrap();
        if hang_up_first {
            drop(conn);
        } else {
            tokio::spawn(conn);
        }
        let peer = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server.read(&mut buf).await;
        });
        let req = http::Request::get("/")
            .header("host", "x")
            .body(String::new())
            .unwrap();
        let e = sender.send_request(req).await.unwrap_err();
        peer.await.unwrap();
        e
    }

    #[tokio::test]
    async fn a_connection_closed_under_a_response_is_unavailable() {
        let e = client_error(false).await;
        assert!(e.is_incomplete_message(), "{e:?}");
        assert_eq!(
            (e.category(), e.error_type()),
            (C::Unavailable, "hyper::Error")
        );
    }

    #[tokio::test]
    async fn a_request_that_never_left_is_cancelled() {
        let e = client_error(true).await;
        assert!(e.is_canceled(), "{e:?}");
        assert_eq!(
            (e.category(), e.error_type()),
            (C::Cancelled, "hyper::Error")
        );
    }

    #[cfg(feature = "reqwest")]
    mod reqwest_errors {
        use super::*;

        #[test]
        fn a_status_error_is_its_status_code() {
            let response = http::Response::builder().status(503).body("").unwrap();
            let e = reqwest::Response::from(response)
                .error_for_status()
                .unwrap_err();
            assert_eq!((e.category(), e.error_type()), (C::Unavailable, "503"));
        }

        #[test]
        fn a_bad_url_is_an_invalid_argument() {
            let e = reqwest::Client::new().get("not a url").build().unwrap_err();
            assert!(e.is_builder(), "{e:?}");
            assert_eq!(
                (e.category(), e.error_type()),
                (C::InvalidArgument, "reqwest::Error")
            );
        }

        #[tokio::test]
        async fn a_refused_connection_is_unavailable_and_named_by_its_cause() {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let e = reqwest::get(format!("http://127.0.0.1:{port}/"))
                .await
                .unwrap_err();
            assert!(e.is_connect(), "{e:?}");
            assert_eq!(
                (e.category(), e.error_type()),
                (C::Unavailable, "ConnectionRefused")
            );
        }

        #[tokio::test]
        async fn a_request_timeout_is_a_timeout() {
            // The kernel completes the handshake; nobody ever answers.
            let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/", silent.local_addr().unwrap());
            let e = reqwest::Client::new()
                .get(url)
                .timeout(Duration::from_millis(50))
                .send()
                .await
                .unwrap_err();
            assert!(e.is_timeout(), "{e:?}");
            assert_eq!(
                (e.category(), e.error_type()),
                (C::Timeout, "reqwest::Error")
            );
        }
    }
}
