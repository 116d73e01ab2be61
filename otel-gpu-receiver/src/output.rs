//! `--once` output: a table for people, JSON for scripts and tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use opentelemetry::Value as AttrValue;

use crate::config::Format;
use crate::snapshot::{Snapshot, Value};

/// One row of `--format json`.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    /// Metric name.
    pub name: &'static str,
    /// UCUM unit.
    pub unit: &'static str,
    /// `Counter`, `UpDownCounter` or `Gauge`.
    pub instrument: &'static str,
    /// Series attributes.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The reading.
    pub value: serde_json::Value,
}

fn attr_json(v: &AttrValue) -> serde_json::Value {
    match v {
        AttrValue::Bool(b) => (*b).into(),
        AttrValue::I64(i) => (*i).into(),
        AttrValue::F64(f) => (*f).into(),
        other => other.as_str().into_owned().into(),
    }
}

/// The snapshot as rows, in catalogue order.
pub fn rows(snapshot: &Snapshot) -> Vec<Row> {
    snapshot
        .iter()
        .map(|(d, p)| Row {
            name: d.name,
            unit: d.unit,
            instrument: d.instrument.as_str(),
            attributes: p
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str().to_owned(), attr_json(&kv.value)))
                .collect(),
            value: match p.value {
                Value::Int(i) => i.into(),
                Value::Float(f) => f.into(),
            },
        })
        .collect()
}

/// Renders the snapshot in `format`.
pub fn render(snapshot: &Snapshot, format: Format) -> String {
    let rows = rows(snapshot);
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".to_owned());
            s.push('\n');
            s
        }
        Format::Table => table(&rows),
    }
}

fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let attrs = r
                .attributes
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let value = match &r.value {
                serde_json::Value::Number(n) if n.is_f64() => {
                    format!("{:.6}", n.as_f64().unwrap_or_default())
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_owned()
                }
                other => other.to_string(),
            };
            [
                r.name.to_owned(),
                r.unit.to_owned(),
                r.instrument.to_owned(),
                attrs,
                value,
            ]
        })
        .collect();
    let header = ["NAME", "UNIT", "INSTRUMENT", "ATTRIBUTES", "VALUE"].map(str::to_owned);
    let mut width = [0usize; 5];
    for row in std::iter::once(&header).chain(&cells) {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Points;
    use opentelemetry::KeyValue;

    #[test]
    fn json_rows_carry_unit_instrument_and_typed_attributes() {
        let mut p = Points::default();
        p.push(
            "system.cpu.time",
            vec![
                KeyValue::new("cpu.mode", "user"),
                KeyValue::new("cpu.logical_number", 3_i64),
            ],
            1.5,
        );
        let s = Snapshot::new(p);
        let v: serde_json::Value = serde_json::from_str(&render(&s, Format::Json)).unwrap();
        assert_eq!(v[0]["unit"], "s");
        assert_eq!(v[0]["instrument"], "Counter");
        assert_eq!(v[0]["attributes"]["cpu.logical_number"], 3);
        assert_eq!(v[0]["value"], 1.5);
    }

    #[test]
    fn the_table_has_a_header_and_one_line_per_series() {
        let mut p = Points::default();
        p.push("system.uptime", vec![], 12.25);
        let t = render(&Snapshot::new(p), Format::Table);
        let lines: Vec<_> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("system.uptime") && lines[1].ends_with("12.25"));
    }
}
