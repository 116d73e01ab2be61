//! `otel-gpu-receiver`: parse flags, validate the configuration, run.
//! Configuration errors exit with code 2.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use otel_gpu_receiver::RunError;
use otel_gpu_receiver::config::{Flags, Settings};
use otel_gpu_receiver::telemetry::TelemetryError;

fn main() -> ExitCode {
    otel_gpu_receiver::configure_malloc();
    // clap exits with code 2 on a usage error (an unknown flag or flag value).
    let flags = Flags::parse();
    if flags.catalogue {
        print!("{}", otel_gpu_receiver::catalogue::markdown());
        return ExitCode::SUCCESS;
    }
    // --check-config validates what a manifest or a config file says, anywhere: the
    // host paths are the running agent's to check.
    let check_only = flags.check_config;
    let settings = match Settings::resolve(flags, &|k| std::env::var(k).ok()).and_then(|s| {
        if check_only {
            Ok(s)
        } else {
            s.check_host_paths().map(|()| s)
        }
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("otel-gpu-receiver: configuration error: {}", chain(&e));
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("otel-gpu-receiver: configuration ok");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal, so logs collected from containers stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otel-gpu-receiver: {e:#}");
            // An OTLP setting that cannot be used is a configuration error too.
            let config = matches!(
                e.downcast_ref::<RunError>(),
                Some(RunError::Telemetry(
                    TelemetryError::Client(_) | TelemetryError::Temporality(_)
                ))
            );
            if config {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(settings: &Settings) -> anyhow::Result<()> {
    if settings.once {
        let (snapshot, gpus) = otel_gpu_receiver::collect_once_with_gpus(settings)
            .context("collecting one snapshot")?;
        // The GPUs first ("is it seeing my GPUs?"); on stderr with --format json, so
        // that stdout stays one JSON document.
        let list = otel_gpu_receiver::gpu::list(&gpus);
        let gpu_on = settings
            .families
            .contains(&otel_gpu_receiver::catalogue::Family::Gpu);
        match settings.format {
            _ if !gpu_on => {}
            otel_gpu_receiver::config::Format::Json => eprint!("{list}"),
            otel_gpu_receiver::config::Format::Table => print!("{list}"),
        }
        print!(
            "{}",
            otel_gpu_receiver::output::render(&snapshot, settings.format)
        );
        return Ok(());
    }
    otel_gpu_receiver::run(settings).context("running the agent")
}

fn chain(e: &dyn std::error::Error) -> String {
    otel_gpu_receiver::collector::DisplayChain(e).to_string()
}
