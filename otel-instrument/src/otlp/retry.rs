//! The retry stage: which failures the OTLP specification calls transient, and how long
//! to wait before the next attempt.
//!
//! The policy is the one [`crate::export::retry_policy`] gives opentelemetry-otlp (it
//! is built from the constants here), so that spans, metrics and the receiver back off
//! alike: exponential from 25 ms, doubling, plus up to 25 ms of jitter, never more than
//! 100 ms between attempts unless a collector's `RetryInfo` (gRPC) or `Retry-After`
//! (HTTP) asks for more. A short cap because a queue that is full while the client
//! sleeps drops what arrives meanwhile. The export timeout bounds it all:
//! an attempt that could only start after the deadline is not made.

use std::time::{Duration, SystemTime};

/// The first backoff delay.
pub const INITIAL_DELAY: Duration = Duration::from_millis(25);
/// The longest wait between two attempts, jitter included (a collector's throttling
/// hint may ask for more).
pub const MAX_DELAY: Duration = Duration::from_millis(100);
/// The most jitter added to a backoff delay.
pub const MAX_JITTER: Duration = Duration::from_millis(25);

/// What one failed attempt means for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Do not retry: the request itself is wrong, or the collector refuses it for good.
    Permanent,
    /// Retry after the backoff delay.
    Transient,
    /// Retry, but not before the collector's throttling delay.
    Throttled(Duration),
}

/// Classifies a gRPC status as the OTLP specification does: CANCELLED,
/// DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are transient;
/// RESOURCE_EXHAUSTED only when the status carries a `RetryInfo` (the collector
/// throttles and says when to come back); everything else is permanent.
pub fn grpc(status: &tonic::Status) -> Verdict {
    use tonic::Code;
    use tonic_types::StatusExt as _;
    let hint = status.get_details_retry_info().and_then(|r| r.retry_delay);
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => hint.map_or(Verdict::Transient, Verdict::Throttled),
        Code::ResourceExhausted => hint.map_or(Verdict::Permanent, Verdict::Throttled),
        _ => Verdict::Permanent,
    }
}

/// Classifies an HTTP status as the OTLP specification does: 429, 502, 503 and 504
/// are transient (with `Retry-After`, in seconds or as an HTTP date, honoured);
/// every other error status is permanent.
pub fn http(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        429 | 502 | 503 | 504 => retry_after
            .and_then(parse_retry_after)
            .map_or(Verdict::Transient, Verdict::Throttled),
        _ => Verdict::Permanent,
    }
}

/// `Retry-After: 3` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate(v)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 asks
/// senders to use.
fn httpdate(v: &str) -> Option<SystemTime> {
    let mut it = v.split_ascii_whitespace();
    let _weekday = it.next()?;
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || day == 0 || day > 31 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days since the epoch (Howard Hinnant's days_from_civil).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The backoff of one export: the delay before each next attempt.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Self {
            next: INITIAL_DELAY,
            seed,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt after a failure judged `verdict` (`None` for
    /// a permanent one): the backoff step plus jitter, or the collector's hint if longer.
    pub fn delay(&mut self, verdict: Verdict) -> Option<Duration> {
        let step = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        let backoff = (step + self.jitter()).min(MAX_DELAY);
        match verdict {
            Verdict::Permanent => None,
            Verdict::Transient => Some(backoff),
            Verdict::Throttled(hint) => Some(hint.max(backoff)),
        }
    }

    /// Up to [`MAX_JITTER`], from a xorshift: the delays of a fleet of agents spread
    /// without a random-number crate.
    fn jitter(&mut self) -> Duration {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        Duration::from_nanos(x % (MAX_JITTER.as_nanos() as u64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn the_specs_transient_grpc_codes_are_retried_and_the_rest_are_not() {
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert_eq!(grpc(&tonic::Status::new(code, "x")), Verdict::Transient);
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
            Code::ResourceExhausted,
        ] {
            assert_eq!(
                grpc(&tonic::Status::new(code, "x")),
                Verdict::Permanent,
                "{code:?}"
            );
        }
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_retry_info_and_after_its_delay() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let s = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        );
        assert_eq!(grpc(&s), Verdict::Throttled(Duration::from_millis(1500)));
        let mut b = Backoff::default();
        assert_eq!(
            b.delay(grpc(&s)),
            Some(Duration::from_millis(1500)),
            "the hint beats a shorter backoff"
        );
    }

    #[test]
    fn http_429_502_503_504_are_retried_with_retry_after_in_seconds_or_as_a_date() {
        for s in [429, 502, 503, 504] {
            assert_eq!(http(s, None), Verdict::Transient);
        }
        for s in [400, 401, 403, 404, 413, 500] {
            assert_eq!(http(s, None), Verdict::Permanent, "{s}");
        }
        assert_eq!(
            http(503, Some("3")),
            Verdict::Throttled(Duration::from_secs(3))
        );
        // A date in the past means now.
        assert_eq!(
            http(429, Some("Sun, 06 Nov 1994 08:49:37 GMT")),
            Verdict::Throttled(Duration::ZERO)
        );
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(http(503, Some("soon")), Verdict::Transient);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let mut b = Backoff::default();
        let mut steps = Vec::new();
        for _ in 0..6 {
            steps.push(b.delay(Verdict::Transient).unwrap());
        }
        let base = [25, 50, 100, 100, 100, 100];
        for (d, ms) in steps.iter().zip(base) {
            let lo = Duration::from_millis(ms);
            let hi = (lo + MAX_JITTER).min(MAX_DELAY);
            assert!(*d >= lo && *d <= hi, "{d:?} vs {lo:?}..={hi:?}");
        }
        assert_eq!(b.delay(Verdict::Permanent), None);
    }
}
