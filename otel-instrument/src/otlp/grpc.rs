//! The gRPC transport: one tonic channel, and a codec that sends the request bytes as
//! they are.
//!
//! opentelemetry-proto's generated `MetricsServiceClient` takes a prost message and
//! encodes it on every call, retries included. Our callers encode the request
//! themselves (the receiver straight from its snapshot), so the request bytes go out as
//! they are, and only the collector's answer is decoded with prost. The path and the
//! method are those of the generated client.
//!
//! Without compression the request is not passed through a tonic codec at all: a codec
//! writes the message into a fresh buffer of its own, and for the receiver's 8-GPU
//! request (235 KB) that copy and the page faults of its fresh pages were about a tenth
//! of the agent's CPU per cycle (`BENCHMARKS.md`, issue 23). The call is made on the
//! channel with the 5-byte gRPC message prefix and the caller's `Bytes` as the body's
//! two frames, and the answer is read with tonic's own `Streaming`, as tonic's unary
//! call reads it. With gzip, tonic's codec compresses as before.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::{BufMut as _, Bytes};
use http_body::Frame;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::retry::{self, Verdict};
use super::{Attempt, BuildError, Rejected, Reply, env_names};
use crate::config::{Compression, ExporterConfig, Signal};

/// A collector's answer that may carry a `partial_success`.
pub(crate) trait PartialSuccess: prost::Message + Default + Send + 'static {
    fn rejected(self) -> Option<Rejected>;
}

impl PartialSuccess
    for opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse
{
    fn rejected(self) -> Option<Rejected> {
        self.partial_success.map(|p| Rejected {
            count: p.rejected_data_points.max(0) as u64,
            message: p.error_message,
        })
    }
}

impl PartialSuccess
    for opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse
{
    fn rejected(self) -> Option<Rejected> {
        self.partial_success.map(|p| Rejected {
            count: p.rejected_spans.max(0) as u64,
            message: p.error_message,
        })
    }
}

/// Sends pre-encoded request bytes; decodes the answer as `R`.
struct BytesCodec<R>(PhantomData<fn() -> R>);

impl<R: PartialSuccess> Codec for BytesCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

struct ProstDecoder<R>(PhantomData<fn() -> R>);

impl<R: PartialSuccess> Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<R>, Self::Error> {
        R::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("cannot decode the answer: {e}")))
    }
}

/// The gRPC path and method of a signal's Export call.
fn method(signal: Signal) -> (&'static str, &'static str, &'static str) {
    match signal {
        Signal::Traces => (
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            "opentelemetry.proto.collector.trace.v1.TraceService",
            "Export",
        ),
        Signal::Metrics => (
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            "opentelemetry.proto.collector.metrics.v1.MetricsService",
            "Export",
        ),
        Signal::Logs => (
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            "opentelemetry.proto.collector.logs.v1.LogsService",
            "Export",
        ),
    }
}

/// One channel to the collector, with the signal's headers and compression.
#[derive(Debug, Clone)]
pub(crate) struct GrpcTransport {
    grpc: tonic::client::Grpc<Channel>,
    /// The same channel, for calls made without a codec (no compression).
    channel: Channel,
    compressed: bool,
    metadata: tonic::metadata::MetadataMap,
    signal: Signal,
}

impl GrpcTransport {
    /// Builds the channel (lazily connected, so an absent collector is not an error
    /// here). Must run inside a tokio runtime: the channel's worker lives there.
    pub(crate) fn new(signal: Signal, cfg: &ExporterConfig) -> Result<Self, BuildError> {
        let names = env_names(signal);
        let bad_endpoint = |reason: String| BuildError::Endpoint {
            vars: names.endpoint.clone(),
            value: cfg.endpoint.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| bad_endpoint(e.to_string()))?
            .connect_timeout(cfg.timeout)
            .tcp_nodelay(true);
        match cfg.endpoint.split_once("://").map(|(s, _)| s) {
            Some("https") => {
                let mut tls = ClientTlsConfig::new().with_enabled_roots();
                // tonic takes any bytes here and fails only at the first connection:
                // check the PEM now, so that a bad file is an error at start.
                let bad_pem = |what: &str| BuildError::Tls {
                    vars: names.tls.clone(),
                    reason: format!("the {what} is not PEM (-----BEGIN ...----- blocks)"),
                };
                if let Some(ca) = &cfg.tls.ca_certificate
                    && !is_pem(ca, "CERTIFICATE")
                {
                    return Err(bad_pem("CA certificate"));
                }
                if let Some((cert, key)) = &cfg.tls.client_identity {
                    if !is_pem(cert, "CERTIFICATE") {
                        return Err(bad_pem("client certificate"));
                    }
                    if !is_pem(key, "PRIVATE KEY") {
                        return Err(bad_pem("client key"));
                    }
                }
                if let Some(ca) = &cfg.tls.ca_certificate {
                    tls = tls.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = &cfg.tls.client_identity {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| BuildError::Tls {
                    vars: names.tls.clone(),
                    reason: super::chain(&e),
                })?;
            }
            Some("http") => {
                if cfg.tls.ca_certificate.is_some() || cfg.tls.client_identity.is_some() {
                    return Err(BuildError::TlsOnPlainEndpoint {
                        vars: names.tls.clone(),
                        endpoint: cfg.endpoint.clone(),
                    });
                }
            }
            _ => return Err(bad_endpoint("expected http:// or https://".into())),
        }
        let channel = endpoint.connect_lazy();
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let compressed = matches!(cfg.compression, Some(Compression::Gzip));
        if compressed {
            grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (k, v) in &cfg.headers {
            let bad = || BuildError::Header {
                vars: names.headers.clone(),
                name: k.clone(),
            };
            let name =
                tonic::metadata::AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| bad())?;
            let value = v.parse().map_err(|_| bad())?;
            metadata.append(name, value);
        }
        Ok(Self {
            grpc,
            channel,
            compressed,
            metadata,
            signal,
        })
    }

    /// One attempt, within `timeout`.
    pub(crate) async fn send<R: PartialSuccess>(&self, body: Bytes, timeout: Duration) -> Attempt {
        let (path, service, name) = method(self.signal);
        let mut request = tonic::Request::new(());
        *request.metadata_mut() = self.metadata.clone();
        // The collector learns the deadline too (grpc-timeout).
        request.set_timeout(timeout);
        let method = tonic::GrpcMethod::new(service, name);
        let call = async {
            if self.compressed {
                request.extensions_mut().insert(method);
                let mut grpc = self.grpc.clone();
                grpc.ready().await.map_err(unreachable_collector)?;
                let response = grpc
                    .unary(
                        request.map(|()| body),
                        http::uri::PathAndQuery::from_static(path),
                        BytesCodec::<R>(PhantomData),
                    )
                    .await?;
                Ok(response.into_inner())
            } else {
                let (metadata, _, ()) = request.into_parts();
                self.unary_uncompressed::<R>(metadata, method, path, body)
                    .await
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(Reply {
                rejected: response.rejected(),
            }),
            Ok(Err(status)) => Err((retry::grpc(&status), describe(&status))),
            Err(_) => Err((
                Verdict::Transient,
                format!("no answer within {timeout:?} (DEADLINE_EXCEEDED)"),
            )),
        }
    }
}

impl GrpcTransport {
    /// A unary call with `body` as the message, written to the stream as it is (no
    /// codec, no copy), answered as tonic's `Grpc::unary` reads an answer: a non-OK
    /// `grpc-status` in the headers ends it; otherwise one message, then the trailers,
    /// whose status (or the HTTP status, without one) is the call's.
    async fn unary_uncompressed<R: PartialSuccess>(
        &self,
        metadata: tonic::metadata::MetadataMap,
        method: tonic::GrpcMethod<'static>,
        path: &'static str,
        body: Bytes,
    ) -> Result<R, tonic::Status> {
        use tonic::client::GrpcService as _;
        let mut channel = self.channel.clone();
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .map_err(unreachable_collector)?;
        // The gRPC message prefix: not compressed, then the length (big-endian).
        let len = u32::try_from(body.len()).map_err(|_| {
            tonic::Status::resource_exhausted(format!(
                "the request is {} bytes, over gRPC's 4 GiB",
                body.len()
            ))
        })?;
        let mut prefix = [0u8; 5];
        prefix[1..].copy_from_slice(&len.to_be_bytes());
        let mut http_request = http::Request::new(tonic::body::Body::new(Message {
            prefix: Some(Bytes::copy_from_slice(&prefix)),
            message: Some(body),
        }));
        *http_request.method_mut() = http::Method::POST;
        *http_request.uri_mut() = http::Uri::from_static(path);
        *http_request.version_mut() = http::Version::HTTP_2;
        http_request.extensions_mut().insert(method);
        let headers = http_request.headers_mut();
        *headers = metadata.into_headers();
        // What tonic keeps out of user metadata, and the two headers it sets.
        for reserved in ["grpc-message", "grpc-message-type", "grpc-status"] {
            headers.remove(reserved);
        }
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let response = channel
            .call(http_request)
            .await
            .map_err(|e| tonic::Status::from_error(e.into()))?;
        if let Some(status) = tonic::Status::from_header_map(response.headers())
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        let status_code = response.status();
        let mut answer = Streaming::new_response(
            ProstDecoder::<R>(PhantomData),
            response.into_body(),
            status_code,
            None,
            None,
        );
        let message = answer
            .message()
            .await?
            .ok_or_else(|| tonic::Status::internal("Missing response message."))?;
        answer.trailers().await?;
        Ok(message)
    }
}

/// A request body of one gRPC message: its prefix, then the message, two frames.
struct Message {
    prefix: Option<Bytes>,
    message: Option<Bytes>,
}

impl http_body::Body for Message {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let next = this.prefix.take().or_else(|| this.message.take());
        std::task::Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.message.is_none()
    }
}

fn unreachable_collector(e: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::unavailable(format!("the collector cannot be reached: {e}"))
}

/// Whether `pem` holds at least one complete `-----BEGIN ...<label>-----` block whose
/// body is base64 (`PRIVATE KEY` also matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn is_pem(pem: &[u8], label: &str) -> bool {
    let Ok(text) = std::str::from_utf8(pem) else {
        return false;
    };
    let mut rest = text;
    while let Some(at) = rest.find("-----BEGIN ") {
        let after = &rest[at + 11..];
        let Some(end_label) = after.find("-----") else {
            return false;
        };
        let found = &after[..end_label];
        let body_and_end = &after[end_label + 5..];
        let end_marker = format!("-----END {found}-----");
        let Some(end) = body_and_end.find(&end_marker) else {
            return false;
        };
        let body = &body_and_end[..end];
        let base64 = body.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '\n' | '\r' | ' ' | '\t')
        });
        if found.ends_with(label) && base64 && !body.trim().is_empty() {
            return true;
        }
        rest = &body_and_end[end + end_marker.len()..];
    }
    false
}

fn describe(s: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    if let Some(source) = std::error::Error::source(s) {
        out.push_str(": ");
        out.push_str(&super::chain(source));
    }
    out
}
