//! `#[monitored]` against the real OTLP wire, with every root sampled
//! (`parentbased_always_on`): metric names, units and labels, caller labels,
//! the concurrency gauge, span attributes and parent ids.

mod monitored_common;

use std::sync::OnceLock;

use monitored_common::{Pipeline, flush_until, map, points, spans_named, value_with};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use otel_instrument::monitored;

/// The pipeline is process-wide (global providers and subscriber): install it once.
fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        Pipeline::install(|b| {
            b.service_name("monitored-tests")
                .fmt(false)
                .filter("monitored=trace")
        })
    })
}

#[monitored]
fn parse_port(s: &str) -> Result<u16, std::num::ParseIntError> {
    s.parse()
}

#[monitored]
fn open_missing() -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::NotFound))
}

#[test]
fn ok_and_error_calls_export_autometrics_names_units_and_labels() {
    let p = pipeline();
    assert_eq!(parse_port("8080"), Ok(8080));
    assert!(parse_port("eighty").is_err());

    let r = flush_until(&p.sink, &p.guard, |r| {
        points(r, "function.calls", "parse_port").len() == 2
            && points(r, "function.calls.duration", "parse_port").len() == 2
    });

    let calls = r.last_metric("function.calls").unwrap().metric;
    assert_eq!(calls.unit, "{call}");
    match calls.data {
        Some(Data::Sum(s)) => assert!(s.is_monotonic, "function.calls must be a counter"),
        other => panic!("function.calls is not a sum: {other:?}"),
    }
    let pts = points(&r, "function.calls", "parse_port");
    let ok = map(&[
        ("function", "parse_port"),
        ("module", "monitored"),
        ("result", "ok"),
    ]);
    let err = map(&[
        ("function", "parse_port"),
        ("module", "monitored"),
        ("result", "error"),
        ("error.category", "invalid_argument"),
        ("error.type", "ParseIntError"),
    ]);
    assert_eq!(value_with(&pts, &ok), Some(1.0), "{pts:#?}");
    assert_eq!(value_with(&pts, &err), Some(1.0), "{pts:#?}");

    let duration = r.last_metric("function.calls.duration").unwrap().metric;
    assert_eq!(duration.unit, "s");
    let pts = points(&r, "function.calls.duration", "parse_port");
    for result in ["ok", "error"] {
        let want = map(&[
            ("function", "parse_port"),
            ("module", "monitored"),
            ("result", result),
        ]);
        let point = pts
            .iter()
            .find(|p| p.attrs == want)
            .expect("histogram point");
        assert_eq!(point.value, 1.0);
        assert_eq!(
            point.bounds,
            otel_instrument::monitored::DEFAULT_HISTOGRAM_BOUNDARIES
        );
    }

    let concurrent = r.last_metric("function.calls.concurrent").unwrap().metric;
    assert_eq!(concurrent.unit, "{call}");
    match concurrent.data {
        Some(Data::Sum(s)) => assert!(!s.is_monotonic, "concurrent must be an up-down counter"),
        other => panic!("function.calls.concurrent is not a sum: {other:?}"),
    }
    let pts = points(&r, "function.calls.concurrent", "parse_port");
    let fm = map(&[("function", "parse_port"), ("module", "monitored")]);
    assert_eq!(value_with(&pts, &fm), Some(0.0), "{pts:#?}");
}

#[test]
fn a_failed_call_has_an_error_span_with_error_type_and_code_attributes() {
    let p = pipeline();
    assert!(open_missing().is_err());
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "open_missing").is_empty()
    });
    let span = &spans_named(&r, "open_missing")[0];
    let status = span.span.status.as_ref().expect("status");
    assert_eq!(status.code, StatusCode::Error as i32);
    let attrs = span.attributes();
    assert_eq!(
        attrs.get("error.type").map(String::as_str),
        Some("NotFound")
    );
    assert_eq!(
        attrs.get("error.category").map(String::as_str),
        Some("not_found")
    );
    assert_eq!(
        attrs.get("code.function.name").map(String::as_str),
        Some("open_missing")
    );
    assert_eq!(
        attrs.get("code.module.name").map(String::as_str),
        Some("monitored")
    );
    assert!(
        attrs
            .get("code.file.path")
            .is_some_and(|f| f.ends_with("tests/monitored.rs")),
        "{attrs:?}"
    );
    assert!(attrs.contains_key("code.line.number"), "{attrs:?}");
    assert_eq!(span.span.kind, SpanKind::Internal as i32);

    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", "open_missing").is_empty()
    });
    let pts = points(&r, "function.calls", "open_missing");
    let want = map(&[
        ("function", "open_missing"),
        ("module", "monitored"),
        ("result", "error"),
        ("error.category", "not_found"),
        ("error.type", "NotFound"),
    ]);
    assert_eq!(value_with(&pts, &want), Some(1.0), "{pts:#?}");
}

mod nested {
    use otel_instrument::monitored;

    #[monitored]
    pub fn outer_sync() -> u32 {
        inner_sync() + 1
    }

    #[monitored]
    pub fn inner_sync() -> u32 {
        41
    }

    #[monitored]
    pub async fn outer_async() -> u32 {
        tokio::task::yield_now().await;
        let a = inner_async().await;
        a + inner_sync_from_async()
    }

    #[monitored]
    pub async fn inner_async() -> u32 {
        tokio::task::yield_now().await;
        1
    }

    #[monitored]
    pub fn inner_sync_from_async() -> u32 {
        2
    }
}

#[tokio::test]
async fn caller_labels_name_the_monitored_caller_in_sync_and_async_calls() {
    let p = pipeline();
    assert_eq!(nested::outer_sync(), 42);
    assert_eq!(nested::outer_async().await, 3);

    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", "inner_sync").is_empty()
            && !points(r, "function.calls", "inner_async").is_empty()
            && !points(r, "function.calls", "inner_sync_from_async").is_empty()
            && !points(r, "function.calls", "outer_async").is_empty()
    });
    let module = "monitored::nested";
    let with_caller = |function: &str, caller: &str| {
        map(&[
            ("function", function),
            ("module", module),
            ("result", "ok"),
            ("caller.function", caller),
            ("caller.module", module),
        ])
    };
    for (function, caller) in [
        ("inner_sync", "outer_sync"),
        ("inner_async", "outer_async"),
        ("inner_sync_from_async", "outer_async"),
    ] {
        let pts = points(&r, "function.calls", function);
        assert_eq!(
            value_with(&pts, &with_caller(function, caller)),
            Some(1.0),
            "{function}: {pts:#?}"
        );
    }
    // A root has no caller labels at all (autometrics: absent, not empty).
    let pts = points(&r, "function.calls", "outer_async");
    let root = map(&[
        ("function", "outer_async"),
        ("module", module),
        ("result", "ok"),
    ]);
    assert_eq!(value_with(&pts, &root), Some(1.0), "{pts:#?}");
}

#[monitored]
async fn in_flight(release: tokio::sync::oneshot::Receiver<()>) {
    let _ = release.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_gauge_counts_calls_in_flight_and_returns_to_zero() {
    let p = pipeline();
    let mut releases = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        releases.push(tx);
        tasks.push(tokio::spawn(in_flight(rx)));
    }
    let fm = map(&[("function", "in_flight"), ("module", "monitored")]);
    let r = tokio::task::block_in_place(|| {
        flush_until(&p.sink, &p.guard, |r| {
            value_with(&points(r, "function.calls.concurrent", "in_flight"), &fm) == Some(5.0)
        })
    });
    assert_eq!(
        value_with(&points(&r, "function.calls.concurrent", "in_flight"), &fm),
        Some(5.0)
    );
    for tx in releases {
        tx.send(()).unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = tokio::task::block_in_place(|| {
        flush_until(&p.sink, &p.guard, |r| {
            value_with(&points(r, "function.calls.concurrent", "in_flight"), &fm) == Some(0.0)
        })
    });
    let calls = points(&r, "function.calls", "in_flight");
    let ok = map(&[
        ("function", "in_flight"),
        ("module", "monitored"),
        ("result", "ok"),
    ]);
    assert_eq!(value_with(&calls, &ok), Some(5.0), "{calls:#?}");
}

#[monitored]
async fn moves_between_threads(release: tokio::sync::oneshot::Receiver<()>) {
    let _ = release.await;
}

#[monitored]
fn waits_on_its_thread(release: std::sync::mpsc::Receiver<()>) {
    let _ = release.recv();
}

/// The in-flight count is kept per thread: a call counted on a thread that
/// has since exited, and ended on another, is still counted until it ends.
#[test]
fn calls_started_on_threads_that_exit_are_counted_until_they_end_elsewhere() {
    use std::future::Future as _;
    use std::task::{Context, Poll, Waker};
    let p = pipeline();
    let mut cx = Context::from_waker(Waker::noop());
    let mut releases = Vec::new();
    let mut moved = Vec::new();
    for _ in 0..3 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        releases.push(tx);
        // First polled (started) on a thread that exits at once.
        moved.push(
            std::thread::spawn(move || {
                let mut call = Box::pin(moves_between_threads(rx));
                let mut cx = Context::from_waker(Waker::noop());
                assert!(call.as_mut().poll(&mut cx).is_pending());
                call
            })
            .join()
            .unwrap(),
        );
    }
    // And sync calls in flight on threads that are still running.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (tx, rx) = std::sync::mpsc::channel();
            (tx, std::thread::spawn(move || waits_on_its_thread(rx)))
        })
        .collect();
    let moved_fm = map(&[
        ("function", "moves_between_threads"),
        ("module", "monitored"),
    ]);
    let waiting_fm = map(&[("function", "waits_on_its_thread"), ("module", "monitored")]);
    let in_flight = |r: &otel_instrument::testing::Received,
                     f: &str,
                     fm: &std::collections::BTreeMap<String, String>| {
        value_with(&points(r, "function.calls.concurrent", f), fm)
    };
    flush_until(&p.sink, &p.guard, |r| {
        in_flight(r, "moves_between_threads", &moved_fm) == Some(3.0)
            && in_flight(r, "waits_on_its_thread", &waiting_fm) == Some(2.0)
    });
    // Ended here, on the test's thread.
    for tx in releases {
        tx.send(()).unwrap();
    }
    for mut call in moved {
        assert_eq!(call.as_mut().poll(&mut cx), Poll::Ready(()));
    }
    for (tx, t) in waiting {
        tx.send(()).unwrap();
        t.join().unwrap();
    }
    let r = flush_until(&p.sink, &p.guard, |r| {
        in_flight(r, "moves_between_threads", &moved_fm) == Some(0.0)
            && in_flight(r, "waits_on_its_thread", &waiting_fm) == Some(0.0)
    });
    let ok = map(&[
        ("function", "moves_between_threads"),
        ("module", "monitored"),
        ("result", "ok"),
    ]);
    let calls = points(&r, "function.calls", "moves_between_threads");
    assert_eq!(value_with(&calls, &ok), Some(3.0), "{calls:#?}");
}

#[monitored]
fn tree_root() {
    tree_child();
}

#[monitored]
fn tree_child() {
    tree_grandchild();
}

#[monitored]
fn tree_grandchild() {}

#[test]
fn children_of_a_sampled_root_export_with_their_parent_ids() {
    let p = pipeline();
    tree_root();
    let r = flush_until(&p.sink, &p.guard, |r| {
        ["tree_root", "tree_child", "tree_grandchild"]
            .iter()
            .all(|n| !spans_named(r, n).is_empty())
    });
    let root = &spans_named(&r, "tree_root")[0].span;
    let child = &spans_named(&r, "tree_child")[0].span;
    let grandchild = &spans_named(&r, "tree_grandchild")[0].span;
    assert!(root.parent_span_id.is_empty(), "the root has no parent");
    assert_eq!(child.parent_span_id, root.span_id);
    assert_eq!(grandchild.parent_span_id, child.span_id);
    assert_eq!(child.trace_id, root.trace_id);
    assert_eq!(grandchild.trace_id, root.trace_id);
    // Timestamps come from the TSC clock: they nest and match the wall clock.
    assert!(root.start_time_unix_nano <= child.start_time_unix_nano);
    assert!(child.start_time_unix_nano <= grandchild.start_time_unix_nano);
    assert!(grandchild.end_time_unix_nano <= child.end_time_unix_nano);
    assert!(child.end_time_unix_nano <= root.end_time_unix_nano);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now.abs_diff(root.start_time_unix_nano) < 60_000_000_000,
        "{now} vs {}",
        root.start_time_unix_nano
    );
}

#[monitored(name = "checkout", kind = server, level = "debug", skip(secret), fields(user.id = 7, cart = %"big"))]
fn handler(order: u32, secret: &str) -> u32 {
    order + secret.len() as u32
}

#[test]
fn name_kind_fields_and_skip_shape_the_span() {
    let p = pipeline();
    assert_eq!(handler(40, "pw"), 42);
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "checkout").is_empty()
    });
    let span = &spans_named(&r, "checkout")[0];
    assert_eq!(span.span.kind, SpanKind::Server as i32);
    let attrs = span.attributes();
    assert_eq!(attrs.get("user.id").map(String::as_str), Some("7"));
    assert_eq!(attrs.get("cart").map(String::as_str), Some("big"));
    assert_eq!(attrs.get("order").map(String::as_str), Some("40"));
    // Numbers, bools and strings are typed attributes, not Debug text.
    let order = span
        .span
        .attributes
        .iter()
        .find(|kv| kv.key == "order")
        .unwrap();
    assert_eq!(
        order.value.as_ref().and_then(|v| v.value.clone()),
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(40))
    );
    assert!(
        !attrs.contains_key("secret"),
        "skipped parameters are not recorded"
    );
    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", "checkout").is_empty()
    });
    let pts = points(&r, "function.calls", "checkout");
    let ok = map(&[
        ("function", "checkout"),
        ("module", "monitored"),
        ("result", "ok"),
    ]);
    assert_eq!(value_with(&pts, &ok), Some(1.0), "{pts:#?}");
}

struct Repo {
    rows: Vec<u32>,
}

trait Store {
    fn count(&self) -> usize;
}

impl Repo {
    #[monitored(skip_all)]
    fn find(&self, id: u32) -> Result<u32, std::io::Error> {
        self.rows
            .iter()
            .copied()
            .find(|r| *r == id)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    #[monitored(skip_all)]
    fn evens(&self) -> impl Iterator<Item = &u32> + '_ {
        self.rows.iter().filter(|r| **r % 2 == 0)
    }
}

impl Store for Repo {
    #[monitored(skip_all, name = "store_count")]
    fn count(&self) -> usize {
        self.rows.len()
    }
}

#[monitored(skip_all)]
fn largest<T: PartialOrd + Copy>(items: &[T]) -> Option<T> {
    items.iter().copied().fold(None, |m, x| match m {
        Some(m) if m >= x => Some(m),
        _ => Some(x),
    })
}

#[test]
fn methods_trait_impls_generics_and_impl_trait_returns_are_monitored() {
    let p = pipeline();
    let repo = Repo {
        rows: vec![1, 2, 4],
    };
    assert_eq!(repo.find(2).unwrap(), 2);
    assert_eq!(
        repo.find(3).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(repo.evens().count(), 2);
    assert_eq!(repo.count(), 3);
    assert_eq!(largest(&[1.5, 3.0, 2.0]), Some(3.0));
    assert_eq!(largest(&[1u8, 9]), Some(9));
    let r = flush_until(&p.sink, &p.guard, |r| {
        ["find", "evens", "store_count", "largest"]
            .iter()
            .all(|f| !points(r, "function.calls", f).is_empty())
    });
    let total = |f: &str| -> f64 {
        points(&r, "function.calls", f)
            .iter()
            .map(|p| p.value)
            .sum()
    };
    assert_eq!(total("find"), 2.0);
    assert_eq!(total("evens"), 1.0);
    assert_eq!(total("store_count"), 1.0);
    assert_eq!(
        total("largest"),
        2.0,
        "both instantiations share one callsite"
    );
}

#[test]
fn the_metric_macros_export_with_their_labels() {
    let p = pipeline();
    let queue = String::from("emails");
    for _ in 0..3 {
        otel_instrument::counter!("test.jobs.done", 1, "queue" => &queue);
    }
    otel_instrument::histogram!("test.job.duration", 0.5, "queue" => "emails");
    otel_instrument::histogram!("test.payload.size", unit = "By", 4096.0);
    otel_instrument::gauge!("test.queue.depth", 12.0);
    otel_instrument::up_down!("test.jobs.running", 2, "queue" => queue.as_str(), "urgent" => true);
    let r = flush_until(&p.sink, &p.guard, |r| {
        [
            "test.jobs.done",
            "test.job.duration",
            "test.payload.size",
            "test.queue.depth",
            "test.jobs.running",
        ]
        .iter()
        .all(|n| r.last_metric(n).is_some())
    });
    let value = |name: &str| -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
        let m = r.last_metric(name).unwrap().metric;
        match m.data.unwrap() {
            Data::Sum(s) => s
                .data_points
                .into_iter()
                .map(|p| {
                    let v = match p.value.unwrap() {
                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i) => i as f64,
                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d) => d,
                    };
                    (otel_instrument::testing::attributes(&p.attributes), v)
                })
                .collect(),
            Data::Gauge(g) => g
                .data_points
                .into_iter()
                .map(|p| {
                    let v = match p.value.unwrap() {
                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i) => i as f64,
                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(d) => d,
                    };
                    (otel_instrument::testing::attributes(&p.attributes), v)
                })
                .collect(),
            Data::Histogram(h) => h
                .data_points
                .into_iter()
                .map(|p| (otel_instrument::testing::attributes(&p.attributes), p.sum.unwrap_or(0.0)))
                .collect(),
            _ => Vec::new(),
        }
    };
    assert_eq!(
        value("test.jobs.done"),
        vec![(map(&[("queue", "emails")]), 3.0)]
    );
    assert_eq!(
        value("test.job.duration"),
        vec![(map(&[("queue", "emails")]), 0.5)]
    );
    assert_eq!(value("test.queue.depth"), vec![(map(&[]), 12.0)]);
    assert_eq!(
        value("test.jobs.running"),
        vec![(map(&[("queue", "emails"), ("urgent", "true")]), 2.0)]
    );
    // Histograms get buckets that suit their unit: a `.duration` is in
    // seconds, a size in bytes.
    for (name, unit, bounds) in [
        ("test.job.duration", "s", otel_instrument::metrics::SECONDS),
        ("test.payload.size", "By", otel_instrument::metrics::BYTES),
    ] {
        let m = r.last_metric(name).unwrap().metric;
        assert_eq!(m.unit, unit, "{name}");
        let Some(Data::Histogram(h)) = m.data else {
            panic!("{name} must be a histogram");
        };
        assert_eq!(h.data_points[0].explicit_bounds, bounds, "{name}");
    }
}

/// Every integer type is a label value, exported as an OTLP int; a `u64` or
/// `usize` beyond `i64::MAX` is exported as its exact digits, never wrapped.
#[test]
fn the_metric_macros_take_every_integer_type_as_a_label() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let p = pipeline();
    otel_instrument::counter!(
        "test.int.labels",
        1,
        "i8" => -8i8,
        "i16" => -16i16,
        "i32" => -32i32,
        "i64" => i64::MIN,
        "isize" => -64isize,
        "u8" => 8u8,
        "u16" => 8080u16,
        "u32" => u32::MAX,
        "u64" => 64u64,
        "usize" => 3usize,
        "literal" => 5,
    );
    otel_instrument::histogram!("test.int.labels.hist", 1.0, "shard" => 7usize);
    otel_instrument::gauge!("test.int.labels.gauge", 1.0, "port" => 443u16);
    otel_instrument::up_down!(
        "test.int.labels.up_down",
        1,
        "big" => u64::MAX,
        "big_usize" => usize::MAX,
        "edge" => i64::MAX as u64,
    );
    let names = [
        "test.int.labels",
        "test.int.labels.hist",
        "test.int.labels.gauge",
        "test.int.labels.up_down",
    ];
    let r = flush_until(&p.sink, &p.guard, |r| {
        names.iter().all(|n| r.last_metric(n).is_some())
    });
    let attrs = |name: &str| -> std::collections::BTreeMap<String, Any> {
        let kvs = match r.last_metric(name).unwrap().metric.data.unwrap() {
            Data::Sum(s) => s.data_points[0].attributes.clone(),
            Data::Gauge(g) => g.data_points[0].attributes.clone(),
            Data::Histogram(h) => h.data_points[0].attributes.clone(),
            other => panic!("{name}: unexpected {other:?}"),
        };
        kvs.into_iter()
            .map(|kv| (kv.key, kv.value.and_then(|v| v.value).unwrap()))
            .collect()
    };
    let ints = |pairs: &[(&str, i64)]| -> std::collections::BTreeMap<String, Any> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Any::IntValue(*v)))
            .collect()
    };
    assert_eq!(
        attrs("test.int.labels"),
        ints(&[
            ("i8", -8),
            ("i16", -16),
            ("i32", -32),
            ("i64", i64::MIN),
            ("isize", -64),
            ("u8", 8),
            ("u16", 8080),
            ("u32", i64::from(u32::MAX)),
            ("u64", 64),
            ("usize", 3),
            ("literal", 5),
        ])
    );
    assert_eq!(attrs("test.int.labels.hist"), ints(&[("shard", 7)]));
    assert_eq!(attrs("test.int.labels.gauge"), ints(&[("port", 443)]));
    let mut big = ints(&[("edge", i64::MAX)]);
    big.insert("big".to_owned(), Any::StringValue(u64::MAX.to_string()));
    big.insert(
        "big_usize".to_owned(),
        Any::StringValue(usize::MAX.to_string()),
    );
    assert_eq!(attrs("test.int.labels.up_down"), big);
}

#[monitored]
fn logs_inside() {
    tracing::info!(order = 7, "charging card");
    tracing::info_span!("plain_child_with_log").in_scope(|| tracing::info!("inside plain"));
}

#[test]
fn events_in_a_sampled_call_become_events_of_its_span_once() {
    let p = pipeline();
    logs_inside();
    let r = flush_until(&p.sink, &p.guard, |r| {
        !spans_named(r, "logs_inside").is_empty()
            && !spans_named(r, "plain_child_with_log").is_empty()
    });
    let span = &spans_named(&r, "logs_inside")[0].span;
    let names: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["charging card"], "{names:?}");
    let attrs = otel_instrument::testing::attributes(&span.events[0].attributes);
    assert_eq!(attrs.get("order").map(String::as_str), Some("7"));
    let plain = &spans_named(&r, "plain_child_with_log")[0].span;
    assert_eq!(
        plain.parent_span_id, span.span_id,
        "plain spans nest under the monitored one"
    );
    let plain_events: Vec<&str> = plain.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(plain_events, ["inside plain"]);
}

#[monitored]
async fn panics_mid_poll() {
    tokio::task::yield_now().await;
    panic!("boom (this panic is expected by the test)");
}

#[monitored]
async fn after_a_panic() -> u32 {
    tokio::task::yield_now().await;
    7
}

#[test]
fn a_panic_caught_by_the_runtime_leaves_the_worker_thread_clean() {
    let p = pipeline();
    // One worker: the task after the panic runs on the thread that panicked.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let err = tokio::spawn(panics_mid_poll()).await.unwrap_err();
        assert!(err.is_panic());
        let (frame_before, value) = tokio::spawn(async {
            (
                otel_instrument::monitored::current_function(),
                after_a_panic().await,
            )
        })
        .await
        .unwrap();
        assert_eq!(
            frame_before, None,
            "the worker thread kept the panicked call's frame"
        );
        assert_eq!(value, 7);
    });
    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", "after_a_panic").is_empty()
            && !points(r, "function.calls", "panics_mid_poll").is_empty()
            && !spans_named(r, "after_a_panic").is_empty()
            && !spans_named(r, "panics_mid_poll").is_empty()
    });
    // A fresh root: no caller labels, its own trace, no parent.
    let pts = points(&r, "function.calls", "after_a_panic");
    let root = map(&[
        ("function", "after_a_panic"),
        ("module", "monitored"),
        ("result", "ok"),
    ]);
    assert_eq!(value_with(&pts, &root), Some(1.0), "{pts:#?}");
    assert_eq!(pts.len(), 1, "{pts:#?}");
    let after = &spans_named(&r, "after_a_panic")[0].span;
    let boom = &spans_named(&r, "panics_mid_poll")[0].span;
    assert!(after.parent_span_id.is_empty(), "must be a root span");
    assert_ne!(after.trace_id, boom.trace_id, "must decide its own trace");
    // The panic is an internal error, not a cancellation.
    let pts = points(&r, "function.calls", "panics_mid_poll");
    let failed = map(&[
        ("function", "panics_mid_poll"),
        ("module", "monitored"),
        ("result", "error"),
        ("error.category", "internal"),
        ("error.type", "panic"),
    ]);
    assert_eq!(value_with(&pts, &failed), Some(1.0), "{pts:#?}");
}

#[monitored]
async fn outlived_by_its_timeout() {
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_call_dropped_by_a_timeout_counts_as_cancelled_not_as_an_error() {
    let p = pipeline();
    let timed_out = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        outlived_by_its_timeout(),
    )
    .await;
    assert!(timed_out.is_err(), "the timeout drops the call");
    let r = flush_until(&p.sink, &p.guard, |r| {
        !points(r, "function.calls", "outlived_by_its_timeout").is_empty()
            && !spans_named(r, "outlived_by_its_timeout").is_empty()
            && !points(r, "function.calls.duration", "outlived_by_its_timeout").is_empty()
    });
    let calls = points(&r, "function.calls", "outlived_by_its_timeout");
    let cancelled = map(&[
        ("function", "outlived_by_its_timeout"),
        ("module", "monitored"),
        ("result", "cancelled"),
    ]);
    assert_eq!(value_with(&calls, &cancelled), Some(1.0), "{calls:#?}");
    assert_eq!(calls.len(), 1, "no error point: {calls:#?}");
    let durations = points(&r, "function.calls.duration", "outlived_by_its_timeout");
    assert_eq!(
        value_with(&durations, &cancelled),
        Some(1.0),
        "{durations:#?}"
    );
    let span = &spans_named(&r, "outlived_by_its_timeout")[0].span;
    assert_ne!(
        span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32),
        "a cancellation is not an error span"
    );
    let attrs = otel_instrument::testing::attributes(&span.attributes);
    assert_eq!(attrs.get("result").map(String::as_str), Some("cancelled"));
}

type IoResult<T> = Result<T, std::io::Error>;

#[monitored]
fn aliased_lookup(id: u32) -> IoResult<u32> {
    if id == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
    }
    Ok(id)
}

#[test]
fn an_err_behind_a_result_alias_is_counted_as_an_error() {
    let p = pipeline();
    assert!(aliased_lookup(0).is_err());
    assert_eq!(aliased_lookup(1).unwrap(), 1);
    let r = flush_until(&p.sink, &p.guard, |r| {
        points(r, "function.calls", "aliased_lookup").len() == 2
    });
    let pts = points(&r, "function.calls", "aliased_lookup");
    let failed = map(&[
        ("function", "aliased_lookup"),
        ("module", "monitored"),
        ("result", "error"),
        ("error.category", "not_found"),
        ("error.type", "NotFound"),
    ]);
    let ok = map(&[
        ("function", "aliased_lookup"),
        ("module", "monitored"),
        ("result", "ok"),
    ]);
    assert_eq!(value_with(&pts, &failed), Some(1.0), "{pts:#?}");
    assert_eq!(value_with(&pts, &ok), Some(1.0), "{pts:#?}");
}

/// Neither `Categorize` nor `std::error::Error` (like many axum error types).
#[derive(Debug)]
struct AppError;

#[monitored]
fn render(n: u32) -> Result<impl std::fmt::Display, AppError> {
    if n == 0 {
        return Err(AppError);
    }
    Ok(n)
}

#[monitored]
async fn render_async(n: u32) -> Result<impl std::fmt::Display + Send, AppError> {
    tokio::task::yield_now().await;
    if n == 0 {
        return Err(AppError);
    }
    Ok(format!("#{n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_next_to_an_impl_trait_ok_is_an_unknown_error_named_by_its_type() {
    let p = pipeline();
    assert!(render(0).is_err());
    assert_eq!(render(2).ok().unwrap().to_string(), "2");
    assert!(render_async(0).await.is_err());
    let r = tokio::task::block_in_place(|| {
        flush_until(&p.sink, &p.guard, |r| {
            points(r, "function.calls", "render").len() == 2
                && !points(r, "function.calls", "render_async").is_empty()
                && !spans_named(r, "render_async").is_empty()
        })
    });
    for function in ["render", "render_async"] {
        let pts = points(&r, "function.calls", function);
        let failed = map(&[
            ("function", function),
            ("module", "monitored"),
            ("result", "error"),
            ("error.category", "unknown"),
            ("error.type", "AppError"),
        ]);
        assert_eq!(value_with(&pts, &failed), Some(1.0), "{function}: {pts:#?}");
    }
    let span = &spans_named(&r, "render_async")[0];
    assert_eq!(
        span.span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(
        span.attributes().get("error.type").map(String::as_str),
        Some("AppError")
    );
}

#[tonic::async_trait]
trait Backend: Send + Sync {
    async fn slow_get(&self, id: u32) -> Result<u32, tonic::Status>;
    async fn failing_get(&self, id: u32) -> Result<u32, tonic::Status>;
}

struct SlowBackend;

#[tonic::async_trait]
impl Backend for SlowBackend {
    #[monitored(kind = server)]
    async fn slow_get(&self, id: u32) -> Result<u32, tonic::Status> {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after_the_sleep();
        Ok(id)
    }

    #[monitored(kind = server)]
    async fn failing_get(&self, id: u32) -> Result<u32, tonic::Status> {
        tokio::task::yield_now().await;
        Err(tonic::Status::unavailable(format!("{id} is down")))
    }
}

#[monitored]
fn after_the_sleep() {}

/// The sum of the `function.calls.duration` points of `function`, in seconds.
fn duration_sum(r: &otel_instrument::testing::Received, function: &str) -> Option<f64> {
    let m = r.last_metric("function.calls.duration")?.metric;
    let Some(Data::Histogram(h)) = m.data else {
        return None;
    };
    let sums: Vec<f64> = h
        .data_points
        .iter()
        .filter(|p| {
            otel_instrument::testing::attributes(&p.attributes)
                .get("function")
                .map(String::as_str)
                == Some(function)
        })
        .map(|p| p.sum.unwrap_or(0.0))
        .collect();
    (!sums.is_empty()).then(|| sums.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_trait_method_is_measured_over_its_awaited_body() {
    let p = pipeline();
    let backend: Box<dyn Backend> = Box::new(SlowBackend);
    assert_eq!(backend.slow_get(7).await.unwrap(), 7);
    let r = tokio::task::block_in_place(|| {
        flush_until(&p.sink, &p.guard, |r| {
            duration_sum(r, "slow_get").is_some()
                && !spans_named(r, "slow_get").is_empty()
                && !spans_named(r, "after_the_sleep").is_empty()
        })
    });
    let seconds = duration_sum(&r, "slow_get").unwrap();
    assert!(
        seconds >= 0.050,
        "the duration misses the awaited body: {seconds} s"
    );
    let span = &spans_named(&r, "slow_get")[0].span;
    let child = &spans_named(&r, "after_the_sleep")[0].span;
    assert!(
        span.end_time_unix_nano - span.start_time_unix_nano >= 50_000_000,
        "the span ended before the body ran: {span:?}"
    );
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(
        child.parent_span_id, span.span_id,
        "the body runs in the span"
    );
    assert!(child.start_time_unix_nano >= span.start_time_unix_nano + 50_000_000);
    assert!(child.end_time_unix_nano <= span.end_time_unix_nano);
    let pts = points(&r, "function.calls", "slow_get");
    let ok = map(&[
        ("function", "slow_get"),
        ("module", "monitored"),
        ("result", "ok"),
    ]);
    assert_eq!(value_with(&pts, &ok), Some(1.0), "{pts:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_from_an_async_trait_method_is_an_error() {
    let p = pipeline();
    let backend: Box<dyn Backend> = Box::new(SlowBackend);
    assert_eq!(
        backend.failing_get(3).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    let r = tokio::task::block_in_place(|| {
        flush_until(&p.sink, &p.guard, |r| {
            !points(r, "function.calls", "failing_get").is_empty()
                && !spans_named(r, "failing_get").is_empty()
        })
    });
    let pts = points(&r, "function.calls", "failing_get");
    let failed = map(&[
        ("function", "failing_get"),
        ("module", "monitored"),
        ("result", "error"),
        ("error.category", "unavailable"),
        ("error.type", "UNAVAILABLE"),
    ]);
    assert_eq!(value_with(&pts, &failed), Some(1.0), "{pts:#?}");
    let span = &spans_named(&r, "failing_get")[0].span;
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
}

struct Accounts {
    names: Vec<String>,
}

#[monitored(skip_all)]
impl Accounts {
    fn lookup(&self, i: usize) -> IoResult<&str> {
        self.names
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    #[monitored(name = "accounts_add", skip(user), fields(account.user = user))]
    fn add(&mut self, user: String) -> usize {
        self.names.push(user);
        self.names.len()
    }

    #[monitored(off)]
    fn unmonitored_len(&self) -> usize {
        self.names.len()
    }
}

#[test]
fn an_impl_block_monitors_its_methods_and_a_method_can_override_or_opt_out() {
    let p = pipeline();
    let mut accounts = Accounts { names: Vec::new() };
    assert_eq!(accounts.add("ann".to_owned()), 1);
    assert_eq!(accounts.lookup(0).unwrap(), "ann");
    assert!(accounts.lookup(5).is_err());
    assert_eq!(accounts.unmonitored_len(), 1);
    let r = flush_until(&p.sink, &p.guard, |r| {
        points(r, "function.calls", "lookup").len() == 2
            && !points(r, "function.calls", "accounts_add").is_empty()
            && !spans_named(r, "accounts_add").is_empty()
    });
    let pts = points(&r, "function.calls", "lookup");
    let failed = map(&[
        ("function", "lookup"),
        ("module", "monitored"),
        ("result", "error"),
        ("error.category", "not_found"),
        ("error.type", "NotFound"),
    ]);
    assert_eq!(value_with(&pts, &failed), Some(1.0), "{pts:#?}");
    // The method's own arguments replace the block's: `user` is recorded
    // (by reference: the body still owns it), and the name is its own.
    let span = &spans_named(&r, "accounts_add")[0];
    let attrs = span.attributes();
    assert_eq!(
        attrs.get("account.user").map(String::as_str),
        Some("ann"),
        "{attrs:?}"
    );
    assert!(!attrs.contains_key("user"), "{attrs:?}");
    assert!(points(&r, "function.calls", "unmonitored_len").is_empty());
}

/// Metrics-only calls (`span = false`) have a guard of their own; they must
/// still count, nest and pass their caller's trace through.
mod lean {
    use otel_instrument::monitored;

    #[monitored]
    pub fn lean_root() -> u32 {
        lean_middle().unwrap() + lean_middle_fails().map_or(1, |_| 0)
    }

    #[monitored(span = false)]
    pub fn lean_middle() -> Result<u32, std::num::ParseIntError> {
        Ok(lean_child() + 1)
    }

    #[monitored(span = false)]
    pub fn lean_middle_fails() -> Result<u32, std::num::ParseIntError> {
        "x".parse()
    }

    #[monitored]
    pub fn lean_child() -> u32 {
        41
    }

    #[monitored(span = false)]
    pub async fn lean_async(release: tokio::sync::oneshot::Receiver<()>) -> u32 {
        let _ = release.await;
        lean_child()
    }

    #[monitored(span = false)]
    pub async fn lean_never_done() {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_only_calls_count_nest_and_pass_their_callers_trace_through() {
    let p = pipeline();
    assert_eq!(lean::lean_root(), 43);
    // Async: two in flight, then done; one dropped by a timeout.
    let (tx1, rx1) = tokio::sync::oneshot::channel();
    let (tx2, rx2) = tokio::sync::oneshot::channel();
    let t1 = tokio::spawn(lean::lean_async(rx1));
    let t2 = tokio::spawn(lean::lean_async(rx2));
    let fm = map(&[("function", "lean_async"), ("module", "monitored::lean")]);
    tokio::task::block_in_place(|| {
        flush_until(&p.sink, &p.guard, |r| {
            value_with(&points(r, "function.calls.concurrent", "lean_async"), &fm) == Some(2.0)
        })
    });
    tx1.send(()).unwrap();
    tx2.send(()).unwrap();
    assert_eq!(t1.await.unwrap(), 41);
    assert_eq!(t2.await.unwrap(), 41);
    let timed_out = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        lean::lean_never_done(),
    )
    .await;
    assert!(timed_out.is_err());

    let r = tokio::task::block_in_place(|| {
        flush_until(&p.sink, &p.guard, |r| {
            value_with(&points(r, "function.calls.concurrent", "lean_async"), &fm) == Some(0.0)
                && !points(r, "function.calls", "lean_never_done").is_empty()
                && !points(r, "function.errors", "lean_middle_fails").is_empty()
                && spans_named(r, "lean_child").len() == 3
        })
    });
    let module = "monitored::lean";
    let labels = |function: &str, result: &str, caller: Option<&str>| {
        let mut m = map(&[
            ("function", function),
            ("module", module),
            ("result", result),
        ]);
        if let Some(c) = caller {
            m.insert("caller.function".into(), c.into());
            m.insert("caller.module".into(), module.into());
        }
        m
    };
    let calls = |f: &str| points(&r, "function.calls", f);
    // The metrics-only call names its monitored caller, and is named by its callee.
    assert_eq!(
        value_with(
            &calls("lean_middle"),
            &labels("lean_middle", "ok", Some("lean_root"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value_with(
            &calls("lean_child"),
            &labels("lean_child", "ok", Some("lean_middle"))
        ),
        Some(1.0),
        "{:#?}",
        calls("lean_child")
    );
    assert_eq!(
        value_with(
            &calls("lean_child"),
            &labels("lean_child", "ok", Some("lean_async"))
        ),
        Some(2.0)
    );
    // Its error is classified, counted and fingerprinted.
    let mut failed = labels("lean_middle_fails", "error", Some("lean_root"));
    failed.insert("error.category".into(), "invalid_argument".into());
    failed.insert("error.type".into(), "ParseIntError".into());
    assert_eq!(
        value_with(&calls("lean_middle_fails"), &failed),
        Some(1.0),
        "{:#?}",
        calls("lean_middle_fails")
    );
    assert_eq!(
        points(&r, "function.errors", "lean_middle_fails")
            .iter()
            .map(|p| p.value)
            .sum::<f64>(),
        1.0
    );
    // A dropped async call counts as cancelled.
    assert_eq!(
        value_with(
            &calls("lean_never_done"),
            &labels("lean_never_done", "cancelled", None)
        ),
        Some(1.0)
    );
    let durations = points(&r, "function.calls.duration", "lean_async");
    assert_eq!(
        value_with(&durations, &labels("lean_async", "ok", None)),
        Some(2.0)
    );
    // No span of its own: the child's parent is the sampled root.
    for name in [
        "lean_middle",
        "lean_middle_fails",
        "lean_async",
        "lean_never_done",
    ] {
        assert!(spans_named(&r, name).is_empty(), "{name} has a span");
    }
    let root = &spans_named(&r, "lean_root")[0].span;
    let child = spans_named(&r, "lean_child")
        .into_iter()
        .find(|s| s.span.trace_id == root.trace_id)
        .expect("the child inside the metrics-only call is in the root's trace");
    assert_eq!(child.span.parent_span_id, root.span_id);
}
