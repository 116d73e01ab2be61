//! Quickstart: one line of setup, a little traced work, one failure, a clean exit.
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run -p otel-instrument --example quickstart
//! ```

use std::time::Duration;

use opentelemetry::KeyValue;
use tracing::field::Empty;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // service.name = "otel-instrument" and service.version = this crate's version,
    // unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say otherwise.
    let guard = otel_instrument::init!()?;

    let jobs = opentelemetry::global::meter("quickstart")
        .u64_counter("quickstart.jobs")
        .with_unit("{job}")
        .build();

    for id in 0..3 {
        let span = tracing::info_span!("process_job", job.id = id);
        let _entered = span.enter();
        std::thread::sleep(Duration::from_millis(2));
        jobs.add(1, &[KeyValue::new("result", "ok")]);
        tracing::info!(job.id = id, "job done");
    }

    let span = tracing::info_span!("load_config", otel.status_code = Empty, error.type = Empty);
    {
        let _entered = span.enter();
        if let Err(e) = std::fs::read_to_string("/nonexistent/quickstart.toml") {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", format!("{:?}", e.kind()));
            jobs.add(1, &[KeyValue::new("result", "error")]);
            tracing::warn!(error = %e, "could not load the config; using defaults");
        }
    }
    drop(span);

    // Flushes with a deadline, even when no collector is listening.
    guard.shutdown();
    Ok(())
}
