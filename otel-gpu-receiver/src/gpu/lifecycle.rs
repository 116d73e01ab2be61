//! NVML comes and goes: the driver is installed after the agent starts (the GPU Operator on
//! Kubernetes), or unloaded and reloaded during an upgrade. This module holds what the
//! session needs to follow it: the GPU source's state, which the agent exports
//! (`otel_gpu_receiver.gpu.source.state`) and shows on `/healthz`, and the backoff between
//! attempts to initialise NVML.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use nvml_wrapper::error::NvmlError;

/// What the GPU source can do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SourceState {
    /// NVML is initialised and answers (zero GPUs included).
    Up = 1,
    /// The NVML library cannot be loaded (not installed, not mounted into the container).
    NoLibrary = 2,
    /// The library loads but the driver is not there (not loaded yet, or gone mid-run).
    NoDriver = 3,
    /// Initialisation failed for another reason (permissions, a version mismatch, ...).
    InitFailed = 4,
    /// NVML calls hang: the watchdog has given up on enough of them that the GPU
    /// readings are skipped, or initialisation itself hung.
    Hung = 5,
}

impl SourceState {
    /// Every state, in the order the self-metric lists them.
    pub const ALL: [SourceState; 5] = [
        SourceState::Up,
        SourceState::NoLibrary,
        SourceState::NoDriver,
        SourceState::InitFailed,
        SourceState::Hung,
    ];

    /// The `state` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::NoLibrary => "no_library",
            Self::NoDriver => "no_driver",
            Self::InitFailed => "init_failed",
            Self::Hung => "hung",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// The state an initialisation error leaves the source in.
    pub(crate) fn after_init_error(e: &NvmlError) -> Self {
        match e {
            NvmlError::LibloadingError(_)
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::LibraryNotFound => Self::NoLibrary,
            NvmlError::DriverNotLoaded => Self::NoDriver,
            NvmlError::Timeout => Self::Hung,
            _ => Self::InitFailed,
        }
    }
}

impl std::fmt::Display for SourceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an error of a call made during a run means the driver went away, so that
/// NVML has to be initialised again (the device handles are no longer valid).
pub(crate) fn driver_gone(e: &NvmlError) -> bool {
    matches!(e, NvmlError::DriverNotLoaded | NvmlError::Uninitialized)
}

/// The state shared between the session (writer) and whoever reports health.
#[derive(Debug, Default)]
pub(crate) struct SharedState(AtomicU8);

impl SharedState {
    pub(crate) fn set(&self, s: SourceState) {
        self.0.store(s as u8, Ordering::Relaxed);
    }

    /// `None` until the source has run once.
    pub(crate) fn get(&self) -> Option<SourceState> {
        SourceState::from_u8(self.0.load(Ordering::Relaxed))
    }
}

/// Exponential backoff between attempts to initialise NVML: `initial`, doubled after
/// every failure, capped at `max`. Attempts are made at the start of a cycle, so the
/// effective period is never shorter than the collection interval.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    delay: Duration,
    next: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            delay: initial,
            next: None,
        }
    }

    /// Whether an attempt may be made at `now`.
    pub(crate) fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// An attempt failed at `now`: wait the current delay, and double it for next time.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.next = Some(now + self.delay);
        self.delay = self.delay.saturating_mul(2).min(self.max);
    }

    /// The delay before the attempt after the next failure.
    #[cfg(test)]
    pub(crate) fn delay(&self) -> Duration {
        self.delay
    }

    /// Success: the next failure starts from `initial` again.
    pub(crate) fn reset(&mut self) {
        self.delay = self.initial;
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert!(b.ready(t0));
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..12 {
            b.failed(at);
            let mut wait = Duration::ZERO;
            while !b.ready(at + wait) {
                wait += Duration::from_millis(500);
            }
            waits.push(wait.as_secs_f64());
            at += wait;
        }
        assert_eq!(
            waits,
            [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0, 300.0
            ]
        );
        b.reset();
        assert!(b.ready(at));
        assert_eq!(b.delay(), Duration::from_secs(1));
    }

    #[test]
    fn a_zero_backoff_retries_at_once() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        b.failed(t0);
        assert!(b.ready(t0));
    }

    #[test]
    fn init_errors_map_to_states() {
        use SourceState::*;
        assert_eq!(
            SourceState::after_init_error(&NvmlError::DriverNotLoaded),
            NoDriver
        );
        assert_eq!(
            SourceState::after_init_error(&NvmlError::LibraryNotFound),
            NoLibrary
        );
        assert_eq!(
            SourceState::after_init_error(&NvmlError::FailedToLoadSymbol("x".into())),
            NoLibrary
        );
        assert_eq!(
            SourceState::after_init_error(&NvmlError::NoPermission),
            InitFailed
        );
        assert!(driver_gone(&NvmlError::Uninitialized));
        assert!(driver_gone(&NvmlError::DriverNotLoaded));
        assert!(!driver_gone(&NvmlError::GpuLost));
        for s in SourceState::ALL {
            assert_eq!(SourceState::from_u8(s as u8), Some(s));
        }
        assert_eq!(SourceState::from_u8(0), None);
    }
}
