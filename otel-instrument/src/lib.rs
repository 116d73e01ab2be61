//! otel-instrument
pub mod config;
#[cfg(feature = "testing")]
pub mod testing;
