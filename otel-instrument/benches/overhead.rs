//! Per-call overhead of `#[monitored]` against the peers, in one criterion run.
//!
//! Every variant runs one instrumented root and 100 instrumented calls of a
//! trivial `#[inline(never)]` function per iteration (as fastrace's own
//! benchmark does); criterion reports the time per 100 calls (`Elements(100)`).
//! Exporters count and discard.
//!
//! - (a) a bare fn;
//! - (b) `#[monitored(span = false)]`: metrics only;
//! - (c) `#[monitored]`, sampler `parentbased_traceidratio` 0.01, on unsampled calls
//!   (an id generator that only draws ids outside the 1%);
//! - (d) `#[monitored]`, AlwaysOn;
//! - (e) `#[tracing::instrument]` + tracing-opentelemetry, batch processor, AlwaysOn;
//! - (f) the same, AlwaysOff;
//! - (g) fastrace `#[trace]` with a discarding reporter;
//! - (h) autometrics `#[autometrics]` with its default (prometheus-client) backend;
//! - (i), (j), (k): (b), (c) and (d) with the defaults exactly as `init!()`
//!   installs them (`Telemetry::subscriber`: EnvFilter, the fmt layer, the OTel
//!   layer; real OTLP exporters to a live in-process collector).
//!
//! Run: `cargo bench -p otel-instrument --bench overhead`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider, SpanData,
    SpanExporter,
};
use otel_instrument::monitored::{self, MonitoredSettings};
use otel_instrument::{ParentRoot, SamplerConfig};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

const CALLS: u64 = 100;

// ---------------------------------------------------------------------------
// Discarding exporters.

#[derive(Debug, Clone, Default)]
struct CountingSpans(Arc<AtomicU64>);

impl SpanExporter for CountingSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct CountingMetrics(Arc<AtomicU64>);

impl PushMetricExporter for CountingMetrics {
    async fn export(&self, _metrics: &ResourceMetrics) -> OTelSdkResult {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

#[derive(Debug)]
struct DiscardReporter(Arc<AtomicU64>);

impl fastrace::collector::Reporter for DiscardReporter {
    fn report(&mut self, spans: Vec<fastrace::collector::SpanRecord>) {
        self.0.fetch_add(spans.len() as u64, Ordering::Relaxed);
    }
}

/// Trace ids whose low word is above every 1% threshold: every root is unsampled.
#[derive(Debug)]
struct NeverInRatio;

impl IdGenerator for NeverInRatio {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from(u128::MAX - 1)
    }
    fn new_span_id(&self) -> SpanId {
        RandomIdGenerator::default().new_span_id()
    }
}

fn tracer_provider(sampler: Sampler, spans: &CountingSpans) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_span_processor(BatchSpanProcessor::builder(spans.clone()).build())
        .build()
}

fn monitored_provider(
    config: SamplerConfig,
    sampler: Sampler,
    spans: &CountingSpans,
) -> SdkTracerProvider {
    monitored::configure(MonitoredSettings {
        sampler: config,
        histogram_boundaries: monitored::DEFAULT_HISTOGRAM_BOUNDARIES.to_vec(),
        ..MonitoredSettings::default()
    });
    monitored::set_other_layers(false);
    let tp = SdkTracerProvider::builder()
        .with_sampler(monitored::sampler(sampler))
        .with_id_generator(monitored::id_generator(RandomIdGenerator::default()))
        .with_span_processor(BatchSpanProcessor::builder(spans.clone()).build())
        .build();
    // Sampled #[monitored] calls start their spans on the global provider.
    opentelemetry::global::set_tracer_provider(tp.clone());
    monitored::set_tracer(tp.tracer("otel-instrument"));
    tp
}

// ---------------------------------------------------------------------------
// The functions under test.

mod bare {
    #[inline(never)]
    pub fn leaf(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31)
    }

    #[inline(never)]
    pub fn root(n: u64) -> u64 {
        (0..n).fold(0, |a, i| a ^ leaf(i))
    }
}

mod metrics_only {
    use otel_instrument::monitored;

    #[monitored(span = false)]
    #[inline(never)]
    pub fn leaf(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31)
    }

    #[monitored(span = false)]
    #[inline(never)]
    pub fn root(n: u64) -> u64 {
        (0..n).fold(0, |a, i| a ^ leaf(i))
    }
}

mod full {
    use otel_instrument::monitored;

    #[monitored]
    #[inline(never)]
    pub fn leaf(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31)
    }

    #[monitored]
    #[inline(never)]
    pub fn root(n: u64) -> u64 {
        (0..n).fold(0, |a, i| a ^ leaf(i))
    }
}

mod instrument {
    #[tracing::instrument]
    #[inline(never)]
    pub fn leaf(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31)
    }

    #[tracing::instrument]
    #[inline(never)]
    pub fn root(n: u64) -> u64 {
        (0..n).fold(0, |a, i| a ^ leaf(i))
    }
}

mod fast {
    #[fastrace::trace]
    #[inline(never)]
    pub fn leaf(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31)
    }

    #[inline(never)]
    pub fn root(n: u64) -> u64 {
        let root = fastrace::Span::root("root", fastrace::prelude::SpanContext::random());
        let _guard = root.set_local_parent();
        (0..n).fold(0, |a, i| a ^ leaf(i))
    }
}

mod auto {
    use autometrics::autometrics;

    #[autometrics]
    #[inline(never)]
    pub fn leaf(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(31)
    }

    #[autometrics]
    #[inline(never)]
    pub fn root(n: u64) -> u64 {
        (0..n).fold(0, |a, i| a ^ leaf(i))
    }
}

// ---------------------------------------------------------------------------

fn overhead(c: &mut Criterion) {
    // One global meter provider whose exporter counts and discards; every
    // metric-recording variant uses it.
    let metric_exports = CountingMetrics::default();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(metric_exports.clone())
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let fastrace_spans = Arc::new(AtomicU64::new(0));
    fastrace::set_reporter(
        DiscardReporter(fastrace_spans.clone()),
        fastrace::collector::Config::default(),
    );

    let mut g = c.benchmark_group("overhead");
    g.throughput(Throughput::Elements(CALLS));

    g.bench_function("a_bare_fn", |b| b.iter(|| bare::root(black_box(CALLS))));

    {
        monitored::configure(MonitoredSettings::default());
        g.bench_function("b_monitored_metrics_only", |b| {
            b.iter(|| metrics_only::root(black_box(CALLS)))
        });
    }

    {
        let spans = CountingSpans::default();
        let config = SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(0.01));
        let tp = monitored_provider(
            config,
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01))),
            &spans,
        );
        monitored::set_id_generator(NeverInRatio);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tp.tracer("bench"))
            .with_filter(monitored::otel_filter());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            g.bench_function("c_monitored_ratio_0.01_unsampled", |b| {
                b.iter(|| full::root(black_box(CALLS)))
            });
        });
        let _ = tp.force_flush();
        assert_eq!(
            spans.0.load(Ordering::Relaxed),
            0,
            "(c) must export nothing"
        );
        let _ = tp.shutdown();
    }

    {
        let spans = CountingSpans::default();
        let tp = monitored_provider(SamplerConfig::AlwaysOn, Sampler::AlwaysOn, &spans);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tp.tracer("bench"))
            .with_filter(monitored::otel_filter());
        let subscriber = tracing_subscriber::registry().with(layer);
        let mut ran = false;
        tracing::subscriber::with_default(subscriber, || {
            g.bench_function("d_monitored_always_on", |b| {
                ran = true;
                b.iter(|| full::root(black_box(CALLS)))
            });
        });
        let _ = tp.force_flush();
        assert!(
            !ran || spans.0.load(Ordering::Relaxed) > 0,
            "(d) must export spans"
        );
        let _ = tp.shutdown();
    }

    for (id, sampler) in [
        ("e_tracing_otel_always_on", Sampler::AlwaysOn),
        ("f_tracing_otel_always_off", Sampler::AlwaysOff),
    ] {
        let spans = CountingSpans::default();
        let tp = tracer_provider(sampler, &spans);
        let layer = tracing_opentelemetry::layer().with_tracer(tp.tracer("bench"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            g.bench_function(id, |b| b.iter(|| instrument::root(black_box(CALLS))));
        });
        let _ = tp.force_flush();
        let _ = tp.shutdown();
    }

    let mut ran = false;
    g.bench_function("g_fastrace", |b| {
        ran = true;
        b.iter(|| fast::root(black_box(CALLS)))
    });
    fastrace::flush();
    assert!(
        !ran || fastrace_spans.load(Ordering::Relaxed) > 0,
        "(g) must report spans"
    );

    g.bench_function("h_autometrics", |b| b.iter(|| auto::root(black_box(CALLS))));

    // The SDK's share of (b): the four bound-instrument operations every call
    // makes (concurrent +1 and -1, one counter add, one histogram record).
    {
        use opentelemetry::KeyValue;
        let meter = opentelemetry::global::meter("bench-floor");
        let labels = [
            KeyValue::new("function", "leaf"),
            KeyValue::new("module", "floor"),
        ];
        let ok = [
            labels[0].clone(),
            labels[1].clone(),
            KeyValue::new("result", "ok"),
        ];
        let calls = meter.u64_counter("floor.calls").build().bind(&ok);
        let duration = meter
            .f64_histogram("floor.duration")
            .with_boundaries(monitored::DEFAULT_HISTOGRAM_BOUNDARIES.to_vec())
            .build()
            .bind(&ok);
        let concurrent = meter
            .i64_up_down_counter("floor.concurrent")
            .build()
            .bind(&labels);
        g.bench_function("x_sdk_bound_ops_only", |b| {
            b.iter(|| {
                for i in 0..CALLS {
                    concurrent.add(1);
                    calls.add(1);
                    duration.record(black_box(i as f64) * 1e-9);
                    concurrent.add(-1);
                }
            })
        });
    }

    // The clock alone: the two reads every measured call makes, 100 times.
    g.bench_function("x_clock_instant_pairs", |b| {
        b.iter(|| {
            (0..CALLS).fold(Duration::ZERO, |a, _| {
                let t = std::time::Instant::now();
                a + black_box(t).elapsed()
            })
        })
    });
    #[cfg(target_arch = "x86_64")]
    g.bench_function("x_clock_tsc_pairs", |b| {
        // SAFETY: RDTSC has no preconditions on x86_64.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        b.iter(|| {
            (0..CALLS).fold(0u64, |a, _| {
                let t = tsc();
                a.wrapping_add(tsc().wrapping_sub(black_box(t)))
            })
        })
    });

    // The defaults, exactly as init!() installs them. Last: building them
    // replaces the global providers the variants above use.
    {
        let sink = otel_instrument::testing::OtlpSink::start().expect("sink");
        let default_setup = |sampler: Option<SamplerConfig>| {
            let mut b = otel_instrument::Telemetry::builder()
                .env_lookup(|_| None)
                .service_name("bench")
                .endpoint(sink.endpoint());
            if let Some(s) = sampler {
                b = b.sampler(s).id_generator(NeverInRatio);
            }
            b.build().expect("default setup")
        };

        let t = default_setup(None);
        let (subscriber, guard) = t.into_subscriber().expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            g.bench_function("i_default_metrics_only", |b| {
                b.iter(|| metrics_only::root(black_box(CALLS)))
            });
        });
        drop(guard);

        let t = default_setup(Some(SamplerConfig::ParentBased(ParentRoot::TraceIdRatio(
            0.01,
        ))));
        let (subscriber, guard) = t.into_subscriber().expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            g.bench_function("j_default_ratio_0.01_unsampled", |b| {
                b.iter(|| full::root(black_box(CALLS)))
            });
        });
        assert!(guard.flush());
        // The tail keeper (on, as by default) tracks every root here; only a
        // root that a descheduling made slower than the 5 ms floor may be kept.
        let spans = sink.received().spans();
        assert!(
            spans
                .iter()
                .all(|s| s.attributes().contains_key("sampling.kept")),
            "(j) must export no head-sampled span"
        );
        eprintln!(
            "(j): {} spans kept by the tail keeper, {:?}",
            spans.len(),
            otel_instrument::monitored::tail_stats()
        );
        drop(guard);

        let t = default_setup(None);
        let mut ran = false;
        let (subscriber, guard) = t.into_subscriber().expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            g.bench_function("k_default_always_on", |b| {
                ran = true;
                b.iter(|| full::root(black_box(CALLS)))
            });
        });
        assert!(guard.flush());
        let dropped = guard.stats().spans_dropped();
        let received = sink.received().spans().len();
        eprintln!("(k): {received} spans exported, {dropped} dropped on a full queue");
        assert!(!ran || received > 0, "(k) must export spans");
        drop(guard);
    }

    g.finish();
    let _ = meter_provider.force_flush();
    // The reader exports on flush even when no variant ran.
    assert!(metric_exports.0.load(Ordering::Relaxed) > 0);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = overhead
}
criterion_main!(benches);
