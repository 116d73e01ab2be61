//! The latency clock of `#[monitored]`.
//!
//! Two `Instant::now()` calls are a large part of a metrics-only call's budget.
//! Where the CPU has an invariant TSC (`constant_tsc` and `nonstop_tsc`, the
//! same test fastrace's clock makes), the clock reads the TSC directly and
//! converts ticks to seconds with a factor calibrated once against `Instant`;
//! elsewhere it falls back to `Instant`.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug)]
enum Source {
    #[cfg(target_arch = "x86_64")]
    Tsc {
        secs_per_tick: f64,
    },
    Monotonic {
        base: Instant,
    },
}

static SOURCE: OnceLock<Source> = OnceLock::new();

#[inline(always)]
fn source() -> &'static Source {
    SOURCE.get_or_init(calibrate)
}

/// Picks and calibrates the clock. `configure` calls this so that the first
/// monitored call does not pay for it.
pub(crate) fn init() {
    let _ = source();
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    // Linux reports the CPU flags; without them we cannot trust the TSC.
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|flags| {
                let has = |f: &str| flags.split_whitespace().any(|x| x == f);
                has("constant_tsc") && has("nonstop_tsc")
            })
    })
}

fn calibrate() -> Source {
    #[cfg(target_arch = "x86_64")]
    if invariant_tsc() {
        let (t0, c0) = (Instant::now(), rdtsc());
        // Spin for 2 ms: long enough that Instant's resolution is noise.
        while t0.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let (t1, c1) = (Instant::now(), rdtsc());
        let ticks = c1.wrapping_sub(c0);
        if ticks > 0 {
            return Source::Tsc {
                secs_per_tick: (t1 - t0).as_secs_f64() / ticks as f64,
            };
        }
    }
    Source::Monotonic {
        base: Instant::now(),
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available on every x86_64 CPU and has no preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A point in time on the clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp(u64);

/// Now.
#[inline(always)]
pub(crate) fn now() -> Stamp {
    match source() {
        #[cfg(target_arch = "x86_64")]
        Source::Tsc { .. } => Stamp(rdtsc()),
        Source::Monotonic { base } => Stamp(base.elapsed().as_nanos() as u64),
    }
}

thread_local! {
    /// A (stamp, wall-clock time) pair, refreshed every second so that span
    /// timestamps follow the wall clock's NTP adjustments.
    static ANCHOR: Cell<Option<(u64, SystemTime)>> = const { Cell::new(None) };
}

const ANCHOR_MAX_AGE_SECS: f64 = 1.0;

impl Stamp {
    /// Seconds from this stamp to `later`.
    #[inline(always)]
    pub(crate) fn secs_until(self, later: Stamp) -> f64 {
        let delta = later.0.saturating_sub(self.0) as f64;
        match source() {
            #[cfg(target_arch = "x86_64")]
            Source::Tsc { secs_per_tick } => delta * secs_per_tick,
            Source::Monotonic { .. } => delta * 1e-9,
        }
    }

    /// The wall-clock time of this stamp, for span timestamps, without a
    /// `SystemTime::now()` per span: the stamp is placed relative to a
    /// per-thread anchor that is at most a second old.
    pub(crate) fn system_time(self) -> SystemTime {
        ANCHOR.with(|anchor| {
            let (at, wall) = match anchor.get() {
                Some((at, wall))
                    if self.0 >= at && Stamp(at).secs_until(self) < ANCHOR_MAX_AGE_SECS =>
                {
                    (at, wall)
                }
                _ => {
                    let fresh = (now().0, SystemTime::now());
                    anchor.set(Some(fresh));
                    fresh
                }
            };
            if self.0 >= at {
                wall + Duration::from_secs_f64(Stamp(at).secs_until(self))
            } else {
                wall - Duration::from_secs_f64(self.secs_until(Stamp(at)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_map_to_the_wall_clock() {
        let before = SystemTime::now();
        let stamp = now();
        let after = SystemTime::now();
        let t = stamp.system_time();
        let slack = Duration::from_millis(5);
        assert!(
            t + slack >= before && t <= after + slack,
            "{t:?} not in {before:?}..{after:?}"
        );
    }

    #[test]
    fn the_clock_measures_a_sleep_within_ten_percent() {
        let start = now();
        std::thread::sleep(Duration::from_millis(50));
        let secs = start.secs_until(now());
        assert!((0.045..0.2).contains(&secs), "{secs}");
    }
}
