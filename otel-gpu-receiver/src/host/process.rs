//! `process.*` for the agent itself, from /proc/self (sysinfo elsewhere).

use std::sync::OnceLock;
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::CPU_MODE;
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::names;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the agent's start, for `process.uptime`. Called early by the agent.
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// One cycle's reading of the agent's own process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessReading {
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds.
    pub system_s: f64,
    /// Resident set size in bytes.
    pub rss: u64,
    /// Heap bytes in use, as the allocator counts them (None where it cannot say).
    pub heap: Option<u64>,
    /// Virtual size in bytes.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors (None where unknown).
    pub fds: Option<u64>,
    /// Seconds since the agent started.
    pub uptime_s: f64,
}

impl ProcessReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        out.push(
            sc::PROCESS_CPU_TIME,
            vec![KeyValue::new(CPU_MODE, "user")],
            self.user_s,
        );
        out.push(
            sc::PROCESS_CPU_TIME,
            vec![KeyValue::new(CPU_MODE, "system")],
            self.system_s,
        );
        out.push(sc::PROCESS_MEMORY_USAGE, vec![], self.rss);
        if let Some(heap) = self.heap {
            out.push(names::PROCESS_MEMORY_HEAP_USAGE, vec![], heap);
        }
        out.push(sc::PROCESS_MEMORY_VIRTUAL, vec![], self.virtual_bytes);
        out.push(sc::PROCESS_THREAD_COUNT, vec![], self.threads);
        if let Some(fds) = self.fds {
            out.push(sc::PROCESS_UNIX_FILE_DESCRIPTOR_COUNT, vec![], fds);
        }
        out.push(sc::PROCESS_UPTIME, vec![], self.uptime_s);
    }
}

/// The fields of `/proc/<pid>/stat` we use: (utime, stime, threads, vsize, rss pages).
///
/// # Errors
/// The line is malformed.
pub fn parse_pid_stat(
    path: &std::path::Path,
    text: &str,
) -> Result<(u64, u64, u64, u64, u64), CollectError> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| CollectError::parse(path, "no ')' after the command name"))?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // Field N of proc(5) is f[N - 3].
    let n = |i: usize| super::roots::field(path, text, f.get(i - 3).copied());
    Ok((n(14)?, n(15)?, n(20)?, n(23)?, n(24)?))
}

/// The allocator's count of heap bytes in use (glibc's `mallinfo2`; `None`
/// elsewhere): the same reader as a service's `process.memory.heap.usage`.
pub use otel_instrument::heap_in_use;

/// Reads the agent's own process.
#[derive(Debug)]
pub struct ProcessSource {
    roots: Roots,
}

impl ProcessSource {
    /// A source reading `<proc>/self`.
    pub fn new(roots: Roots) -> Self {
        mark_start();
        Self { roots }
    }

    fn uptime() -> f64 {
        STARTED.get_or_init(Instant::now).elapsed().as_secs_f64()
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/self/stat cannot be read or parsed.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<ProcessReading, CollectError> {
        let path = self.roots.proc("self/stat");
        let (utime, stime, threads, vsize, rss_pages) =
            parse_pid_stat(&path, &super::roots::read(&path)?)?;
        let tick = super::roots::clock_ticks();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let fds = std::fs::read_dir(self.roots.proc("self/fd"))
            .ok()
            .map(|d| d.count() as u64);
        Ok(ProcessReading {
            user_s: utime as f64 / tick,
            system_s: stime as f64 / tick,
            rss: rss_pages * page,
            heap: heap_in_use(),
            virtual_bytes: vsize,
            threads,
            fds,
            uptime_s: Self::uptime(),
        })
    }

    /// Reads once through sysinfo.
    ///
    /// # Errors
    /// sysinfo cannot see the agent's own process.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<ProcessReading, CollectError> {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
        let _ = &self.roots;
        let pid = sysinfo::get_current_pid().map_err(|_| CollectError::Unsupported)?;
        let mut s = System::new().map_err(|_| CollectError::Unsupported)?;
        s.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let p = s.process(pid).ok_or(CollectError::Unsupported)?;
        Ok(ProcessReading {
            user_s: p.accumulated_cpu_time() as f64 / 1e3,
            system_s: 0.0,
            rss: p.memory(),
            heap: heap_in_use(),
            virtual_bytes: p.virtual_memory(),
            threads: 0,
            fds: None,
            uptime_s: Self::uptime(),
        })
    }
}

impl Source for ProcessSource {
    fn family(&self) -> Family {
        Family::Process
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
        self.read()?.points(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_stat_fields_are_found_after_a_command_with_spaces() {
        let line = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 1000 123456 789 18446744073709551615";
        let (u, s, th, vs, rss) = parse_pid_stat("stat".as_ref(), line).unwrap();
        assert_eq!((u, s, th, vs, rss), (7, 3, 5, 123456, 789));
    }
}
