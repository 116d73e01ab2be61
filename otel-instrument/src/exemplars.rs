//! Exemplars on `function.calls.duration`: from a latency bucket to a trace
//! that was exported.
//!
//! opentelemetry_sdk 0.33 exports every histogram point with no exemplars
//! (its aggregators write `exemplars: vec![]`, and its data types cannot be
//! extended), so:
//! - **the reservoir** is fed from the spans of `#[monitored]` calls as the
//!   span queue admits them (head-sampled, or kept by the tail keeper): an
//!   exemplar never names a trace that was not handed to the exporter. Per
//!   function, module and result, each bucket keeps its latest call;
//! - **the metrics export** converts the SDK's collected data to the OTLP
//!   request with opentelemetry-proto's own conversion (what the SDK's
//!   exporter sends), adds at most one exemplar per bucket to the matching
//!   `function.calls.duration` points, sorted by value, and sends it on the
//!   crate's OTLP wire client ([`crate::otlp`]). The reservoir empties at each
//!   export, so exemplar timestamps only move forward.
//!
//! `histogram!` points recorded inside a sampled span (a sampled `#[monitored]`
//! call, or a sampled `tracing` span outside any) wait, with that span's ids,
//! until the span queue admits the span: then they stand for their bucket of
//! their series (metric and label set), as calls do for
//! `function.calls.duration`; a refused span's points are forgotten. Points
//! recorded inside an unsampled call get none: its trace is decided after the
//! point, and keeping candidates for every unsampled call would cost the
//! unsampled path the allocation it never pays.
//!
//! `OTEL_METRICS_EXEMPLAR_FILTER`: `trace_based` (the default) and `always_on`
//! feed the reservoir from exported spans (an unsampled call has no span to
//! name, so `always_on` adds nothing beyond `trace_based`); `always_off` feeds
//! nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::{KeyValue, Value};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar as ProtoExemplar, HistogramDataPoint, exemplar, metric,
};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::SpanData;
use prost::Message as _;

use crate::monitored::{FUNCTION, FUNCTION_CALLS_DURATION, MODULE, RESULT, SCOPE_NAME};
use crate::otlp::OtlpClient;

/// Whether spans feed the reservoir (`OTEL_METRICS_EXEMPLAR_FILTER` is not `always_off`).
static FEEDING: AtomicBool = AtomicBool::new(false);

/// Turns the reservoir's feed on or off.
pub(crate) fn set_feeding(on: bool) {
    FEEDING.store(on, Ordering::Relaxed);
    if !on {
        *reservoir() = None;
        *pending() = None;
        *points() = None;
        PENDING_ANY.store(false, Ordering::Relaxed);
    }
}

/// Whether exemplars are being collected.
#[inline]
pub(crate) fn feeding() -> bool {
    FEEDING.load(Ordering::Relaxed)
}

/// One call that can stand for its bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Slot {
    pub(crate) value: f64,
    pub(crate) time_unix_nano: u64,
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
}

/// An exemplar as the pull endpoint writes it.
#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
pub(crate) type Exemplar = Slot;

/// The latest exemplar per bucket, by (function, module, result): what the
/// pull endpoint shows (it never empties; the OTLP export has its own slots).
#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
pub(crate) type Latest = HashMap<(String, String, String), Vec<Option<Exemplar>>>;

/// A copy of the latest exemplars, for one scrape.
#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
pub(crate) fn latest() -> Latest {
    let guard = reservoir();
    let mut out = Latest::new();
    if let Some(reservoir) = guard.as_ref() {
        for (function, all) in reservoir {
            for s in all {
                out.insert(
                    (
                        (*function).to_owned(),
                        s.module.clone(),
                        s.result.to_owned(),
                    ),
                    s.latest.clone(),
                );
            }
        }
    }
    out
}

/// The latest exemplars of one `histogram!` series, named as the pull
/// endpoint names it.
#[cfg(feature = "prometheus")]
#[derive(Debug)]
pub(crate) struct PullSeries {
    /// The family's name: the metric's, sanitised, with its unit's suffix.
    pub(crate) family: String,
    /// Label names (sanitised) and values, sorted.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) latest: Vec<Slot>,
}

/// A copy of the latest `histogram!` exemplars, for one scrape.
#[cfg(feature = "prometheus")]
pub(crate) fn latest_points() -> Vec<PullSeries> {
    let guard = points();
    let Some(points) = guard.as_ref() else {
        return Vec::new();
    };
    points
        .values()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .attributes
                .iter()
                .map(|kv| {
                    (
                        crate::prometheus_names::sanitize_label_name(kv.key.as_str()),
                        kv.value.to_string(),
                    )
                })
                .collect();
            labels.sort();
            PullSeries {
                family: prom_family(s.name, s.unit),
                labels,
                latest: s.latest.iter().flatten().copied().collect(),
            }
        })
        .collect()
}

/// The family name opentelemetry-prometheus gives a histogram: the name
/// sanitised, then `_` and its unit's suffix when the unit has one.
#[cfg(feature = "prometheus")]
fn prom_family(name: &str, unit: Option<&str>) -> String {
    use crate::prometheus_names::{sanitize_metric_name, unit_suffix};
    let mut out = sanitize_metric_name(name);
    if let Some(suffix) = unit.and_then(unit_suffix) {
        out.push('_');
        out.push_str(&suffix);
    }
    out
}

/// The latest call per bucket of one `function.calls.duration` series.
#[derive(Debug)]
struct Series {
    module: String,
    result: &'static str,
    /// For the next OTLP export, which takes them.
    slots: Vec<Option<Slot>>,
    /// For the pull endpoint.
    latest: Vec<Option<Slot>>,
}

type Reservoir = HashMap<&'static str, Vec<Series>>;

static RESERVOIR: Mutex<Option<Reservoir>> = Mutex::new(None);

/// The lock if it is free (a poisoned one too: its data stay usable), else
/// `None`: the hot path skips rather than waits.
fn lock_or_skip<T>(m: &Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn reservoir() -> std::sync::MutexGuard<'static, Option<Reservoir>> {
    RESERVOIR.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Offers a span that the span queue admitted. Only `#[monitored]` spans
/// count; a contended reservoir skips the offer rather than wait.
pub(crate) fn offer(span: &SpanData) {
    if !FEEDING.load(Ordering::Relaxed) || span.instrumentation_scope.name() != SCOPE_NAME {
        return;
    }
    // `#[monitored]` names its spans with the callsite's static name.
    let std::borrow::Cow::Borrowed(function) = span.name else {
        return;
    };
    let mut module = None;
    let mut result = "ok";
    let mut is_call = false;
    for kv in &span.attributes {
        match kv.key.as_str() {
            "code.function.name" => is_call = true,
            "code.module.name" => module = Some(&kv.value),
            RESULT if kv.value.as_str() == "cancelled" => result = "cancelled",
            _ => {}
        }
    }
    let Some(Value::String(module)) = module else {
        return;
    };
    if !is_call || !span.span_context.is_sampled() {
        return;
    }
    if matches!(span.status, opentelemetry::trace::Status::Error { .. }) {
        result = "error";
    }
    let Ok(duration) = span.end_time.duration_since(span.start_time) else {
        return;
    };
    let value = duration.as_secs_f64();
    let slot = Slot {
        value,
        time_unix_nano: nanos_since_epoch(span.end_time),
        trace_id: span.span_context.trace_id().to_bytes(),
        span_id: span.span_context.span_id().to_bytes(),
    };
    // Explicit buckets are (b[i-1], b[i]]: the first bound not below the value.
    let bucket = crate::monitored::with_histogram_boundaries(|b| b.partition_point(|x| *x < value));
    let Some(mut guard) = lock_or_skip(&RESERVOIR) else {
        return;
    };
    let series_of = guard
        .get_or_insert_with(HashMap::new)
        .entry(function)
        .or_default();
    let series = match series_of
        .iter_mut()
        .position(|s| s.module == module.as_str() && s.result == result)
    {
        Some(i) => &mut series_of[i],
        None => {
            series_of.push(Series {
                module: module.as_str().to_owned(),
                result,
                slots: Vec::new(),
                latest: Vec::new(),
            });
            series_of.last_mut().expect("just pushed")
        }
    };
    if series.slots.len() <= bucket {
        series.slots.resize(bucket + 1, None);
        series.latest.resize(bucket + 1, None);
    }
    series.slots[bucket] = Some(slot);
    series.latest[bucket] = Some(slot);
}

/// The SDK's buckets, which a `histogram!` whose unit has none of its own gets.
const SDK_BOUNDARIES: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];
/// Spans whose points wait, per generation (see [`Pending`]).
const PENDING_SPANS: usize = 4096;
/// Points one span may leave waiting; later ones are not candidates.
const CANDIDATES_PER_SPAN: usize = 16;
/// `histogram!` series (metric and label set) that hold exemplars; points of
/// further series get none until the reservoir is turned off and on.
const POINT_SERIES: usize = 4096;

/// A `histogram!` point recorded inside a sampled span.
#[derive(Debug)]
struct Candidate {
    name: &'static str,
    unit: Option<&'static str>,
    /// Its bucket under the buckets its unit gets.
    bucket: usize,
    /// Sorted by key, one per key, as the SDK keeps a point's attributes.
    attributes: Vec<KeyValue>,
    slot: Slot,
}

/// Candidates by span id, in two generations: when the newer holds
/// [`PENDING_SPANS`] spans, the older is forgotten (spans that old have
/// ended long since, or never will) and the newer takes its place. Bounded,
/// and a span's points wait for at least [`PENDING_SPANS`] later spans.
#[derive(Debug, Default)]
struct Pending {
    newer: Generation,
    older: Generation,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
/// Whether any point may be waiting: a span's end looks only then.
static PENDING_ANY: AtomicBool = AtomicBool::new(false);

fn pending() -> std::sync::MutexGuard<'static, Option<Pending>> {
    PENDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The latest admitted point per bucket of one `histogram!` series.
#[derive(Debug)]
struct PointSeries {
    name: &'static str,
    unit: Option<&'static str>,
    attributes: Vec<KeyValue>,
    /// For the next OTLP export, which takes them.
    slots: Vec<Option<Slot>>,
    /// For the pull endpoint.
    latest: Vec<Option<Slot>>,
}

/// By [`series_hash`].
type Points = HashMap<u64, PointSeries>;

static POINTS: Mutex<Option<Points>> = Mutex::new(None);

fn points() -> std::sync::MutexGuard<'static, Option<Points>> {
    POINTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An attribute value as both sides of the match see it: the SDK's
/// [`Value`] and the proto's `AnyValue` (arrays and maps never match).
#[derive(Debug, Clone, PartialEq)]
enum Plain<'a> {
    Str(&'a str),
    Int(i64),
    Double(u64),
    Bool(bool),
    Other,
}

impl<'a> Plain<'a> {
    fn of(v: &'a Value) -> Self {
        match v {
            Value::String(s) => Plain::Str(s.as_str()),
            Value::I64(i) => Plain::Int(*i),
            Value::F64(f) => Plain::Double(f.to_bits()),
            Value::Bool(b) => Plain::Bool(*b),
            _ => Plain::Other,
        }
    }

    fn of_proto(v: Option<&'a any_value::Value>) -> Self {
        match v {
            Some(any_value::Value::StringValue(s)) => Plain::Str(s),
            Some(any_value::Value::IntValue(i)) => Plain::Int(*i),
            Some(any_value::Value::DoubleValue(f)) => Plain::Double(f.to_bits()),
            Some(any_value::Value::BoolValue(b)) => Plain::Bool(*b),
            _ => Plain::Other,
        }
    }
}

/// A hash of a metric's name and a label set given as (key, value) pairs
/// sorted by key.
fn series_hash<'a>(name: &str, labels: impl Iterator<Item = (&'a str, Plain<'a>)>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    for (k, v) in labels {
        k.hash(&mut h);
        match v {
            Plain::Str(s) => (0u8, s).hash(&mut h),
            Plain::Int(i) => (1u8, i).hash(&mut h),
            Plain::Double(d) => (2u8, d).hash(&mut h),
            Plain::Bool(b) => (3u8, b).hash(&mut h),
            Plain::Other => 4u8.hash(&mut h),
        }
    }
    h.finish()
}

/// Offers a `histogram!` point: if a sampled span is current, the point waits
/// for that span's admission to the span queue. A contended reservoir skips
/// the offer rather than wait.
pub(crate) fn offer_point(
    name: &'static str,
    unit: Option<&'static str>,
    value: f64,
    attributes: &[KeyValue],
) {
    if !value.is_finite() {
        return;
    }
    let Some((trace_id, span_id)) = crate::monitored::sampled_span() else {
        return;
    };
    let bounds = unit
        .and_then(crate::metrics::boundaries_for)
        .unwrap_or(SDK_BOUNDARIES);
    let mut retired = None;
    let Some(mut guard) = lock_or_skip(&PENDING) else {
        return;
    };
    let Some(waiting) = room(
        guard.get_or_insert_with(Pending::default),
        span_id,
        &mut retired,
    ) else {
        return;
    };
    let mut attributes = attributes.to_vec();
    attributes.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    attributes.dedup_by(|a, b| a.key == b.key);
    waiting.push(Candidate {
        name,
        unit,
        bucket: bounds.partition_point(|b| *b < value),
        attributes,
        slot: Slot {
            value,
            time_unix_nano: nanos_since_epoch(SystemTime::now()),
            trace_id: trace_id.to_be_bytes(),
            span_id: span_id.to_be_bytes(),
        },
    });
    PENDING_ANY.store(true, Ordering::Relaxed);
}

/// The points of the spans in one generation, by span id.
type Generation = HashMap<u64, Vec<Candidate>>;

/// Where one more point of span `span_id` waits, if it may: a full newer
/// generation becomes the older one, and the older goes to `retired`, for the
/// caller to drop once the lock is released.
fn room<'a>(
    pending: &'a mut Pending,
    span_id: u64,
    retired: &mut Option<Generation>,
) -> Option<&'a mut Vec<Candidate>> {
    if !pending.newer.contains_key(&span_id) && pending.newer.len() >= PENDING_SPANS {
        let newer = std::mem::take(&mut pending.newer);
        *retired = Some(std::mem::replace(&mut pending.older, newer));
    }
    let waiting = pending.newer.entry(span_id).or_default();
    (waiting.len() < CANDIDATES_PER_SPAN).then_some(waiting)
}

/// The span queue admitted (`true`) or refused the span `span_id`: its
/// waiting points become exemplars, or are forgotten.
pub(crate) fn span_ended(span_id: u64, admitted: bool) {
    if !PENDING_ANY.load(Ordering::Relaxed) {
        return;
    }
    // The waiting points' lock is only ever held for a few map operations (a
    // retired generation is dropped outside it), so a span's end waits for it:
    // skipping would leave the span's points waiting until their generation is
    // retired. The reservoir's lock is held by `attach` through an export's
    // conversion, so it is taken without waiting, as offers take theirs: on
    // contention the span's points are not kept.
    let candidates = {
        let mut guard = pending();
        let Some(pending) = guard.as_mut() else {
            return;
        };
        let found = pending
            .newer
            .remove(&span_id)
            .or_else(|| pending.older.remove(&span_id));
        if pending.newer.is_empty() && pending.older.is_empty() {
            PENDING_ANY.store(false, Ordering::Relaxed);
        }
        match found {
            Some(c) if admitted => c,
            _ => return,
        }
    };
    let Some(mut guard) = lock_or_skip(&POINTS) else {
        return;
    };
    let points = guard.get_or_insert_with(HashMap::new);
    for c in candidates {
        let full = points.len() >= POINT_SERIES;
        let hash = series_hash(
            c.name,
            c.attributes
                .iter()
                .map(|kv| (kv.key.as_str(), Plain::of(&kv.value))),
        );
        let series = match points.entry(hash) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                if full {
                    continue;
                }
                e.insert(PointSeries {
                    name: c.name,
                    unit: c.unit,
                    attributes: Vec::new(),
                    slots: Vec::new(),
                    latest: Vec::new(),
                })
            }
        };
        // A hash collision: the newer series takes the slot over.
        if series.name != c.name || series.attributes != c.attributes {
            series.name = c.name;
            series.unit = c.unit;
            series.attributes = c.attributes;
            series.slots.clear();
            series.latest.clear();
        }
        if series.slots.len() <= c.bucket {
            series.slots.resize(c.bucket + 1, None);
            series.latest.resize(c.bucket + 1, None);
        }
        series.slots[c.bucket] = Some(c.slot);
        series.latest[c.bucket] = Some(c.slot);
    }
}

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Adds the reservoir's exemplars to the `function.calls.duration` and
/// `histogram!` points of `request`, and empties what it used.
pub(crate) fn attach(request: &mut ExportMetricsServiceRequest) {
    let mut calls = reservoir();
    let mut points = points();
    if calls.is_none() && points.is_none() {
        return;
    }
    for rm in &mut request.resource_metrics {
        for sm in &mut rm.scope_metrics {
            if sm.scope.as_ref().is_none_or(|s| s.name != SCOPE_NAME) {
                continue;
            }
            for m in &mut sm.metrics {
                let Some(metric::Data::Histogram(h)) = &mut m.data else {
                    continue;
                };
                if m.name == FUNCTION_CALLS_DURATION {
                    if let Some(calls) = calls.as_mut() {
                        for point in &mut h.data_points {
                            attach_call(calls, point);
                        }
                    }
                } else if let Some(points) = points.as_mut() {
                    for point in &mut h.data_points {
                        attach_point(points, &m.name, point);
                    }
                }
            }
        }
    }
}

fn proto_exemplar(s: Slot) -> ProtoExemplar {
    ProtoExemplar {
        filtered_attributes: Vec::new(),
        time_unix_nano: s.time_unix_nano,
        span_id: s.span_id.to_vec(),
        trace_id: s.trace_id.to_vec(),
        value: Some(exemplar::Value::AsDouble(s.value)),
    }
}

/// The exemplars of one `function.calls.duration` point.
fn attach_call(reservoir: &mut Reservoir, point: &mut HistogramDataPoint) {
    let (mut function, mut module, mut result) = (None, None, None);
    for kv in &point.attributes {
        let text = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.as_str(),
            _ => continue,
        };
        match kv.key.as_str() {
            FUNCTION => function = Some(text),
            MODULE => module = Some(text),
            RESULT => result = Some(text),
            _ => {}
        }
    }
    let (Some(function), Some(module), Some(result)) = (function, module, result) else {
        return;
    };
    let Some(series) = reservoir.get_mut(function).and_then(|all| {
        all.iter_mut()
            .find(|s| s.module == module && s.result == result)
    }) else {
        return;
    };
    // One per bucket, in bucket order: ascending by value, as Prometheus'
    // OTLP translation expects.
    point.exemplars.extend(
        series
            .slots
            .iter_mut()
            .filter_map(|slot| slot.take().map(proto_exemplar)),
    );
}

/// The exemplars of one `histogram!` point: its series' slots, placed in the
/// point's own buckets (one per bucket, the latest), ascending by value.
fn attach_point(points: &mut Points, name: &str, point: &mut HistogramDataPoint) {
    let mut labels: Vec<(&str, Plain<'_>)> = point
        .attributes
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                Plain::of_proto(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect();
    labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let hash = series_hash(name, labels.iter().map(|(k, v)| (*k, v.clone())));
    let Some(series) = points.get_mut(&hash) else {
        return;
    };
    let same = series.name == name
        && series.attributes.len() == labels.len()
        && series
            .attributes
            .iter()
            .zip(&labels)
            .all(|(kv, (k, v))| kv.key.as_str() == *k && Plain::of(&kv.value) == *v);
    if !same {
        return;
    }
    let mut by_bucket: Vec<(usize, Slot)> = Vec::new();
    for s in series.slots.iter_mut().filter_map(Option::take) {
        let bucket = point.explicit_bounds.partition_point(|b| *b < s.value);
        match by_bucket.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, kept)) if kept.time_unix_nano < s.time_unix_nano => *kept = s,
            Some(_) => {}
            None => by_bucket.push((bucket, s)),
        }
    }
    by_bucket.sort_by(|a, b| a.1.value.total_cmp(&b.1.value));
    point
        .exemplars
        .extend(by_bucket.into_iter().map(|(_, s)| proto_exemplar(s)));
}

/// The OTLP metrics exporter with exemplars: the SDK's data, converted as the
/// SDK's exporter converts it, exemplars added, sent on [`OtlpClient`] on the
/// export runtime. Wrap it in `CountingMetricExporter` for the counters and
/// outage lines every exporter of this crate has.
#[derive(Debug)]
pub struct WireMetricExporter {
    client: OtlpClient,
    runtime: tokio::runtime::Handle,
    temporality: Temporality,
    shut_down: Arc<AtomicBool>,
}

impl WireMetricExporter {
    /// An exporter sending with `client` from `runtime`.
    pub fn new(
        client: OtlpClient,
        runtime: tokio::runtime::Handle,
        temporality: Temporality,
    ) -> Self {
        Self {
            client,
            runtime,
            temporality,
            shut_down: Arc::default(),
        }
    }
}

/// Encodes `metrics` as the SDK's exporter would, with the reservoir's exemplars.
pub(crate) fn encode(metrics: &ResourceMetrics) -> Vec<u8> {
    let mut request = ExportMetricsServiceRequest::from(metrics);
    attach(&mut request);
    // Label values (those given to the metric macros too) leave redacted.
    crate::redact::metrics_request(&mut request);
    request.encode_to_vec()
}

impl PushMetricExporter for WireMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = bytes::Bytes::from(encode(metrics));
        let client = self.client.clone();
        // The client's retry sleeps and its transport need the export runtime.
        let sent = self.runtime.spawn(async move { client.send(body).await });
        match sent.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(failed)) => Err(OTelSdkError::InternalFailure(failed.to_string())),
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "the export task did not finish: {e}"
            ))),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shut_down.store(true, Ordering::Release);
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        self.temporality
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(span_id: u64, value: f64) -> Candidate {
        Candidate {
            name: "unit.test.duration",
            unit: Some("s"),
            bucket: SECONDS_BUCKET,
            attributes: vec![KeyValue::new("span", span_id as i64)],
            slot: Slot {
                value,
                time_unix_nano: 1,
                trace_id: [1; 16],
                span_id: span_id.to_be_bytes(),
            },
        }
    }
    const SECONDS_BUCKET: usize = 3;

    #[test]
    fn waiting_points_are_bounded_per_span_and_in_all() {
        let mut pending = Pending::default();
        for _ in 0..CANDIDATES_PER_SPAN {
            room(&mut pending, 1, &mut None)
                .expect("room")
                .push(candidate(1, 0.1));
        }
        assert!(
            room(&mut pending, 1, &mut None).is_none(),
            "one span's points are capped"
        );
        for span in 2..=(3 * PENDING_SPANS as u64) {
            if let Some(w) = room(&mut pending, span, &mut None) {
                w.push(candidate(span, 0.1));
            }
            assert!(pending.newer.len() <= PENDING_SPANS);
            assert!(pending.older.len() <= PENDING_SPANS);
        }
        // The oldest spans were forgotten; the latest generation waits.
        assert!(!pending.newer.contains_key(&1) && !pending.older.contains_key(&1));
        assert!(pending.newer.contains_key(&(3 * PENDING_SPANS as u64)));
    }

    #[test]
    fn a_refused_span_leaves_no_exemplar_and_an_admitted_one_does() {
        // Span ids no other test uses: the statics are the crate's.
        let (refused, admitted) = (0xdead_0001_u64, 0xdead_0002_u64);
        {
            let mut guard = pending();
            let pending = guard.get_or_insert_with(Pending::default);
            room(pending, refused, &mut None)
                .expect("room")
                .push(candidate(refused, 0.2));
            room(pending, admitted, &mut None)
                .expect("room")
                .push(candidate(admitted, 0.3));
        }
        PENDING_ANY.store(true, Ordering::Relaxed);
        span_ended(refused, false);
        span_ended(admitted, true);
        let guard = points();
        let named: Vec<u64> = guard
            .iter()
            .flat_map(|p| p.values())
            .flat_map(|s| s.slots.iter().flatten())
            .map(|slot| u64::from_be_bytes(slot.span_id))
            .collect();
        assert!(named.contains(&admitted), "{named:x?}");
        assert!(!named.contains(&refused), "{named:x?}");
        let waiting = pending();
        let waiting = waiting.as_ref().expect("pending");
        for id in [refused, admitted] {
            assert!(!waiting.newer.contains_key(&id) && !waiting.older.contains_key(&id));
        }
    }

    #[test]
    fn nanos_since_epoch_of_the_epoch_is_zero() {
        assert_eq!(nanos_since_epoch(UNIX_EPOCH), 0);
        assert_eq!(
            nanos_since_epoch(UNIX_EPOCH + Duration::from_millis(3)),
            3_000_000
        );
    }
}
