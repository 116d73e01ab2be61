//! `traceresponse` across two services: a callee whose tail keeper kept its
//! part of an unsampled trace answers sampled, and the caller keeps its own
//! part too, so both parts arrive in one trace. Over the real OTLP wire, with
//! real axum routers behind `ServerLayer` and a client behind `ClientLayer`.

mod monitored_common;

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::Path;
use http::Request;
use monitored_common::{Pipeline, flush_until, spans_named};
use otel_instrument::monitored;
use otel_instrument::propagation::{ClientLayer, ServerLayer, TRACERESPONSE};
use otel_instrument::{ParentRoot, SamplerConfig};
use tower::{Layer as _, ServiceExt as _};

/// Nothing head-sampled: what arrives was kept by the tail keeper.
fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        Pipeline::install(|b| {
            b.service_name("traceresponse-tests")
                .fmt(false)
                .sampler(SamplerConfig::ParentBased(ParentRoot::AlwaysOff))
                .filter("traceresponse=trace")
        })
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The callee: slow (kept) when asked to sleep past 5 ms.
#[monitored(slow = "5ms")]
async fn back_handler(Path(ms): Path<u64>) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "done".into()
}

fn back() -> axum::Router {
    axum::Router::new()
        .route("/work/{ms}", axum::routing::get(back_handler))
        .layer(ServerLayer::new())
}

/// The caller: never slow or failing by itself.
#[monitored(slow = "60s")]
async fn front_call(ms: u64) -> (u16, Option<String>) {
    // The callee runs on a task of its own, as in another process.
    let transport = tower::service_fn(|req: Request<String>| async move {
        let req = req.map(axum::body::Body::from);
        let resp = tokio::spawn(back().oneshot(req))
            .await
            .expect("callee task")
            .expect("infallible");
        Ok::<_, Infallible>(resp)
    });
    let req = Request::get(format!("http://back/work/{ms}"))
        .body(String::new())
        .unwrap();
    let resp = ClientLayer::new()
        .layer(transport)
        .oneshot(req)
        .await
        .unwrap();
    let tr = resp
        .headers()
        .get(TRACERESPONSE)
        .map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), tr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_keeps_its_part_of_a_trace_its_callee_kept() {
    let p = pipeline();

    // A fast callee keeps nothing and answers nothing.
    let before = monitored::tail_stats();
    let (status, tr) = front_call(0).await;
    assert_eq!(status, 200);
    assert_eq!(tr, None, "nothing kept, no traceresponse");
    let after = monitored::tail_stats();
    assert_eq!(after.kept_downstream, before.kept_downstream);

    // A slow callee keeps its part and says so; the caller keeps its own.
    let (status, tr) = front_call(30).await;
    assert_eq!(status, 200);
    let tr = tr.expect("a sampled traceresponse from the callee that kept its part");
    let parts: Vec<&str> = tr.split('-').collect();
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{tr}");
    let (trace, callee_span) = (parts[1].to_owned(), parts[2].to_owned());

    let r = flush_until(&p.sink, &p.guard, |r| {
        let of_trace = |n: &str| {
            spans_named(r, n)
                .into_iter()
                .any(|s| hex(&s.span.trace_id) == trace)
        };
        of_trace("front_call") && of_trace("back_handler")
    });
    let find = |n: &str| {
        spans_named(&r, n)
            .into_iter()
            .find(|s| hex(&s.span.trace_id) == trace)
            .unwrap()
    };
    let front = find("front_call");
    let back = find("back_handler");
    assert_eq!(
        front.attributes().get("sampling.kept").map(String::as_str),
        Some("downstream")
    );
    assert_eq!(
        back.attributes().get("sampling.kept").map(String::as_str),
        Some("slow")
    );
    assert_eq!(
        hex(&back.span.span_id),
        callee_span,
        "the traceresponse names the callee's kept root"
    );
    assert_eq!(
        monitored::tail_stats().kept_downstream,
        after.kept_downstream + 1
    );
}
