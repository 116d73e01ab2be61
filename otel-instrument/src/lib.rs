//! # otel-instrument
//!
//! One line sets up tracing and metrics export over OTLP from the standard
//! `OTEL_*` variables, on top of [`tracing`] and OpenTelemetry.
//!
//! ```no_run
//! fn main() -> Result<(), otel_instrument::InitError> {
//!     // service.name and service.version default to this crate's name and version.
//!     let _guard = otel_instrument::init!()?;
//!     tracing::info_span!("work").in_scope(|| tracing::info!("hello"));
//!     Ok(())
//!     // Dropping the guard flushes, with a deadline, even if the collector is down.
//! }
//! ```
//!
//! To set anything in code, start from [`builder!`] (the same defaults as
//! [`init!`]); to compose with a subscriber of your own, take the layer and its
//! guard together:
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! fn main() -> Result<(), otel_instrument::InitError> {
//!     let (layer, _guard) = otel_instrument::builder!()
//!         .service_name("checkout")
//!         .build()?
//!         .into_layer();
//!     tracing_subscriber::registry().with(layer).init();
//!     Ok(()) // keep `_guard` alive while the layer is in use
//! }
//! ```

pub mod config;
pub mod errors;
pub mod exemplars;
pub mod export;
pub mod metrics;
pub mod monitored;
pub mod names;
pub mod otlp;
pub mod outcome;
mod process;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod prometheus_names;
pub mod propagation;
pub mod redact;
pub mod resource;
#[cfg(feature = "serve")]
pub mod serve;
mod setup;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

pub use config::{
    BatchSettings, Compression, ConfigError, ExemplarFilter, ParentRoot, Propagator, Protocol,
    SamplerConfig,
};
pub use setup::{InitError, Telemetry, TelemetryBuilder, TelemetryGuard};

pub use errors::{Categorize, ErrorCategory};
#[doc(hidden)]
pub use opentelemetry as __opentelemetry;
/// Instruments a function with a span and RED metrics; see [`monitored`](mod@monitored).
pub use otel_instrument_macros::monitored;
pub use outcome::Fallible;
pub use process::heap_in_use;

/// Sets up telemetry from the `OTEL_*` variables, with the calling crate's name
/// and version as the default `service.name` and `service.version`, and installs
/// the global `tracing` subscriber. Returns `Result<TelemetryGuard, InitError>`.
#[macro_export]
macro_rules! init {
    () => {
        $crate::Telemetry::builder()
            .default_service(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .install()
    };
}

/// Like [`init!`] but returns the [`TelemetryBuilder`] for further settings:
/// `service.name` and `service.version` default to the calling crate's name and
/// version, which the environment and the builder's own setters beat. Prefer it
/// to [`Telemetry::builder`], which knows no service name.
///
/// ```no_run
/// let _guard = otel_instrument::builder!()
///     .endpoint("http://collector:4317")
///     .install()?;
/// # Ok::<(), otel_instrument::InitError>(())
/// ```
#[macro_export]
macro_rules! builder {
    () => {
        $crate::Telemetry::builder()
            .default_service(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
    };
}
