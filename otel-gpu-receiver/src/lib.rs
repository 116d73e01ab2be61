//! # otel-gpu-receiver
//!
//! A per-machine agent: a collection task reads host metric families and NVIDIA GPUs
//! (through NVML) once per interval into a [`snapshot::Snapshot`], which is rendered
//! two ways: the OTLP request ([`otlp`]) pushed over gRPC or HTTP on otel-instrument's
//! wire client, and, optionally, a Prometheus pull endpoint ([`exposition`]). Its
//! settings are in `CONFIG.md`, beside this crate's `Cargo.toml`.
//!
//! ```no_run
//! use otel_gpu_receiver::config::{Flags, Settings};
//!
//! // `--once`: one snapshot, printed as a table.
//! let settings = Settings::resolve(Flags::default(), &|k| std::env::var(k).ok()).unwrap();
//! let snapshot = otel_gpu_receiver::collect_once(&settings).unwrap();
//! print!("{}", otel_gpu_receiver::output::render(&snapshot, settings.format));
//! ```

pub mod attribution;
pub mod cardinality;
pub mod catalogue;
pub mod collector;
pub mod config;
pub mod exposition;
pub mod gpu;
pub mod host;
pub mod identity;
pub mod names;
pub mod otlp;
pub mod output;
pub mod quiet;
pub mod selfmon;
pub mod snapshot;
pub mod source;
pub mod telemetry;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use collector::Collector;
use config::Settings;
use selfmon::SelfStats;
use snapshot::{Snapshot, SnapshotCell};
use telemetry::{Health, Telemetry, TelemetryError};

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Export could not start.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// A source worker thread could not start.
    #[error("cannot start a collection thread")]
    Spawn(#[source] std::io::Error),
}

/// Collects one snapshot (for `--once`). Waits a quarter second so that CPU
/// utilization has an interval to measure.
///
/// # Errors
/// A worker thread cannot be spawned.
pub fn collect_once(settings: &Settings) -> Result<Snapshot, RunError> {
    collect_once_with_gpus(settings).map(|(s, _)| s)
}

/// Like [`collect_once`], and also returns the GPUs the cycle saw (for `--once` to
/// list before the readings).
///
/// # Errors
/// A worker thread cannot be spawned.
pub fn collect_once_with_gpus(
    settings: &Settings,
) -> Result<(Snapshot, Vec<gpu::GpuInfo>), RunError> {
    host::process::mark_start();
    let inventory = gpu::Inventory::default();
    let mut c = collector(settings, SelfStats::default(), &inventory)?;
    std::thread::sleep(Duration::from_millis(250));
    let snapshot = c.cycle();
    Ok((snapshot, inventory.devices()))
}

/// The cycle's sources: the host families, then the GPU source with its settings.
fn collector(
    settings: &Settings,
    stats: SelfStats,
    inventory: &gpu::Inventory,
) -> Result<Collector, RunError> {
    let host: Vec<catalogue::Family> = settings
        .families
        .iter()
        .copied()
        .filter(|f| *f != catalogue::Family::Gpu)
        .collect();
    let mut c = Collector::with_host(&host, &settings.host(), settings.source_timeout, stats)
        .map_err(RunError::Spawn)?;
    if settings.families.contains(&catalogue::Family::Gpu) {
        // Attribution (issue 6): process -> container -> pod, over the GPU source's points,
        // NVML and the kubelet inside one budget (issue 13).
        c.add(attribution::wrap_within(
            gpu::source(settings, inventory.clone()),
            settings.attribution.as_ref(),
            gpu::source_budget(settings),
        ))
        .map_err(RunError::Spawn)?;
    }
    Ok(c)
}

/// Runs the agent until SIGINT or SIGTERM.
///
/// # Errors
/// Export cannot be set up or a worker thread cannot be spawned.
pub fn run(settings: &Settings) -> Result<(), RunError> {
    host::process::mark_start();
    let cell = SnapshotCell::default();
    let health = Health::new(settings.interval);
    let telemetry = Telemetry::start(settings, cell.clone(), health.clone())?;
    let stats = SelfStats {
        export: Some(telemetry.export_stats()),
        http: Some(telemetry.http_stats()),
        ..SelfStats::default()
    };
    let inventory = gpu::Inventory::default();
    let mut collector = collector(settings, stats, &inventory)?;
    // The SDK folds series beyond an instrument's limit: count them per metric (OTLP
    // push only; the Prometheus exposition has no limit).
    if let Some(limits) = telemetry.limits() {
        collector.set_limits(limits);
    }

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    telemetry.runtime().handle().spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    tracing::info!(
        interval = ?settings.interval,
        families = ?settings.families,
        otlp = settings.otlp.as_ref().map_or("off", |c| c.endpoint.as_str()),
        "collecting"
    );

    let mut next = Instant::now();
    loop {
        cell.store(collector.cycle());
        health.beat();
        // An agent without its GPU source stays alive, and says it is degraded (issue 13).
        health.set_degraded(inventory.degraded());
        next += settings.interval;
        let now = Instant::now();
        if next < now {
            // A slow cycle: skip the ticks it overran instead of bursting.
            next = now + settings.interval;
        }
        match stop_rx.recv_timeout(next - now) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    tracing::info!("shutting down");
    telemetry.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sets glibc's malloc up for an agent that does the same work every cycle; call it
/// first in `main`, before any thread starts. Each setting gives way to glibc's own
/// variable for it.
///
/// - Two arenas (`MALLOC_ARENA_MAX`). By default every thread that allocates may get an
///   arena of its own (up to 8 per CPU), and the agent's points are made on its worker
///   threads and freed on the collection thread: with two, freed memory is reused
///   instead of kept per thread. Side by side with the default (BENCHMARKS.md) it
///   measured 0.3–0.7 MB less RSS and about 10 % less CPU per cycle.
/// - Blocks of 128 KiB and more always come from `mmap` (`MALLOC_MMAP_THRESHOLD_`).
///   Every cycle makes a few buffers of a whole request or page (the OTLP request,
///   about 230 KB with 8 GPUs, and the gRPC layer's copy of it; the Prometheus text and
///   its gzip); glibc's default threshold rises to the size of the first such block
///   freed, after which they come from an arena, and their pages stay resident as free
///   chunks between cycles. With the threshold fixed, they go back to the system when
///   freed: with 8 GPUs, pushing, 0.15–0.85 MB less anonymous memory than the dynamic
///   threshold in side-by-side runs, for about 40 more page faults per cycle; the CPU
///   per cycle differed by less than the runs' own noise (BENCHMARKS.md, issue 23).
pub fn configure_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; no thread has started yet.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // Setting it also turns off glibc's dynamic adjustment of the threshold.
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            }
        }
    }
}
