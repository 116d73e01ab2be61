// A Telemetry dropped at the end of its statement shuts telemetry down before
// anything is exported: with unused_must_use denied, that is a compile error.
#![deny(unused_must_use)]

fn main() -> Result<(), otel_instrument::InitError> {
    otel_instrument::builder!().build()?;
    Ok(())
}
