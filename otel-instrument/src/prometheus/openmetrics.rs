//! OpenMetrics 1.0 text for the pull endpoint, from the same metric families
//! as the plain text format, with exemplars on the buckets of
//! `function_calls_duration_seconds` and of `histogram!` families.
//!
//! Prometheus asks for OpenMetrics first when it scrapes, and only OpenMetrics
//! carries exemplars. Names and values are the plain format's; what changes is
//! the framing: a counter's family is named without `_total` (its samples keep
//! it), untyped families are `unknown`, and the text ends with `# EOF`.

use std::fmt::Write as _;

use prometheus::proto::{MetricFamily, MetricType};

use crate::exemplars::{Exemplar, Latest, PullSeries, latest, latest_points};

/// `Content-Type` of what [`encode`] writes.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The family whose buckets carry exemplars.
const DURATION: &str = "function_calls_duration_seconds";

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus does first).
pub(crate) fn wanted(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let q_zero = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        })
    })
}

/// The families as OpenMetrics text.
pub(crate) fn encode(families: &[MetricFamily]) -> String {
    let exemplars = latest();
    let points = latest_points();
    let mut out = String::with_capacity(4096);
    for mf in families {
        let name = mf.name();
        let (family, kind) = match mf.get_field_type() {
            MetricType::COUNTER => match name.strip_suffix("_total") {
                Some(base) => (base, "counter"),
                None => (name, "unknown"),
            },
            MetricType::GAUGE => (name, "gauge"),
            MetricType::HISTOGRAM => (name, "histogram"),
            MetricType::SUMMARY => (name, "summary"),
            MetricType::UNTYPED => (name, "unknown"),
        };
        if !mf.help().is_empty() {
            let _ = writeln!(out, "# HELP {family} {}", escape(mf.help(), false));
        }
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for m in mf.get_metric() {
            let labels: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            match mf.get_field_type() {
                MetricType::COUNTER => {
                    sample(
                        &mut out,
                        name,
                        "",
                        &labels,
                        None,
                        m.get_counter().get_value(),
                        None,
                    );
                }
                MetricType::GAUGE => {
                    sample(
                        &mut out,
                        name,
                        "",
                        &labels,
                        None,
                        m.get_gauge().get_value(),
                        None,
                    );
                }
                // opentelemetry-prometheus makes no untyped families; the
                // accessor is deprecated with the protobuf model.
                #[allow(deprecated)]
                MetricType::UNTYPED => {
                    sample(
                        &mut out,
                        name,
                        "",
                        &labels,
                        None,
                        m.get_untyped().get_value(),
                        None,
                    );
                }
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let placed;
                    let slots = if name == DURATION {
                        series(&exemplars, &labels)
                    } else {
                        let bounds: Vec<f64> =
                            h.get_bucket().iter().map(|b| b.upper_bound()).collect();
                        placed = point_series(&points, name, &labels, &bounds);
                        placed.as_deref()
                    };
                    let mut inf_seen = false;
                    for (i, b) in h.get_bucket().iter().enumerate() {
                        let le = b.upper_bound();
                        inf_seen |= le.is_infinite() && le > 0.0;
                        let exemplar = slots.and_then(|s| s.get(i).copied().flatten());
                        sample(
                            &mut out,
                            name,
                            "_bucket",
                            &labels,
                            Some(&number(le)),
                            b.cumulative_count() as f64,
                            exemplar,
                        );
                    }
                    if !inf_seen {
                        let i = h.get_bucket().len();
                        let exemplar = slots.and_then(|s| s.get(i).copied().flatten());
                        sample(
                            &mut out,
                            name,
                            "_bucket",
                            &labels,
                            Some("+Inf"),
                            h.get_sample_count() as f64,
                            exemplar,
                        );
                    }
                    sample(
                        &mut out,
                        name,
                        "_sum",
                        &labels,
                        None,
                        h.get_sample_sum(),
                        None,
                    );
                    sample(
                        &mut out,
                        name,
                        "_count",
                        &labels,
                        None,
                        h.get_sample_count() as f64,
                        None,
                    );
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        let mut with_q = labels.clone();
                        let quantile = number(q.quantile());
                        with_q.push(("quantile", &quantile));
                        sample(&mut out, name, "", &with_q, None, q.value(), None);
                    }
                    sample(&mut out, name, "_sum", &labels, None, s.sample_sum(), None);
                    sample(
                        &mut out,
                        name,
                        "_count",
                        &labels,
                        None,
                        s.sample_count() as f64,
                        None,
                    );
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// The exemplars of the `histogram!` series `family` with these labels, one
/// per bucket of `bounds` (the latest), and one past them for `+Inf`.
fn point_series(
    points: &[PullSeries],
    family: &str,
    labels: &[(&str, &str)],
    bounds: &[f64],
) -> Option<Vec<Option<Exemplar>>> {
    let mut own: Vec<(&str, &str)> = labels
        .iter()
        .copied()
        .filter(|(k, _)| !k.starts_with("otel_scope_"))
        .collect();
    own.sort_unstable();
    let series = points.iter().find(|s| {
        s.family == family
            && s.labels.len() == own.len()
            && s.labels
                .iter()
                .zip(&own)
                .all(|((k, v), (k2, v2))| k == k2 && v == v2)
    })?;
    let mut slots: Vec<Option<Exemplar>> = vec![None; bounds.len() + 1];
    for e in &series.latest {
        let i = bounds.partition_point(|b| *b < e.value);
        if slots[i].is_none_or(|kept| kept.time_unix_nano < e.time_unix_nano) {
            slots[i] = Some(*e);
        }
    }
    Some(slots)
}

/// The exemplar slots of the duration series with these labels.
fn series<'a>(
    exemplars: &'a Latest,
    labels: &[(&str, &str)],
) -> Option<&'a [Option<crate::exemplars::Exemplar>]> {
    let get = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let key = (
        get("function")?.to_owned(),
        get("module")?.to_owned(),
        get("result")?.to_owned(),
    );
    exemplars.get(&key).map(Vec::as_slice)
}

#[allow(clippy::too_many_arguments)]
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    le: Option<&str>,
    value: f64,
    exemplar: Option<crate::exemplars::Exemplar>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape(v, true));
        }
        out.push('}');
    }
    let _ = write!(out, " {}", number(value));
    if let Some(e) = exemplar {
        let _ = write!(
            out,
            " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}.{:09}",
            hex(&e.trace_id),
            hex(&e.span_id),
            number(e.value),
            e.time_unix_nano / 1_000_000_000,
            e.time_unix_nano % 1_000_000_000
        );
    }
    out.push('\n');
}

/// A number as OpenMetrics writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Escapes `\`, newline and (in label values) `"`.
fn escape(v: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    if !(v.contains(['\\', '\n']) || quote && v.contains('"')) {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' if quote => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    std::borrow::Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_header_gets_openmetrics_and_others_text() {
        // What Prometheus 2.42 sends.
        assert!(wanted(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wanted(Some("text/plain;version=0.0.4")));
        assert!(!wanted(Some("application/openmetrics-text;q=0")));
        assert!(!wanted(None));
    }

    #[test]
    fn escaping_and_numbers_follow_openmetrics() {
        assert_eq!(escape("a\"b\\c\nd", true), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("a\"b", false), "a\"b");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(3.0), "3");
    }
}
