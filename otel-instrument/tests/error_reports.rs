//! Error storms over the real wire: 100,000 failing calls (unsampled, as most
//! calls are) give at most the configured number of report lines per
//! fingerprint plus one summary that says how many were held back, while
//! `function.errors` counts all 100,000; and a function's fingerprints past
//! its cap share one overflow series.

use std::time::Duration;

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use otel_instrument::errors::ReportLimit;
use otel_instrument::monitored;
use otel_instrument::testing::{OtlpSink, Received, attributes};

const STORM: u64 = 100_000;
const REPORTS: u32 = 5;
const GROUPS: usize = 3;

#[derive(Debug, thiserror::Error)]
#[error("order {0} not found in shard {1}")]
struct OrderMissing(u64, u64);

#[derive(Debug, thiserror::Error)]
#[error("kind {0} of failure")]
struct Many(&'static str);

#[monitored(sample = 0.0)]
fn lookup(order: u64) -> Result<(), OrderMissing> {
    Err(OrderMissing(order, order % 17))
}

#[monitored(sample = 0.0)]
fn many(kind: &'static str) -> Result<(), Many> {
    Err(Many(kind))
}

/// `function.errors` of `function` in the last request that has it:
/// (fingerprint, count).
fn error_counts(r: &Received, function: &str) -> Vec<(String, u64)> {
    let Some(m) = r
        .metrics()
        .into_iter()
        .rev()
        .find(|m| m.metric.name == "function.errors")
    else {
        return Vec::new();
    };
    let Some(metric::Data::Sum(sum)) = m.metric.data else {
        panic!("function.errors is a sum");
    };
    let mut out: Vec<(String, u64)> = sum
        .data_points
        .iter()
        .filter(|p| {
            attributes(&p.attributes)
                .get("function")
                .map(String::as_str)
                == Some(function)
        })
        .map(|p| {
            let v = match p.value {
                Some(number_data_point::Value::AsInt(v)) => v as u64,
                other => panic!("an integer count: {other:?}"),
            };
            (attributes(&p.attributes)["error.fingerprint"].clone(), v)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_storm_gives_bounded_reports_a_summary_and_every_error_counted() {
    let sink = OtlpSink::start().unwrap();
    let guard = otel_instrument::builder!()
        .endpoint(sink.endpoint())
        .fmt(false)
        // An hour: the whole storm falls in one interval however slow the machine.
        .error_reports(ReportLimit {
            per_interval: REPORTS,
            interval: Duration::from_secs(3600),
        })
        .error_groups(GROUPS)
        .install()
        .unwrap();
    for i in 0..STORM {
        assert!(lookup(i).is_err());
    }
    for kind in ["a", "b", "c", "d", "e"] {
        assert!(many(kind).is_err());
        assert!(many(kind).is_err());
    }
    // The flush writes the summaries of what the limit held back.
    assert!(guard.flush(), "flush timed out");
    sink.wait_until(Duration::from_secs(30), |r| {
        error_counts(r, "lookup").iter().map(|c| c.1).sum::<u64>() == STORM
            && error_counts(r, "many").iter().map(|c| c.1).sum::<u64>() == 10
            && r.log_records()
                .iter()
                .any(|l| attributes(&l.attributes).contains_key("suppressed"))
    })
    .unwrap_or_else(|| {
        panic!(
            "the storm's telemetry did not arrive: {:?}",
            error_counts(&sink.received(), "lookup")
        )
    });
    drop(guard);
    let all = sink.received();

    // Every error counted, in one series: other ids, one fingerprint.
    let counts = error_counts(&all, "lookup");
    assert_eq!(counts.len(), 1, "{counts:?}");
    let (fp, n) = &counts[0];
    assert_eq!(*n, STORM);

    // At most REPORTS report lines, then one summary with the rest.
    let logs = all.log_records();
    let of_fp: Vec<&LogRecord> = logs
        .iter()
        .filter(|l| attributes(&l.attributes).get("error.fingerprint") == Some(fp))
        .collect();
    let summaries: Vec<&LogRecord> = of_fp
        .iter()
        .copied()
        .filter(|l| attributes(&l.attributes).contains_key("suppressed"))
        .collect();
    let reports = of_fp.len() - summaries.len();
    assert_eq!(reports, REPORTS as usize, "report lines");
    assert_eq!(summaries.len(), 1, "one summary for the interval");
    assert_eq!(
        attributes(&summaries[0].attributes)["suppressed"],
        (STORM - u64::from(REPORTS)).to_string()
    );
    assert_eq!(summaries[0].severity_text, "WARN");

    // Five fingerprints, a cap of three: two fold into the overflow series.
    let many = error_counts(&all, "many");
    assert_eq!(many.len(), GROUPS + 1, "{many:?}");
    assert_eq!(
        many.iter().find(|(fp, _)| fp == "overflow").map(|c| c.1),
        Some(4),
        "{many:?}"
    );
    assert!(
        many.iter()
            .filter(|(fp, _)| fp != "overflow")
            .all(|c| c.1 == 2)
    );
    // The held-back reports and the folded errors are counted.
    let own = |name: &str| {
        all.metrics()
            .into_iter()
            .rev()
            .find(|m| m.metric.name == name)
            .and_then(|m| match m.metric.data {
                Some(metric::Data::Sum(s)) => s.data_points.first().and_then(|p| match p.value {
                    Some(number_data_point::Value::AsInt(v)) => Some(v as u64),
                    _ => None,
                }),
                _ => None,
            })
    };
    assert_eq!(
        own("otel_instrument.error_reports.suppressed"),
        Some(STORM - u64::from(REPORTS))
    );
    assert_eq!(own("otel_instrument.error_groups.overflowed"), Some(4));
    let _ = monitored::FUNCTION_ERRORS;
}
