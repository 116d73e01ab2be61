use std::collections::BTreeSet;

use otel_gpu_receiver::catalogue::{self, Family, Origin};

use crate::common::{once_json, run};

fn families_in(rows: &[serde_json::Value]) -> BTreeSet<Family> {
    rows.iter()
        .filter_map(|r| catalogue::find(r["name"].as_str()?))
        .filter_map(|d| match d.origin {
            Origin::Host(f) => Some(f),
            Origin::SelfMonitoring => None,
        })
        .collect()
}

#[test]
fn once_json_parses_and_contains_every_enabled_family() {
    let rows = once_json(&[]);
    for r in &rows {
        assert!(r["name"].is_string() && r["unit"].is_string(), "{r}");
        assert!(
            r["instrument"].is_string() && r["attributes"].is_object(),
            "{r}"
        );
        assert!(r["value"].is_number(), "{r}");
    }
    let seen = families_in(&rows);
    let all: BTreeSet<Family> = Family::ALL.into_iter().collect();
    assert_eq!(seen, all, "families missing from --once output");
    // No GPU on this machine (tests/gpu_cli.rs covers the gpu family with the fake NVML):
    // the gpu family reports only its own state, which says why.
    let gpu: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| catalogue::find(n).is_some_and(|d| d.origin == Origin::Host(Family::Gpu)))
        .collect();
    assert!(
        gpu.iter().all(|n| n.starts_with("otel_gpu_receiver.")),
        "{gpu:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r["name"] == "otel_gpu_receiver.cycle.duration"),
        "self-monitoring missing"
    );
}

#[test]
fn once_reports_only_the_enabled_families() {
    let rows = once_json(&["--families", "cpu,memory,load", "--disable", "load"]);
    let seen = families_in(&rows);
    assert_eq!(seen, BTreeSet::from([Family::Cpu, Family::Memory]));
}

#[test]
fn once_prints_a_table_by_default() {
    let out = run(&["--once", "--no-otlp", "--families", "memory"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("NAME"));
    assert!(text.contains("system.memory.usage"), "{text}");
}
