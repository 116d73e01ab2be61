//! Trace context in and out of a process, with the default setup (fmt on,
//! `parentbased_always_on`): the server layer continues an incoming
//! `traceparent` (sampled or not) and keeps `tracestate`; the client layer
//! and `inject` send the current call's context; spawned tasks and the
//! enrichment API stay in the call's span.

mod monitored_common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::Path;
use http::{HeaderMap, Request, Response, StatusCode};
use monitored_common::{Pipeline, flush_until, spans_named};
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use otel_instrument::monitored;
use otel_instrument::propagation::{ClientLayer, ServerLayer};
use tower::{Layer as _, ServiceExt as _};

/// The default setup (fmt on), as `init!()` installs it.
fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| Pipeline::install(|b| b.service_name("propagation-tests")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The headers each handler call sent downstream (tests run in parallel: each finds
/// its own by trace id with [`outgoing`]).
static OUTGOING: Mutex<Vec<HeaderMap>> = Mutex::new(Vec::new());

/// The headers a handler call of trace `trace` sent downstream.
fn outgoing(trace: &str) -> HeaderMap {
    let all = OUTGOING.lock().unwrap();
    all.iter()
        .find(|h| {
            h.get("traceparent")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains(trace))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no call of trace {trace} went downstream"))
}

#[monitored]
fn lookup(id: u32) -> Result<u32, std::io::Error> {
    if id == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
    }
    let mut headers = HeaderMap::new();
    otel_instrument::propagation::inject(&mut headers);
    OUTGOING.lock().unwrap().push(headers);
    Ok(id * 2)
}

#[monitored(kind = "server")]
async fn get_item(Path(id): Path<u32>) -> Result<String, StatusCode> {
    lookup(id)
        .map(|v| v.to_string())
        .map_err(|_| StatusCode::NOT_FOUND)
}

fn router() -> axum::Router {
    axum::Router::new()
        .route("/items/{id}", axum::routing::get(get_item))
        .layer(ServerLayer::new())
}

async fn call(path: &str, traceparent: &str) -> StatusCode {
    let req = Request::get(path)
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=opaque")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = router().oneshot(req).await.unwrap();
    let status = resp.status();
    // The span ends with the body.
    drop(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    );
    status
}

#[tokio::test]
async fn a_sampled_incoming_trace_is_continued_through_the_server_span() {
    let p = pipeline();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let status = call("/items/7", &format!("00-{trace}-00f067aa0ba902b7-01")).await;
    assert_eq!(status, StatusCode::OK);

    let r = flush_until(&p.sink, &p.guard, |r| {
        r.spans()
            .iter()
            .filter(|s| hex(&s.span.trace_id) == trace)
            .count()
            >= 3
    });
    let server = spans_named(&r, "GET /items/{id}");
    let server = server
        .iter()
        .find(|s| hex(&s.span.trace_id) == trace)
        .expect("a server span named after the route");
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        server.span.trace_state, "vendor=opaque",
        "tracestate is kept"
    );
    let a = server.attributes();
    assert_eq!(
        a.get("http.request.method").map(String::as_str),
        Some("GET")
    );
    assert_eq!(a.get("http.route").map(String::as_str), Some("/items/{id}"));
    assert_eq!(a.get("url.path").map(String::as_str), Some("/items/7"));
    assert_eq!(
        a.get("http.response.status_code").map(String::as_str),
        Some("200")
    );

    let handler = spans_named(&r, "get_item");
    let handler = handler
        .iter()
        .find(|s| hex(&s.span.trace_id) == trace)
        .expect("the handler's monitored span is in the caller's trace");
    assert_eq!(handler.span.parent_span_id, server.span.span_id);
    assert_eq!(
        handler.span.kind,
        SpanKind::Internal as i32,
        "kind = server under ServerLayer's server span must not make a second SERVER span"
    );
    assert_eq!(handler.span.trace_state, "vendor=opaque");
    let inner = spans_named(&r, "lookup");
    let inner = inner
        .iter()
        .find(|s| hex(&s.span.trace_id) == trace)
        .unwrap();
    assert_eq!(inner.span.parent_span_id, handler.span.span_id);
}

#[tokio::test]
async fn an_unsampled_incoming_trace_exports_nothing_and_propagates_unsampled() {
    let p = pipeline();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let status = call("/items/3", &format!("00-{trace}-b7ad6b7169203331-00")).await;
    assert_eq!(status, StatusCode::OK);
    let outgoing = outgoing(trace);
    let traceparent = outgoing["traceparent"].to_str().unwrap().to_owned();
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")) && traceparent.ends_with("-00"),
        "the downstream call carries the root's trace id with sampled=0: {traceparent}"
    );
    assert_eq!(outgoing["tracestate"], "vendor=opaque");

    // A sampled request afterwards flushes through; nothing of the unsampled
    // trace may be among what arrived.
    let marker = "11111111111111111111111111111111";
    call("/items/1", &format!("00-{marker}-00f067aa0ba902b7-01")).await;
    let r = flush_until(&p.sink, &p.guard, |r| {
        r.spans().iter().any(|s| hex(&s.span.trace_id) == marker)
    });
    let leaked: Vec<_> = r
        .spans()
        .into_iter()
        .filter(|s| hex(&s.span.trace_id) == trace)
        .map(|s| s.span.name)
        .collect();
    assert!(
        leaked.is_empty(),
        "unsampled spans were exported: {leaked:?}"
    );
}

#[tokio::test]
async fn the_client_layer_sends_its_span_as_the_parent() {
    let p = pipeline();
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let transport = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<String>| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() = Some(req.headers().clone());
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(503)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
            }
        })
    };
    let client = ClientLayer::new().layer(transport);

    #[monitored(skip_all)]
    async fn fetch_upstream<S>(client: S) -> u16
    where
        S: tower::Service<
                Request<String>,
                Response = Response<
                    otel_instrument::propagation::TracedBody<http_body_util::Full<bytes::Bytes>>,
                >,
                Error = Infallible,
            >,
    {
        let req = Request::post("http://upstream:9000/v1/things?secret=1")
            .body(String::new())
            .unwrap();
        let resp = client.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        drop(resp);
        status
    }

    assert_eq!(fetch_upstream(client).await, 503);
    let headers = seen.lock().unwrap().take().unwrap();
    let traceparent = headers["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[3], "01", "sampled: {traceparent}");

    let r = flush_until(&p.sink, &p.guard, |r| {
        r.spans()
            .iter()
            .any(|s| hex(&s.span.trace_id) == parts[1] && s.span.name == "POST")
            && !spans_named(r, "fetch_upstream").is_empty()
    });
    let client_span = r
        .spans()
        .into_iter()
        .find(|s| hex(&s.span.trace_id) == parts[1] && s.span.name == "POST")
        .unwrap();
    assert_eq!(client_span.span.kind, SpanKind::Client as i32);
    assert_eq!(
        hex(&client_span.span.span_id),
        parts[2],
        "the injected parent is the client span"
    );
    let a = client_span.attributes();
    assert_eq!(
        a.get("url.full").map(String::as_str),
        Some("http://upstream:9000/v1/things")
    );
    assert_eq!(
        a.get("server.address").map(String::as_str),
        Some("upstream")
    );
    assert_eq!(
        a.get("http.response.status_code").map(String::as_str),
        Some("503")
    );
    assert_eq!(a.get("error.type").map(String::as_str), Some("503"));
    assert_eq!(
        client_span.span.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
    let caller = spans_named(&r, "fetch_upstream")
        .into_iter()
        .find(|s| s.span.trace_id == client_span.span.trace_id)
        .unwrap();
    assert_eq!(client_span.span.parent_span_id, caller.span.span_id);
}

#[monitored]
async fn spawned_child() -> u32 {
    tokio::task::yield_now().await;
    1
}

#[monitored]
async fn spawning_parent() -> u32 {
    let handle = otel_instrument::monitored::spawn(spawned_child());
    handle.await.unwrap() + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_task_continues_the_trace() {
    let p = pipeline();
    assert_eq!(tokio::spawn(spawning_parent()).await.unwrap(), 2);
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "spawned_child").is_empty() && !spans_named(r, "spawning_parent").is_empty()
    });
    let parent = &spans_named(&r, "spawning_parent")[0];
    let child = &spans_named(&r, "spawned_child")[0];
    assert_eq!(child.span.trace_id, parent.span.trace_id);
    assert_eq!(child.span.parent_span_id, parent.span.span_id);
}

#[monitored(kind = server)]
fn entry_point() -> u32 {
    7
}

#[test]
fn kind_server_stays_server_where_the_request_enters_the_process() {
    let p = pipeline();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b8-01").parse().unwrap(),
    );
    // A remote parent (extracted by hand, no ServerLayer): this call is the
    // process's entry, so it is the SERVER span.
    {
        let _cx = otel_instrument::propagation::extract(&headers).attach();
        assert_eq!(entry_point(), 7);
    }
    let r = flush_until(&p.sink, &p.guard, |r| {
        spans_named(r, "entry_point")
            .iter()
            .any(|s| hex(&s.span.trace_id) == trace)
    });
    let span = spans_named(&r, "entry_point")
        .into_iter()
        .find(|s| hex(&s.span.trace_id) == trace)
        .unwrap();
    assert_eq!(span.span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&span.span.parent_span_id), "00f067aa0ba902b8");
}

#[monitored(fields(order.size))]
fn enriched(size: u64) -> Result<(), std::io::Error> {
    tracing::Span::current().record("order.size", size);
    otel_instrument::monitored::set_attribute(KeyValue::new("tenant", "acme"));
    otel_instrument::monitored::add_event("cache.miss", vec![KeyValue::new("key", "k1")]);
    let e = std::io::Error::other("disk on fire");
    otel_instrument::monitored::record_error(&e);
    Ok(())
}

#[test]
fn the_current_span_can_be_enriched_from_inside() {
    let p = pipeline();
    enriched(42).unwrap();
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "enriched").is_empty()
    });
    let span = &spans_named(&r, "enriched")[0];
    let a = span.attributes();
    assert_eq!(a.get("order.size").map(String::as_str), Some("42"), "{a:?}");
    assert_eq!(a.get("tenant").map(String::as_str), Some("acme"));
    let events: Vec<&str> = span.span.events.iter().map(|e| e.name.as_str()).collect();
    assert!(events.contains(&"cache.miss"), "{events:?}");
    let exception = span
        .span
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event");
    let ea = otel_instrument::testing::attributes(&exception.attributes);
    assert_eq!(ea.get("exception.type").map(String::as_str), Some("Error"));
    assert_eq!(
        ea.get("exception.message").map(String::as_str),
        Some("disk on fire")
    );
    // The fingerprint the call would have had, had it returned the error.
    let fp = otel_instrument::errors::fingerprint(
        "Error",
        Some("disk on fire"),
        module_path!(),
        "enriched",
    );
    assert_eq!(ea.get("error.fingerprint"), Some(&fp.to_string()));
}

/// Below the subscriber's level (the pipeline runs at the default `info`).
#[monitored(level = "debug")]
fn quiet_root() -> HeaderMap {
    let mut headers = HeaderMap::new();
    otel_instrument::propagation::inject(&mut headers);
    headers
}

#[test]
fn a_sampled_root_whose_span_the_level_turns_off_still_propagates_its_trace() {
    pipeline();
    let headers = quiet_root();
    let traceparent = headers["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_ne!(parts[1], "0".repeat(32), "a real trace id: {traceparent}");
    assert_eq!(parts[3], "01", "the root's sampled decision: {traceparent}");
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_and_the_request_succeeds() {
    let p = pipeline();
    // All-zero trace id: invalid, so the tracestate beside it is ignored too.
    let status = call(
        "/items/41",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an invalid header never fails the request"
    );
    let server_of = |r: &otel_instrument::testing::Received| {
        spans_named(r, "GET /items/{id}")
            .into_iter()
            .find(|s| s.attributes().get("url.path").map(String::as_str) == Some("/items/41"))
    };
    let r = flush_until(&p.sink, &p.guard, |r| server_of(r).is_some());
    let server = server_of(&r).unwrap();
    assert!(server.span.parent_span_id.is_empty(), "a new root");
    assert_ne!(
        hex(&server.span.trace_id),
        "00000000000000000000000000000000"
    );
    assert_eq!(
        server.span.trace_state, "",
        "the invalid header's tracestate is not kept"
    );
    let rejected = otel_instrument::propagation::w3c::rejected();
    assert!(rejected.traceparent >= 1);
}

#[tokio::test]
async fn an_oversized_tracestate_goes_downstream_within_512_characters() {
    let _p = pipeline();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let members: Vec<String> = (0..40)
        .map(|i| format!("m{i:02}={}", "v".repeat(30)))
        .collect();
    let req = Request::get("/items/43")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("tracestate", members.join(","))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = router().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    );
    let outgoing = outgoing(trace);
    let traceparent = outgoing["traceparent"].to_str().unwrap();
    assert!(traceparent.contains(trace), "{traceparent}");
    let state = outgoing["tracestate"].to_str().unwrap();
    assert!(state.len() <= 512, "{}", state.len());
    // 32 members of 34 characters (1,119 with commas) over 512: the first 14 fit.
    assert_eq!(state, members[..14].join(","));
}
