//! The agent's own health: cycle duration, cycles, errors by source, export failures
//! and series emitted. Published as points in every snapshot, so they are exported
//! like everything else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::ERROR_TYPE;
use otel_instrument::config::Signal;
use otel_instrument::export::ExportStats;

use crate::names;
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
    /// Export failures seen at the last check, and whether the outage was logged.
    pub(crate) export_watch: ExportWatch,
}

/// State of [`SelfStats::watch_export`].
#[derive(Debug, Default)]
pub(crate) struct ExportWatch {
    seen: u64,
    quiet_cycles: u32,
    warned: bool,
}

impl SelfStats {
    /// Counts one error of `source`.
    pub fn count_error(&mut self, source: &'static str, kind: &'static str) {
        *self.errors.entry((source, kind)).or_default() += 1;
    }

    /// Logs once when OTLP export starts failing and once when it has been quiet for a
    /// few cycles again; the failures themselves are counted in
    /// `otel_gpu_receiver.export.failures`. Called once per cycle.
    pub fn watch_export(&mut self) {
        let Some(now) = self.export.as_ref().map(|s| s.failures(Signal::Metrics)) else {
            return;
        };
        if now > self.export_watch.seen {
            self.export_watch.quiet_cycles = 0;
            if !self.export_watch.warned {
                self.export_watch.warned = true;
                tracing::warn!(
                    failures = now,
                    "OTLP export is failing; collection goes on and failures are counted \
                     (logged once until export recovers)"
                );
            }
        } else if self.export_watch.warned {
            self.export_watch.quiet_cycles += 1;
            if self.export_watch.quiet_cycles >= 3 {
                self.export_watch.warned = false;
                tracing::info!(failures = now, "OTLP export recovered");
            }
        }
        self.export_watch.seen = now;
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
        let own = out.len() - start + 1;
        out.push(names::SERIES, vec![], (series + own) as u64);
    }
}
