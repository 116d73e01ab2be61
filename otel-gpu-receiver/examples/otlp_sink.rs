//! An OTLP gRPC sink for `benches/footprint.sh`'s push measurement: it accepts every
//! export, forgets it (so its memory stays flat), and prints five times a second how many
//! export requests arrived in total, the last `otel_gpu_receiver.cycles` value and the
//! data points of the last request:
//!
//! ```text
//! requests 51 cycles 53 points 670
//! ```
//!
//! Usage: `cargo run --release -p otel-gpu-receiver --example otlp_sink -- 127.0.0.1:14317`

use std::io::Write as _;
use std::time::Duration;

use otel_instrument::testing::OtlpSink;
use otel_instrument::testing::proto::metrics::v1::{metric, number_data_point};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let addr = addr.parse().map_err(std::io::Error::other)?;
    let sink = OtlpSink::start_at(addr)?;
    let (mut requests, mut cycles, mut points) = (0_usize, 0_i64, 0_usize);
    let mut stdout = std::io::stdout();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let got = sink.received();
        sink.clear();
        requests += got.metrics.len();
        if let Some(last) = got.metrics.last() {
            points = 0;
            for m in last
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
            {
                let dps = match &m.data {
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    _ => continue,
                };
                points += dps.len();
                if m.name == "otel_gpu_receiver.cycles"
                    && let Some(number_data_point::Value::AsInt(c)) =
                        dps.first().and_then(|d| d.value)
                {
                    cycles = c;
                }
            }
        }
        writeln!(
            stdout,
            "requests {requests} cycles {cycles} points {points}"
        )?;
        stdout.flush()?;
    }
}
