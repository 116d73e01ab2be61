//! The OTLP/HTTP transport (`http/protobuf`): `POST` of the encoded request to the
//! signal's URL (`ExporterConfig` has already applied the specification's path rules),
//! gzip when asked, the collector's answer decoded for `partial_success`.
//!
//! `https://` connects with the same TLS settings as the SDK path's HTTP client
//! (system roots, the configured CA, mTLS) when otel-instrument is built with
//! `http-proto`; without it an `https://` endpoint is refused at start with an
//! error that names the variable (gRPC always does TLS).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
#[cfg(not(feature = "http-proto"))]
use hyper_util::client::legacy::connect::HttpConnector;

use super::grpc::PartialSuccess;
use super::retry::{self, Verdict};
use super::{Attempt, BuildError, Reply, env_names};
use crate::config::{Compression, ExporterConfig, Signal};

/// TCP, then TLS for `https://`: the SDK path's connector.
#[cfg(feature = "http-proto")]
type Connector = crate::export::HttpsConnector;
/// TCP only.
#[cfg(not(feature = "http-proto"))]
type Connector = HttpConnector;

/// One HTTP/1.1 client (keep-alive) for the signal's URL.
#[derive(Debug, Clone)]
pub(crate) struct HttpTransport {
    client: Client<Connector, Full<Bytes>>,
    uri: http::Uri,
    headers: http::HeaderMap,
    gzip: bool,
}

impl HttpTransport {
    pub(crate) fn new(signal: Signal, cfg: &ExporterConfig) -> Result<Self, BuildError> {
        let names = env_names(signal);
        let uri: http::Uri =
            cfg.endpoint
                .parse()
                .map_err(|e: http::uri::InvalidUri| BuildError::Endpoint {
                    vars: names.endpoint.clone(),
                    value: cfg.endpoint.clone(),
                    reason: e.to_string(),
                })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") if cfg!(feature = "http-proto") => true,
            Some("https") => {
                return Err(BuildError::Tls {
                    vars: names.endpoint.clone(),
                    reason: "https:// over http/protobuf needs otel-instrument's \"http-proto\" \
                             feature; enable it or use OTEL_EXPORTER_OTLP_PROTOCOL=grpc"
                        .into(),
                });
            }
            _ => {
                return Err(BuildError::Endpoint {
                    vars: names.endpoint.clone(),
                    value: cfg.endpoint.clone(),
                    reason: "expected http:// or https://".into(),
                });
            }
        };
        if !https && (cfg.tls.ca_certificate.is_some() || cfg.tls.client_identity.is_some()) {
            return Err(BuildError::TlsOnPlainEndpoint {
                vars: names.tls.clone(),
                endpoint: cfg.endpoint.clone(),
            });
        }
        let mut headers = http::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let bad = || BuildError::Header {
                vars: names.headers.clone(),
                name: k.clone(),
            };
            let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| bad())?;
            let value = http::HeaderValue::from_str(v).map_err(|_| bad())?;
            headers.append(name, value);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        let gzip = matches!(cfg.compression, Some(Compression::Gzip));
        if gzip {
            headers.insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
        }
        #[cfg(feature = "http-proto")]
        let connector = Connector::new(&cfg.tls).map_err(|reason| BuildError::Tls {
            vars: names.tls.clone(),
            reason,
        })?;
        #[cfg(not(feature = "http-proto"))]
        let connector = {
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            c
        };
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            client,
            uri,
            headers,
            gzip,
        })
    }

    /// One attempt, within `timeout`.
    pub(crate) async fn send<R: PartialSuccess>(&self, body: Bytes, timeout: Duration) -> Attempt {
        let body = if self.gzip {
            use std::io::Write as _;
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            if let Err(e) = enc.write_all(&body) {
                return Err((Verdict::Permanent, format!("gzip: {e}")));
            }
            match enc.finish() {
                Ok(v) => Bytes::from(v),
                Err(e) => return Err((Verdict::Permanent, format!("gzip: {e}"))),
            }
        } else {
            body
        };
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| (Verdict::Transient, super::chain(&e)))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| (Verdict::Transient, super::chain(&e)))?
                .to_bytes();
            if status.is_success() {
                let answer = R::decode(bytes).unwrap_or_default();
                Ok(Reply {
                    rejected: answer.rejected(),
                })
            } else {
                Err((
                    retry::http(status.as_u16(), retry_after.as_deref()),
                    format!("HTTP {status}"),
                ))
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err((Verdict::Transient, format!("no answer within {timeout:?}"))),
        }
    }
}
