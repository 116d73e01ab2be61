//! Big hosts through the SDK and OTLP: a 384-CPU /proc (generated here) has 3,072
//! `system.cpu.time` series, more than the SDK's default limit of 2,000 per instrument.
//! `--once` bypasses the SDK and could never see a fold into `otel.metric.overflow`;
//! this test reads what the OTLP sink receives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use otel_instrument::testing::proto::metrics::v1::NumberDataPoint;
use otel_instrument::testing::proto::metrics::v1::metric::Data;
use otel_instrument::testing::proto::metrics::v1::number_data_point::Value;
use otel_instrument::testing::{OtlpSink, Received, attributes};

use crate::common::start_agent;

/// /proc/stat of a host with `cpus` logical CPUs.
fn stat(cpus: usize) -> String {
    let mut s = format!(
        "cpu  {} 0 {} {} 10 0 5 0 0 0\n",
        cpus * 100,
        cpus * 50,
        cpus * 800
    );
    for i in 0..cpus {
        s.push_str(&format!("cpu{i} 100 0 50 800 10 0 5 0 0 0\n"));
    }
    s.push_str("intr 1\nctxt 2\nprocs_running 1\nprocs_blocked 0\n");
    s
}

/// Replaces a file at once, so the agent never reads half of it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Every data point of `name` in the last request.
fn last_points(r: &Received, name: &str) -> Vec<NumberDataPoint> {
    r.metrics
        .last()
        .into_iter()
        .flat_map(|req| &req.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == name)
        .flat_map(|m| match m.data.as_ref() {
            Some(Data::Sum(s)) => s.data_points.clone(),
            Some(Data::Gauge(g)) => g.data_points.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn is_overflow(p: &NumberDataPoint) -> bool {
    attributes(&p.attributes).contains_key("otel.metric.overflow")
}

#[test]
fn a_384_cpu_host_exports_every_cpu_time_series_and_counts_what_outgrows_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    let sys = dir.path().join("sys");
    std::fs::create_dir_all(&proc).unwrap();
    std::fs::create_dir_all(&sys).unwrap();
    write_atomically(&proc.join("stat"), &stat(384));

    let sink = OtlpSink::start().unwrap();
    let agent = start_agent(
        &[
            "--families",
            "cpu",
            "--proc-root",
            proc.to_str().unwrap(),
            "--sys-root",
            sys.to_str().unwrap(),
            "--interval",
            "500ms",
            "--otlp-endpoint",
            &sink.endpoint(),
        ],
        &[],
    );

    // 1. Every one of the 8 × 384 series arrives, none folded.
    let got = sink
        .wait_until(Duration::from_secs(30), |r| {
            last_points(r, "system.cpu.time").len() >= 8 * 384
        })
        .unwrap_or_else(|| {
            let n = last_points(&sink.received(), "system.cpu.time").len();
            panic!(
                "system.cpu.time never carried 3072 series (last: {n}); agent log:\n{}",
                agent.stderr()
            )
        });
    let points = last_points(&got, "system.cpu.time");
    assert_eq!(points.len(), 8 * 384, "exactly the host's series");
    let series: BTreeSet<(String, String)> = points
        .iter()
        .map(|p| {
            let a = attributes(&p.attributes);
            (a["cpu.mode"].clone(), a["cpu.logical_number"].clone())
        })
        .collect();
    assert_eq!(series.len(), 8 * 384, "distinct mode × CPU series");
    let modes: BTreeSet<&str> = series.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modes.len(), 8, "{modes:?}");
    let all = got.metrics();
    let folded: Vec<&str> = all
        .iter()
        .filter(|m| {
            let pts = match m.metric.data.as_ref() {
                Some(Data::Sum(s)) => &s.data_points,
                Some(Data::Gauge(g)) => &g.data_points,
                _ => return false,
            };
            pts.iter().any(is_overflow)
        })
        .map(|m| m.metric.name.as_str())
        .collect();
    assert!(folded.is_empty(), "series folded into overflow: {folded:?}");
    assert!(last_points(&got, "otel_gpu_receiver.series.overflow").is_empty());

    // 2. The host grows past the limit set at start (2 × 3,072): the SDK folds the
    //    excess, and the agent counts exactly what it folds.
    write_atomically(&proc.join("stat"), &stat(1024));
    let got = sink
        .wait_until(Duration::from_secs(30), |r| {
            last_points(r, "system.cpu.time").iter().any(is_overflow)
                && !last_points(r, "otel_gpu_receiver.series.overflow").is_empty()
        })
        .unwrap_or_else(|| panic!("no overflow after growing; agent log:\n{}", agent.stderr()));
    let points = last_points(&got, "system.cpu.time");
    let limit = 2 * 8 * 384;
    assert_eq!(
        points.len(),
        limit + 1,
        "the limit's series plus one overflow series"
    );
    let overflow: Vec<_> = points.iter().filter(|p| is_overflow(p)).collect();
    assert_eq!(overflow.len(), 1);
    assert_eq!(
        attributes(&overflow[0].attributes),
        BTreeMap::from([("otel.metric.overflow".to_owned(), "true".to_owned())])
    );
    let counted = last_points(&got, "otel_gpu_receiver.series.overflow");
    assert_eq!(counted.len(), 1);
    assert_eq!(
        attributes(&counted[0].attributes),
        BTreeMap::from([("metric.name".to_owned(), "system.cpu.time".to_owned())])
    );
    let n = match counted[0].value {
        Some(Value::AsInt(i)) => i,
        other => panic!("{other:?}"),
    };
    // Each cycle folds 8 × 1,024 − 6,144 = 2,048 series.
    let per_cycle = (8 * 1024 - limit) as i64;
    assert!(n > 0 && n % per_cycle == 0, "overflow count {n}");
    assert!(
        agent
            .stderr()
            .contains("more series than the instrument's cardinality limit"),
        "{}",
        agent.stderr()
    );
}
