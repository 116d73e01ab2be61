//! What `#[monitored]` expands to call: the per-callsite guard and RED instruments.

use crate::config::SamplerConfig;

/// Autometrics' latency buckets, in seconds.
pub const DEFAULT_HISTOGRAM_BOUNDARIES: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Settings that `Telemetry` hands to `#[monitored]` at install time.
#[derive(Debug, Clone)]
pub(crate) struct MonitoredSettings {
    /// The configured head sampler.
    pub sampler: SamplerConfig,
    /// Boundaries of `function.calls.duration`, in seconds.
    pub histogram_boundaries: Vec<f64>,
}

/// Called once by setup when telemetry is installed.
pub(crate) fn configure(settings: MonitoredSettings) {
    let _ = settings;
}
