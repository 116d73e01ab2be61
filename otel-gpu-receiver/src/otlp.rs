//! The OTLP request, encoded straight from the snapshot.
//!
//! The SDK path (observable instruments over the snapshot, collect, conversion to
//! opentelemetry-proto structs, prost encoding) cost 1.74 ms per export on the 8-GPU
//! fixture, most of it hashing attribute sets into the SDK's maps. The snapshot is
//! already what the collector needs to see, so [`Encoder`] writes the protobuf bytes of
//! an `ExportMetricsServiceRequest` itself:
//!
//! - the resource, the scope and each catalogue entry's descriptor (name, description,
//!   unit) are encoded once;
//! - each series' attributes are encoded once, when the series is first seen, and kept
//!   with its start time; an export writes per point only those cached bytes, two
//!   timestamps and the value. The cached bytes are also what a point's attributes are
//!   matched against: the encoder keeps no second copy of them as `KeyValue`s;
//! - the metrics are written straight into the request's buffer, sized from the
//!   previous export, after a gap that the resource and scope fill in at the end; the
//!   encoder keeps no buffer the size of a request between exports (the agent's
//!   resident memory is the point of a small agent: `BENCHMARKS.md`).
//!
//! It keeps the SDK's contract, which `tests/otlp_golden.rs` holds it to: the same
//! metrics with the same names, units, descriptions, kinds and attributes; cumulative
//! temporality by default, with a stable `start_time_unix_nano` per series (the time it
//! was first seen, moved when a counter goes backwards, i.e. the source reset); delta
//! when `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` asks for it (monotonic
//! counters only, as the SDK does for asynchronous instruments); and the SDK's
//! cardinality limit: an instrument's attributed series beyond its limit fold into one
//! series `otel.metric.overflow=true` whose value is the last folded one (the SDK's
//! observable instruments assign, they do not add), counted by the collector in
//! `otel_gpu_receiver.series.overflow`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::{InstrumentationScope, KeyValue, Value as AttrValue};
use opentelemetry_sdk::Resource;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::cardinality::Limits;
use crate::catalogue::{CATALOGUE, Family, Instrument, MetricDesc, Number, Origin};
use crate::names;
use crate::snapshot::{Snapshot, Value};

/// Which temporality the sums are exported with
/// (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Temporality {
    /// Every sum cumulative. The default: an outage loses no counts.
    #[default]
    Cumulative,
    /// Monotonic counters as deltas; up-down counters stay cumulative (the spec's
    /// `delta` preference).
    Delta,
    /// `lowmemory`: the same as cumulative for asynchronous instruments, which are
    /// all the agent has.
    LowMemory,
}

/// A temporality preference that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: {0:?} is not a temporality; \
     expected cumulative, delta or lowmemory (example: cumulative)"
)]
pub struct TemporalityError(pub String);

impl Temporality {
    /// Reads `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` through `lookup`.
    ///
    /// # Errors
    /// The value is set and is none of the three.
    pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, TemporalityError> {
        match lookup("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") {
            None => Ok(Self::Cumulative),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "cumulative" => Ok(Self::Cumulative),
                "delta" => Ok(Self::Delta),
                "lowmemory" => Ok(Self::LowMemory),
                _ => Err(TemporalityError(v)),
            },
        }
    }

    fn delta_for(self, instrument: Instrument) -> bool {
        self == Self::Delta && instrument == Instrument::Counter
    }
}

// Protobuf wire types and the field keys written here (field << 3 | wire type).
const LEN: u32 = 2;
const FIXED64: u32 = 1;
const VARINT: u32 = 0;

const fn key(field: u32, wire: u32) -> u8 {
    ((field << 3) | wire) as u8
}

/// `AggregationTemporality` values.
const TEMPORALITY_DELTA: u64 = 1;
const TEMPORALITY_CUMULATIVE: u64 = 2;

fn put_len(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    buf.push(key(field, LEN));
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

fn len_field(field_len: usize) -> usize {
    1 + encoded_len_varint(field_len as u64) + field_len
}

/// An `AnyValue` message body.
fn any_value(buf: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::String(s) => put_len(buf, 1, s.as_str().as_bytes()),
        AttrValue::Bool(b) => {
            buf.push(key(2, VARINT));
            buf.push(u8::from(*b));
        }
        AttrValue::I64(i) => {
            buf.push(key(3, VARINT));
            encode_varint(*i as u64, buf);
        }
        AttrValue::F64(f) => {
            buf.push(key(4, FIXED64));
            buf.extend_from_slice(&f.to_le_bytes());
        }
        AttrValue::Array(a) => {
            // ArrayValue { repeated AnyValue values = 1 }, in AnyValue.array_value = 5.
            let mut array = Vec::new();
            let mut item = Vec::new();
            let mut push = |v: AttrValue| {
                item.clear();
                any_value(&mut item, &v);
                put_len(&mut array, 1, &item);
            };
            match a {
                opentelemetry::Array::Bool(v) => v.iter().for_each(|x| push(AttrValue::Bool(*x))),
                opentelemetry::Array::I64(v) => v.iter().for_each(|x| push(AttrValue::I64(*x))),
                opentelemetry::Array::F64(v) => v.iter().for_each(|x| push(AttrValue::F64(*x))),
                opentelemetry::Array::String(v) => {
                    v.iter().for_each(|x| push(AttrValue::String(x.clone())))
                }
                _ => {}
            }
            put_len(buf, 5, &array);
        }
        _ => put_len(buf, 1, v.as_str().as_bytes()),
    }
}

/// Repeated `KeyValue`s as the field `field` of the enclosing message.
fn key_values<'a>(
    buf: &mut Vec<u8>,
    field: u32,
    kvs: impl Iterator<Item = (&'a str, &'a AttrValue)>,
) {
    let mut kv = Vec::new();
    let mut value = Vec::new();
    for (k, v) in kvs {
        kv.clear();
        value.clear();
        put_len(&mut kv, 1, k.as_bytes());
        any_value(&mut value, v);
        put_len(&mut kv, 2, &value);
        put_len(buf, field, &kv);
    }
}

/// Whether `encoded` (repeated `KeyValue`s as written by [`key_values`] in field 7) is
/// the encoding of `attributes`, read in place: what a copy of the attributes would
/// tell, without keeping one per series. Bytes are compared, so a float attribute
/// matches by its bits (a NaN matches itself).
fn same_attributes(encoded: &[u8], attributes: &[KeyValue]) -> bool {
    let mut rest = encoded;
    for kv in attributes {
        // KeyValue { key = 1, value = 2 } in field 7.
        let Some(body) = take_len(&mut rest, key(7, LEN)) else {
            return false;
        };
        let mut body = body;
        if take_len(&mut body, key(1, LEN)) != Some(kv.key.as_str().as_bytes()) {
            return false;
        }
        let Some(value) = take_len(&mut body, key(2, LEN)) else {
            return false;
        };
        if !body.is_empty() || !same_value(value, &kv.value) {
            return false;
        }
    }
    rest.is_empty()
}

/// Whether `encoded` is the `AnyValue` body that [`any_value`] writes for `v`.
fn same_value(encoded: &[u8], v: &AttrValue) -> bool {
    match v {
        AttrValue::String(s) => {
            let mut rest = encoded;
            take_len(&mut rest, key(1, LEN)) == Some(s.as_str().as_bytes()) && rest.is_empty()
        }
        AttrValue::Bool(b) => encoded == [key(2, VARINT), u8::from(*b)],
        AttrValue::F64(f) => {
            encoded.len() == 9 && encoded[0] == key(4, FIXED64) && encoded[1..] == f.to_le_bytes()
        }
        AttrValue::I64(i) => {
            let mut rest = encoded;
            rest.first() == Some(&key(3, VARINT)) && {
                rest = &rest[1..];
                prost::encoding::decode_varint(&mut rest).ok() == Some(*i as u64) && rest.is_empty()
            }
        }
        // Arrays (and any later kind): rare; encode and compare.
        other => {
            let mut buf = Vec::new();
            any_value(&mut buf, other);
            buf == encoded
        }
    }
}

/// Takes one length-delimited field with the tag byte `tag` from the front of `buf`.
#[inline]
fn take_len<'a>(buf: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
    // Attribute keys and values are short: their length is one varint byte.
    if let &[first, len @ 0..0x80, ref rest @ ..] = *buf {
        if first != tag || rest.len() < usize::from(len) {
            return None;
        }
        let (field, after) = rest.split_at(usize::from(len));
        *buf = after;
        return Some(field);
    }
    take_len_long(buf, tag)
}

#[cold]
fn take_len_long<'a>(buf: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
    let (&first, mut rest) = buf.split_first()?;
    if first != tag {
        return None;
    }
    let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
    if rest.len() < len {
        return None;
    }
    let (field, after) = rest.split_at(len);
    *buf = after;
    Some(field)
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A small multiply-rotate hasher (rustc's FxHash): series keys are hashed once per
/// point per export, where SipHash's cost would show.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

fn series_hash(metric: usize, attributes: &[KeyValue]) -> u64 {
    let mut h = FxHasher::default();
    h.write_usize(metric);
    for kv in attributes {
        h.write(kv.key.as_str().as_bytes());
        h.write_u8(0xff);
        match &kv.value {
            AttrValue::String(s) => h.write(s.as_str().as_bytes()),
            AttrValue::I64(i) => h.write_u64(*i as u64),
            AttrValue::F64(f) => h.write_u64(f.to_bits()),
            AttrValue::Bool(b) => h.write_u8(u8::from(*b)),
            other => other.as_str().hash(&mut h),
        }
        h.write_u8(0xfe);
    }
    h.finish()
}

/// What is remembered of one series between exports.
#[derive(Debug)]
struct Series {
    metric: usize,
    /// [`series_hash`] of its metric and attributes.
    hash: u64,
    /// Its `attributes` fields (tag 7 of `NumberDataPoint`), encoded once; a point's
    /// attributes are matched against them ([`same_attributes`]).
    encoded: Box<[u8]>,
    /// `start_time_unix_nano` of its cumulative points.
    start: u64,
    /// The previous value and when it was taken (for resets and deltas).
    last: Option<(Value, u64)>,
    /// The export in which it was last seen.
    seen: u64,
}

/// One point to write in this export.
#[derive(Debug, Clone, Copy)]
struct Out {
    series: u32,
    start: u64,
    value: Value,
}

/// The encoded size of a point's `NumberDataPoint` body.
fn point_len(attrs: usize) -> usize {
    // attributes, start (1 + 8), time (1 + 8), value (1 + 8)
    attrs + 27
}

/// Encodes the snapshot as an `ExportMetricsServiceRequest`, keeping each series'
/// start time across exports. See the [module docs](self).
#[derive(Debug)]
pub struct Encoder {
    /// `ResourceMetrics.resource` and `ScopeMetrics.scope`, as whole fields.
    resource: Vec<u8>,
    scope: Vec<u8>,
    /// Per catalogue entry: the `Metric` fields before the data (name, description,
    /// unit), and whether it is exported at all (its family is on).
    headers: Vec<Option<Vec<u8>>>,
    temporality: Temporality,
    limits: Option<Arc<Limits>>,
    start: u64,
    series: Vec<Series>,
    index: HashMap<u64, Vec<u32>>,
    /// Per catalogue entry: the series of its points in the last export, in the
    /// snapshot's order. A source lists a metric's series in the same order every
    /// cycle, so point `k` is first matched against the `k`-th series of the last
    /// export: a comparison of its encoded attributes, without hashing them.
    order: Vec<Vec<u32>>,
    exports: u64,
    // Reused between exports.
    out: Vec<Out>,
    /// The size of the last request, to size the next one's buffer.
    last_len: usize,
}

impl Encoder {
    /// An encoder for the given resource and scope, exporting the catalogue entries of
    /// the enabled `families` (self-monitoring always), with the per-instrument
    /// `limits` (none: nothing folds).
    pub fn new(
        resource: &Resource,
        scope: &InstrumentationScope,
        families: &[Family],
        temporality: Temporality,
        limits: Option<Arc<Limits>>,
    ) -> Self {
        let mut body = Vec::new();
        key_values(&mut body, 1, resource.iter().map(|(k, v)| (k.as_str(), v)));
        let mut resource_field = Vec::new();
        put_len(&mut resource_field, 1, &body);

        let mut body = Vec::new();
        put_len(&mut body, 1, scope.name().as_bytes());
        if let Some(v) = scope.version() {
            put_len(&mut body, 2, v.as_bytes());
        }
        key_values(
            &mut body,
            3,
            scope.attributes().map(|kv| (kv.key.as_str(), &kv.value)),
        );
        let mut scope_field = Vec::new();
        put_len(&mut scope_field, 1, &body);

        let headers = CATALOGUE
            .iter()
            .map(|d| {
                let on = match d.origin {
                    Origin::Host(f) => families.contains(&f),
                    Origin::SelfMonitoring => true,
                };
                on.then(|| {
                    let mut h = Vec::new();
                    put_len(&mut h, 1, d.name.as_bytes());
                    if !d.description.is_empty() {
                        put_len(&mut h, 2, d.description.as_bytes());
                    }
                    if !d.unit.is_empty() {
                        put_len(&mut h, 3, d.unit.as_bytes());
                    }
                    h
                })
            })
            .collect();
        Self {
            resource: resource_field,
            scope: scope_field,
            headers,
            temporality,
            limits,
            start: unix_nanos(SystemTime::now()),
            series: Vec::new(),
            index: HashMap::new(),
            order: vec![Vec::new(); CATALOGUE.len()],
            exports: 0,
            out: Vec::new(),
            last_len: 0,
        }
    }

    /// Series remembered (those seen in the last export).
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Encodes `snapshot` as of `now`.
    pub fn encode(&mut self, snapshot: &Snapshot, now: SystemTime) -> Bytes {
        let now = unix_nanos(now).max(self.start);
        self.exports += 1;
        // ExportMetricsServiceRequest { resource_metrics: [ { resource, scope_metrics:
        // [ { scope, metrics } ] } ] }: the metrics go after a gap that holds the
        // largest header (two tags, two lengths of at most 5 bytes, resource and
        // scope); the header is written at the end of the gap once the lengths are known.
        let gap = 2 * (1 + 5) + self.resource.len() + self.scope.len();
        let mut buf = Vec::with_capacity(self.last_len.max(gap + 1024));
        buf.resize(gap, 0);
        for (i, d) in CATALOGUE.iter().enumerate() {
            if self.headers[i].is_none() {
                continue;
            }
            let points = snapshot.points(d.name);
            if points.is_empty() {
                continue;
            }
            // Which series this export carries, with the SDK's cardinality limit.
            let limit = self.limits.as_ref().map_or(usize::MAX, |l| l.get(d.name));
            let delta = self.temporality.delta_for(d.instrument);
            self.out.clear();
            let mut attributed = 0;
            let mut overflow: Option<Value> = None;
            for p in points {
                let value = exported_value(d, p.value);
                let position = self.out.len();
                if !p.attributes.is_empty() {
                    attributed += 1;
                    if attributed > limit {
                        overflow = Some(value);
                        continue;
                    }
                }
                let out = self.observe(i, position, d, &p.attributes, value, now, delta);
                self.out.push(out);
            }
            if let Some(value) = overflow {
                let attrs = [KeyValue::new(names::ATTR_OVERFLOW, true)];
                let position = self.out.len();
                let out = self.observe(i, position, d, &attrs, value, now, delta);
                self.out.push(out);
            }
            let order = &mut self.order[i];
            order.clear();
            order.extend(self.out.iter().map(|o| o.series));
            // Metric { name, description, unit, sum | gauge { data_points, ... } }
            let header = self.headers[i].as_deref().unwrap_or_default();
            let points_len: usize = self
                .out
                .iter()
                .map(|o| len_field(point_len(self.series[o.series as usize].encoded.len())))
                .sum();
            let (data_field, data_len) = match d.instrument {
                Instrument::Gauge => (5, points_len),
                // + aggregation_temporality (2 bytes) + is_monotonic (2 bytes if true)
                Instrument::Counter => (7, points_len + 4),
                Instrument::UpDownCounter => (7, points_len + 2),
            };
            let metric_len = header.len() + len_field(data_len);
            buf.push(key(2, LEN));
            encode_varint(metric_len as u64, &mut buf);
            buf.extend_from_slice(header);
            buf.push(key(data_field, LEN));
            encode_varint(data_len as u64, &mut buf);
            for o in &self.out {
                let s = &self.series[o.series as usize];
                buf.push(key(1, LEN));
                encode_varint(point_len(s.encoded.len()) as u64, &mut buf);
                buf.extend_from_slice(&s.encoded);
                // start, time and value: three fixed64 fields, written at once.
                let (value_key, value) = match o.value {
                    Value::Float(f) => (key(4, FIXED64), f.to_bits()),
                    Value::Int(i) => (key(6, FIXED64), i as u64),
                };
                let mut tail = [0u8; 27];
                tail[0] = key(2, FIXED64);
                tail[1..9].copy_from_slice(&o.start.to_le_bytes());
                tail[9] = key(3, FIXED64);
                tail[10..18].copy_from_slice(&now.to_le_bytes());
                tail[18] = value_key;
                tail[19..27].copy_from_slice(&value.to_le_bytes());
                buf.extend_from_slice(&tail);
            }
            if d.instrument != Instrument::Gauge {
                buf.push(key(2, VARINT));
                buf.push(if delta {
                    TEMPORALITY_DELTA
                } else {
                    TEMPORALITY_CUMULATIVE
                } as u8);
            }
            if d.instrument == Instrument::Counter {
                buf.push(key(3, VARINT));
                buf.push(1);
            }
        }
        self.evict();

        let metrics_len = buf.len() - gap;
        let scope_metrics_len = self.scope.len() + metrics_len;
        let resource_metrics_len = self.resource.len() + len_field(scope_metrics_len);
        let mut header = Vec::with_capacity(gap);
        header.push(key(1, LEN));
        encode_varint(resource_metrics_len as u64, &mut header);
        header.extend_from_slice(&self.resource);
        header.push(key(2, LEN));
        encode_varint(scope_metrics_len as u64, &mut header);
        header.extend_from_slice(&self.scope);
        let begin = gap - header.len();
        buf[begin..gap].copy_from_slice(&header);
        debug_assert_eq!(buf.len() - begin, len_field(resource_metrics_len));
        self.last_len = buf.len();
        Bytes::from(buf).slice(begin..)
    }

    /// Finds (or starts) the series of `attributes`, the point at `position` among
    /// metric `metric`'s points, and says what its point carries.
    #[allow(clippy::too_many_arguments)]
    fn observe(
        &mut self,
        metric: usize,
        position: usize,
        d: &MetricDesc,
        attributes: &[KeyValue],
        value: Value,
        now: u64,
        delta: bool,
    ) -> Out {
        // The series at the same position in the last export, if it is this one.
        let same_place = self.order[metric].get(position).copied().filter(|&i| {
            self.series
                .get(i as usize)
                .is_some_and(|s| s.metric == metric && same_attributes(&s.encoded, attributes))
        });
        let idx = match same_place {
            Some(i) => i,
            None => self.find_or_start(metric, attributes, now),
        };
        let agent_start = self.start;
        let s = &mut self.series[idx as usize];
        s.seen = self.exports;
        let went_back = d.instrument == Instrument::Counter
            && s.last.is_some_and(|(v, _)| v.as_f64() > value.as_f64());
        let out = if delta {
            // Since the previous export (the whole value the first time, from the
            // agent's start, as the SDK does).
            let (start, diff) = match s.last {
                Some((prev, at)) if !went_back => (at, difference(value, prev)),
                Some((_, at)) => (at, value),
                None => (agent_start, value),
            };
            Out {
                series: idx,
                start,
                value: diff,
            }
        } else {
            if went_back {
                // The source reset (a driver reload, a counter that wrapped): a new
                // cumulative series starts after the last point of the old one.
                s.start = s.last.map_or(now, |(_, at)| at);
            }
            Out {
                series: idx,
                start: s.start,
                value,
            }
        };
        s.last = Some((value, now));
        out
    }

    /// Finds the series of `attributes` by their hash, or starts one first seen `now`.
    fn find_or_start(&mut self, metric: usize, attributes: &[KeyValue], now: u64) -> u32 {
        let h = series_hash(metric, attributes);
        let candidates = self.index.entry(h).or_default();
        let found = candidates.iter().copied().find(|&i| {
            let s = &self.series[i as usize];
            s.metric == metric && same_attributes(&s.encoded, attributes)
        });
        if let Some(i) = found {
            return i;
        }
        let mut encoded = Vec::new();
        key_values(
            &mut encoded,
            7,
            attributes.iter().map(|kv| (kv.key.as_str(), &kv.value)),
        );
        let i = self.series.len() as u32;
        self.series.push(Series {
            metric,
            hash: h,
            encoded: encoded.into_boxed_slice(),
            start: now,
            last: None,
            seen: 0,
        });
        candidates.push(i);
        i
    }

    /// Forgets the series the last export did not carry (pids and pods churn), so that
    /// memory follows the live series.
    fn evict(&mut self) {
        let exports = self.exports;
        if self.series.iter().all(|s| s.seen == exports) {
            return;
        }
        // Where each kept series moves to (u32::MAX: forgotten).
        let mut moved = Vec::with_capacity(self.series.len());
        let mut kept = 0;
        for s in &self.series {
            if s.seen == exports {
                moved.push(kept);
                kept += 1;
            } else {
                moved.push(u32::MAX);
            }
        }
        self.series.retain(|s| s.seen == exports);
        self.index.clear();
        for (i, s) in self.series.iter().enumerate() {
            self.index.entry(s.hash).or_default().push(i as u32);
        }
        for order in &mut self.order {
            order.retain_mut(|i| {
                *i = moved[*i as usize];
                *i != u32::MAX
            });
        }
    }
}

fn difference(now: Value, prev: Value) -> Value {
    match (now, prev) {
        (Value::Int(a), Value::Int(b)) => Value::Int(a.saturating_sub(b)),
        (a, b) => Value::Float(a.as_f64() - b.as_f64()),
    }
}

/// The value the SDK's instrument of `d` would export for a reading: integer
/// counters are `u64` (negative readings clamp to 0), floats stay floats, and an
/// integer instrument truncates a float reading.
fn exported_value(d: &MetricDesc, v: Value) -> Value {
    match (d.instrument, d.number) {
        (Instrument::Counter, Number::Int) => Value::Int(v.as_i64().max(0)),
        (_, Number::Int) => Value::Int(v.as_i64()),
        (_, Number::Float) => Value::Float(v.as_f64()),
    }
}

/// How long to wait before the first export: a fraction of the interval that differs
/// per agent, so that a fleet started together does not push in step.
pub fn first_export_offset(interval: Duration, seed: &str) -> Duration {
    let mut h = FxHasher::default();
    h.write(seed.as_bytes());
    h.write_u64(u64::from(std::process::id()));
    h.write_u64(unix_nanos(SystemTime::now()));
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Points;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, metric::Data};
    use prost::Message as _;

    fn encoder(t: Temporality, limits: Option<Arc<Limits>>) -> Encoder {
        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "x")])
            .build();
        let scope = InstrumentationScope::builder("s").with_version("1").build();
        Encoder::new(&resource, &scope, &Family::ALL, t, limits)
    }

    fn snapshot(energy: &[(&str, i64)]) -> Snapshot {
        let mut p = Points::default();
        for (gpu, v) in energy {
            p.push(
                "hw.energy",
                vec![KeyValue::new("hw.id", gpu.to_string())],
                Value::Float(*v as f64),
            );
        }
        Snapshot::new(p)
    }

    fn decode(b: &Bytes) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest::decode(b.as_ref()).unwrap()
    }

    /// (start, time, value) of each point of `name`.
    fn points(r: &ExportMetricsServiceRequest, name: &str) -> Vec<(u64, u64, f64)> {
        let m = r.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap();
        let Some(Data::Sum(s)) = &m.data else {
            panic!("not a sum")
        };
        s.data_points
            .iter()
            .map(|p| {
                let v = match p.value {
                    Some(
                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                            d,
                        ),
                    ) => d,
                    Some(
                        opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i),
                    ) => i as f64,
                    None => f64::NAN,
                };
                (p.start_time_unix_nano, p.time_unix_nano, v)
            })
            .collect()
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(4_000_000_000 + s)
    }

    #[test]
    fn first_export_offsets_fall_within_the_interval_and_spread_over_all_of_it() {
        let interval = Duration::from_secs(10);
        let mut deciles = [0u32; 10];
        for i in 0..1000 {
            let o = first_export_offset(interval, &format!("node-{i}"));
            assert!(o < interval, "{o:?}");
            deciles[(o.as_secs_f64() / 10.0 * 10.0) as usize] += 1;
        }
        // A uniform offset puts about 100 in each tenth of the interval; a fleet that
        // pushed in step would put them all in one.
        for (i, n) in deciles.iter().enumerate() {
            assert!((40..=200).contains(n), "tenth {i} got {n}: {deciles:?}");
        }
    }

    #[test]
    fn a_cumulative_series_keeps_its_start_until_its_counter_goes_backwards() {
        let mut e = encoder(Temporality::Cumulative, None);
        let r1 = decode(&e.encode(&snapshot(&[("a", 10)]), at(1)));
        let r2 = decode(&e.encode(&snapshot(&[("a", 15), ("b", 1)]), at(2)));
        let r3 = decode(&e.encode(&snapshot(&[("a", 3), ("b", 2)]), at(3)));
        let (p1, p2, p3) = (
            points(&r1, "hw.energy"),
            points(&r2, "hw.energy"),
            points(&r3, "hw.energy"),
        );
        assert_eq!(p1[0].0, p2[0].0, "a's start moved");
        assert_eq!(p2[0].2, 15.0);
        assert!(p2[1].0 > p2[0].0, "b starts when first seen");
        assert_eq!(p2[1].0, p3[1].0, "b's start moved");
        // a went from 15 to 3: a reset; its new start is the previous point's time.
        assert_eq!(p3[0].0, p2[0].1);
        assert_eq!(p3[0].2, 3.0);
        assert!(p3.iter().all(|p| p.0 < p.1));
    }

    #[test]
    fn delta_counters_carry_the_change_since_the_previous_export() {
        let mut e = encoder(Temporality::Delta, None);
        let r1 = decode(&e.encode(&snapshot(&[("a", 10)]), at(1)));
        let r2 = decode(&e.encode(&snapshot(&[("a", 15)]), at(2)));
        let m = &r2.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(Data::Sum(s)) = &m.data else {
            panic!()
        };
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        assert_eq!(points(&r1, "hw.energy")[0].2, 10.0);
        let p2 = points(&r2, "hw.energy")[0];
        assert_eq!(p2.2, 5.0);
        assert_eq!(
            p2.0,
            points(&r1, "hw.energy")[0].1,
            "a delta starts where the last ended"
        );
    }

    #[test]
    fn series_beyond_the_limit_fold_into_one_overflow_series() {
        let shape = crate::cardinality::Shape {
            cpus: 1,
            disks: 1,
            mounts: 1,
            interfaces: 1,
        };
        let limits = Arc::new(Limits::for_shape(&shape, 0));
        let limit = limits.get("hw.energy");
        let mut e = encoder(Temporality::Cumulative, Some(limits));
        let many: Vec<(String, i64)> = (0..limit + 3)
            .map(|i| (format!("g{i}"), i as i64))
            .collect();
        let refs: Vec<(&str, i64)> = many.iter().map(|(g, v)| (g.as_str(), *v)).collect();
        let r = decode(&e.encode(&snapshot(&refs), at(1)));
        let m = &r.resource_metrics[0].scope_metrics[0].metrics[0];
        let Some(Data::Sum(s)) = &m.data else {
            panic!()
        };
        assert_eq!(s.data_points.len(), limit + 1);
        let overflow = s.data_points.last().unwrap();
        assert_eq!(overflow.attributes.len(), 1);
        assert_eq!(overflow.attributes[0].key, "otel.metric.overflow");
        assert_eq!(
            points(&r, "hw.energy").last().unwrap().2,
            (limit + 2) as f64
        );
    }

    #[test]
    fn a_series_keeps_its_start_when_the_points_change_places() {
        let mut e = encoder(Temporality::Cumulative, None);
        let r1 = decode(&e.encode(&snapshot(&[("a", 1)]), at(1)));
        let r2 = decode(&e.encode(&snapshot(&[("a", 2), ("b", 1)]), at(2)));
        // b now comes first, then a vanishes and c takes its place, then all three.
        let r3 = decode(&e.encode(&snapshot(&[("b", 2), ("a", 3)]), at(3)));
        let r4 = decode(&e.encode(&snapshot(&[("b", 3), ("c", 1)]), at(4)));
        let r5 = decode(&e.encode(&snapshot(&[("c", 2), ("b", 4), ("a", 1)]), at(5)));
        let a_start = points(&r1, "hw.energy")[0].0;
        let b_start = points(&r2, "hw.energy")[1].0;
        assert_eq!(points(&r3, "hw.energy")[0].0, b_start);
        assert_eq!(points(&r3, "hw.energy")[1].0, a_start);
        let c_start = points(&r4, "hw.energy")[1].0;
        assert_eq!(points(&r4, "hw.energy")[0].0, b_start);
        assert!(c_start > b_start);
        let p5 = points(&r5, "hw.energy");
        assert_eq!((p5[0].0, p5[0].2), (c_start, 2.0));
        assert_eq!((p5[1].0, p5[1].2), (b_start, 4.0));
        // a was forgotten in the fourth export: it starts again.
        assert!(p5[2].0 > c_start, "{p5:?}");
        assert_eq!(e.series(), 3);
    }

    #[test]
    fn series_that_vanish_are_forgotten() {
        let mut e = encoder(Temporality::Cumulative, None);
        e.encode(&snapshot(&[("a", 1), ("b", 1)]), at(1));
        assert_eq!(e.series(), 2);
        e.encode(&snapshot(&[("b", 2)]), at(2));
        assert_eq!(e.series(), 1);
    }

    #[test]
    fn a_series_is_matched_by_its_encoded_attributes_and_nothing_else() {
        let attrs = vec![
            KeyValue::new("hw.id", "GPU-1"),
            KeyValue::new("gpu.index", 3i64),
            KeyValue::new("ratio", 0.5),
            KeyValue::new("otel.metric.overflow", true),
            KeyValue::new("empty", ""),
            KeyValue::new(
                "list",
                AttrValue::Array(opentelemetry::Array::I64(vec![1, -2])),
            ),
        ];
        let mut encoded = Vec::new();
        key_values(
            &mut encoded,
            7,
            attrs.iter().map(|kv| (kv.key.as_str(), &kv.value)),
        );
        assert!(same_attributes(&encoded, &attrs));
        assert!(same_attributes(&[], &[]));
        let changed = |i: usize, kv: KeyValue| {
            let mut a = attrs.clone();
            a[i] = kv;
            a
        };
        for other in [
            changed(0, KeyValue::new("hw.id", "GPU-2")),
            changed(0, KeyValue::new("hw.uuid", "GPU-1")),
            changed(1, KeyValue::new("gpu.index", 4i64)),
            changed(1, KeyValue::new("gpu.index", "3")),
            changed(1, KeyValue::new("gpu.index", -3i64)),
            changed(2, KeyValue::new("ratio", 0.25)),
            changed(3, KeyValue::new("otel.metric.overflow", false)),
            changed(4, KeyValue::new("empty", " ")),
            changed(
                5,
                KeyValue::new("list", AttrValue::Array(opentelemetry::Array::I64(vec![1]))),
            ),
            attrs[..5].to_vec(),
            [attrs.clone(), vec![KeyValue::new("extra", 1i64)]].concat(),
        ] {
            assert!(!same_attributes(&encoded, &other), "{other:?}");
        }
        // Order counts, as it did when series kept their `KeyValue`s: each source
        // gives a series its attributes in one order, every cycle.
        let mut swapped = attrs.clone();
        swapped.swap(0, 1);
        assert!(!same_attributes(&encoded, &swapped));
    }

    #[test]
    fn the_temporality_preference_parses_or_names_the_variable() {
        let f = |v: &'static str| move |_: &str| Some(v.to_owned());
        assert_eq!(
            Temporality::from_env(&|_| None).unwrap(),
            Temporality::Cumulative
        );
        assert_eq!(
            Temporality::from_env(&f("Delta")).unwrap(),
            Temporality::Delta
        );
        assert_eq!(
            Temporality::from_env(&f("lowmemory")).unwrap(),
            Temporality::LowMemory
        );
        let e = Temporality::from_env(&f("sometimes")).unwrap_err();
        assert!(
            e.to_string()
                .contains("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
        );
    }
}
