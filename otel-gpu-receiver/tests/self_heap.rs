//! The agent's heap in use (`process.memory.heap.usage`, glibc `mallinfo2`), read as the
//! agent reads it (a collection cycle of the process family) and through both of its
//! renderings: the OTLP request it pushes and the Prometheus text it serves. The value
//! must be plausible and follow memory that this process allocates and holds.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::time::{Duration, SystemTime};

use otel_gpu_receiver::catalogue::Family;
use otel_gpu_receiver::collector::Collector;
use otel_gpu_receiver::config::Settings;
use otel_gpu_receiver::exposition::Renderer;
use otel_gpu_receiver::otlp::{Encoder, Temporality};
use otel_gpu_receiver::selfmon::SelfStats;
use otel_gpu_receiver::telemetry;
use otel_instrument::testing::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use otel_instrument::testing::proto::metrics::v1::metric::Data;
use otel_instrument::testing::proto::metrics::v1::number_data_point::Value;
use prost::Message as _;

const MIB: f64 = (1u32 << 20) as f64;

/// The process family's collector, and the agent's two renderings of its snapshots.
struct Renderings {
    collector: Collector,
    encoder: Encoder,
    renderer: Renderer,
}

impl Renderings {
    fn new() -> Self {
        let settings = Settings::default();
        let families = [Family::Process];
        let collector = Collector::new(
            &families,
            &settings.roots,
            Duration::from_secs(5),
            SelfStats::default(),
        )
        .expect("start the collector");
        let (resource, scope) = (telemetry::resource(&settings), telemetry::scope());
        Self {
            collector,
            encoder: Encoder::new(&resource, &scope, &families, Temporality::Cumulative, None),
            renderer: Renderer::new(&resource, &scope),
        }
    }

    /// One cycle: (heap as pushed, heap as served, RSS as pushed).
    fn read(&mut self) -> (f64, f64, f64) {
        let snapshot = self.collector.cycle();
        let request = ExportMetricsServiceRequest::decode(
            self.encoder.encode(&snapshot, SystemTime::now()).as_ref(),
        )
        .expect("our request decodes");
        let pushed = |name: &str| {
            let m = request.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} in the OTLP request"));
            assert_eq!(m.unit, "By", "{name}");
            let Some(Data::Sum(sum)) = &m.data else {
                panic!("{name} is an UpDownCounter: {:?}", m.data)
            };
            assert!(!sum.is_monotonic, "{name}");
            assert_eq!(sum.data_points.len(), 1, "{name}");
            match sum.data_points[0].value {
                Some(Value::AsInt(v)) => v as f64,
                other => panic!("{name}: an integer, not {other:?}"),
            }
        };
        let exposition = self.renderer.render(&snapshot);
        let text = std::str::from_utf8(exposition.text()).unwrap();
        let pulled = text
            .lines()
            .find_map(|l| l.strip_prefix("process_memory_heap_usage_bytes "))
            .or_else(|| {
                text.lines()
                    .find_map(|l| l.strip_prefix("process_memory_heap_usage_bytes{"))
                    .and_then(|l| l.rsplit_once(' ').map(|(_, v)| v))
            })
            .unwrap_or_else(|| panic!("no process_memory_heap_usage_bytes in\n{text}"))
            .parse::<f64>()
            .unwrap();
        assert!(
            text.contains("# TYPE process_memory_heap_usage_bytes gauge"),
            "an UpDownCounter is a gauge in Prometheus:\n{text}"
        );
        (
            pushed("process.memory.heap.usage"),
            pulled,
            pushed("process.memory.usage"),
        )
    }
}

#[test]
fn heap_in_use_is_pushed_and_served_and_follows_memory_the_agent_holds() {
    let mut r = Renderings::new();
    let (base, base_pulled, rss) = r.read();
    // Both renderings carry the one snapshot's value.
    assert_eq!(base, base_pulled);
    // Plausible: more than nothing, and a test process holds far less than a GiB.
    assert!(
        base > 64.0 * 1024.0 && base < 1024.0 * MIB,
        "heap {base} (RSS {rss})"
    );

    // 48 MiB held, in blocks of each size glibc treats differently: small (arena),
    // medium, and one large enough that it is mmap'd on its own.
    let ballast: Vec<Vec<u8>> = (0..16 * 1024)
        .map(|_| vec![1u8; 1024])
        .chain((0..64).map(|_| vec![2u8; 256 * 1024]))
        .chain(std::iter::once(vec![3u8; 16 << 20]))
        .collect();
    let (held, held_pulled, rss_held) = r.read();
    assert_eq!(held, held_pulled);
    assert_eq!(ballast.iter().map(Vec::len).sum::<usize>(), 48 << 20);
    drop(ballast);
    let (released, _, _) = r.read();
    eprintln!("heap {base} -> {held} (48 MiB held) -> {released} (freed); RSS {rss} -> {rss_held}");
    // The test is alone in this binary: a cycle's own allocations are far below the
    // 8 MiB allowed either way.
    assert!(
        held - base >= 40.0 * MIB && held - base <= 56.0 * MIB,
        "48 MiB held: heap {base} -> {held} (RSS {rss} -> {rss_held})"
    );
    assert!(
        held - released >= 40.0 * MIB,
        "48 MiB freed: heap {held} -> {released}"
    );
}
