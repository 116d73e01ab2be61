//! The export path per snapshot, on the fixtures of the golden test (real collection
//! cycles: the host, 8 fake GPUs with `--per-process`):
//!
//! - `render`: what the pull endpoint costs per cycle now, [`Renderer::render`];
//! - `render+gzip`, `openmetrics`: the extra work when a scraper asks for them;
//! - `sdk-prometheus`: what a scrape cost before, the SDK collect through
//!   opentelemetry-prometheus, `gather` and the text encoder;
//! - `otlp`: one OTLP export without the network through the SDK, as the agent pushed
//!   before: the observable callbacks and collect, the conversion to the OTLP request
//!   and its protobuf encoding;
//! - `otlp-encoder`: the same request encoded straight from the snapshot
//!   ([`otel_gpu_receiver::otlp::Encoder`], what the agent pushes now), in the same run.
//!
//! Throughput is in series, so criterion's `thrpt` reads as series per second; BENCHMARKS.md
//! gives the time per 1,000 series.
//!
//! ```sh
//! cargo bench -p otel-gpu-receiver --bench export
//! ```

#[path = "../tests/attribution_support/mod.rs"]
mod attribution_support;
#[path = "../tests/export_fixtures/mod.rs"]
mod export_fixtures;
#[path = "../tests/fake_nvml/mod.rs"]
mod fake_nvml;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use export_fixtures::{Fixture, collect};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use otel_gpu_receiver::exposition::{Format, Renderer};
use otel_gpu_receiver::snapshot::{AttributeOrder, SnapshotCell};
use otel_gpu_receiver::telemetry;

/// Converts and encodes every export as the OTLP gRPC exporter does, then drops it.
#[derive(Debug, Clone, Default)]
struct EncodingExporter {
    bytes: Arc<AtomicUsize>,
}

impl PushMetricExporter for EncodingExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let request = ExportMetricsServiceRequest::from(metrics);
        let encoded = prost::Message::encode_to_vec(&request);
        self.bytes.store(encoded.len(), Ordering::Relaxed);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

fn export(c: &mut Criterion) {
    for fixture in [Fixture::Host, Fixture::Gpus8] {
        let export_fixtures::Scene {
            settings, snapshot, ..
        } = collect(fixture);
        let cell = SnapshotCell::default();
        cell.store(snapshot);
        let snapshot = cell.load();
        let resource = telemetry::resource(&settings);
        let mut renderer = Renderer::new(&resource, &telemetry::scope());
        let rendered = renderer.render(&snapshot);
        let series = rendered.series() as u64;
        eprintln!(
            "{}: {series} series, text {} bytes, gzip {} bytes",
            fixture.name(),
            rendered.text().len(),
            rendered.body(Format::Text, true).len()
        );

        let mut g = c.benchmark_group(fixture.name());
        g.throughput(Throughput::Elements(series));
        g.bench_function("render", |b| {
            b.iter(|| black_box(renderer.render(&snapshot)))
        });
        g.bench_function("render+gzip", |b| {
            b.iter(|| black_box(renderer.render(&snapshot).body(Format::Text, true)))
        });
        g.bench_function("render+openmetrics", |b| {
            b.iter(|| black_box(renderer.render(&snapshot).body(Format::OpenMetrics, false)))
        });

        // Before: a scrape through the SDK and opentelemetry-prometheus.
        let registry = prometheus::Registry::new();
        let prom = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .unwrap();
        let before = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prom)
            .build();
        telemetry::register_catalogue(
            &before.meter_with_scope(telemetry::scope()),
            &settings.families,
            &cell,
        );
        g.bench_function("sdk-prometheus", |b| {
            b.iter(|| {
                let mut out = Vec::new();
                prometheus::Encoder::encode(
                    &prometheus::TextEncoder::new(),
                    &registry.gather(),
                    &mut out,
                )
                .unwrap();
                black_box(out)
            })
        });

        // OTLP: the periodic reader's collect and export, forced; with the snapshot as the
        // families build it, and with its attributes in key order (what the agent stores).
        let sorted = SnapshotCell::default();
        sorted.sort_attributes();
        sorted.store((*snapshot).clone());
        // What sorting costs the collection thread per cycle (a clone of the snapshot stands
        // in for the families' fresh points; `clone` alone is the baseline to subtract).
        let mut order = AttributeOrder::default();
        g.bench_function("snapshot-clone", |b| {
            b.iter(|| black_box((*snapshot).clone()))
        });
        g.bench_function("snapshot-clone+sort-attributes", |b| {
            b.iter(|| {
                let mut s = (*snapshot).clone();
                order.apply(&mut s);
                black_box(s)
            })
        });
        let mut providers = Vec::new();
        for (id, cell) in [("otlp", &cell), ("otlp-sorted-attributes", &sorted)] {
            let exporter = EncodingExporter::default();
            let otlp = SdkMeterProvider::builder()
                .with_resource(resource.clone())
                .with_reader(
                    PeriodicReader::builder(exporter.clone())
                        .with_interval(Duration::from_secs(3600))
                        .build(),
                )
                .build();
            telemetry::register_catalogue(
                &otlp.meter_with_scope(telemetry::scope()),
                &settings.families,
                cell,
            );
            otlp.force_flush().unwrap();
            eprintln!(
                "{}: {id}: request {} bytes",
                fixture.name(),
                exporter.bytes.load(Ordering::Relaxed)
            );
            g.bench_function(id, |b| b.iter(|| otlp.force_flush().unwrap()));
            providers.push(otlp);
        }
        // Now: the request encoded from the snapshot, series state kept across exports
        // as the push task keeps it.
        let mut encoder = otel_gpu_receiver::otlp::Encoder::new(
            &resource,
            &telemetry::scope(),
            &settings.families,
            otel_gpu_receiver::otlp::Temporality::Cumulative,
            Some(Arc::new(otel_gpu_receiver::cardinality::Limits::estimate(
                &settings,
            ))),
        );
        let bytes = encoder
            .encode(&snapshot, std::time::SystemTime::now())
            .len();
        eprintln!("{}: otlp-encoder: request {bytes} bytes", fixture.name());
        g.bench_function("otlp-encoder", |b| {
            b.iter(|| black_box(encoder.encode(&snapshot, std::time::SystemTime::now())))
        });
        g.finish();
        let _ = before.shutdown();
        for p in providers {
            let _ = p.shutdown();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = export
}
criterion_main!(benches);
