//! Error fingerprints, bounded error groups and rate-limited error reports.
//!
//! A fingerprint names "the same error": the FNV-1a 64-bit hash of
//! `error.type`, the message with its variable parts replaced by placeholders
//! ([`normalise`]), and the function (`module::function`), written as 16
//! lowercase hex digits. It depends on nothing else (no process, host, time or
//! random seed), so it is the same everywhere and across restarts and releases
//! that do not change the error's type, message text or function.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use regex::{Captures, Regex};

/// Per function, the fingerprints that get their own `function.errors` series by default.
pub const DEFAULT_ERROR_GROUPS: usize = 20;

/// `error.fingerprint` of the series that the groups past the cap share.
pub const OVERFLOW: &str = "overflow";

/// How many error reports (an `exception` event and a log line) each
/// fingerprint gets per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimit {
    /// Reports per fingerprint per interval (0: none).
    pub per_interval: u32,
    /// The interval.
    pub interval: Duration,
}

impl Default for ReportLimit {
    /// 10 per fingerprint per minute.
    fn default() -> Self {
        Self {
            per_interval: 10,
            interval: Duration::from_secs(60),
        }
    }
}

impl ReportLimit {
    /// No reports (the counters still count every error).
    pub fn off() -> Self {
        Self {
            per_interval: 0,
            interval: Duration::from_secs(60),
        }
    }
}

/// One placeholder per kind of variable part, tried in this order at each
/// position (the first that matches wins).
const NORMALISE: &[(&str, &str)] = &[
    // Quoted values: "x", 'x', `x`.
    (r#""[^"]*"|'[^']*'|`[^`]*`"#, "<q>"),
    // URLs (with any user-info, query, ...).
    (r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s]+", "<url>"),
    // E-mail addresses.
    (
        r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
        "<email>",
    ),
    // UUIDs.
    (
        r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
        "<uuid>",
    ),
    // IPv4 addresses with an optional port; bracketed IPv6 addresses with a port.
    (
        r"\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?::[0-9]{1,5})?\b|\[[0-9a-fA-F:.]+\](?::[0-9]{1,5})?",
        "<addr>",
    ),
    // Paths: /a/b, ./a, ../a, C:\a\b.
    (
        r"(?:\b[A-Za-z]:\\|\.{0,2}/)[\w.\-]+(?:[/\\][\w.\-]+)*/?",
        "<path>",
    ),
    // Hex: 0x.., or 8 or more hex digits (with at least one digit).
    (r"\b0[xX][0-9a-fA-F]+\b|\b[0-9a-fA-F]{8,}\b", "<hex>"),
    // Ids: 8 or more letters and digits, with both.
    (r"\b[A-Za-z0-9]{8,}\b", "<id>"),
    // Numbers, with an optional fraction (units stay: `2s` is `<n>s`).
    (r"[0-9]+(?:\.[0-9]+)?", "<n>"),
];

static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
    let alternatives: Vec<String> = NORMALISE.iter().map(|(p, _)| format!("({p})")).collect();
    Regex::new(&alternatives.join("|")).expect("the normalisation rules compile")
});

/// The message with its variable parts replaced by placeholders, in this
/// order of precedence: quoted values `<q>`, URLs `<url>`, e-mail addresses
/// `<email>`, UUIDs `<uuid>`, IP addresses (with port) `<addr>`, paths
/// `<path>`, hex numbers (`0x1f`, and 8 or more hex digits with a digit
/// among them) `<hex>`, ids (8 or more letters and digits, with both
/// letters and digits) `<id>`, and numbers `<n>`. A word that looks like a
/// hex number or an id but has no digit (`deadbeef`, `connection`) stays, and
/// one of digits only is a number.
pub fn normalise(message: &str) -> String {
    PATTERN
        .replace_all(message, |c: &Captures<'_>| {
            // Which alternative matched: the first group that took part.
            let i = (1..c.len()).find(|&i| c.get(i).is_some()).unwrap_or(1) - 1;
            let (_, placeholder) = NORMALISE[i];
            let text = &c[0];
            let digit = text.bytes().any(|b| b.is_ascii_digit());
            match placeholder {
                "<hex>" if !digit => text.to_owned(),
                "<hex>" if text.bytes().all(|b| b.is_ascii_digit()) => "<n>".to_owned(),
                "<id>" if !digit || !text.bytes().any(|b| b.is_ascii_alphabetic()) => {
                    // All digits: a number; no digit: a word.
                    if digit {
                        "<n>".to_owned()
                    } else {
                        text.to_owned()
                    }
                }
                _ => placeholder.to_owned(),
            }
        })
        .into_owned()
}

/// FNV-1a, 64 bits: small, fast and fixed forever (unlike std's hasher).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator that no part contains, so parts cannot run together.
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// An error's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u64);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The fingerprint of an error of `error_type` with `message` (its `Display`
/// text, `None` when it has none) raised from `module::function`.
pub fn fingerprint(
    error_type: &str,
    message: Option<&str>,
    module: &str,
    function: &str,
) -> Fingerprint {
    let normalised = message.map(normalise).unwrap_or_default();
    Fingerprint(fnv1a(&[error_type, &normalised, module, function]))
}

// ---------------------------------------------------------------------------
// Groups: the first N fingerprints of a function get their own series.

static GROUP_CAP: AtomicUsize = AtomicUsize::new(DEFAULT_ERROR_GROUPS);
static OVERFLOWED: AtomicU64 = AtomicU64::new(0);

/// Sets how many fingerprints per function get their own series.
pub fn set_group_cap(n: usize) {
    GROUP_CAP.store(n.max(1), Ordering::Relaxed);
}

/// Errors counted in an `overflow` series since start.
pub fn overflowed() -> u64 {
    OVERFLOWED.load(Ordering::Relaxed)
}

/// One function's fingerprints that have their own series. Made on the
/// function's first error and kept for the program's life (a callsite is a
/// `static`, which must not need a destructor).
#[derive(Debug)]
pub struct Groups(AtomicPtr<Mutex<Vec<u64>>>);

impl Groups {
    /// No groups yet.
    pub const fn new() -> Self {
        Self(AtomicPtr::new(std::ptr::null_mut()))
    }

    fn seen(&self) -> &Mutex<Vec<u64>> {
        let p = self.0.load(Ordering::Acquire);
        // SAFETY: null or a pointer from `Box::into_raw` that is never freed.
        if let Some(m) = unsafe { p.as_ref() } {
            return m;
        }
        let fresh = Box::into_raw(Box::new(Mutex::new(Vec::new())));
        match self.0.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: just published, never freed.
            Ok(_) => unsafe { &*fresh },
            Err(existing) => {
                // SAFETY: `fresh` was never shared; `existing` is never freed.
                drop(unsafe { Box::from_raw(fresh) });
                unsafe { &*existing }
            }
        }
    }

    /// Whether `fp` has (or now gets) its own series; false: the overflow series.
    pub fn admit(&self, fp: Fingerprint) -> bool {
        let mut seen = self.seen().lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&fp.0) {
            return true;
        }
        if seen.len() < GROUP_CAP.load(Ordering::Relaxed) {
            seen.push(fp.0);
            return true;
        }
        drop(seen);
        OVERFLOWED.fetch_add(1, Ordering::Relaxed);
        false
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------
// Reports: at most N per fingerprint per interval, then one summary.

/// Windows kept at once; a fingerprint beyond them shares one window (key 0).
const MAX_WINDOWS: usize = 4096;

static LIMIT: Mutex<ReportLimit> = Mutex::new(ReportLimit {
    per_interval: 10,
    interval: Duration::from_secs(60),
});
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    reported: u32,
    suppressed: u64,
    /// For the summary line.
    function: &'static str,
    error_type: &'static str,
}

static WINDOWS: LazyLock<Mutex<HashMap<u64, Window>>> = LazyLock::new(Mutex::default);

/// Sets the report limit.
pub fn set_report_limit(limit: ReportLimit) {
    *LIMIT.lock().unwrap_or_else(PoisonError::into_inner) = limit;
}

/// Error reports suppressed by the limit since start.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// What to do with one error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    /// Whether to report it.
    pub(crate) report: bool,
    /// Reports suppressed in this fingerprint's interval that just ended, to
    /// be said in one summary line first.
    pub(crate) summary: u64,
}

/// Decides whether this error of `fp` is reported.
pub(crate) fn admit(
    fp: Fingerprint,
    function: &'static str,
    error_type: &'static str,
) -> Admission {
    let limit = *LIMIT.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    let mut windows = WINDOWS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut key = fp.0;
    if !windows.contains_key(&key) && windows.len() >= MAX_WINDOWS {
        windows.retain(|_, w| now.duration_since(w.start) < limit.interval || w.suppressed > 0);
        if windows.len() >= MAX_WINDOWS {
            key = 0;
        }
    }
    let w = windows.entry(key).or_insert(Window {
        start: now,
        reported: 0,
        suppressed: 0,
        function,
        error_type,
    });
    let mut summary = 0;
    if now.duration_since(w.start) >= limit.interval {
        summary = std::mem::take(&mut w.suppressed);
        w.start = now;
        w.reported = 0;
    }
    let report = w.reported < limit.per_interval;
    if report {
        w.reported += 1;
    } else {
        w.suppressed += 1;
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
    Admission { report, summary }
}

/// One pending summary: the fingerprint, its function and type, and how many
/// reports were suppressed.
pub(crate) type Summary = (Fingerprint, &'static str, &'static str, u64);

/// Takes the suppressed counts of every window (for the summary lines at a flush).
pub(crate) fn take_summaries() -> Vec<Summary> {
    let mut windows = WINDOWS.lock().unwrap_or_else(PoisonError::into_inner);
    windows
        .iter_mut()
        .filter(|(_, w)| w.suppressed > 0)
        .map(|(fp, w)| {
            (
                Fingerprint(*fp),
                w.function,
                w.error_type,
                std::mem::take(&mut w.suppressed),
            )
        })
        .collect()
}

/// Writes the summary lines of every fingerprint whose reports were
/// suppressed and not yet summarised. `Telemetry`'s flush and shutdown call it.
pub fn flush_reports() {
    for (fp, function, error_type, n) in take_summaries() {
        summary_line(fp, function, error_type, n);
    }
}

/// The summary line of `n` suppressed reports.
pub(crate) fn summary_line(fp: Fingerprint, function: &str, error_type: &str, n: u64) {
    // Read before the event: a guard in its arguments would live through it.
    let limit = *LIMIT.lock().unwrap_or_else(PoisonError::into_inner);
    tracing::event!(
        target: "otel_instrument::errors",
        tracing::Level::WARN,
        function,
        error.fingerprint = %fp,
        error.type = error_type,
        suppressed = n,
        "{n} more reports of this error were suppressed (at most {} per fingerprint every {:?})",
        limit.per_interval,
        limit.interval,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_parts_become_placeholders() {
        let cases = [
            ("no user 42", "no user <n>"),
            ("no user '42'", "no user <q>"),
            (
                "order 123e4567-e89b-12d3-a456-426614174000 not found",
                "order <uuid> not found",
            ),
            ("connect 10.0.0.7:5432 refused", "connect <addr> refused"),
            ("open /var/lib/app/42.db: denied", "open <path>: denied"),
            (
                "object 0x7ffd1234 and deadbeef42 gone",
                "object <hex> and <hex> gone",
            ),
            (
                "key AKIAIOSFODNN7EXAMPLE, req 7f3k9zz2",
                "key <id>, req <id>",
            ),
            ("order-7 and order-12345678", "order-<n> and order-<n>"),
            ("connection_reset by peer", "connection_reset by peer"),
            ("took 1.5s of 2s", "took <n>s of <n>s"),
            ("mail a.b@example.com bounced", "mail <email> bounced"),
            ("GET https://u:p@x.io/a?b=1 failed", "GET <url> failed"),
            ("a bad cafe", "a bad cafe"),
        ];
        for (input, want) in cases {
            assert_eq!(normalise(input), want, "{input}");
        }
    }

    #[test]
    fn the_same_error_with_other_ids_has_one_fingerprint() {
        let a = fingerprint("NotFound", Some("no order 1001 for user 7"), "m", "f");
        let b = fingerprint("NotFound", Some("no order 99 for user 12345"), "m", "f");
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint("NotFound", Some("no invoice 1 for user 7"), "m", "f")
        );
        assert_ne!(
            a,
            fingerprint("Timeout", Some("no order 1 for user 7"), "m", "f")
        );
        assert_ne!(
            a,
            fingerprint("NotFound", Some("no order 1 for user 7"), "m", "g")
        );
        // Fixed forever: a change here changes every user's groups.
        assert_eq!(
            fingerprint("NotFound", Some("no order 1 for user 7"), "m", "f")
                .to_string()
                .len(),
            16
        );
        assert_eq!(Fingerprint(fnv1a(&["a"])).to_string(), "af63dc4c8601ec8c");
    }

    #[test]
    fn groups_stop_at_the_cap() {
        let g = Groups::new();
        let cap = GROUP_CAP.load(Ordering::Relaxed) as u64;
        for i in 0..cap {
            assert!(g.admit(Fingerprint(i)));
        }
        assert!(!g.admit(Fingerprint(cap)));
        assert!(g.admit(Fingerprint(0)));
    }
}
