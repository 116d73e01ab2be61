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
//! `OTEL_METRICS_EXEMPLAR_FILTER`: `trace_based` (the default) and `always_on`
//! feed the reservoir from exported spans (an unsampled call has no span to
//! name, so `always_on` adds nothing beyond `trace_based`); `always_off` feeds
//! nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::Value;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{Exemplar as ProtoExemplar, exemplar, metric};
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
    }
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
    let Ok(mut guard) = RESERVOIR.try_lock() else {
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

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Adds the reservoir's exemplars to the `function.calls.duration` points of
/// `request`, and empties what it used.
pub(crate) fn attach(request: &mut ExportMetricsServiceRequest) {
    let mut guard = reservoir();
    let Some(reservoir) = guard.as_mut() else {
        return;
    };
    for rm in &mut request.resource_metrics {
        for sm in &mut rm.scope_metrics {
            if sm.scope.as_ref().is_none_or(|s| s.name != SCOPE_NAME) {
                continue;
            }
            for m in &mut sm.metrics {
                if m.name != FUNCTION_CALLS_DURATION {
                    continue;
                }
                let Some(metric::Data::Histogram(h)) = &mut m.data else {
                    continue;
                };
                for point in &mut h.data_points {
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
                    let (Some(function), Some(module), Some(result)) = (function, module, result)
                    else {
                        continue;
                    };
                    let Some(series) = reservoir.get_mut(function).and_then(|all| {
                        all.iter_mut()
                            .find(|s| s.module == module && s.result == result)
                    }) else {
                        continue;
                    };
                    // One per bucket, in bucket order: ascending by value, as
                    // Prometheus' OTLP translation expects.
                    point
                        .exemplars
                        .extend(series.slots.iter_mut().filter_map(|slot| {
                            slot.take().map(|s| ProtoExemplar {
                                filtered_attributes: Vec::new(),
                                time_unix_nano: s.time_unix_nano,
                                span_id: s.span_id.to_vec(),
                                trace_id: s.trace_id.to_vec(),
                                value: Some(exemplar::Value::AsDouble(s.value)),
                            })
                        }));
                }
            }
        }
    }
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

    #[test]
    fn nanos_since_epoch_of_the_epoch_is_zero() {
        assert_eq!(nanos_since_epoch(UNIX_EPOCH), 0);
        assert_eq!(
            nanos_since_epoch(UNIX_EPOCH + Duration::from_millis(3)),
            3_000_000
        );
    }
}
