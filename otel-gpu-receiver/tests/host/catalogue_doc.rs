use std::collections::{BTreeMap, BTreeSet};

use otel_gpu_receiver::catalogue::{FROM_THE_FIRST_ERROR, WHERE_SUPPORTED};

use crate::common::once_json;

/// A row of the table in CATALOGUE.md.
#[derive(Debug)]
struct DocRow {
    instrument: String,
    unit: String,
    attributes: BTreeSet<String>,
    family: String,
    description: String,
}

fn doc_rows() -> BTreeMap<String, DocRow> {
    let doc = include_str!("../../CATALOGUE.md");
    let mut rows = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 6, "bad table row: {line}");
        let strip = |s: &str| s.trim_matches('`').to_owned();
        rows.insert(
            strip(cells[0]),
            DocRow {
                instrument: cells[1].to_owned(),
                unit: strip(cells[2]),
                attributes: cells[3]
                    .split(", ")
                    .filter(|s| !s.is_empty())
                    .map(strip)
                    .collect(),
                family: cells[4].to_owned(),
                description: cells[5].to_owned(),
            },
        );
    }
    assert!(rows.len() > 20, "CATALOGUE.md has too few rows");
    rows
}

#[test]
fn every_emitted_series_is_in_catalogue_md_with_its_unit_instrument_and_attributes() {
    let doc = doc_rows();
    for r in once_json(&[]) {
        let name = r["name"].as_str().unwrap();
        let row = doc
            .get(name)
            .unwrap_or_else(|| panic!("{name} is emitted but not in CATALOGUE.md"));
        assert_eq!(r["unit"], row.unit.as_str(), "unit of {name}");
        assert_eq!(
            r["instrument"],
            row.instrument.as_str(),
            "instrument of {name}"
        );
        let keys: BTreeSet<String> = r["attributes"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, row.attributes, "attributes of {name}");
    }
}

#[test]
fn every_catalogue_md_row_of_an_enabled_family_is_emitted() {
    let doc = doc_rows();
    let emitted: BTreeSet<String> = once_json(&[])
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    for (name, row) in &doc {
        // GPU rows need a GPU: tests/gpu_cli.rs checks them against the fake NVML.
        let optional = row.description.contains(WHERE_SUPPORTED)
            || row.description.contains(FROM_THE_FIRST_ERROR)
            || row.family == "gpu";
        if optional && !emitted.contains(name) {
            continue;
        }
        assert!(
            emitted.contains(name),
            "{name} ({} family) is in CATALOGUE.md but was not emitted",
            row.family
        );
    }
    // With a family disabled, its rows are absent and the rest still match.
    let without_disk: BTreeSet<String> = once_json(&["--disable", "disk"])
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    for (name, row) in &doc {
        assert_eq!(
            without_disk.contains(name),
            row.family != "disk" && emitted.contains(name),
            "{name} with --disable disk"
        );
    }
}
