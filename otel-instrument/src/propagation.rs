//! Trace context in and out of the process: W3C `traceparent`, `tracestate`
//! and `baggage` over `http` headers, for axum, hyper and tonic alike.
//!
//! - [`ServerLayer`] (a `tower::Layer`) continues the caller's trace: it
//!   extracts the incoming context, opens a server span with the HTTP or gRPC
//!   semantic-convention attributes, and runs the handler with that context
//!   current, so a `#[monitored]` handler becomes the server span's child and
//!   follows the caller's sampling decision.
//! - [`ClientLayer`] (for tonic channels and hyper clients) opens a client span
//!   and injects its context into the outgoing request.
//! - [`inject`] and [`extract`] do the same by hand (for example on a
//!   `reqwest::RequestBuilder`'s headers).
//!
//! An unsampled call still propagates: the trace id goes out with the sampled
//! flag off, so every service downstream agrees with the root's decision.
//!
//! The answer carries the callee's decision back (W3C Trace Context Level 2,
//! [`TRACERESPONSE`]): a server whose span was sampled, or whose tail keeper
//! kept the handler's trace, answers `traceresponse: 00-<trace>-<span>-01`; a
//! client that reads it inside an unsampled, tracked call has the tail keeper
//! keep its own part too (`sampling.kept = "downstream"`), so the caller's
//! spans join the callee's in one trace.
//! `tracestate` and baggage travel unchanged within the W3C bounds ([`w3c`]):
//! what a caller sends beyond them is dropped and counted, and an invalid
//! `traceparent` starts a new trace rather than failing the request.
//!
//! ```
//! use otel_instrument::propagation::{ClientLayer, ServerLayer};
//! # fn main() {
//! // axum:  Router::new().route(..).layer(ServerLayer::default())
//! // tonic: Server::builder().layer(ServerLayer::default()).add_service(..)
//! // tonic client: tower::ServiceBuilder::new().layer(ClientLayer::default()).service(channel)
//! let _ = (ServerLayer::default(), ClientLayer::default());
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::config::Propagator;
use crate::monitored;
use crate::names::rpc;

pub mod w3c;
use w3c::{BaggagePropagator, TraceContextPropagator};

/// Installs the global propagator that `OTEL_PROPAGATORS` names. With none,
/// nothing is injected or extracted.
pub(crate) fn install(propagators: &[Propagator]) {
    let list: Vec<Box<dyn TextMapPropagator + Send + Sync>> = propagators
        .iter()
        .map(|p| -> Box<dyn TextMapPropagator + Send + Sync> {
            match p {
                Propagator::TraceContext => Box::new(TraceContextPropagator),
                Propagator::Baggage => Box::new(BaggagePropagator),
            }
        })
        .collect();
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(list));
}

/// The response header that carries the callee's trace decision back
/// (W3C Trace Context Level 2): `00-<trace-id>-<span-id>-<flags>`.
pub const TRACERESPONSE: &str = "traceresponse";

/// A server's answer: a sampled `traceresponse` when the request's span was
/// sampled, or when the tail keeper kept the handler's trace on this thread
/// (it decided as the handler's root ended, just before the response).
fn answer(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    let span_id = if sc.is_sampled() {
        sc.span_id()
    } else {
        match monitored::kept_root(u128::from_be_bytes(sc.trace_id().to_bytes())) {
            Some(root) => opentelemetry::trace::SpanId::from(root),
            None => return,
        }
    };
    let value = format!("00-{}-{span_id}-01", sc.trace_id());
    if let Ok(v) = http::HeaderValue::from_str(&value) {
        headers.insert(TRACERESPONSE, v);
    }
}

/// A client's reading of the callee's answer: a sampled `traceresponse` for
/// the trace the running call is in makes the tail keeper keep this part too.
fn follow(headers: &HeaderMap) {
    let Some(tr) = headers
        .get(TRACERESPONSE)
        .and_then(|v| v.to_str().ok())
        .and_then(w3c::parse_traceparent)
    else {
        return;
    };
    if tr.flags.is_sampled() {
        monitored::keep_for_downstream(u128::from_be_bytes(tr.trace_id.to_bytes()));
    }
}

/// Writes the current trace context (`traceparent`, `tracestate`, `baggage`)
/// into `headers`. Inside a `#[monitored]` call this is that call's context,
/// sampled or not ([`monitored::current_context`]).
pub fn inject(headers: &mut HeaderMap) {
    inject_context(&monitored::current_context(), headers);
}

/// Writes `cx` into `headers` with the global propagator.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers));
    });
}

/// The context that `headers` carry, on top of the current one. Run work in
/// it with `opentelemetry::context::FutureExt::with_context` (or use
/// [`ServerLayer`], which does).
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// What a request is, for its span: HTTP, or gRPC (`application/grpc*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Grpc,
}

/// The span name and attributes of a request, per the HTTP and RPC semantic
/// conventions.
fn describe<B>(req: &Request<B>, kind: SpanKind) -> (Protocol, String, Vec<KeyValue>) {
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let path = req.uri().path();
    let mut attributes = Vec::with_capacity(8);
    if is_grpc {
        // `/package.Service/Method`
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        attributes.push(KeyValue::new(rpc::SYSTEM, "grpc"));
        attributes.push(KeyValue::new(rpc::SERVICE, service.to_owned()));
        attributes.push(KeyValue::new(rpc::METHOD, method.to_owned()));
        if kind == SpanKind::Client {
            push_server_address(req, &mut attributes);
        }
        let name = format!("{service}/{method}");
        return (Protocol::Grpc, name, attributes);
    }
    let method = req.method().as_str().to_owned();
    attributes.push(KeyValue::new(semconv::HTTP_REQUEST_METHOD, method.clone()));
    let route = matched_route(req);
    if kind == SpanKind::Client {
        // The query can carry secrets: `url.full` without it.
        let mut full = String::new();
        if let Some(scheme) = req.uri().scheme_str() {
            full.push_str(scheme);
            full.push_str("://");
        }
        if let Some(authority) = req.uri().authority() {
            full.push_str(authority.as_str());
        }
        full.push_str(path);
        attributes.push(KeyValue::new(semconv::URL_FULL, full));
        push_server_address(req, &mut attributes);
    } else {
        attributes.push(KeyValue::new(semconv::URL_PATH, path.to_owned()));
        if let Some(scheme) = req.uri().scheme_str() {
            attributes.push(KeyValue::new(semconv::URL_SCHEME, scheme.to_owned()));
        }
    }
    let name = match route {
        Some(route) => {
            let name = format!("{method} {route}");
            attributes.push(KeyValue::new(semconv::HTTP_ROUTE, route));
            name
        }
        None => method,
    };
    (Protocol::Http, name, attributes)
}

fn push_server_address<B>(req: &Request<B>, attributes: &mut Vec<KeyValue>) {
    if let Some(host) = req.uri().host() {
        attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host.to_owned()));
    }
    if let Some(port) = req.uri().port_u16() {
        attributes.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
    }
}

/// The route template the router matched (axum's `MatchedPath`), when the
/// layer runs inside the router (`Router::layer`) and feature `axum` is on.
#[allow(unused_variables)]
fn matched_route<B>(req: &Request<B>) -> Option<String> {
    #[cfg(feature = "axum")]
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(m.as_str().to_owned());
    }
    None
}

/// gRPC codes that are a server's fault (the RPC semantic conventions);
/// for a client every non-OK code is an error.
fn grpc_server_error(code: i64) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn grpc_status(headers: &HeaderMap) -> Option<i64> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The span of one request, ended exactly once: when the response body ends,
/// fails or is dropped.
#[derive(Debug)]
struct Ending {
    cx: Context,
    kind: SpanKind,
    protocol: Protocol,
    /// The gRPC status seen so far (headers of a trailers-only response).
    grpc: Option<i64>,
    ended: bool,
}

impl Ending {
    fn response<B>(&mut self, resp: &Response<B>) {
        let status = resp.status().as_u16();
        let span = self.cx.span();
        match self.protocol {
            Protocol::Http => {
                span.set_attribute(KeyValue::new(
                    semconv::HTTP_RESPONSE_STATUS_CODE,
                    i64::from(status),
                ));
                let error = match self.kind {
                    SpanKind::Server => status >= 500,
                    _ => status >= 400,
                };
                if error {
                    span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, status.to_string()));
                    span.set_status(Status::error(""));
                }
            }
            Protocol::Grpc => {
                self.grpc = grpc_status(resp.headers());
                if status != 200 {
                    span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, status.to_string()));
                    span.set_status(Status::error(""));
                }
            }
        }
    }

    fn failed(&mut self, error_type: &str) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
        span.set_status(Status::error(""));
        self.end();
    }

    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        if self.protocol == Protocol::Grpc {
            // No grpc-status at all means the stream broke off.
            let code = self.grpc.unwrap_or(2);
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(rpc::GRPC_STATUS_CODE, code));
            let error = match self.kind {
                SpanKind::Server => grpc_server_error(code),
                _ => code != 0,
            };
            if error {
                // The code's name, as `errors` gives it for a `tonic::Status`.
                let name = crate::errors::Categorize::error_type(&tonic::Code::from(
                    i32::try_from(code).unwrap_or(2),
                ));
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, name));
                span.set_status(Status::error(""));
            }
        }
        monitored::end_span(&self.cx);
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.end();
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request's span when it ends, and reads
    /// the gRPC status from the trailers.
    #[derive(Debug)]
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        ending: Option<Ending>,
    }
}

impl<B: http_body::Body> http_body::Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(ending) = this.ending.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(code) = f.trailers_ref().and_then(grpc_status) {
                        ending.grpc = Some(code);
                    }
                }
                Some(Err(_)) => ending.failed("body"),
                None => ending.end(),
            }
        }
        if frame.is_none() || matches!(frame, Some(Err(_))) {
            *this.ending = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The future of a traced request: polls the inner service's future with
    /// the request's context current.
    #[derive(Debug)]
    pub struct TracedFuture<F> {
        #[pin]
        inner: F,
        ending: Option<Ending>,
    }
}

impl<F, B, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _attached = this.ending.as_ref().map(|e| e.cx.clone().attach());
            ready!(this.inner.poll(cx))
        };
        let mut ending = this.ending.take();
        Poll::Ready(match result {
            Ok(mut resp) => {
                if let Some(e) = ending.as_mut() {
                    match e.kind {
                        SpanKind::Server => answer(&e.cx, resp.headers_mut()),
                        SpanKind::Client => follow(resp.headers()),
                        _ => {}
                    }
                    e.response(&resp);
                    if http_body::Body::is_end_stream(resp.body()) {
                        e.end();
                    }
                }
                Ok(resp.map(|inner| TracedBody { inner, ending }))
            }
            Err(err) => {
                if let Some(e) = ending.as_mut() {
                    e.failed("transport");
                }
                Err(err)
            }
        })
    }
}

/// Which end of a request a [`TraceLayer`] sits on: [`Server`] or [`Client`].
pub trait Side: sealed::Sealed {
    /// The span kind of the requests it traces.
    const KIND: SpanKind;
    /// The parent of the request's span.
    fn parent<B>(req: &Request<B>) -> Context;
    /// Called with the request's span before the request goes on: the client
    /// injects it into the headers.
    fn prepare<B>(cx: &Context, req: &mut Request<B>);
    /// Whether the inner service is called with the span's context current
    /// (a server's handler runs there).
    const ATTACH: bool;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Server {}
    impl Sealed for super::Client {}
}

/// The server end: continues the trace that the request's headers carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Server;

impl Side for Server {
    const KIND: SpanKind = SpanKind::Server;
    const ATTACH: bool = true;

    fn parent<B>(req: &Request<B>) -> Context {
        extract(req.headers())
    }

    fn prepare<B>(_: &Context, _: &mut Request<B>) {}
}

/// The client end: continues the current monitored call's trace and sends it on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client;

impl Side for Client {
    const KIND: SpanKind = SpanKind::Client;
    const ATTACH: bool = false;

    fn parent<B>(_: &Request<B>) -> Context {
        monitored::current_context()
    }

    /// The span was started inside the caller's frame, so the SDK followed
    /// `#[monitored]`'s decision: an unsampled call got a non-recording span
    /// that still carries the trace id (sampled flag off) downstream.
    fn prepare<B>(cx: &Context, req: &mut Request<B>) {
        inject_context(cx, req.headers_mut());
    }
}

/// A `tower::Layer` that traces each request at one end; use [`ServerLayer`]
/// or [`ClientLayer`]. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer<K> {
    _side: std::marker::PhantomData<K>,
}

/// For servers (axum, hyper, tonic): continues the caller's trace.
pub type ServerLayer = TraceLayer<Server>;
/// For clients (a tonic `Channel`, a hyper client): opens a client span and
/// injects its context.
pub type ClientLayer = TraceLayer<Client>;

impl<K> TraceLayer<K> {
    /// The layer.
    pub fn new() -> Self {
        Self {
            _side: std::marker::PhantomData,
        }
    }
}

impl<S, K> tower::Layer<S> for TraceLayer<K> {
    type Service = Traced<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced {
            inner,
            _side: std::marker::PhantomData,
        }
    }
}

/// The service a [`TraceLayer`] wraps around a server or a client.
#[derive(Debug, Clone)]
pub struct Traced<S, K> {
    inner: S,
    _side: std::marker::PhantomData<K>,
}

/// A server wrapped by [`ServerLayer`].
pub type TracedServer<S> = Traced<S, Server>;
/// A client wrapped by [`ClientLayer`].
pub type TracedClient<S> = Traced<S, Client>;

impl<S, K, ReqB, ResB> tower::Service<Request<ReqB>> for Traced<S, K>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    K: Side,
    ResB: http_body::Body,
{
    type Response = Response<TracedBody<ResB>>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let parent = K::parent(&req);
        let (protocol, name, attributes) = describe(&req, K::KIND);
        let mut builder = SpanBuilder::from_name(name);
        builder.span_kind = Some(K::KIND);
        builder.attributes = Some(attributes);
        let cx = monitored::start_span(builder, &parent);
        K::prepare(&cx, &mut req);
        let inner = {
            let _attached = K::ATTACH.then(|| cx.clone().attach());
            self.inner.call(req)
        };
        TracedFuture {
            inner,
            ending: Some(Ending {
                cx,
                kind: K::KIND,
                protocol,
                grpc: None,
                ended: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_described_by_service_and_method() {
        let req = Request::builder()
            .uri("http://backend:50051/demo.Inventory/GetItem")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (protocol, name, attributes) = describe(&req, SpanKind::Client);
        assert_eq!(protocol, Protocol::Grpc);
        assert_eq!(name, "demo.Inventory/GetItem");
        let get = |k: &str| {
            attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(get("rpc.service").as_deref(), Some("demo.Inventory"));
        assert_eq!(get("rpc.method").as_deref(), Some("GetItem"));
        assert_eq!(get("server.address").as_deref(), Some("backend"));
        assert_eq!(get("server.port").as_deref(), Some("50051"));
    }

    #[test]
    fn http_client_urls_leave_the_query_out() {
        let req = Request::builder()
            .method("POST")
            .uri("http://gw:8080/items/7?token=secret")
            .body(())
            .unwrap();
        let (protocol, name, attributes) = describe(&req, SpanKind::Client);
        assert_eq!((protocol, name.as_str()), (Protocol::Http, "POST"));
        let full = attributes
            .iter()
            .find(|kv| kv.key.as_str() == "url.full")
            .map(|kv| kv.value.to_string());
        assert_eq!(full.as_deref(), Some("http://gw:8080/items/7"));
    }

    #[test]
    fn only_server_fault_grpc_codes_fail_a_server_span() {
        assert!(!grpc_server_error(5)); // NOT_FOUND: the caller's problem
        assert!(!grpc_server_error(3)); // INVALID_ARGUMENT
        assert!(grpc_server_error(14)); // UNAVAILABLE
        assert!(grpc_server_error(13)); // INTERNAL
    }
}
