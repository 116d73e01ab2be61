//! The latency clock of `#[monitored]`.
//!
//! Two `Instant::now()` calls are a large part of a metrics-only call's budget.
//! Where the TSC can be trusted, the clock reads it directly and converts ticks
//! to seconds with a factor calibrated against `Instant`; everywhere else it
//! uses `Instant`. The TSC is trusted only when all of these hold (fastant's
//! rules, made stricter):
//! - the CPU says it is invariant (`constant_tsc` and `nonstop_tsc` in
//!   `/proc/cpuinfo`);
//! - the kernel agrees: its current clocksource is `tsc` (it switches away,
//!   to `hpet` or a paravirtual clock, when it finds the TSC unstable or
//!   unsynchronised across cores). Where the file cannot be read, the CPU
//!   flags decide;
//! - calibration converges: two consecutive 2 ms estimates of the tick rate
//!   agree within 0.1%, within ten tries.
//!
//! A reading that goes backwards (cross-core skew, or a migrated thread on a
//! machine whose TSCs drift) gives a zero duration rather than a negative one,
//! and is counted ([`backwards`]), exported as `otel_instrument.clock.backwards`.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
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
static BACKWARDS: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn source() -> &'static Source {
    SOURCE.get_or_init(pick)
}

/// Picks and calibrates the clock. `configure` calls this so that the first
/// monitored call does not pay for it.
pub(crate) fn init() {
    let _ = source();
}

/// Whether the clock reads the TSC (false: `Instant`).
pub fn uses_tsc() -> bool {
    match source() {
        #[cfg(target_arch = "x86_64")]
        Source::Tsc { .. } => true,
        Source::Monotonic { .. } => false,
    }
}

/// How many durations were measured with the end before the start (and
/// recorded as zero).
pub fn backwards() -> u64 {
    BACKWARDS.load(Ordering::Relaxed)
}

/// Whether the TSC may be used, from the CPU flags line of `/proc/cpuinfo` and
/// the kernel's current clocksource (`None`: the file could not be read).
fn tsc_trusted(cpu_flags: Option<&str>, clocksource: Option<&str>) -> bool {
    let invariant = cpu_flags.is_some_and(|flags| {
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        has("constant_tsc") && has("nonstop_tsc")
    });
    invariant && clocksource.is_none_or(|c| c.trim() == "tsc")
}

/// Estimates seconds per tick from `sample` (a clock reading paired with a
/// tick count), repeating `window`-long measurements until two in a row agree
/// within `tolerance`; `None` when `tries` are spent first.
fn calibrate(
    mut sample: impl FnMut() -> (Instant, u64),
    window: Duration,
    tolerance: f64,
    tries: usize,
) -> Option<f64> {
    let mut previous: Option<f64> = None;
    for _ in 0..tries {
        let (t0, c0) = sample();
        let (t1, c1) = loop {
            let (t, c) = sample();
            if t.duration_since(t0) >= window {
                break (t, c);
            }
            std::hint::spin_loop();
        };
        let ticks = c1.checked_sub(c0).filter(|&t| t > 0)?;
        let estimate = (t1 - t0).as_secs_f64() / ticks as f64;
        if let Some(p) = previous
            && ((estimate - p) / p).abs() <= tolerance
        {
            return Some((estimate + p) / 2.0);
        }
        previous = Some(estimate);
    }
    None
}

fn pick() -> Source {
    #[cfg(target_arch = "x86_64")]
    {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok();
        let flags = cpuinfo
            .as_deref()
            .and_then(|info| info.lines().find(|l| l.starts_with("flags")));
        let clocksource = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .ok();
        if tsc_trusted(flags, clocksource.as_deref())
            && let Some(secs_per_tick) = calibrate(
                || (Instant::now(), rdtsc()),
                Duration::from_millis(2),
                1e-3,
                10,
            )
        {
            return Source::Tsc { secs_per_tick };
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

/// Now on the clock and on the wall clock, read together.
pub(crate) fn anchor() -> (Stamp, SystemTime) {
    (now(), SystemTime::now())
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

/// Ticks from `earlier` to `later`; a later reading below the earlier one is
/// counted and gives zero.
#[inline(always)]
fn ticks_between(earlier: u64, later: u64) -> u64 {
    match later.checked_sub(earlier) {
        Some(d) => d,
        None => {
            BACKWARDS.fetch_add(1, Ordering::Relaxed);
            0
        }
    }
}

impl Stamp {
    /// Seconds from this stamp to `later` (zero, and counted, if `later` reads
    /// earlier).
    #[inline(always)]
    pub(crate) fn secs_until(self, later: Stamp) -> f64 {
        let delta = ticks_between(self.0, later.0) as f64;
        match source() {
            #[cfg(target_arch = "x86_64")]
            Source::Tsc { secs_per_tick } => delta * secs_per_tick,
            Source::Monotonic { .. } => delta * 1e-9,
        }
    }

    /// Nanoseconds from this stamp to `later` (zero if `later` reads earlier;
    /// not counted again: the call's own [`secs_until`](Self::secs_until) did).
    #[inline]
    pub(crate) fn nanos_until(self, later: Stamp) -> u64 {
        if later.0 <= self.0 {
            return 0;
        }
        (self.secs_apart(later) * 1e9) as u64
    }

    /// The wall-clock time of this stamp relative to `anchor` (a stamp and the
    /// wall-clock time read together, see [`anchor`]): for stamps taken on
    /// other threads and converted later, in either direction.
    pub(crate) fn system_time_at(self, (at, wall): (Stamp, SystemTime)) -> SystemTime {
        let apart = std::time::Duration::from_secs_f64(self.secs_apart(at));
        if self.0 <= at.0 {
            wall.checked_sub(apart).unwrap_or(wall)
        } else {
            wall + apart
        }
    }

    /// Seconds between two stamps in either order (for the wall-clock anchor).
    fn secs_apart(self, other: Stamp) -> f64 {
        let delta = self.0.abs_diff(other.0) as f64;
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
                    if self.0 >= at && Stamp(at).secs_apart(self) < ANCHOR_MAX_AGE_SECS =>
                {
                    (at, wall)
                }
                _ => {
                    let fresh = (now().0, SystemTime::now());
                    anchor.set(Some(fresh));
                    fresh
                }
            };
            let offset = Duration::from_secs_f64(Stamp(at).secs_apart(self));
            if self.0 >= at {
                wall + offset
            } else {
                wall - offset
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

    const FLAGS: &str = "flags : fpu tsc constant_tsc nonstop_tsc rdtscp";

    #[test]
    fn the_tsc_needs_invariant_flags_and_the_kernels_agreement() {
        assert!(tsc_trusted(Some(FLAGS), Some("tsc\n")));
        assert!(
            tsc_trusted(Some(FLAGS), None),
            "no sysfs: the CPU flags decide"
        );
        assert!(
            !tsc_trusted(Some(FLAGS), Some("hpet\n")),
            "kernel distrusts it"
        );
        assert!(!tsc_trusted(Some(FLAGS), Some("kvm-clock\n")));
        assert!(!tsc_trusted(
            Some("flags : fpu tsc constant_tsc"),
            Some("tsc")
        ));
        assert!(!tsc_trusted(None, Some("tsc")), "no flags, no TSC");
    }

    #[test]
    fn calibration_converges_on_a_steady_counter() {
        // A counter at exactly 3 ticks per ns of real time.
        let origin = Instant::now();
        let sample = || {
            let t = Instant::now();
            (t, (t - origin).as_nanos() as u64 * 3)
        };
        let secs_per_tick = calibrate(sample, Duration::from_millis(1), 1e-3, 10)
            .expect("a steady counter converges");
        assert!((secs_per_tick * 3e9 - 1.0).abs() < 1e-3, "{secs_per_tick}");
    }

    #[test]
    fn calibration_gives_up_on_a_counter_that_changes_rate() {
        // The rate grows with every read, so a later window always runs
        // faster than an earlier one, however few reads a loaded machine
        // fits in a window: never two that agree.
        let origin = Instant::now();
        let mut calls = 0u64;
        let mut base = 0u64;
        let mut last = origin;
        let sample = move || {
            let t = Instant::now();
            calls += 1;
            let rate = 1.0 + calls as f64 * 1e-2;
            base += ((t - last).as_nanos() as f64 * rate) as u64 + 1;
            last = t;
            (t, base)
        };
        // Windows of 1 ms and a tight tolerance.
        assert_eq!(calibrate(sample, Duration::from_millis(1), 1e-6, 5), None);
    }

    #[test]
    fn calibration_gives_up_on_a_counter_that_stands_still() {
        let sample = || (Instant::now(), 42);
        assert_eq!(calibrate(sample, Duration::from_micros(100), 1e-3, 3), None);
    }

    #[test]
    fn a_reading_that_goes_backwards_is_zero_and_counted() {
        let before = backwards();
        assert_eq!(ticks_between(100, 90), 0);
        assert_eq!(ticks_between(90, 100), 10);
        assert_eq!(backwards(), before + 1);
    }
}
