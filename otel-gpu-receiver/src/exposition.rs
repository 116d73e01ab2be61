//! The Prometheus pull endpoint's body, rendered once per snapshot.
//!
//! A scrape used to run the whole SDK pipeline (collect, opentelemetry-prometheus'
//! conversion into `prometheus` protobuf structs, `gather`, the text encoder), which cost
//! more per series than node_exporter. The snapshot does not change between cycles, so
//! the first scrape of a snapshot renders it, straight from its points, and the other
//! scrapes of it clone the rendered [`Bytes`] (an agent nobody scrapes renders nothing):
//!
//! - each catalogue entry's Prometheus name, `# HELP`/`# TYPE` lines and label names are
//!   computed once ([`Layout`]), with exactly the names that opentelemetry-prometheus 0.33
//!   gives (`tests/exposition_golden.rs` holds it to them);
//! - numbers are written with `itoa`/`ryu`, label values are escaped in place, and the
//!   output buffer is sized from the previous rendering, so a rendering allocates a
//!   handful of times, not per series;
//! - the OpenMetrics body and the gzip copies are made on the first request that wants
//!   them and kept next to the text until the next snapshot (Prometheus asks for
//!   OpenMetrics and gzip on every scrape, so each is made at most once per cycle).
//!
//! Like the SDK, a non-finite value is not exported (the SDK's aggregators ignore NaN and
//! infinities). The collector already drops such readings and exports their count
//! (`otel_gpu_receiver.series.non_finite`); a snapshot built elsewhere that still has one
//! gets it skipped here, counted in [`Exposition::skipped`] and logged once.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use opentelemetry::{InstrumentationScope, Value as AttrValue};
use opentelemetry_sdk::Resource;

use crate::catalogue::{CATALOGUE, Instrument, MetricDesc, Number};
use crate::snapshot::{Point, Snapshot, Value};

/// `Content-Type` of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const TARGET_INFO: &str = "target_info";
const TARGET_INFO_HELP: &str = "Target metadata";

// ---------------------------------------------------------------------------------------
// Names: the OTLP -> Prometheus translation of opentelemetry-prometheus 0.33.1.
// ---------------------------------------------------------------------------------------

/// The Prometheus name of a catalogue entry: the name sanitised, the unit's suffix, and
/// `_total` for monotonic counters (`system.cpu.time` in `s` -> `system_cpu_time_seconds_total`).
pub fn prometheus_name(desc: &MetricDesc) -> String {
    let mut name = sanitize_metric_name(desc.name);
    if let Some(suffix) = unit_suffix(desc.unit) {
        name.push('_');
        name.push_str(&suffix);
    }
    if desc.instrument == Instrument::Counter {
        name.push_str("_total");
    }
    name
}

/// `# TYPE` of a catalogue entry: monotonic sums are counters, the rest gauges.
pub fn prometheus_type(desc: &MetricDesc) -> &'static str {
    match desc.instrument {
        Instrument::Counter => "counter",
        Instrument::UpDownCounter | Instrument::Gauge => "gauge",
    }
}

pub use otel_instrument::prometheus_names::{
    sanitize_label_name, sanitize_metric_name, unit_suffix,
};

// ---------------------------------------------------------------------------------------
// Escaping and numbers, written straight into the output buffer.
// ---------------------------------------------------------------------------------------

/// Appends `s` with `\`, `"` and newline escaped (label values; OpenMetrics HELP too).
fn push_escaped(out: &mut Vec<u8>, s: &str, quote: bool) {
    let b = s.as_bytes();
    // Nearly every value needs no escaping: check eight bytes at a time, then copy once.
    if !needs_escape(b, quote) {
        out.extend_from_slice(b);
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'"' if quote => b"\\\"",
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

/// True when `b` holds `\`, a newline, or (with `quote`) `"`: a word at a time, with the
/// classic "has a zero byte" test on the word XORed with each special byte repeated.
fn needs_escape(b: &[u8], quote: bool) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let has = |w: u64, c: u8| {
        let x = w ^ (ONES * u64::from(c));
        x.wrapping_sub(ONES) & !x & HIGH != 0
    };
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
        if has(w, b'\\') || has(w, b'\n') || (quote && has(w, b'"')) {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&c| c == b'\\' || c == b'\n' || (quote && c == b'"'))
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A finite float: integers below 2^53 without a fraction (as the `prometheus` crate's
/// encoder writes them), the rest as ryu's shortest round-trip form.
fn push_f64(out: &mut Vec<u8>, v: f64) {
    if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        push_i64(out, v as i64);
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    }
}

/// An attribute value as opentelemetry-prometheus writes it (`Value`'s `Display`), escaped.
fn push_attr_value(out: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::String(s) => push_escaped(out, s.as_str(), true),
        AttrValue::I64(i) => push_i64(out, *i),
        AttrValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        // Floats and arrays: rare on series; Display keeps them identical to the SDK path.
        other => push_escaped(out, &other.to_string(), true),
    }
}

// ---------------------------------------------------------------------------------------
// The layout: everything about the output that does not depend on the values.
// ---------------------------------------------------------------------------------------

/// One declared attribute key of a catalogue entry and its label name.
#[derive(Debug)]
struct Label {
    key: &'static str,
    name: Box<str>,
    /// Position when the entry's labels are sorted by (label name, key), the order that
    /// opentelemetry-prometheus writes them in.
    rank: u8,
}

#[derive(Debug)]
enum Body {
    /// A catalogue entry, rendered from the snapshot's points.
    Metric {
        desc: &'static MetricDesc,
        /// `name{`.
        open: Box<[u8]>,
        labels: Box<[Label]>,
    },
    /// `target_info`: the resource, rendered once.
    Static(Box<[u8]>),
}

#[derive(Debug)]
struct Family {
    /// `# HELP` and `# TYPE` for the Prometheus text format.
    text_header: Box<[u8]>,
    /// The same for OpenMetrics (a counter's family name has no `_total`).
    om_header: Box<[u8]>,
    body: Body,
}

/// What a rendering needs besides the snapshot: every family in name order (as
/// `prometheus::Registry::gather` sorts them), with its header and label names, and the
/// scope labels that close every series.
#[derive(Debug)]
pub struct Layout {
    families: Vec<Family>,
    /// `otel_scope_name="…",otel_scope_version="…"} `.
    close: Box<[u8]>,
}

fn header(name: &str, help: &str, kind: &str, openmetrics: bool) -> Box<[u8]> {
    let mut h = Vec::with_capacity(name.len() * 2 + help.len() + 24);
    if !help.is_empty() {
        h.extend_from_slice(b"# HELP ");
        h.extend_from_slice(name.as_bytes());
        h.push(b' ');
        push_escaped(&mut h, help, openmetrics);
        h.push(b'\n');
    }
    h.extend_from_slice(b"# TYPE ");
    h.extend_from_slice(name.as_bytes());
    h.push(b' ');
    h.extend_from_slice(kind.as_bytes());
    h.push(b'\n');
    h.into_boxed_slice()
}

/// `{k="v",…}` for `(label name, value)` pairs: sorted by label name, values of keys that
/// sanitise to the same name joined with `;` in key order (opentelemetry-prometheus'
/// `get_attrs`).
fn push_sorted_labels(out: &mut Vec<u8>, mut pairs: Vec<(String, &str, &AttrValue)>) {
    pairs.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
    let mut prev: Option<&str> = None;
    for (name, _, value) in &pairs {
        if prev == Some(name.as_str()) {
            out.push(b';');
        } else {
            if prev.is_some() {
                out.extend_from_slice(b"\",");
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"=\"");
        }
        push_attr_value(out, value);
        prev = Some(name);
    }
    if prev.is_some() {
        out.extend_from_slice(b"\",");
    }
}

impl Layout {
    /// The layout of every catalogue entry, `target_info` from `resource`, and the scope
    /// labels from `scope` (the meter's scope on the SDK path).
    pub fn new(resource: &Resource, scope: &InstrumentationScope) -> Self {
        let mut named: Vec<(String, Family)> = CATALOGUE
            .iter()
            .map(|desc| {
                let name = prometheus_name(desc);
                let kind = prometheus_type(desc);
                let om_name = match desc.instrument {
                    Instrument::Counter => name.strip_suffix("_total").unwrap_or(&name),
                    _ => &name,
                };
                let mut labels: Vec<Label> = desc
                    .attributes
                    .iter()
                    .map(|&key| Label {
                        key,
                        name: sanitize_label_name(key).into(),
                        rank: 0,
                    })
                    .collect();
                let mut order: Vec<usize> = (0..labels.len()).collect();
                order.sort_by(|&a, &b| {
                    (&*labels[a].name, labels[a].key).cmp(&(&*labels[b].name, labels[b].key))
                });
                for (rank, i) in order.into_iter().enumerate() {
                    labels[i].rank = u8::try_from(rank).unwrap_or(u8::MAX);
                }
                let family = Family {
                    text_header: header(&name, desc.description, kind, false),
                    om_header: header(om_name, desc.description, kind, true),
                    body: Body::Metric {
                        desc,
                        open: format!("{name}{{").into_bytes().into_boxed_slice(),
                        labels: labels.into_boxed_slice(),
                    },
                };
                (name, family)
            })
            .collect();

        let mut info = Vec::new();
        info.extend_from_slice(TARGET_INFO.as_bytes());
        info.push(b'{');
        let pairs: Vec<_> = resource
            .iter()
            .map(|(k, v)| (sanitize_label_name(k.as_str()), k.as_str(), v))
            .collect();
        push_sorted_labels(&mut info, pairs);
        if info.ends_with(b",") {
            info.pop();
        }
        info.extend_from_slice(b"} 1\n");
        if resource.is_empty() {
            info.clear();
        }
        named.push((
            TARGET_INFO.to_owned(),
            Family {
                text_header: header(TARGET_INFO, TARGET_INFO_HELP, "gauge", false),
                om_header: header(TARGET_INFO, TARGET_INFO_HELP, "gauge", true),
                body: Body::Static(info.into_boxed_slice()),
            },
        ));
        named.sort_by(|a, b| a.0.cmp(&b.0));

        let mut close = Vec::new();
        close.extend_from_slice(b"otel_scope_name=\"");
        push_escaped(&mut close, scope.name(), true);
        close.push(b'"');
        if let Some(v) = scope.version() {
            close.extend_from_slice(b",otel_scope_version=\"");
            push_escaped(&mut close, v, true);
            close.push(b'"');
        }
        if let Some(u) = scope.schema_url() {
            close.extend_from_slice(b",otel_scope_schema_url=\"");
            push_escaped(&mut close, u, true);
            close.push(b'"');
        }
        close.extend_from_slice(b"} ");
        Self {
            families: named.into_iter().map(|(_, f)| f).collect(),
            close: close.into_boxed_slice(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendering.
// ---------------------------------------------------------------------------------------

/// Renders snapshots. Lives on the collection thread; keeps its scratch space and label
/// name cache between cycles.
#[derive(Debug)]
pub struct Renderer {
    layout: Arc<Layout>,
    /// Label names of attribute keys that a catalogue entry does not declare (such as the
    /// overflow marker), sanitised once.
    undeclared: HashMap<Box<str>, Box<str>>,
    /// (rank, label index, attribute index) of the series being written.
    order: Vec<(u8, u8, u16)>,
    /// Per family, the label index of the attribute at each position of the last series.
    /// A family's points list their attributes in the same order, so the next series
    /// usually finds each key with one comparison (by address when it is the same
    /// `&'static str`) instead of a search.
    last_keys: Vec<Vec<u8>>,
    /// Size of the last rendering, to size the next buffer in one allocation.
    last_len: usize,
    warned: bool,
}

/// The bytes of one family's series in [`Exposition::text`], to derive OpenMetrics.
#[derive(Debug, Clone, Copy)]
struct Span {
    family: u32,
    start: u32,
    end: u32,
}

impl Renderer {
    /// A renderer for the agent's resource and meter scope.
    pub fn new(resource: &Resource, scope: &InstrumentationScope) -> Self {
        Self {
            layout: Arc::new(Layout::new(resource, scope)),
            undeclared: HashMap::new(),
            order: Vec::with_capacity(16),
            last_keys: Vec::new(),
            last_len: 0,
            warned: false,
        }
    }

    /// Renders `snapshot` as Prometheus text.
    pub fn render(&mut self, snapshot: &Snapshot) -> Exposition {
        let layout = self.layout.clone();
        let mut out = Vec::with_capacity(self.last_len + self.last_len / 8 + 4096);
        let mut spans = Vec::with_capacity(layout.families.len());
        let (mut series, mut skipped) = (0, 0);
        self.last_keys.resize_with(layout.families.len(), Vec::new);
        for (i, family) in layout.families.iter().enumerate() {
            let head = out.len();
            out.extend_from_slice(&family.text_header);
            let start = out.len();
            match &family.body {
                Body::Static(bytes) => {
                    out.extend_from_slice(bytes);
                    series += usize::from(!bytes.is_empty());
                }
                Body::Metric { desc, open, labels } => {
                    for p in snapshot.points(desc.name) {
                        if self.write_series(&mut out, i, desc, (open, labels, &layout.close), p) {
                            series += 1;
                        } else {
                            skipped += 1;
                        }
                    }
                }
            }
            if out.len() == start {
                out.truncate(head); // no series: no family, as on the SDK path
                continue;
            }
            spans.push(Span {
                family: i as u32,
                start: start as u32,
                end: out.len() as u32,
            });
        }
        if skipped > 0 && !self.warned {
            self.warned = true;
            tracing::warn!(
                skipped,
                "non-finite values are not exported, as on the OTLP path (counted in \
                 each rendering; logged once)"
            );
        }
        self.last_len = out.len();
        Exposition {
            text: Bytes::from(out),
            spans: spans.into_boxed_slice(),
            layout,
            series,
            skipped,
            openmetrics: OnceLock::new(),
            gzip: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// Writes one series line; false (and nothing written) when the value is not finite.
    fn write_series(
        &mut self,
        out: &mut Vec<u8>,
        family: usize,
        desc: &MetricDesc,
        (open, labels, close): (&[u8], &[Label], &[u8]),
        p: &Point,
    ) -> bool {
        // The values the SDK's instruments observe (telemetry::register).
        let number = match desc.number {
            Number::Int if desc.instrument == Instrument::Counter => {
                Value::Int(p.value.as_i64().max(0))
            }
            Number::Int => Value::Int(p.value.as_i64()),
            Number::Float => {
                let f = p.value.as_f64();
                if !f.is_finite() {
                    return false;
                }
                Value::Float(f)
            }
        };
        out.extend_from_slice(open);
        self.order.clear();
        let last = &mut self.last_keys[family];
        let mut declared = true;
        for (i, kv) in p.attributes.iter().enumerate() {
            let key = kv.key.as_str();
            let is = |l: &Label| {
                (l.key.as_ptr() == key.as_ptr() && l.key.len() == key.len()) || l.key == key
            };
            let at = match last.get(i) {
                Some(&at) if labels.get(usize::from(at)).is_some_and(is) => Some(usize::from(at)),
                _ => {
                    let found = labels.iter().position(is);
                    if let Some(at) = found {
                        last.resize(last.len().max(i + 1), u8::MAX);
                        last[i] = at as u8;
                    }
                    found
                }
            };
            match at {
                Some(at) => self.order.push((
                    labels[at].rank,
                    at as u8,
                    u16::try_from(i).unwrap_or(u16::MAX),
                )),
                None => declared = false,
            }
        }
        if declared {
            // At most a dozen labels, nearly always in order already.
            self.order.sort_unstable();
            let mut prev: Option<&str> = None;
            for &(_, at, i) in &self.order {
                let name: &str = &labels[usize::from(at)].name;
                if prev == Some(name) {
                    out.push(b';');
                } else {
                    if prev.is_some() {
                        out.extend_from_slice(b"\",");
                    }
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"=\"");
                }
                push_attr_value(out, &p.attributes[usize::from(i)].value);
                prev = Some(name);
            }
            if prev.is_some() {
                out.extend_from_slice(b"\",");
            }
        } else {
            let pairs = p
                .attributes
                .iter()
                .map(|kv| {
                    let key = kv.key.as_str();
                    let name = match self.undeclared.get(key) {
                        Some(n) => n.to_string(),
                        None => {
                            let n = sanitize_label_name(key);
                            self.undeclared.insert(key.into(), n.clone().into());
                            n
                        }
                    };
                    (name, key, &kv.value)
                })
                .collect();
            push_sorted_labels(out, pairs);
        }
        out.extend_from_slice(close);
        match number {
            Value::Int(i) => push_i64(out, i),
            Value::Float(f) => push_f64(out, f),
        }
        out.push(b'\n');
        true
    }
}

// ---------------------------------------------------------------------------------------
// One rendering and the cell that holds the latest.
// ---------------------------------------------------------------------------------------

/// The exposition formats served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4.
    Text,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

/// One snapshot rendered: the text, and the OpenMetrics and gzip forms once asked for.
#[derive(Debug)]
pub struct Exposition {
    text: Bytes,
    spans: Box<[Span]>,
    layout: Arc<Layout>,
    series: usize,
    skipped: usize,
    openmetrics: OnceLock<Bytes>,
    /// gzip of [text, OpenMetrics].
    gzip: [OnceLock<Bytes>; 2],
}

impl Exposition {
    /// The Prometheus text format.
    pub fn text(&self) -> &Bytes {
        &self.text
    }

    /// Series written (`target_info` included).
    pub fn series(&self) -> usize {
        self.series
    }

    /// Points not written because their value was NaN or infinite (the SDK drops them too).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// OpenMetrics text: the same series under OpenMetrics headers, then `# EOF`.
    /// Made on the first call, from the text, with one copy.
    pub fn openmetrics(&self) -> &Bytes {
        self.openmetrics.get_or_init(|| {
            let mut out = Vec::with_capacity(self.text.len() + 1024);
            for s in self.spans.iter() {
                out.extend_from_slice(&self.layout.families[s.family as usize].om_header);
                out.extend_from_slice(&self.text[s.start as usize..s.end as usize]);
            }
            out.extend_from_slice(b"# EOF\n");
            Bytes::from(out)
        })
    }

    /// The body in `format`, gzipped when `gzip` (compressed once per snapshot and format).
    pub fn body(&self, format: Format, gzip: bool) -> Bytes {
        let plain = match format {
            Format::Text => &self.text,
            Format::OpenMetrics => self.openmetrics(),
        };
        if !gzip {
            return plain.clone();
        }
        self.gzip[format as usize]
            .get_or_init(|| compress(plain))
            .clone()
    }
}

/// gzip at the fastest level: the text is repetitive (about 12:1 even so) and this runs
/// once per cycle on the runtime's thread.
fn compress(plain: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 8 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(plain);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// The rendering of the latest snapshot, made on the first scrape that asks for it:
/// an agent that nobody scrapes renders nothing, and one scraped several times per
/// cycle renders once. The lock on the renderer is held only while rendering (a
/// scrape of a new snapshot); the other scrapes clone an `Arc`.
#[derive(Debug, Clone)]
pub struct ExpositionCell(Arc<Lazy>);

#[derive(Debug)]
struct Lazy {
    snapshots: crate::snapshot::SnapshotCell,
    renderer: Mutex<Renderer>,
    /// The last rendering and the snapshot it was made from (weak, so it keeps no
    /// old readings alive; its allocation stays, so the address is never reused).
    latest: RwLock<Option<(Weak<Snapshot>, Arc<Exposition>)>>,
    renders: AtomicU64,
}

impl ExpositionCell {
    /// Renders the snapshots of `snapshots` with `renderer`, lazily.
    pub fn new(snapshots: crate::snapshot::SnapshotCell, renderer: Renderer) -> Self {
        Self(Arc::new(Lazy {
            snapshots,
            renderer: Mutex::new(renderer),
            latest: RwLock::new(None),
            renders: AtomicU64::new(0),
        }))
    }

    fn cached(&self, snapshot: &Arc<Snapshot>) -> Option<Arc<Exposition>> {
        let latest = self.0.latest.read().unwrap_or_else(|e| e.into_inner());
        latest
            .as_ref()
            .filter(|(from, _)| std::ptr::eq(from.as_ptr(), Arc::as_ptr(snapshot)))
            .map(|(_, e)| e.clone())
    }

    /// The rendering of the latest snapshot, rendered now if this is its first scrape.
    pub fn load(&self) -> Arc<Exposition> {
        let snapshot = self.0.snapshots.load();
        if let Some(e) = self.cached(&snapshot) {
            return e;
        }
        let mut renderer = self.0.renderer.lock().unwrap_or_else(|e| e.into_inner());
        // Another scrape may have rendered it while this one waited.
        if let Some(e) = self.cached(&snapshot) {
            return e;
        }
        let e = Arc::new(renderer.render(&snapshot));
        self.0.renders.fetch_add(1, Ordering::Relaxed);
        *self.0.latest.write().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::downgrade(&snapshot), e.clone()));
        e
    }

    /// Renderings made so far.
    pub fn renders(&self) -> u64 {
        self.0.renders.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------
// HTTP: content negotiation and the response.
// ---------------------------------------------------------------------------------------

/// One `type;param=…;q=…` element of an Accept or Accept-Encoding header; `None` when
/// it does not parse (then the whole header is ignored).
fn element(e: &str) -> Option<(String, f32, Option<&str>)> {
    let mut parts = e.split(';');
    let name = parts.next()?.trim().to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    let (mut q, mut version) = (1.0_f32, None);
    for p in parts {
        let (k, v) = p.split_once('=')?;
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        if k.eq_ignore_ascii_case("q") {
            q = v.parse().ok().filter(|q: &f32| (0.0..=1.0).contains(q))?;
        } else if k.eq_ignore_ascii_case("version") {
            version = Some(v);
        }
    }
    Some((name, q, version))
}

/// The format for an `Accept` header: OpenMetrics 1.0.0 when the client prefers it
/// (Prometheus does), the text format otherwise, and for a missing or malformed header.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut om, mut text) = (0.0_f32, 0.0_f32);
    for e in accept.split(',').filter(|e| !e.trim().is_empty()) {
        let Some((name, q, version)) = element(e) else {
            return Format::Text;
        };
        match name.as_str() {
            "application/openmetrics-text" if matches!(version, None | Some("1.0.0")) => {
                om = om.max(q);
            }
            "text/plain" if matches!(version, None | Some("0.0.4")) => text = text.max(q),
            "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om > text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// True when an `Accept-Encoding` header accepts gzip (explicitly or by `*`) with q > 0.
/// A malformed header means identity.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(h) = accept_encoding else {
        return false;
    };
    let (mut gzip, mut star) = (None, None);
    for e in h.split(',').filter(|e| !e.trim().is_empty()) {
        let Some((name, q, _)) = element(e) else {
            return false;
        };
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => star = Some(q),
            _ => {}
        }
    }
    gzip.or(star).is_some_and(|q| q > 0.0)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `/metrics` response for `request` headers: the latest rendering in the negotiated
/// format, gzipped when accepted. Never waits on collection.
pub fn response(e: &Exposition, request: &HeaderMap) -> Response {
    let format = negotiate(header_str(request, header::ACCEPT));
    let gzip = accepts_gzip(header_str(request, header::ACCEPT_ENCODING));
    let content_type = match format {
        Format::Text => TEXT_CONTENT_TYPE,
        Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
    };
    let body = e.body(format, gzip);
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    (headers, body).into_response()
}

/// The exposition of the snapshots stored in `cell`, each rendered on its first
/// scrape ([`ExpositionCell`]).
pub fn publish(
    cell: &crate::snapshot::SnapshotCell,
    resource: &Resource,
    scope: &InstrumentationScope,
) -> ExpositionCell {
    ExpositionCell::new(cell.clone(), Renderer::new(resource, scope))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Points;
    use opentelemetry::KeyValue;

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("otel-gpu-receiver")
            .with_version("0.1.0")
            .build()
    }

    fn render(p: Points) -> Exposition {
        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "otel-gpu-receiver")])
            .build();
        Renderer::new(&resource, &scope()).render(&Snapshot::new(p))
    }

    #[test]
    fn names_follow_the_otlp_to_prometheus_translation() {
        let name = |n: &str| prometheus_name(crate::catalogue::find(n).unwrap());
        assert_eq!(name("system.cpu.time"), "system_cpu_time_seconds_total");
        assert_eq!(
            name("system.cpu.utilization"),
            "system_cpu_utilization_ratio"
        );
        assert_eq!(name("system.memory.usage"), "system_memory_usage_bytes");
        assert_eq!(name("hw.power"), "hw_power_watts");
        assert_eq!(name("hw.temperature"), "hw_temperature_celsius");
        assert_eq!(name("hw.energy"), "hw_energy_joules_total");
        assert_eq!(name("system.network.errors"), "system_network_errors_total");
        assert_eq!(
            name("system.cpu.load_average.1m"),
            "system_cpu_load_average_1m"
        );
        assert_eq!(sanitize_metric_name("1a.b"), "_1a_b");
        assert_eq!(sanitize_label_name("hw.gpu.task"), "hw_gpu_task");
        assert_eq!(unit_suffix("m/s").as_deref(), Some("meters_per_second"));
        assert_eq!(unit_suffix("1/y").as_deref(), Some("per_year"));
        assert_eq!(unit_suffix("{packet}"), None);
    }

    #[test]
    fn catalogue_entries_have_distinct_prometheus_names_and_no_reserved_labels() {
        let mut names: Vec<String> = CATALOGUE.iter().map(prometheus_name).collect();
        names.push(TARGET_INFO.into());
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            n,
            "two catalogue entries translate to one name"
        );
        for d in CATALOGUE {
            for a in d.attributes {
                assert!(!sanitize_label_name(a).starts_with("otel_scope_"), "{a}");
            }
        }
    }

    #[test]
    fn a_series_has_sorted_escaped_labels_then_the_scope() {
        let mut p = Points::default();
        p.push(
            "system.filesystem.limit",
            vec![
                KeyValue::new("system.filesystem.type", "ext4"),
                KeyValue::new("system.device", "a\"b\\c\nd"),
                KeyValue::new("system.filesystem.mountpoint", "/"),
                KeyValue::new("system.filesystem.mode", "rw"),
            ],
            1_i64 << 40,
        );
        let text = String::from_utf8(render(p).text().to_vec()).unwrap();
        assert!(
            text.contains(
                "system_filesystem_limit_bytes{system_device=\"a\\\"b\\\\c\\nd\",\
                 system_filesystem_mode=\"rw\",system_filesystem_mountpoint=\"/\",\
                 system_filesystem_type=\"ext4\",otel_scope_name=\"otel-gpu-receiver\",\
                 otel_scope_version=\"0.1.0\"} 1099511627776\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE system_filesystem_limit_bytes gauge\n"));
        assert!(text.contains("target_info{service_name=\"otel-gpu-receiver\"} 1\n"));
    }

    #[test]
    fn numbers_are_written_as_the_sdk_observes_them() {
        let mut p = Points::default();
        p.push("system.uptime", vec![], 12.5);
        p.push("otel_gpu_receiver.cycles", vec![], -3_i64); // a counter is clamped at 0
        p.push("otel_gpu_receiver.cycle.duration", vec![], f64::NAN); // dropped, as by the SDK
        p.push("system.cpu.logical.count", vec![], Value::Float(3.9)); // an Int entry truncates
        let e = render(p);
        let text = String::from_utf8(e.text().to_vec()).unwrap();
        assert!(
            text.contains("system_uptime_seconds{otel_scope_name"),
            "{text}"
        );
        assert!(text.contains("} 12.5\n"));
        assert!(text.contains("otel_gpu_receiver_cycles_total{otel_scope_name=\"otel-gpu-receiver\",otel_scope_version=\"0.1.0\"} 0\n"));
        assert!(text.contains("system_cpu_logical_count{otel_scope_name=\"otel-gpu-receiver\",otel_scope_version=\"0.1.0\"} 3\n"));
        assert!(!text.contains("cycle_duration"), "{text}");
        assert_eq!(e.skipped(), 1);
        assert_eq!(e.series(), 4); // three points and target_info
        let mut b = Vec::new();
        for v in [0.1, 1e21, -0.0, 5.0, 1e-7, 123456.789] {
            b.clear();
            push_f64(&mut b, v);
            assert_eq!(std::str::from_utf8(&b).unwrap().parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let mut p = Points::default();
        p.push("otel_gpu_receiver.cycles", vec![], 7_u64);
        p.push("system.uptime", vec![], 1.0);
        let e = render(p);
        let om = String::from_utf8(e.openmetrics().to_vec()).unwrap();
        assert!(
            om.contains("# TYPE otel_gpu_receiver_cycles counter\n"),
            "{om}"
        );
        assert!(om.contains("\notel_gpu_receiver_cycles_total{"), "{om}");
        assert!(om.contains("# TYPE system_uptime_seconds gauge\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        let text = String::from_utf8(e.text().to_vec()).unwrap();
        assert!(text.contains("# TYPE otel_gpu_receiver_cycles_total counter\n"));
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn gzip_is_made_once_and_decodes_to_the_text() {
        use std::io::Read as _;
        let mut p = Points::default();
        p.push("system.uptime", vec![], 1.0);
        let e = render(p);
        let z = e.body(Format::Text, true);
        assert_eq!(z.as_ptr(), e.body(Format::Text, true).as_ptr());
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, e.text().to_vec());
        assert_eq!(e.body(Format::Text, false).as_ptr(), e.text().as_ptr());
    }

    #[test]
    fn accept_headers_choose_openmetrics_only_when_preferred() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=2.0.0")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
        // Malformed: text.
        for bad in [
            "application/openmetrics-text;q=abc",
            "application/openmetrics-text;q=2",
            "application/openmetrics-text;garbage",
            ";;;",
        ] {
            assert_eq!(negotiate(Some(bad)), Format::Text, "{bad}");
        }
    }

    #[test]
    fn the_word_at_a_time_escape_check_finds_every_special_byte_at_every_position() {
        for len in 0..20 {
            for at in 0..len {
                for (c, quote, found) in [
                    (b'\\', false, true),
                    (b'\n', false, true),
                    (b'"', true, true),
                    (b'"', false, false),
                    (b'a', true, false),
                    (0xFF, true, false),
                ] {
                    let mut v = vec![b'x'; len];
                    v[at] = c;
                    assert_eq!(needs_escape(&v, quote), found, "{v:?}");
                }
            }
        }
    }

    #[test]
    fn gzip_only_when_the_client_accepts_it() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(None));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=0, *")));
        assert!(!accepts_gzip(Some("gzip;q=x")));
    }

    #[test]
    fn a_snapshot_is_rendered_on_its_first_scrape_and_only_once() {
        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "otel-gpu-receiver")])
            .build();
        let cell = crate::snapshot::SnapshotCell::default();
        let expo = publish(&cell, &resource, &scope());
        let snapshot = |v: u64| {
            let mut p = Points::default();
            p.push("otel_gpu_receiver.cycles", vec![], v);
            Snapshot::new(p)
        };
        // Cycles without a scrape render nothing.
        for v in 0..5 {
            cell.store(snapshot(v));
        }
        assert_eq!(expo.renders(), 0);
        let cycles = |e: &Exposition| {
            std::str::from_utf8(e.text())
                .unwrap()
                .lines()
                .find(|l| l.starts_with("otel_gpu_receiver_cycles_total"))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        let first = expo.load();
        assert_eq!(cycles(&first).as_deref(), Some("4"), "the latest snapshot");
        let again = expo.load();
        assert!(Arc::ptr_eq(&first, &again), "a second scrape re-rendered");
        assert_eq!(expo.renders(), 1);
        cell.store(snapshot(5));
        assert_eq!(cycles(&expo.load()).as_deref(), Some("5"));
        assert_eq!(expo.renders(), 2);
    }
}
