//! `demo-backend`: The demo's inventory: a tonic gRPC server.
//! Flags and `DEMO_*` variables: `--help`; telemetry: the `OTEL_*` variables.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let settings = demo::backend::Settings::parse();
    demo::exit(demo::backend::main(&settings))
}
