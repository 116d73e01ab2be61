//! Prometheus names for OpenTelemetry metrics, as opentelemetry-prometheus 0.33
//! makes them: the metric name sanitised, its unit's suffix, label names
//! sanitised. The receiver's exposition and the pull endpoint's exemplars both
//! name series this way.

/// A metric name with every character outside `[a-zA-Z0-9_:]` replaced by `_`, and `_`
/// in front of a leading digit (opentelemetry-prometheus' `sanitize_name`).
pub fn sanitize_metric_name(s: &str) -> String {
    let mut prefix = "";
    let first_bad = s.char_indices().find(|&(i, c)| {
        if i == 0 && c.is_ascii_digit() {
            prefix = "_";
            true
        } else {
            !c.is_alphanumeric() && c != '_' && c != ':'
        }
    });
    let Some((at, _)) = first_bad else {
        return s.to_owned();
    };
    let (valid, rest) = s.split_at(at);
    let mut out = String::with_capacity(s.len() + prefix.len());
    out.push_str(prefix);
    out.push_str(valid);
    out.extend(rest.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// A label name: every character outside `[a-zA-Z0-9:]` becomes `_`
/// (opentelemetry-prometheus' `sanitize_prom_kv`; `hw.gpu.task` -> `hw_gpu_task`).
pub fn sanitize_label_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The name suffix of a UCUM unit (`By` -> `bytes`, `1` -> `ratio`, `m/s` ->
/// `meters_per_second`); `None` for units in braces and unknown units.
pub fn unit_suffix(unit: &str) -> Option<String> {
    if unit.is_empty() {
        return None;
    }
    if let Some(u) = unit_name(unit) {
        return Some(u.to_owned());
    }
    let (first, second) = unit.split_once('/')?;
    let per = per_unit_name(second)?;
    const NOT_BEFORE_PER: [&str; 8] = ["1", "d", "h", "min", "s", "ms", "us", "ns"];
    match unit_name(first) {
        Some(u) if !NOT_BEFORE_PER.contains(&first) => Some(format!("{u}_per_{per}")),
        _ => Some(format!("per_{per}")),
    }
}

fn unit_name(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" | "B" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" | "KB" => "kilobytes",
        "MBy" | "MB" => "megabytes",
        "GBy" | "GB" => "gigabytes",
        "TBy" | "TB" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "ratio",
        "%" => "percent",
        _ => return None,
    })
}

fn per_unit_name(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        _ => return None,
    })
}
