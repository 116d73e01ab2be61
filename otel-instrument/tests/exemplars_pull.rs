//! Exemplars on the pull endpoint (feature `prometheus`): a scraper that asks for
//! OpenMetrics gets it, with an exemplar naming an exported span on the buckets of
//! `function_calls_duration_seconds`, and the same series and values as the plain
//! text format (opentelemetry-prometheus's own encoding) that everyone else gets.
//! A `histogram!` recorded in the call carries its exemplars there too.
#![cfg(feature = "prometheus")]

mod monitored_common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use monitored_common::{Pipeline, flush_until};
use otel_instrument::monitored;

#[monitored]
fn pulled(millis: u64) {
    std::thread::sleep(Duration::from_millis(millis));
    // A histogram! point in the sampled call: its exemplar names this call.
    otel_instrument::histogram!("pull.job.duration", millis as f64 / 1000.0, "job.kind" => "pulled");
}

fn get(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (content_type, body.to_owned())
}

/// `name{labels}` -> value, for the function_* samples (exemplars cut off).
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| l.starts_with("function_calls"))
        .map(|l| {
            let l = l.split(" # ").next().unwrap();
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse::<f64>().unwrap())
        })
        .collect()
}

#[test]
fn openmetrics_scrapes_carry_exemplars_and_the_same_samples() {
    let p = Pipeline::install(|b| {
        b.service_name("monitored-pull")
            .prometheus_endpoint("127.0.0.1:0".parse().unwrap())
            .logs_export(false)
    });
    let addr = p.guard.prometheus_addr().expect("bound");
    pulled(0);
    pulled(30);
    let r = flush_until(&p.sink, &p.guard, |r| {
        r.spans().iter().filter(|s| s.span.name == "pulled").count() == 2
    });
    let spans: Vec<String> = r
        .spans()
        .iter()
        .filter(|s| s.span.name == "pulled")
        .map(|s| s.span.trace_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();

    // What Prometheus 2.42 asks for.
    let (content_type, om) = get(
        addr,
        Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        ),
    );
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert_eq!(om.lines().last(), Some("# EOF"), "{om}");
    assert!(om.contains("# TYPE function_calls counter\n"), "{om}");
    assert!(
        om.contains("# TYPE function_calls_duration_seconds histogram\n"),
        "{om}"
    );
    let with_exemplar: Vec<&str> = om
        .lines()
        .filter(|l| {
            l.starts_with("function_calls_duration_seconds_bucket{function=\"pulled\"")
                && l.contains(" # {")
        })
        .collect();
    assert_eq!(
        with_exemplar.len(),
        2,
        "one per bucket the two calls fell in: {om}"
    );
    for line in &with_exemplar {
        let (sample, exemplar) = line.split_once(" # ").unwrap();
        let trace = exemplar
            .split("trace_id=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .unwrap();
        assert!(
            spans.iter().any(|s| s == trace),
            "{trace} was not exported: {line}"
        );
        // The exemplar's value is within its bucket.
        let le: f64 = sample
            .split(",le=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .map(|le| {
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                }
            })
            .unwrap();
        let value: f64 = exemplar.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(value <= le, "{line}");
    }

    // The histogram! recorded in each call: its family as opentelemetry-prometheus
    // names it, an exemplar per bucket that names the call's own span.
    let job: Vec<&str> = om
        .lines()
        .filter(|l| l.starts_with("pull_job_duration_seconds_bucket{job_kind=\"pulled\""))
        .collect();
    assert!(!job.is_empty(), "{om}");
    let job_exemplars: Vec<(f64, String)> = job
        .iter()
        .filter_map(|l| l.split_once(" # "))
        .map(|(_, e)| {
            let span = e
                .split("span_id=\"")
                .nth(1)
                .and_then(|t| t.split('"').next())
                .unwrap()
                .to_owned();
            (e.split(' ').nth(1).unwrap().parse().unwrap(), span)
        })
        .collect();
    let pulled_spans: Vec<String> = r
        .spans()
        .iter()
        .filter(|s| s.span.name == "pulled")
        .map(|s| s.span.span_id.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    assert_eq!(
        job_exemplars.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        [0.0, 0.03],
        "{om}"
    );
    for (_, span) in &job_exemplars {
        assert!(
            pulled_spans.contains(span),
            "{span} is no exported call: {om}"
        );
    }

    // Anyone else gets the text format, with the same function samples.
    let (content_type, text) = get(addr, None);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(!text.contains(" # {"));
    let (a, b) = (samples(&om), samples(&text));
    assert!(!a.is_empty());
    assert_eq!(a, b, "the two formats disagree on the function samples");
}
