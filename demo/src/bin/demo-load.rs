//! `demo-load`: drives demo-gateway over HTTP with a mix of found, missing, unavailable and slow items.
//! Flags and `DEMO_*` variables: `--help`; telemetry: the `OTEL_*` variables.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let settings = demo::load::Settings::parse();
    demo::exit(demo::load::main(&settings))
}
