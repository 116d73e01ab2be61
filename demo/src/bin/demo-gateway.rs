//! `demo-gateway`: The demo's HTTP gateway: axum, calling demo-backend over gRPC.
//! Flags and `DEMO_*` variables: `--help`; telemetry: the `OTEL_*` variables.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let settings = demo::gateway::Settings::parse();
    demo::exit(demo::gateway::main(&settings))
}
