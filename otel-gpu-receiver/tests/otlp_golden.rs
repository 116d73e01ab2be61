//! The golden test of the OTLP request (`src/otlp.rs`): for every fixture (host, 8 fake
//! GPUs with `--per-process`, attribution to pods), the same snapshot is exported twice,
//! by our encoder and by the OpenTelemetry SDK's observable instruments
//! (`telemetry::register_catalogue`, with the per-instrument cardinality limits, as the
//! agent pushed before) through opentelemetry-otlp into the in-process sink. Both
//! requests are decoded and must carry the same metrics, units, descriptions, kinds,
//! temporality, attribute sets and values (with the same number type), and the same
//! resource and scope. Our start times must stay put between two exports of a series.

mod attribution_support;
mod export_fixtures;
mod fake_nvml;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use export_fixtures::{Fixture, collect};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use otel_gpu_receiver::cardinality::Limits;
use otel_gpu_receiver::config::Settings;
use otel_gpu_receiver::otlp::{Encoder, Temporality};
use otel_gpu_receiver::snapshot::{Snapshot, SnapshotCell};
use otel_gpu_receiver::telemetry;
use otel_instrument::export::{ExportRuntime, ExportStats};
use otel_instrument::testing::OtlpSink;
use otel_instrument::testing::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use otel_instrument::testing::proto::common::v1::KeyValue;
use otel_instrument::testing::proto::metrics::v1::{NumberDataPoint, metric::Data};
use prost::Message as _;

type Attrs = BTreeMap<String, String>;

/// One metric, reduced to what both paths must agree on.
#[derive(Debug, PartialEq)]
struct Summary {
    unit: String,
    description: String,
    /// `gauge`, or `sum/<temporality>/<monotonic>`.
    kind: String,
    /// Attribute set -> value with its number type (`int 3`, `double 0.5`).
    points: BTreeMap<Attrs, String>,
}

fn attrs(kvs: &[KeyValue]) -> Attrs {
    kvs.iter()
        .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
        .collect()
}

fn value(p: &NumberDataPoint) -> String {
    use otel_instrument::testing::proto::metrics::v1::number_data_point::Value;
    match p.value {
        Some(Value::AsInt(i)) => format!("int {i}"),
        Some(Value::AsDouble(d)) => format!("double {d}"),
        None => "none".into(),
    }
}

/// Metrics by name, plus the resource and scope, of a request with one resource and
/// one scope.
fn summarise(r: &ExportMetricsServiceRequest) -> (BTreeMap<String, Summary>, Attrs, String) {
    assert_eq!(r.resource_metrics.len(), 1);
    let rm = &r.resource_metrics[0];
    assert_eq!(rm.scope_metrics.len(), 1);
    let sm = &rm.scope_metrics[0];
    let scope = sm.scope.as_ref().expect("a scope");
    let scope = format!(
        "{} {} {:?}",
        scope.name,
        scope.version,
        attrs(&scope.attributes)
    );
    let resource = attrs(&rm.resource.as_ref().expect("a resource").attributes);
    let mut out = BTreeMap::new();
    for m in &sm.metrics {
        let (kind, points) = match m.data.as_ref().expect("data") {
            Data::Gauge(g) => ("gauge".to_owned(), &g.data_points),
            Data::Sum(s) => (
                format!("sum/{}/{}", s.aggregation_temporality, s.is_monotonic),
                &s.data_points,
            ),
            other => panic!("{}: unexpected {other:?}", m.name),
        };
        let mut by_attrs = BTreeMap::new();
        for p in points {
            assert!(
                by_attrs.insert(attrs(&p.attributes), value(p)).is_none(),
                "{}: two points with one attribute set",
                m.name
            );
        }
        let summary = Summary {
            unit: m.unit.clone(),
            description: m.description.clone(),
            kind,
            points: by_attrs,
        };
        assert!(
            out.insert(m.name.clone(), summary).is_none(),
            "{} twice in one request",
            m.name
        );
    }
    (out, resource, scope)
}

/// The SDK path's request for `snapshot`: the catalogue's observable instruments over a
/// cell holding it, the per-instrument limits as a view, one export to a sink.
fn through_the_sdk(snapshot: &Snapshot, settings: &Settings) -> ExportMetricsServiceRequest {
    let sink = OtlpSink::start().unwrap();
    let rt = ExportRuntime::new().unwrap();
    let mut cfg = settings.otlp.clone().expect("OTLP on by default");
    cfg.endpoint = sink.endpoint();
    let exporter =
        otel_instrument::export::metric_exporter(&rt, &cfg, Arc::new(ExportStats::default()))
            .unwrap();
    let limits = Arc::new(Limits::estimate(settings));
    let provider = SdkMeterProvider::builder()
        .with_resource(telemetry::resource(settings))
        .with_view(limits.view())
        .with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .build();
    let cell = SnapshotCell::default();
    cell.store(snapshot.clone());
    telemetry::register_catalogue(
        &provider.meter_with_scope(telemetry::scope()),
        &settings.families,
        &cell,
    );
    provider.force_flush().unwrap();
    let got = sink
        .wait_until(Duration::from_secs(10), |r| !r.metrics.is_empty())
        .expect("the SDK's export");
    provider.shutdown().ok();
    got.metrics[0].clone()
}

/// (metric, attributes) -> start time, of every point.
fn start_times(r: &ExportMetricsServiceRequest) -> BTreeMap<(String, Attrs), (u64, u64)> {
    let mut out = BTreeMap::new();
    for m in &r.resource_metrics[0].scope_metrics[0].metrics {
        let points = match m.data.as_ref().unwrap() {
            Data::Gauge(g) => &g.data_points,
            Data::Sum(s) => &s.data_points,
            _ => continue,
        };
        for p in points {
            out.insert(
                (m.name.clone(), attrs(&p.attributes)),
                (p.start_time_unix_nano, p.time_unix_nano),
            );
        }
    }
    out
}

fn diff(ours: &BTreeMap<String, Summary>, theirs: &BTreeMap<String, Summary>) -> String {
    let mut msg = String::new();
    for (name, t) in theirs {
        match ours.get(name) {
            None => msg += &format!("missing from ours: {name}\n"),
            Some(o) if o != t => {
                if (&o.unit, &o.description, &o.kind) != (&t.unit, &t.description, &t.kind) {
                    msg += &format!(
                        "{name}: ours {:?} SDK {:?}\n",
                        (&o.unit, &o.description, &o.kind),
                        (&t.unit, &t.description, &t.kind)
                    );
                }
                for (a, v) in &t.points {
                    match o.points.get(a) {
                        None => msg += &format!("{name}: missing from ours: {a:?} = {v}\n"),
                        Some(ov) if ov != v => {
                            msg += &format!("{name}: {a:?}: ours {ov}, SDK {v}\n")
                        }
                        Some(_) => {}
                    }
                }
                for a in o.points.keys().filter(|a| !t.points.contains_key(*a)) {
                    msg += &format!("{name}: only in ours: {a:?}\n");
                }
            }
            Some(_) => {}
        }
    }
    for name in ours.keys().filter(|n| !theirs.contains_key(*n)) {
        msg += &format!("only in ours: {name}\n");
    }
    msg.lines().take(40).collect::<Vec<_>>().join("\n")
}

fn assert_same(name: &str, snapshot: &Snapshot, settings: &Settings) {
    let limits = Arc::new(Limits::estimate(settings));
    let mut encoder = Encoder::new(
        &telemetry::resource(settings),
        &telemetry::scope(),
        &settings.families,
        Temporality::Cumulative,
        Some(limits),
    );
    let first =
        ExportMetricsServiceRequest::decode(encoder.encode(snapshot, SystemTime::now()).as_ref())
            .expect("our request decodes");
    let theirs = through_the_sdk(snapshot, settings);
    let (ours_m, ours_res, ours_scope) = summarise(&first);
    let (theirs_m, theirs_res, theirs_scope) = summarise(&theirs);
    let series: usize = ours_m.values().map(|s| s.points.len()).sum();
    eprintln!("{name}: {} metrics, {series} series", ours_m.len());
    assert_eq!(ours_res, theirs_res, "{name}: resource differs");
    assert_eq!(ours_scope, theirs_scope, "{name}: scope differs");
    assert!(
        ours_m == theirs_m,
        "{name}: the metrics differ ({} ours, {} SDK):\n{}",
        ours_m.len(),
        theirs_m.len(),
        diff(&ours_m, &theirs_m)
    );

    // The second export of the same series: same start, later time.
    std::thread::sleep(Duration::from_millis(5));
    let second =
        ExportMetricsServiceRequest::decode(encoder.encode(snapshot, SystemTime::now()).as_ref())
            .unwrap();
    let (a, b) = (start_times(&first), start_times(&second));
    assert_eq!(a.len(), b.len(), "{name}");
    for (k, (start, time)) in &a {
        let (start2, time2) = b[k];
        assert!(
            *start > 0 && *start <= *time,
            "{name}: {k:?} start {start} time {time}"
        );
        assert_eq!(
            *start, start2,
            "{name}: the start time of {k:?} moved between two exports"
        );
        assert!(time2 > *time, "{name}: {k:?}");
    }
}

#[test]
fn the_otlp_request_carries_the_sdks_metrics_on_every_fixture() {
    for fixture in Fixture::ALL {
        let scene = collect(fixture);
        assert!(scene.snapshot.uncatalogued().is_empty());
        assert_same(fixture.name(), &scene.snapshot, &scene.settings);
    }
}

#[test]
fn series_beyond_a_cardinality_limit_fold_as_the_sdk_folds_them() {
    use opentelemetry::KeyValue as Kv;
    use otel_gpu_receiver::snapshot::Points;
    // More interfaces than system.network.io's limit on a one-interface shape.
    let mut settings = Settings::default();
    let dir = tempfile::tempdir().unwrap();
    settings.roots.proc = dir.path().to_owned();
    let limit = Limits::estimate(&settings).get("system.network.io");
    let mut p = Points::default();
    for i in 0..limit + 5 {
        p.push(
            "system.network.io",
            vec![
                Kv::new("network.interface.name", format!("if{i}")),
                Kv::new("network.io.direction", "receive"),
            ],
            i as u64,
        );
    }
    p.push("system.cpu.logical.count", vec![], 4_u64);
    assert_same("overflow", &Snapshot::new(p), &settings);
}
