//! The agent's own health: cycle duration, cycles, errors by source, export failures
//! and series emitted. Published as points in every snapshot, so they are exported
//! like everything else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use otel_instrument::config::Signal;
use otel_instrument::export::ExportStats;

use crate::names;
use crate::quiet::SUMMARY_EVERY;
use crate::snapshot::Points;

/// Counters kept by the collector across cycles.
#[derive(Debug, Default)]
pub struct SelfStats {
    /// Errors by (source, error.type), since start.
    pub errors: BTreeMap<(&'static str, &'static str), u64>,
    /// Cycles completed.
    pub cycles: u64,
    /// Duration of the last cycle.
    pub last_duration: Duration,
    /// The OTLP exporter's failure counts, when exporting.
    pub export: Option<Arc<ExportStats>>,
    /// What the pull endpoint did with its clients, when serving.
    pub http: Option<Arc<otel_instrument::serve::Stats>>,
}

/// Follows the exporter's failure and success counts and says when an outage starts,
/// goes on (a summary at most every [`SUMMARY_EVERY`]) and ends. The push task keeps
/// one and checks it after each export, so the line that starts an outage can name
/// the failure's cause: an outage is one line when it starts (with its cause), one when
/// it ends, and a summary every 5 minutes in between.
///
/// An outage ends with a *successful* export, not with a few cycles without a new
/// failure: a failed export takes its whole timeout (10 s by default, retries
/// included), so at a short interval many cycles pass between two failures of an
/// outage that has not ended, and reading those quiet cycles as recovery logged the
/// start of the outage again at every failure.
#[derive(Debug, Default)]
pub struct ExportWatch {
    failures: u64,
    successes: u64,
    outage: Option<Outage>,
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    /// Failures counted before it started.
    base: u64,
    /// When the last line about it was written.
    logged_at: Instant,
}

/// What the export watch has to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportEvent {
    /// Export started failing (`failures` so far in this outage).
    Failing {
        /// Failed exports in this outage.
        failures: u64,
    },
    /// Export is still failing: the periodic summary.
    StillFailing {
        /// Failed exports in this outage so far.
        failures: u64,
        /// Since the outage started.
        lasted: Duration,
    },
    /// An export succeeded again.
    Recovered {
        /// Failed exports in the outage.
        failures: u64,
        /// How long it lasted.
        lasted: Duration,
    },
}

impl ExportWatch {
    /// Takes the exporter's cumulative counts at `now`; says what, if anything, to log.
    pub fn observe(&mut self, failures: u64, successes: u64, now: Instant) -> Option<ExportEvent> {
        let (failed, base) = (failures > self.failures, self.failures);
        let succeeded = successes > self.successes;
        self.failures = failures;
        self.successes = successes;
        match self.outage {
            None if failed => {
                self.outage = Some(Outage {
                    since: now,
                    base,
                    logged_at: now,
                });
                Some(ExportEvent::Failing {
                    failures: failures - base,
                })
            }
            None => None,
            Some(o) if succeeded => {
                self.outage = None;
                Some(ExportEvent::Recovered {
                    failures: failures - o.base,
                    lasted: now.saturating_duration_since(o.since),
                })
            }
            Some(mut o) if now.saturating_duration_since(o.logged_at) >= SUMMARY_EVERY => {
                o.logged_at = now;
                self.outage = Some(o);
                Some(ExportEvent::StillFailing {
                    failures: failures - o.base,
                    lasted: now.saturating_duration_since(o.since),
                })
            }
            Some(_) => None,
        }
    }

    /// Whether an outage is in progress.
    pub fn failing(&self) -> bool {
        self.outage.is_some()
    }
}

impl SelfStats {
    /// Counts one error of `source`.
    pub fn count_error(&mut self, source: &'static str, kind: &'static str) {
        *self.errors.entry((source, kind)).or_default() += 1;
    }

    /// Total errors counted for `source`.
    pub fn errors_of(&self, source: &str) -> u64 {
        self.errors
            .iter()
            .filter(|((s, _), _)| *s == source)
            .map(|(_, n)| n)
            .sum()
    }

    /// Appends the self-monitoring points. `series` counts the host points of the
    /// cycle; the self points are added to it.
    pub fn points(&self, series: usize, out: &mut Points) {
        let start = out.len();
        out.push(
            names::CYCLE_DURATION,
            vec![],
            self.last_duration.as_secs_f64(),
        );
        out.push(names::CYCLES, vec![], self.cycles);
        for ((source, kind), n) in &self.errors {
            out.push(
                names::ERRORS,
                vec![
                    KeyValue::new(names::ATTR_SOURCE, *source),
                    KeyValue::new(ERROR_TYPE, *kind),
                ],
                *n,
            );
        }
        let failures = self
            .export
            .as_ref()
            .map_or(0, |s| s.failures(Signal::Metrics));
        out.push(
            names::EXPORT_FAILURES,
            vec![KeyValue::new(names::ATTR_SIGNAL, "metrics")],
            failures,
        );
        let rejected = self
            .export
            .as_ref()
            .map_or(0, |s| s.metric_points_rejected());
        if rejected > 0 {
            out.push(names::EXPORT_REJECTED, vec![], rejected);
        }
        if let Some(h) = &self.http {
            for (reason, n) in [
                ("write_timeout", h.write_timeouts()),
                ("http_error", h.errors()),
                ("request_body", h.bodies_refused()),
            ] {
                if n > 0 {
                    out.push(
                        names::HTTP_CONNECTIONS_CLOSED,
                        vec![KeyValue::new(names::ATTR_REASON, reason)],
                        n,
                    );
                }
            }
        }
        let own = out.len() - start + 1;
        out.push(names::SERIES, vec![], (series + own) as u64);
    }
}

/// Logs what the export watch saw. `error` is why the export just checked failed (the
/// wire client's last cause), so the line that starts an outage and each summary name
/// it; the failures themselves are counted in `otel_gpu_receiver.export.failures`.
pub fn log_export_event(event: ExportEvent, error: Option<&dyn std::fmt::Display>) {
    let error = error.map(tracing::field::display);
    match event {
        ExportEvent::Failing { failures } => tracing::warn!(
            failures,
            error,
            "OTLP export is failing; collection goes on and failures are counted in \
             otel_gpu_receiver.export.failures (logged again when export recovers, and \
             every 5 minutes until then)"
        ),
        ExportEvent::StillFailing { failures, lasted } => tracing::warn!(
            failures,
            for_s = lasted.as_secs(),
            error,
            "OTLP export is still failing"
        ),
        ExportEvent::Recovered { failures, lasted } => tracing::info!(
            failures,
            lasted_s = lasted.as_secs(),
            "OTLP export recovered"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An hour of 100 ms cycles with the collector down throughout: each export fails
    /// after its 10 s timeout, so failures arrive one every 100 cycles.
    #[test]
    fn a_permanent_outage_logs_once_then_a_summary_every_five_minutes() {
        let t0 = Instant::now();
        let mut w = ExportWatch::default();
        let mut events = Vec::new();
        for cycle in 0..36_000u64 {
            let now = t0 + Duration::from_millis(100 * cycle);
            let failures = cycle.div_ceil(100);
            events.extend(w.observe(failures, 0, now));
        }
        assert_eq!(events[0], ExportEvent::Failing { failures: 1 });
        assert!(
            events[1..]
                .iter()
                .all(|e| matches!(e, ExportEvent::StillFailing { .. })),
            "{events:?}"
        );
        // The start, then one summary at 5, 10, ... 55 minutes.
        assert_eq!(events.len(), 12, "{events:?}");
        assert!(w.failing());
    }

    #[test]
    fn an_outage_ends_with_a_successful_export_and_logs_its_count() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = ExportWatch::default();
        assert_eq!(w.observe(0, 5, at(0)), None, "exports succeed");
        assert_eq!(
            w.observe(1, 5, at(100)),
            Some(ExportEvent::Failing { failures: 1 })
        );
        // Many quiet cycles between failures do not end the outage.
        for ms in (200..10_000).step_by(100) {
            assert_eq!(w.observe(1, 5, at(ms)), None);
        }
        assert_eq!(w.observe(2, 5, at(10_100)), None);
        assert_eq!(w.observe(3, 5, at(20_100)), None);
        assert_eq!(
            w.observe(3, 6, at(25_100)),
            Some(ExportEvent::Recovered {
                failures: 3,
                lasted: Duration::from_secs(25),
            })
        );
        assert!(!w.failing());
        // The next outage counts from zero again.
        assert_eq!(
            w.observe(4, 6, at(30_000)),
            Some(ExportEvent::Failing { failures: 1 })
        );
    }

    #[test]
    fn several_failures_in_one_check_start_one_outage() {
        let t0 = Instant::now();
        let mut w = ExportWatch::default();
        assert_eq!(
            w.observe(3, 0, t0),
            Some(ExportEvent::Failing { failures: 3 })
        );
        assert_eq!(
            w.observe(3, 1, t0 + Duration::from_secs(1)),
            Some(ExportEvent::Recovered {
                failures: 3,
                lasted: Duration::from_secs(1),
            })
        );
    }
}
