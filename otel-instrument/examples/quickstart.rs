//! Quickstart: one line of setup, a few `#[monitored]` functions (a sync fn, an
//! async fn and a method, one of which fails), a metric macro, a clean exit.
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run -p otel-instrument --example quickstart
//! ```
//!
//! Every call exports a span and the `function.calls`, `function.calls.duration`
//! and `function.calls.concurrent` metrics (see MONITORED.md).

use std::path::PathBuf;
use std::time::Duration;

use otel_instrument::monitored;

/// A sync fn: one job of work.
#[monitored]
fn process_job(id: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(2));
    otel_instrument::counter!("quickstart.jobs", 1, "result" => "ok");
    tracing::info!(job.id = id, "job done");
    id * 2
}

/// An async fn that calls the sync one; its calls carry `caller.function`.
#[monitored]
async fn run_jobs(count: u32) -> u32 {
    let mut total = 0;
    for id in 0..count {
        tokio::time::sleep(Duration::from_millis(1)).await;
        total += process_job(id);
    }
    total
}

struct ConfigLoader {
    path: PathBuf,
}

impl ConfigLoader {
    /// A method that fails: its span gets status Error and `error.type`, and
    /// `function.calls` counts it with `result="error"`.
    #[monitored(skip(self))]
    fn load(&self) -> std::io::Result<String> {
        std::fs::read_to_string(&self.path)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // service.name = "otel-instrument" and service.version = this crate's version,
    // unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say otherwise.
    let guard = otel_instrument::init!()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let total = runtime.block_on(run_jobs(3));
    tracing::info!(total, "jobs finished");

    let loader = ConfigLoader {
        path: PathBuf::from("/nonexistent/quickstart.toml"),
    };
    if let Err(e) = loader.load() {
        otel_instrument::counter!("quickstart.jobs", 1, "result" => "error");
        tracing::warn!(error = %e, "could not load the config; using defaults");
    }

    // Flushes with a deadline, even when no collector is listening.
    guard.shutdown();
    Ok(())
}
