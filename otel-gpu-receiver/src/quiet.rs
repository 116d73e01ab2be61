//! Keeping the log quiet over months of running.
//!
//! A problem that persists (the collector down for a night) or repeats (a GPU that
//! flaps, an Xid storm) must not write a line per cycle or per event: the counts are in
//! the self-metrics already, and a log that repeats itself buries the line that matters.
//! The rule, everywhere in the agent: one line when a problem starts, one when it ends
//! (with a count), and in between a summary at most every [`SUMMARY_EVERY`].
//!
//! [`RateLimit`] is the building block for repeated events; the export watch in
//! [`crate::selfmon`] applies the same rule to an outage with a start and an end.
//! Both take the time as an argument, so tests run an hour in a microsecond.

use std::time::{Duration, Instant};

/// The shortest time between two lines about the same ongoing or repeating problem.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5 * 60);

/// Lets one occurrence of a repeated event through per window, and counts the rest.
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new(SUMMARY_EVERY)
    }
}

impl RateLimit {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One occurrence at `now`. `Some(n)`: log it, and say that `n` occurrences since
    /// the previous line were not logged. `None`: counted, not logged.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// A summary of the occurrences not logged, once the window since the last line has
    /// passed: `Some(n)` with `n > 0` when one is due (and the window starts again).
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        let last = self.last?;
        if self.suppressed == 0 || now.saturating_duration_since(last) < self.every {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// Occurrences counted and not logged yet.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_logs_its_first_event_then_one_summary_per_window() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(300));
        let mut lines = 0;
        let mut counted = 0;
        // One event a second for an hour.
        for s in 0..3600 {
            let now = t0 + Duration::from_secs(s);
            match r.hit(now) {
                Some(n) => {
                    lines += 1;
                    counted += n + 1;
                }
                None => {
                    if let Some(n) = r.due(now) {
                        lines += 1;
                        counted += n;
                    }
                }
            }
        }
        assert_eq!(lines, 12, "one line per 5 minutes");
        assert_eq!(
            counted + r.suppressed(),
            3600,
            "every event is accounted for"
        );
    }

    #[test]
    fn nothing_is_due_without_suppressed_events() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(1));
        assert_eq!(r.due(t0), None);
        assert_eq!(r.hit(t0), Some(0));
        assert_eq!(r.due(t0 + Duration::from_secs(5)), None);
        assert_eq!(r.hit(t0 + Duration::from_millis(1500)), Some(0));
        assert_eq!(r.hit(t0 + Duration::from_millis(1600)), None);
        assert_eq!(
            r.due(t0 + Duration::from_millis(1700)),
            None,
            "window not over"
        );
        assert_eq!(r.due(t0 + Duration::from_millis(2600)), Some(1));
        assert_eq!(r.due(t0 + Duration::from_secs(60)), None);
    }
}
