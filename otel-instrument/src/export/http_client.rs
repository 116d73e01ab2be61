//! The OTLP/HTTP transport: a client that we build, handed to opentelemetry-otlp's
//! HTTP exporter (`with_http_client`).
//!
//! Built by opentelemetry-otlp, the client had no TLS backend (our reqwest has no
//! default features) and ignored every certificate variable, so an `https://`
//! endpoint could never work. Ours is hyper's client (already built for tonic and
//! axum) with rustls and the ring provider, the system's roots, the configured CA
//! and client identity (mTLS), and the export timeout. It is not reqwest: turning
//! on reqwest's rustls without its aws-lc-rs provider would make the application's
//! own `reqwest::Client::new()` panic.
//!
//! Its requests run on the [`ExportRuntime`], like tonic's channel, so no thread or
//! runtime of its own is added; the SDK's processors await them from their threads.
//!
//! opentelemetry-otlp turns a failed attempt into "HTTP export failed: network error"
//! and drops the cause. This client logs each failed attempt at debug level (as
//! tonic's connection does for gRPC) and leaves the cause in [`ExportStats`], so the
//! outage line says what went wrong: refused, certificate not trusted, and so on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_http::{Bytes, HttpClient, HttpError, ResponseBodyTooLarge};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::{ExportError, ExportRuntime, ExportStats};
use crate::config::{ExporterConfig, Signal};

/// The largest answer body read, as opentelemetry-http's own clients limit it.
const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

/// An HTTP/1.1 client with our TLS settings, sending on the export runtime.
#[derive(Debug)]
pub(super) struct Transport {
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
    rt: tokio::runtime::Handle,
    signal: Signal,
    stats: Arc<ExportStats>,
}

impl Transport {
    /// The client for one signal's exporter.
    ///
    /// # Errors
    /// The TLS material cannot be used.
    pub(super) fn new(
        rt: &ExportRuntime,
        signal: Signal,
        cfg: &ExporterConfig,
        stats: Arc<ExportStats>,
    ) -> Result<Self, ExportError> {
        let connector = Connector::new(&cfg.tls).map_err(|e| ExportError::HttpClient {
            signal,
            endpoint: cfg.endpoint.clone(),
            source: e.into(),
        })?;
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: cfg.timeout,
            rt: rt.handle().clone(),
            signal,
            stats,
        })
    }
}

#[tonic::async_trait]
impl HttpClient for Transport {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        // The timer belongs to the export runtime, so it starts in the task.
        let attempt = async move { tokio::time::timeout(timeout, send(client, request)).await };
        // A runtime that has shut down cancels the task at once: the error says so.
        let result = match self.rt.spawn(attempt).await {
            Ok(Ok(result)) => result,
            Ok(Err(_elapsed)) => {
                Err(format!("no answer within the export timeout ({:?})", self.timeout).into())
            }
            Err(e) => Err(e.into()),
        };
        let outage = self.stats.outage(self.signal);
        match &result {
            Ok(_) => outage.attempt_answered(),
            Err(e) => {
                let cause = causes(&**e);
                {
                    let _sdk = crate::monitored::SdkScope::enter();
                    tracing::debug!(
                        signal = self.signal.as_str(),
                        error = cause.as_str(),
                        "OTLP/HTTP export attempt failed"
                    );
                }
                outage.attempt_failed(cause);
            }
        }
        result
    }
}

/// One request, answer body included, on the export runtime.
async fn send(
    client: Client<Connector, Full<Bytes>>,
    request: http::Request<Bytes>,
) -> Result<http::Response<Bytes>, HttpError> {
    let response = client.request(request.map(Full::new)).await?;
    let (parts, body) = response.into_parts();
    let body = match Limited::new(body, MAX_RESPONSE_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Box::new(ResponseBodyTooLarge::new()));
        }
        Err(e) => return Err(e),
    };
    Ok(http::Response::from_parts(parts, body))
}

/// An error and its sources on one line, each said once: a client's own message is
/// often "error sending request", the reason further down the chain.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}

/// Connects over TCP, then TLS for an `https://` endpoint. The OTLP wire client's
/// HTTP transport ([`crate::otlp`]) connects through the same one.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl Connector {
    /// Trusts the system's roots and `files`' CA, and presents `files`' client
    /// identity (mTLS).
    ///
    /// # Errors
    /// The TLS material cannot be used: why, in words.
    pub(crate) fn new(files: &crate::config::TlsFiles) -> Result<Self, String> {
        let tls = crate::tls::client_config(files)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // As a collector sets it: small requests must not wait for delayed ACKs.
        http.set_nodelay(true);
        Ok(Self {
            http,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = Stream;
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, HttpError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HttpError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        // `[::1]` in a URL is `::1` to TLS.
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned());
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?;
            if !https {
                return Ok(Stream::Plain(tcp));
            }
            let name = ServerName::try_from(host.unwrap_or_default())?;
            let stream = tls.connect(name, tcp.into_inner()).await?;
            Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to the collector, plain or TLS (boxed: rustls' state is large).
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Self::Plain(s) => s.connected(),
            Self::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn causes_follow_the_chain_and_say_each_thing_once() {
        let e = Chain(
            "client error (Connect)",
            Some(Box::new(Chain(
                "tcp connect error",
                Some(Box::new(Chain(
                    "Connection refused (os error 111)",
                    Some(Box::new(Chain("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            causes(&e),
            "client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
    }
}
