//! What soak tests measure about a child process, and how they judge it.
//!
//! A soak runs a program for many cycles and asserts that nothing grows with the
//! length of the run: not its memory, not its threads, not its file descriptors, and
//! not its log. One sample says little (allocators and page faults move RSS up and
//! down), so memory is judged by the least-squares slope over the second half of the
//! run, after a warm-up.
//!
//! ```
//! use otel_instrument::testing::soak::{ProcSample, slope};
//!
//! let me = ProcSample::read(std::process::id()).unwrap();
//! assert!(me.rss_kib > 0 && me.threads >= 1 && me.fds >= 3);
//! assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

/// glibc's tunable that turns its per-thread caches off.
pub const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

/// `GLIBC_TUNABLES` for a process under soak: the caller's if set (empty runs it as
/// in production), else [`TCACHE_OFF`].
///
/// Without the caches, the allocator's bytes in use (`mallinfo2`, which
/// `process.memory.heap.usage` reads) are the live heap. With them, a freed chunk
/// parked in a thread's cache still counts as in use, and the caches fill over
/// minutes (up to 7 chunks of each of 64 sizes per thread, about 240 KiB a thread),
/// which reads as growth and hides a slow leak.
pub fn glibc_tunables() -> (&'static str, String) {
    let value = std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| TCACHE_OFF.to_owned());
    ("GLIBC_TUNABLES", value)
}

/// One reading of a process's `/proc/<pid>/{status,fd}`.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `RssAnon`, KiB: heap and stacks, without the pages of the binary and the
    /// libraries that the first run of a code path faults in.
    pub rss_anon_kib: u64,
    /// `Threads`.
    pub threads: u64,
    /// Entries in `/proc/<pid>/fd`.
    pub fds: u64,
}

impl ProcSample {
    /// Reads `pid` now; `None` once it has exited (Linux only).
    pub fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Self {
            at: Instant::now(),
            rss_kib: field("VmRSS:")?,
            rss_anon_kib: field("RssAnon:").unwrap_or(0),
            threads: field("Threads:")?,
            fds,
        })
    }
}

/// The least-squares slope of `y` over `x`; `None` with fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The second half of `points` (by position), the part a slope is judged on.
pub fn second_half<T: Copy>(points: &[T]) -> Vec<T> {
    points[points.len() / 2..].to_vec()
}

/// Counts log lines by message, with the timestamp, level fields and `key=value`
/// fields left out, so that the same message with other values counts as one.
///
/// `tracing_subscriber::fmt`'s plain format is `<time> <LEVEL> <target>: <message>
/// key=value ...`; a line in another format counts as itself.
pub fn messages<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace().peekable();
        // Timestamp and level.
        if words
            .peek()
            .is_some_and(|w| w.len() > 10 && w.as_bytes()[4] == b'-')
        {
            words.next();
        }
        if words
            .peek()
            .is_some_and(|w| matches!(*w, "TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR"))
        {
            words.next();
        }
        let key: Vec<&str> = words.filter(|w| !w.contains('=')).collect();
        *out.entry(key.join(" ")).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_flat_noisy_series_is_near_zero_and_of_a_ramp_its_rate() {
        let flat: Vec<(f64, f64)> = (0..100)
            .map(|i| (f64::from(i), 100.0 + f64::from(i % 3)))
            .collect();
        assert!(slope(&flat).unwrap().abs() < 0.01);
        let ramp: Vec<(f64, f64)> = (0..100)
            .map(|i| (f64::from(i), 5.0 + 0.5 * f64::from(i)))
            .collect();
        assert!((slope(&ramp).unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(second_half(&[1, 2, 3, 4, 5]), vec![3, 4, 5]);
    }

    #[test]
    fn messages_are_counted_without_their_fields() {
        let log = "2026-11-29T10:59:58.609353Z  WARN agent::selfmon: export is failing failures=1\n\
                   2026-11-29T11:00:58.609353Z  WARN agent::selfmon: export is failing failures=7\n\
                   2026-11-29T11:01:00.000000Z  INFO agent: recovered failures=7 lasted_s=60\n\
                   a line of its own\n";
        let m = messages(log.lines());
        assert_eq!(m.get("agent::selfmon: export is failing"), Some(&2));
        assert_eq!(m.get("agent: recovered"), Some(&1));
        assert_eq!(m.get("a line of its own"), Some(&1));
    }
}
