//! `system.cpu.*`: time per mode and logical CPU from /proc/stat (sysinfo has no
//! per-mode time), utilization per mode from the delta between cycles, frequency
//! from cpufreq or /proc/cpuinfo, and CPU counts. `system.cpu.time` never decreases
//! per CPU and mode ([`Clamp`]), so alerts on `rate()` never see a false reset.

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::{CPU_LOGICAL_NUMBER, CPU_MODE};
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// The /proc/stat columns we report, as `cpu.mode` values, in column order.
pub const MODES: [&str; 8] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "interrupt",
    "softirq",
    "steal",
];

/// Jiffies per mode, in [`MODES`] order.
pub type Ticks = [u64; 8];

/// One cycle's CPU reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuReading {
    /// Ticks per mode for all CPUs together.
    pub total: Ticks,
    /// Ticks per mode per logical CPU.
    pub per_cpu: Vec<(u32, Ticks)>,
    /// Current frequency per logical CPU, in Hz.
    pub frequency_hz: Vec<(u32, f64)>,
    /// Share of time per mode since the previous reading (`None` on the first).
    pub utilization: Option<[f64; 8]>,
    /// Physical cores, when known.
    pub physical: Option<usize>,
    /// Seconds per tick.
    pub tick_s: f64,
}

impl CpuReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        for (cpu, ticks) in &self.per_cpu {
            for (mode, t) in MODES.iter().zip(ticks) {
                out.push(
                    sc::SYSTEM_CPU_TIME,
                    vec![
                        KeyValue::new(CPU_MODE, *mode),
                        KeyValue::new(CPU_LOGICAL_NUMBER, i64::from(*cpu)),
                    ],
                    *t as f64 * self.tick_s,
                );
            }
        }
        if let Some(u) = &self.utilization {
            for (mode, v) in MODES.iter().zip(u) {
                out.push(
                    sc::SYSTEM_CPU_UTILIZATION,
                    vec![KeyValue::new(CPU_MODE, *mode)],
                    *v,
                );
            }
        }
        for (cpu, hz) in &self.frequency_hz {
            out.push(
                sc::SYSTEM_CPU_FREQUENCY,
                vec![KeyValue::new(CPU_LOGICAL_NUMBER, i64::from(*cpu))],
                *hz,
            );
        }
        out.push(
            sc::SYSTEM_CPU_LOGICAL_COUNT,
            vec![],
            self.per_cpu.len() as u64,
        );
        if let Some(p) = self.physical {
            out.push(sc::SYSTEM_CPU_PHYSICAL_COUNT, vec![], p as u64);
        }
    }
}

/// Share of each mode in the ticks elapsed between two readings.
pub fn utilization(prev: &Ticks, now: &Ticks) -> Option<[f64; 8]> {
    let mut d = [0u64; 8];
    for i in 0..8 {
        d[i] = now[i].saturating_sub(prev[i]);
    }
    let sum: u64 = d.iter().sum();
    if sum == 0 {
        return None;
    }
    Some(d.map(|x| x as f64 / sum as f64))
}

/// Keeps each per-CPU, per-mode counter from going backwards, as node_exporter does.
///
/// The kernel's idle and iowait times are estimates that can step back (iowait is
/// accounted per runqueue and reshuffled when tasks migrate), and a cumulative counter
/// that decreases reads as a reset: `rate()` and `increase()` then report a jump of the
/// whole counter. A value below the last one reported is replaced by the last one, so
/// the series only stands still until the kernel catches up.
#[derive(Debug, Default)]
pub struct Clamp {
    last: std::collections::HashMap<u32, Ticks>,
}

impl Clamp {
    /// Raises every value of `per_cpu` that is below the last one reported to it, and
    /// remembers the result. Returns how many values were raised.
    pub fn apply(&mut self, per_cpu: &mut [(u32, Ticks)]) -> usize {
        let mut raised = 0;
        for (cpu, ticks) in per_cpu.iter_mut() {
            let last = self.last.entry(*cpu).or_insert(*ticks);
            for (now, prev) in ticks.iter_mut().zip(last.iter_mut()) {
                if *now < *prev {
                    *now = *prev;
                    raised += 1;
                } else {
                    *prev = *now;
                }
            }
        }
        raised
    }
}

/// Reads the CPU family.
#[derive(Debug)]
pub struct CpuSource {
    roots: Roots,
    prev: Option<Ticks>,
    physical: Option<usize>,
    clamp: Clamp,
}

impl CpuSource {
    /// Takes a first reading so that the first cycle already has a utilization.
    pub fn new(roots: Roots) -> Self {
        let physical = sysinfo::System::physical_core_count().ok();
        let mut s = Self {
            roots,
            prev: None,
            physical,
            clamp: Clamp::default(),
        };
        s.prev = s.read_stat().ok().map(|(total, _)| total);
        s
    }

    #[cfg(target_os = "linux")]
    fn read_stat(&self) -> Result<(Ticks, Vec<(u32, Ticks)>), CollectError> {
        let path = self.roots.proc("stat");
        parse_stat(&path, &super::roots::read(&path)?)
    }

    #[cfg(not(target_os = "linux"))]
    fn read_stat(&self) -> Result<(Ticks, Vec<(u32, Ticks)>), CollectError> {
        let _ = &self.roots;
        Err(CollectError::Unsupported)
    }

    #[cfg(target_os = "linux")]
    fn read_frequency(&self, cpus: &[(u32, Ticks)]) -> Vec<(u32, f64)> {
        let mut out = Vec::new();
        for (cpu, _) in cpus {
            let p = self.roots.sys(&format!(
                "devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"
            ));
            match super::roots::read(&p)
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
            {
                Some(khz) => out.push((*cpu, khz * 1e3)),
                None => break,
            }
        }
        if out.len() == cpus.len() {
            return out;
        }
        // No cpufreq (common in VMs): /proc/cpuinfo's "cpu MHz" per processor.
        let mut out = Vec::new();
        if let Ok(info) = super::roots::read(&self.roots.proc("cpuinfo")) {
            let mut current: Option<u32> = None;
            for line in info.lines() {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                match k.trim() {
                    "processor" => current = v.trim().parse().ok(),
                    "cpu MHz" => {
                        if let (Some(c), Ok(mhz)) = (current, v.trim().parse::<f64>()) {
                            out.push((c, mhz * 1e6));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    #[cfg(not(target_os = "linux"))]
    fn read_frequency(&self, _cpus: &[(u32, Ticks)]) -> Vec<(u32, f64)> {
        Vec::new()
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/stat cannot be read or parsed.
    pub fn read(&mut self) -> Result<CpuReading, CollectError> {
        let (total, mut per_cpu) = self.read_stat()?;
        self.clamp.apply(&mut per_cpu);
        let utilization = self.prev.as_ref().and_then(|p| utilization(p, &total));
        self.prev = Some(total);
        let frequency_hz = self.read_frequency(&per_cpu);
        Ok(CpuReading {
            total,
            per_cpu,
            frequency_hz,
            utilization,
            physical: self.physical,
            tick_s: 1.0 / tick_rate(),
        })
    }
}

#[cfg(unix)]
fn tick_rate() -> f64 {
    super::roots::clock_ticks()
}

#[cfg(not(unix))]
fn tick_rate() -> f64 {
    100.0
}

impl Source for CpuSource {
    fn family(&self) -> Family {
        Family::Cpu
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
        self.read()?.points(out);
        Ok(())
    }
}

/// Parses /proc/stat: the aggregate `cpu` line and every `cpuN` line.
///
/// # Errors
/// No aggregate line, or a malformed number.
pub fn parse_stat(
    path: &std::path::Path,
    text: &str,
) -> Result<(Ticks, Vec<(u32, Ticks)>), CollectError> {
    let mut total = None;
    let mut per_cpu = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(label) = it.next() else { continue };
        let Some(rest) = label.strip_prefix("cpu") else {
            continue;
        };
        let mut ticks = [0u64; 8];
        for t in &mut ticks {
            // Older kernels lack the last columns: they count as zero.
            *t = match it.next() {
                Some(s) => super::roots::field(path, line, Some(s))?,
                None => 0,
            };
        }
        if rest.is_empty() {
            total = Some(ticks);
        } else {
            let n = rest
                .parse()
                .map_err(|_| CollectError::parse(path, format!("bad cpu label {label:?}")))?;
            per_cpu.push((n, ticks));
        }
    }
    let total = total.ok_or_else(|| CollectError::parse(path, "no aggregate `cpu` line"))?;
    Ok((total, per_cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 0 50 800 10 5 5 0 0 0\ncpu0 60 0 25 400 5 3 2 0 0 0\ncpu1 40 0 25 400 5 2 3 0 0 0\nintr 1\nctxt 2\n";

    #[test]
    fn stat_is_parsed_per_cpu_and_in_total() {
        let (total, per) = parse_stat("stat".as_ref(), STAT).unwrap();
        assert_eq!(total, [100, 0, 50, 800, 10, 5, 5, 0]);
        assert_eq!(per.len(), 2);
        assert_eq!(per[1].0, 1);
        assert_eq!(per[1].1[2], 25);
    }

    #[test]
    fn utilization_is_the_share_of_elapsed_ticks() {
        let u = utilization(&[0; 8], &[25, 0, 25, 50, 0, 0, 0, 0]).unwrap();
        assert_eq!(u[0], 0.25);
        assert_eq!(u[3], 0.5);
        assert!(utilization(&[1; 8], &[1; 8]).is_none());
    }

    #[test]
    fn cpu_time_per_mode_never_decreases_and_catches_up_when_the_kernel_does() {
        let mut c = Clamp::default();
        let mut first = vec![(0, [100, 0, 50, 800, 10, 5, 5, 0]), (1, [40; 8])];
        assert_eq!(c.apply(&mut first), 0);
        // idle and iowait of cpu0 step back (the kernel's estimates do), cpu1 moves on.
        let mut second = vec![(0, [110, 0, 55, 790, 8, 5, 5, 0]), (1, [41; 8])];
        assert_eq!(c.apply(&mut second), 2);
        assert_eq!(second[0].1, [110, 0, 55, 800, 10, 5, 5, 0]);
        assert_eq!(second[1].1, [41; 8]);
        // Still below the clamp: held; above it: reported as read.
        let mut third = vec![(0, [120, 0, 60, 799, 12, 5, 5, 0])];
        assert_eq!(c.apply(&mut third), 1);
        assert_eq!(third[0].1, [120, 0, 60, 800, 12, 5, 5, 0]);
        let mut fourth = vec![(0, [121, 0, 61, 805, 12, 5, 5, 0])];
        assert_eq!(c.apply(&mut fourth), 0);
        assert_eq!(fourth[0].1, [121, 0, 61, 805, 12, 5, 5, 0]);
    }

    #[test]
    fn the_source_reports_clamped_cpu_time_from_a_stat_file_that_goes_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            proc: dir.path().to_owned(),
            sys: dir.path().join("sys"),
            ..Roots::default()
        };
        std::fs::write(dir.path().join("stat"), STAT).unwrap();
        let mut src = CpuSource::new(roots);
        let idle_of = |r: &CpuReading| r.per_cpu[0].1[3];
        assert_eq!(idle_of(&src.read().unwrap()), 400);
        std::fs::write(
            dir.path().join("stat"),
            "cpu  100 0 50 700 10 5 5 0 0 0\ncpu0 60 0 25 390 5 3 2 0 0 0\ncpu1 40 0 25 400 5 2 3 0 0 0\n",
        )
        .unwrap();
        assert_eq!(idle_of(&src.read().unwrap()), 400);
    }

    #[test]
    fn a_stat_file_without_the_aggregate_line_is_a_parse_error() {
        let err = parse_stat("stat".as_ref(), "intr 1\n").unwrap_err();
        assert_eq!(err.kind(), "parse");
    }
}
