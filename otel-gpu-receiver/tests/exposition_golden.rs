//! The golden test of the Prometheus exposition (`src/exposition.rs`): for every fixture
//! (host, 8 fake GPUs with `--per-process`, attribution to pods), the same snapshot is
//! exported twice, by our renderer and by the OpenTelemetry SDK's observable instruments
//! (`telemetry::register_catalogue`, as the OTLP path registers them) read by
//! opentelemetry-prometheus and encoded by the `prometheus` crate, which is what the pull
//! endpoint served before. Both must carry the same families (`# HELP`, `# TYPE`), the
//! same series (name and label set) and the same values.

mod attribution_support;
mod export_fixtures;
mod fake_nvml;

use std::collections::BTreeMap;

use export_fixtures::{Fixture, collect};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use otel_gpu_receiver::exposition;
use otel_gpu_receiver::snapshot::{Snapshot, SnapshotCell};
use otel_gpu_receiver::telemetry;

type Labels = Vec<(String, String)>;

/// A parsed exposition: families and series.
#[derive(Debug, Default)]
struct Parsed {
    help: BTreeMap<String, String>,
    kind: BTreeMap<String, String>,
    series: BTreeMap<(String, Labels), f64>,
    duplicates: Vec<String>,
    eof: bool,
}

/// A small parser of the text format (and OpenMetrics, which differs only in headers).
fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(
                p.help.insert(name.into(), help.into()).is_none(),
                "two HELP lines for {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                p.kind.insert(name.into(), kind.into()).is_none(),
                "two TYPE lines for {name}"
            );
        } else if line == "# EOF" {
            p.eof = true;
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (name, labels, value) = parse_sample(line);
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            let key = (name.clone(), labels);
            if p.series.insert(key, v).is_some() {
                p.duplicates.push(line.to_owned());
            }
        }
    }
    p
}

fn parse_sample(line: &str) -> (String, Labels, &str) {
    let name_end = line.find(['{', ' ']).expect("a sample");
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect("unterminated labels");
            if c == '}' {
                break i;
            }
            if c == ',' {
                continue;
            }
            // label name up to '='
            let mut lname = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                lname.push(c);
            }
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "in {line}");
            let mut value = String::new();
            loop {
                let (_, c) = chars.next().expect("unterminated value");
                match c {
                    '"' => break,
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => panic!("bad escape in {line}"),
                    },
                    c => value.push(c),
                }
            }
            labels.push((lname, value));
        };
        rest = &r[end + 1..];
    }
    labels.sort();
    let value = rest.trim().split(' ').next().expect("a value");
    (name, labels, value)
}

/// What the SDK path gives for `snapshot`: the catalogue's observable instruments over a
/// cell holding it, read by opentelemetry-prometheus, encoded by the prometheus crate.
fn through_the_sdk(cell: &SnapshotCell, settings: &otel_gpu_receiver::config::Settings) -> String {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .unwrap();
    let provider = SdkMeterProvider::builder()
        .with_resource(telemetry::resource(settings))
        .with_reader(exporter)
        .build();
    telemetry::register_catalogue(
        &provider.meter_with_scope(telemetry::scope()),
        &settings.families,
        cell,
    );
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .unwrap();
    text
}

fn diff(ours: &Parsed, theirs: &Parsed) -> String {
    let mut msg = String::new();
    for (k, v) in &theirs.series {
        match ours.series.get(k) {
            None => msg += &format!("missing from ours: {k:?} = {v}\n"),
            Some(o) if o != v => msg += &format!("value differs: {k:?}: ours {o}, SDK {v}\n"),
            Some(_) => {}
        }
    }
    for k in ours
        .series
        .keys()
        .filter(|k| !theirs.series.contains_key(*k))
    {
        msg += &format!("only in ours: {k:?}\n");
    }
    msg.lines().take(40).collect::<Vec<_>>().join("\n")
}

fn assert_same(
    fixture: Fixture,
    snapshot: Snapshot,
    settings: &otel_gpu_receiver::config::Settings,
) {
    let cell = SnapshotCell::default();
    if matches!(fixture, Fixture::Pods { .. }) {
        // As with OTLP push on: attributes put in key order before anyone reads them.
        cell.sort_attributes();
    }
    // Subscribed before the store, as the agent does: the rendering happens in `store`.
    let ours_cell = exposition::publish(&cell, &telemetry::resource(settings), &telemetry::scope());
    cell.store(snapshot);
    let expo = ours_cell.load();
    let ours_text = std::str::from_utf8(expo.text()).unwrap().to_owned();
    let theirs_text = through_the_sdk(&cell, settings);
    let (ours, theirs) = (parse(&ours_text), parse(&theirs_text));
    let name = fixture.name();
    eprintln!(
        "{name}: {} series in {} families, {} bytes of text",
        ours.series.len(),
        ours.kind.len(),
        ours_text.len()
    );

    assert!(
        ours.duplicates.is_empty(),
        "{name}: duplicate series in ours: {:?}",
        ours.duplicates
    );
    assert!(
        theirs.duplicates.is_empty(),
        "{name}: duplicate series from the SDK: {:?}",
        theirs.duplicates
    );
    assert_eq!(ours.kind, theirs.kind, "{name}: # TYPE lines differ");
    assert_eq!(ours.help, theirs.help, "{name}: # HELP lines differ");
    assert!(
        ours.series == theirs.series,
        "{name}: the series differ ({} ours, {} SDK):\n{}",
        ours.series.len(),
        theirs.series.len(),
        diff(&ours, &theirs)
    );
    assert_eq!(expo.series(), ours.series.len(), "{name}: series count");
    assert_eq!(expo.skipped(), 0, "{name}: no value was dropped");

    // OpenMetrics carries the same series; counters' families lose `_total`; `# EOF` ends it.
    let om_text = std::str::from_utf8(expo.openmetrics()).unwrap();
    let om = parse(om_text);
    assert!(om.eof && om_text.ends_with("# EOF\n"), "{name}: no # EOF");
    assert!(
        om.series == ours.series,
        "{name}: OpenMetrics series differ"
    );
    for (family, kind) in &ours.kind {
        let om_family = match kind.as_str() {
            "counter" => family
                .strip_suffix("_total")
                .expect("a counter ends in _total"),
            _ => family,
        };
        assert_eq!(
            om.kind.get(om_family),
            Some(kind),
            "{name}: OpenMetrics TYPE of {family}"
        );
    }

    // The fixture is what it says it is.
    let has = |metric: &str, label: &str| {
        ours.series.keys().any(|(n, l)| {
            n == metric && (label.is_empty() || l.iter().any(|(k, v)| format!("{k}={v}") == label))
        })
    };
    assert!(
        has("target_info", "service_name=otel-gpu-receiver"),
        "{name}"
    );
    assert!(has("system_cpu_time_seconds_total", ""), "{name}");
    match fixture {
        Fixture::Host => assert!(
            ours.series.len() > 40,
            "{name}: {} series",
            ours.series.len()
        ),
        Fixture::Gpus8 => {
            assert!(
                ours.series.len() > 500,
                "{name}: {} series",
                ours.series.len()
            );
            assert!(has("hw_gpu_utilization_ratio", "gpu_index=7"), "{name}");
            assert!(
                has(
                    "process_gpu_memory_usage_bytes",
                    "process_executable_name=trainer3"
                ),
                "{name}"
            );
            assert!(has("nvidia_gpu_nvlink_io_bytes_total", ""), "{name}");
        }
        Fixture::Pods { per_process } => {
            assert!(
                has("process_gpu_memory_usage_bytes", "k8s_pod_name=a"),
                "{name}"
            );
            assert!(
                has("process_gpu_utilization_ratio", "k8s_pod_name=c"),
                "{name}"
            );
            assert!(
                has("nvidia_gpu_allocation_ratio", "k8s_pod_name=b"),
                "{name}"
            );
            assert_eq!(
                has(
                    "process_gpu_memory_usage_bytes",
                    "process_executable_name=trainer0"
                ),
                per_process,
                "{name}"
            );
        }
    }
}

#[test]
fn the_exposition_carries_the_sdk_and_opentelemetry_prometheus_series_on_every_fixture() {
    for fixture in Fixture::ALL {
        let scene = collect(fixture);
        assert!(
            scene.snapshot.uncatalogued().is_empty(),
            "{}: {:?}",
            fixture.name(),
            scene.snapshot.uncatalogued()
        );
        let export_fixtures::Scene {
            settings, snapshot, ..
        } = scene;
        assert_same(fixture, snapshot, &settings);
    }
}

#[test]
fn escaping_sanitising_and_label_collisions_match_opentelemetry_prometheus() {
    use opentelemetry::KeyValue;
    use otel_gpu_receiver::snapshot::Points;
    // Values that need escaping, an attribute the catalogue does not declare (the overflow
    // marker), two keys that sanitise to the same label name, and typed values.
    let mut p = Points::default();
    p.push(
        "system.filesystem.usage",
        vec![
            KeyValue::new("system.filesystem.state", "used"),
            KeyValue::new("system.device", "quote\" back\\slash\nnewline"),
            KeyValue::new("system.filesystem.mountpoint", "/mnt/ü"),
            KeyValue::new("system.filesystem.mode", "rw"),
            KeyValue::new("system.filesystem.type", "ext4"),
        ],
        42_i64,
    );
    p.push(
        "process.gpu.memory.usage",
        vec![KeyValue::new("otel.metric.overflow", true)],
        7_i64,
    );
    p.push(
        "otel_gpu_receiver.errors",
        vec![
            KeyValue::new("source", "gpu"),
            KeyValue::new("error.type", "timeout"),
            KeyValue::new("error_type", "collides"),
        ],
        3_i64,
    );
    p.push(
        "hw.gpu.utilization",
        vec![
            KeyValue::new("hw.id", "GPU-1"),
            KeyValue::new("gpu.index", 3_i64),
            KeyValue::new("hw.gpu.task", "general"),
        ],
        0.125,
    );
    p.push("system.uptime", vec![], 1.0e-7);
    p.push("otel_gpu_receiver.cycles", vec![], 1_u64 << 60);
    let settings = otel_gpu_receiver::config::Settings::default();
    assert_same_series(Snapshot::new(p), &settings);
}

/// The series comparison alone (no fixture expectations).
fn assert_same_series(snapshot: Snapshot, settings: &otel_gpu_receiver::config::Settings) {
    let cell = SnapshotCell::default();
    let ours_cell = exposition::publish(&cell, &telemetry::resource(settings), &telemetry::scope());
    cell.store(snapshot);
    let ours_text = std::str::from_utf8(ours_cell.load().text())
        .unwrap()
        .to_owned();
    let theirs_text = through_the_sdk(&cell, settings);
    let (ours, theirs) = (parse(&ours_text), parse(&theirs_text));
    assert_eq!(ours.kind, theirs.kind);
    assert_eq!(ours.help, theirs.help);
    assert!(
        ours.series == theirs.series,
        "series differ:\n{}\n--- ours\n{ours_text}\n--- SDK\n{theirs_text}",
        diff(&ours, &theirs)
    );
}
