//! A service's own process (`process.*`) and tokio runtime (`tokio.*`) metrics,
//! read when the metrics are collected (observable instruments), never per call
//! or per task. The catalogue is `MONITORED.md`, `## Process and runtime metrics`.
//!
//! Process metrics come from `/proc/self` on Linux and are absent elsewhere. The
//! files stay open and are read again from offset 0 into buffers allocated once,
//! as the receiver's host families do: procfs regenerates a file's text on every
//! read from the start, and opening it again costs as much as reading it.

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use crate::names::runtime as names;

/// Registers the process metrics (when `process` is true, on Linux) and the
/// runtime metrics of `runtimes` (none when it is empty) on `meter`.
pub(crate) fn register(meter: &Meter, process: bool, runtimes: Vec<tokio::runtime::Handle>) {
    if process {
        #[cfg(target_os = "linux")]
        linux::register(meter);
    }
    if !runtimes.is_empty() {
        register_runtimes(meter, runtimes);
    }
}

/// The runtimes `build` watches: the one it runs inside (if any), then those
/// named on the builder.
pub(crate) fn runtimes(named: Vec<tokio::runtime::Handle>) -> Vec<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current()
        .into_iter()
        .chain(named)
        .collect()
}

/// One watched runtime. The callbacks hold only a `Weak` to its handle: the
/// strong one lives in a task parked on the runtime itself, which the runtime
/// drops when it shuts down. So watching never keeps a runtime (or its memory)
/// alive, and a runtime that is gone simply stops reporting.
struct Watched {
    handle: Weak<tokio::runtime::Handle>,
    attributes: [KeyValue; 1],
    /// Per worker: the runtime's attribute and the worker's index, built once
    /// (a runtime's worker count never changes).
    #[cfg_attr(not(target_has_atomic = "64"), allow(dead_code))]
    workers: Vec<[KeyValue; 2]>,
}

impl Watched {
    fn new(index: usize, handle: tokio::runtime::Handle) -> Self {
        let runtime = KeyValue::new(names::RUNTIME_INDEX, index as i64);
        let workers = (0..handle.metrics().num_workers())
            .map(|w| {
                [
                    runtime.clone(),
                    KeyValue::new(names::WORKER_INDEX, w as i64),
                ]
            })
            .collect();
        let strong = Arc::new(handle);
        let weak = Arc::downgrade(&strong);
        // The keeper task is the only owner of the handle. It never wakes, costs
        // one task slot, and is not counted in `tokio.alive_tasks`. On a runtime
        // already shut down, `spawn` drops it at once and nothing is reported.
        let keeper = strong.clone();
        strong.spawn(async move {
            let _keep = keeper;
            std::future::pending::<()>().await;
        });
        drop(strong);
        Self {
            handle: weak,
            attributes: [runtime],
            workers,
        }
    }

    /// Calls `f` with the runtime's metrics, unless the runtime is gone.
    fn with(&self, f: impl FnOnce(&tokio::runtime::RuntimeMetrics)) {
        if let Some(handle) = self.handle.upgrade() {
            f(&handle.metrics());
        }
    }
}

fn register_runtimes(meter: &Meter, handles: Vec<tokio::runtime::Handle>) {
    let watched: Arc<[Watched]> = handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| Watched::new(i, h))
        .collect();

    let w = watched.clone();
    meter
        .u64_observable_gauge(names::WORKERS)
        .with_unit("{worker}")
        .with_description("The number of worker threads used by the runtime")
        .with_callback(move |o| {
            for r in w.iter() {
                r.with(|m| o.observe(m.num_workers() as u64, &r.attributes));
            }
        })
        .build();
    let w = watched.clone();
    meter
        .u64_observable_gauge(names::ALIVE_TASKS)
        .with_unit("{task}")
        .with_description("The number of tasks alive in the runtime")
        .with_callback(move |o| {
            for r in w.iter() {
                // Less our own keeper task (see `Watched`), alive while we read.
                r.with(|m| {
                    o.observe(m.num_alive_tasks().saturating_sub(1) as u64, &r.attributes);
                });
            }
        })
        .build();
    let w = watched.clone();
    meter
        .u64_observable_gauge(names::GLOBAL_QUEUE_DEPTH)
        .with_unit("{task}")
        .with_description("The number of tasks currently scheduled in the runtime's global queue")
        .with_callback(move |o| {
            for r in w.iter() {
                r.with(|m| o.observe(m.global_queue_depth() as u64, &r.attributes));
            }
        })
        .build();
    #[cfg(target_has_atomic = "64")]
    {
        let w = watched.clone();
        meter
            .f64_observable_counter(names::WORKER_BUSY_DURATION)
            .with_unit("s")
            .with_description("The amount of time the given worker thread has been busy")
            .with_callback(move |o| {
                for r in w.iter() {
                    r.with(|m| {
                        for (i, attributes) in r.workers.iter().enumerate() {
                            o.observe(m.worker_total_busy_duration(i).as_secs_f64(), attributes);
                        }
                    });
                }
            })
            .build();
        let w = watched;
        meter
            .u64_observable_counter(names::WORKER_PARK_COUNT)
            .with_description("The total number of times the given worker thread has parked")
            .with_callback(move |o| {
                for r in w.iter() {
                    r.with(|m| {
                        for (i, attributes) in r.workers.iter().enumerate() {
                            o.observe(m.worker_park_count(i), attributes);
                        }
                    });
                }
            })
            .build();
    }
}

/// Heap bytes the allocator has handed out and not had back: what tells a leak
/// (it grows) from fragmentation or pages the allocator keeps (RSS grows, it
/// does not). glibc's `mallinfo2` (2.33 and later), looked up at run time so
/// that a binary built here still starts on an older glibc (where it is `None`):
/// the arenas' chunks in use (`uordblks`) and the chunks mmap'd on their own
/// (`hblkhd`). It holds each arena's lock while it walks the free lists, so its
/// cost follows the free chunks: 3 µs for a compact heap, 13 ms with 100,000
/// free chunks (glibc 2.36). Read it once per collection, never per call.
/// `process.memory.heap.usage` of both this crate and the receiver.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use() -> Option<u64> {
    use std::sync::OnceLock;
    type Mallinfo2 = unsafe extern "C" fn() -> libc::mallinfo2;
    static MALLINFO2: OnceLock<Option<Mallinfo2>> = OnceLock::new();
    let f = (*MALLINFO2.get_or_init(|| {
        // SAFETY: a NUL-terminated name; RTLD_DEFAULT searches the objects
        // already loaded.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
        // SAFETY: glibc's `mallinfo2` has exactly this signature.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Mallinfo2>(p) })
    }))?;
    // SAFETY: mallinfo2 takes no arguments and only reads the arenas.
    let m = unsafe { f() };
    Some((m.uordblks as u64).saturating_add(m.hblkhd as u64))
}

/// Other C libraries give no such count (musl has no mallinfo2): absent, not
/// estimated.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use() -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use opentelemetry::KeyValue;
    use opentelemetry::metrics::Meter;
    use opentelemetry_semantic_conventions::attribute::{CPU_MODE, PROCESS_CONTEXT_SWITCH_TYPE};
    use opentelemetry_semantic_conventions::metric as sc;

    /// Callbacks of one collection run within this of each other, so they share
    /// one reading of /proc/self instead of reading it once per instrument.
    const FRESH: Duration = Duration::from_millis(20);

    /// One reading of /proc/self.
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    pub(super) struct Reading {
        pub user_s: f64,
        pub system_s: f64,
        pub rss_bytes: u64,
        pub virtual_bytes: u64,
        pub threads: u64,
        pub uptime_s: f64,
        pub voluntary: Option<u64>,
        pub involuntary: Option<u64>,
        pub fds: Option<u64>,
        /// Heap bytes in use, where the allocator says (glibc).
        pub heap_bytes: Option<u64>,
    }

    /// /proc/self's files, kept open, and the buffers they are read into.
    struct ProcSelf {
        stat: File,
        status: Option<File>,
        fd_dir: Option<File>,
        buf: Box<[u8]>,
        tick: f64,
        page: u64,
        last: Option<(Instant, Option<Reading>)>,
    }

    impl ProcSelf {
        fn open() -> Option<Self> {
            let stat = File::open("/proc/self/stat").ok()?;
            // SAFETY: sysconf has no preconditions.
            let (tick, page) = unsafe {
                (
                    libc::sysconf(libc::_SC_CLK_TCK),
                    libc::sysconf(libc::_SC_PAGESIZE),
                )
            };
            Some(Self {
                stat,
                status: File::open("/proc/self/status").ok(),
                fd_dir: File::open("/proc/self/fd").ok(),
                // /proc/self/status is the largest (about 1.5 KiB; more with
                // long Cpus_allowed masks on machines with many CPUs).
                buf: vec![0; 16 * 1024].into_boxed_slice(),
                tick: if tick > 0 { tick as f64 } else { 100.0 },
                page: if page > 0 { page as u64 } else { 4096 },
                last: None,
            })
        }

        /// The reading of this collection: fresh unless another callback of
        /// the same collection just read.
        fn reading(&mut self) -> Option<Reading> {
            let now = Instant::now();
            if let Some((at, r)) = self.last
                && now.duration_since(at) < FRESH
            {
                return r;
            }
            let r = self.read();
            self.last = Some((now, r));
            r
        }

        fn read(&mut self) -> Option<Reading> {
            let n = read_whole(&self.stat, &mut self.buf)?;
            let stat = parse_stat(&self.buf[..n])?;
            let mut r = Reading {
                user_s: stat.utime as f64 / self.tick,
                system_s: stat.stime as f64 / self.tick,
                rss_bytes: stat.rss_pages.saturating_mul(self.page),
                virtual_bytes: stat.vsize,
                threads: stat.threads,
                uptime_s: boot_time_s()
                    .map(|now| (now - stat.starttime as f64 / self.tick).max(0.0))
                    .unwrap_or(0.0),
                ..Reading::default()
            };
            if let Some(status) = &self.status
                && let Some(n) = read_whole(status, &mut self.buf)
            {
                let text = &self.buf[..n];
                r.voluntary = status_field(text, b"voluntary_ctxt_switches:");
                r.involuntary = status_field(text, b"nonvoluntary_ctxt_switches:");
            }
            if let Some(dir) = &self.fd_dir {
                r.fds = count_entries(dir, &mut self.buf);
            }
            r.heap_bytes = super::heap_in_use();
            Some(r)
        }
    }

    /// Reads a procfs file from offset 0 into `buf` (`pread`: no seek). `None`
    /// when it cannot be read or does not fit.
    fn read_whole(file: &File, buf: &mut [u8]) -> Option<usize> {
        let mut len = 0;
        loop {
            if len == buf.len() {
                return None;
            }
            match file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => return Some(len),
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Seconds since boot on the clock `/proc/<pid>/stat`'s start time counts on.
    fn boot_time_s() -> Option<f64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write to.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
    }

    /// Open file descriptors: the entries of the kept-open `/proc/self/fd`,
    /// listed again from its start with `getdents64` into `buf` (`read_dir`
    /// would allocate). The directory's own descriptor is one of them.
    fn count_entries(dir: &File, buf: &mut [u8]) -> Option<u64> {
        let fd = dir.as_raw_fd();
        // SAFETY: `fd` is an open directory that `dir` owns.
        if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } != 0 {
            return None;
        }
        let mut count = 0u64;
        loop {
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd,
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if n < 0 {
                return None;
            }
            if n == 0 {
                return Some(count);
            }
            // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
            let entries = &buf[..n as usize];
            let mut at = 0;
            while at + 19 < entries.len() {
                let reclen = u16::from_ne_bytes([entries[at + 16], entries[at + 17]]) as usize;
                if reclen == 0 {
                    return None;
                }
                let name = &entries[at + 19..(at + reclen).min(entries.len())];
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                if name != b"." && name != b".." {
                    count += 1;
                }
                at += reclen;
            }
        }
    }

    /// The fields of `/proc/<pid>/stat` we use.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Stat {
        pub utime: u64,
        pub stime: u64,
        pub threads: u64,
        pub starttime: u64,
        pub vsize: u64,
        pub rss_pages: u64,
    }

    /// Parses `/proc/<pid>/stat` (proc(5)) without allocating.
    pub(super) fn parse_stat(text: &[u8]) -> Option<Stat> {
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let close = text.iter().rposition(|&b| b == b')')?;
        let mut fields = text[close + 1..]
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        // The first field after ')' is field 3 (state); field N is the (N - 3)th after it.
        let mut nth = |skip: usize| fields.nth(skip).and_then(parse_u64);
        let utime = nth(14 - 3)?;
        let stime = nth(0)?;
        let threads = nth(20 - 15 - 1)?;
        let starttime = nth(22 - 20 - 1)?;
        let vsize = nth(0)?;
        let rss_pages = nth(0)?;
        Some(Stat {
            utime,
            stime,
            threads,
            starttime,
            vsize,
            rss_pages,
        })
    }

    /// The number after `key` on its line of `/proc/<pid>/status`.
    pub(super) fn status_field(text: &[u8], key: &[u8]) -> Option<u64> {
        text.split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(key))
            .and_then(|v| parse_u64(v.trim_ascii()))
    }

    fn parse_u64(s: &[u8]) -> Option<u64> {
        if s.is_empty() {
            return None;
        }
        s.iter().try_fold(0u64, |n, &b| {
            b.is_ascii_digit()
                .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
                .flatten()
        })
    }

    pub(super) fn register(meter: &Meter) {
        let Some(proc) = ProcSelf::open() else {
            return;
        };
        let proc = Arc::new(Mutex::new(proc));
        let read = move || {
            proc.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reading()
        };

        let r = read.clone();
        let modes = [
            KeyValue::new(CPU_MODE, "user"),
            KeyValue::new(CPU_MODE, "system"),
        ];
        meter
            .f64_observable_counter(sc::PROCESS_CPU_TIME)
            .with_unit("s")
            .with_description("Total CPU seconds broken down by different CPU modes")
            .with_callback(move |o| {
                if let Some(x) = r() {
                    o.observe(x.user_s, std::slice::from_ref(&modes[0]));
                    o.observe(x.system_s, std::slice::from_ref(&modes[1]));
                }
            })
            .build();
        let r = read.clone();
        meter
            .i64_observable_up_down_counter(sc::PROCESS_MEMORY_USAGE)
            .with_unit("By")
            .with_description("The amount of physical memory in use")
            .with_callback(move |o| {
                if let Some(x) = r() {
                    o.observe(i64::try_from(x.rss_bytes).unwrap_or(i64::MAX), &[]);
                }
            })
            .build();
        // Only where the allocator can say (glibc): absent rather than estimated.
        if super::heap_in_use().is_some() {
            let r = read.clone();
            meter
                .i64_observable_up_down_counter(crate::names::PROCESS_MEMORY_HEAP_USAGE)
                .with_unit("By")
                .with_description(
                    "Heap bytes allocated and not freed, as the allocator counts them (glibc mallinfo2)",
                )
                .with_callback(move |o| {
                    if let Some(heap) = r().and_then(|x| x.heap_bytes) {
                        o.observe(i64::try_from(heap).unwrap_or(i64::MAX), &[]);
                    }
                })
                .build();
        }
        let r = read.clone();
        meter
            .i64_observable_up_down_counter(sc::PROCESS_MEMORY_VIRTUAL)
            .with_unit("By")
            .with_description("The amount of committed virtual memory")
            .with_callback(move |o| {
                if let Some(x) = r() {
                    o.observe(i64::try_from(x.virtual_bytes).unwrap_or(i64::MAX), &[]);
                }
            })
            .build();
        let r = read.clone();
        meter
            .i64_observable_up_down_counter(sc::PROCESS_THREAD_COUNT)
            .with_unit("{thread}")
            .with_description("Process threads count")
            .with_callback(move |o| {
                if let Some(x) = r() {
                    o.observe(i64::try_from(x.threads).unwrap_or(i64::MAX), &[]);
                }
            })
            .build();
        let r = read.clone();
        meter
            .i64_observable_up_down_counter(sc::PROCESS_UNIX_FILE_DESCRIPTOR_COUNT)
            .with_unit("{file_descriptor}")
            .with_description("Number of unix file descriptors in use by the process")
            .with_callback(move |o| {
                if let Some(fds) = r().and_then(|x| x.fds) {
                    o.observe(i64::try_from(fds).unwrap_or(i64::MAX), &[]);
                }
            })
            .build();
        let r = read.clone();
        let kinds = [
            KeyValue::new(PROCESS_CONTEXT_SWITCH_TYPE, "voluntary"),
            KeyValue::new(PROCESS_CONTEXT_SWITCH_TYPE, "involuntary"),
        ];
        meter
            .u64_observable_counter(sc::PROCESS_CONTEXT_SWITCHES)
            .with_unit("{context_switch}")
            .with_description("Number of times the process has been context switched")
            .with_callback(move |o| {
                if let Some(x) = r() {
                    if let Some(v) = x.voluntary {
                        o.observe(v, std::slice::from_ref(&kinds[0]));
                    }
                    if let Some(v) = x.involuntary {
                        o.observe(v, std::slice::from_ref(&kinds[1]));
                    }
                }
            })
            .build();
        let r = read;
        meter
            .f64_observable_gauge(sc::PROCESS_UPTIME)
            .with_unit("s")
            .with_description("The time the process has been running")
            .with_callback(move |o| {
                if let Some(x) = r() {
                    o.observe(x.uptime_s, &[]);
                }
            })
            .build();
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stat_fields_are_found_after_a_command_with_spaces_and_parentheses() {
            let line = b"42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 1000 123456 789 18446744073709551615\n";
            assert_eq!(
                parse_stat(line),
                Some(Stat {
                    utime: 7,
                    stime: 3,
                    threads: 5,
                    starttime: 1000,
                    vsize: 123456,
                    rss_pages: 789,
                })
            );
            assert_eq!(parse_stat(b"42 (cmd) S 1 2"), None);
        }

        #[test]
        fn status_fields_are_read_by_their_whole_key() {
            let text = b"Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
            assert_eq!(status_field(text, b"voluntary_ctxt_switches:"), Some(12));
            assert_eq!(status_field(text, b"nonvoluntary_ctxt_switches:"), Some(3));
            assert_eq!(status_field(text, b"Threads:"), None);
        }

        /// Counts this thread's allocations (the lib's unit tests run with it).
        struct Counting;

        thread_local! {
            static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }

        // SAFETY: forwards to the system allocator; only counts on the side.
        unsafe impl std::alloc::GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
                // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
                unsafe { std::alloc::System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
                // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
                unsafe { std::alloc::System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(
                &self,
                ptr: *mut u8,
                layout: std::alloc::Layout,
                new_size: usize,
            ) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
                // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
                unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static GLOBAL: Counting = Counting;

        #[test]
        fn reading_proc_self_again_allocates_nothing() {
            let mut proc = ProcSelf::open().expect("/proc/self");
            let first = proc.read().expect("a reading");
            let before = ALLOCATIONS.with(std::cell::Cell::get);
            let mut last = first;
            for _ in 0..100 {
                last = proc.read().expect("a reading");
            }
            let allocations = ALLOCATIONS.with(std::cell::Cell::get) - before;
            assert_eq!(allocations, 0, "100 readings allocated {allocations} times");
            // And they are real readings: every field the test needs is there.
            assert!(last.fds.is_some() && last.voluntary.is_some() && last.involuntary.is_some());
            assert!(last.threads >= 1 && last.rss_bytes > 0 && last.user_s >= first.user_s);
        }

        #[test]
        fn the_kept_fd_directory_counts_a_descriptor_opened_since() {
            let mut proc = ProcSelf::open().expect("/proc/self");
            let before = proc.read().and_then(|r| r.fds).expect("an fd count");
            let extra: Vec<File> = (0..32)
                .map(|_| File::open("/proc/self/stat").unwrap())
                .collect();
            let during = proc.read().and_then(|r| r.fds).expect("an fd count");
            drop(extra);
            // Other test threads open and close files meanwhile, but not 16 at once.
            assert!(during >= before + 16, "{before} -> {during}");
        }
    }
}
