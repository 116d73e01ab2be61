//! Where /proc, /sys and the host's root filesystem are, and how the families read
//! files under them. Tests point [`Roots`] at fixture trees.

use std::path::{Path, PathBuf};

use crate::source::CollectError;

/// Where /proc, /sys and the host's `/` are. Tests point these at fixture trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The procfs root. Default: `/proc`.
    pub proc: PathBuf,
    /// The sysfs root. Default: `/sys`.
    pub sys: PathBuf,
    /// Where the host's root filesystem is mounted (`--rootfs`): mount points are
    /// `statvfs`ed, and the hostname and machine id read, under it. Default: `/`.
    pub rootfs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            rootfs: PathBuf::from("/"),
        }
    }
}

impl Roots {
    /// Path of `rel` under the procfs root.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }

    /// Path of `rel` under the sysfs root.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sys.join(rel)
    }

    /// Where the host's absolute path `host_path` (a mount point, say) is seen from
    /// here: under `--rootfs`.
    pub fn host_path(&self, host_path: &str) -> PathBuf {
        let rel = host_path.trim_start_matches('/');
        if rel.is_empty() {
            self.rootfs.clone()
        } else {
            self.rootfs.join(rel)
        }
    }
}

/// Reads a whole file, naming it in the error.
///
/// A procfs or sysfs file stays open on the reading thread (at most 64 of them) and
/// is read again from offset 0 next time: the kernel regenerates its text on every read
/// from the start, and opening it (a path walk through `/proc/1/...`, a dentry made and
/// killed) cost as much as reading it. Any other file (a test's fixture tree) is opened
/// afresh every time, so a rewritten file is always seen.
pub(crate) fn read(path: &Path) -> Result<String, CollectError> {
    kept::read(path).map_err(|source| CollectError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Starts a new collection cycle on the calling thread: from now on, a kept file read
/// twice in the same cycle (by two families) is read from the kernel once. Threads that
/// never call it always read afresh.
pub(crate) fn new_cycle() {
    kept::new_cycle();
}

/// Open procfs and sysfs files per thread, at most this many.
const KEPT: usize = 64;

mod kept {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::fs::File;
    use std::io;
    use std::path::{Path, PathBuf};

    /// A kept file: the open file, and its last text with the cycle it was read in.
    struct Kept {
        file: File,
        last: String,
        cycle: u64,
    }

    thread_local! {
        static FILES: RefCell<HashMap<PathBuf, Kept>> = RefCell::new(HashMap::new());
        /// The reading thread's cycle; 0 until [`new_cycle`] is first called.
        static CYCLE: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn new_cycle() {
        CYCLE.set(CYCLE.get() + 1);
    }

    pub(super) fn read(path: &Path) -> io::Result<String> {
        let cycle = CYCLE.get();
        let kept = FILES.with_borrow_mut(|files| {
            let kept = files.get_mut(path)?;
            if cycle != 0 && kept.cycle == cycle {
                // Read already this cycle (/proc/stat by cpu and processes, say).
                return Some(kept.last.clone());
            }
            match read_from_start(&kept.file, kept.last.len()) {
                Ok(text) => {
                    kept.last.clone_from(&text);
                    kept.cycle = cycle;
                    Some(text)
                }
                Err(_) => {
                    // The process behind /proc/<pid> went away, say: open it again below.
                    files.remove(path);
                    None
                }
            }
        });
        if let Some(text) = kept {
            return Ok(text);
        }
        let file = File::open(path)?;
        let text = read_from_start(&file, 0)?;
        if is_pseudo(&file) {
            FILES.with_borrow_mut(|files| {
                if files.len() < super::KEPT {
                    let last = text.clone();
                    files.insert(path.to_owned(), Kept { file, last, cycle });
                }
            });
        }
        Ok(text)
    }

    /// The whole text from offset 0 (`pread`: no seek, no size probe).
    fn read_from_start(file: &File, hint: usize) -> io::Result<String> {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; (hint + hint / 4).max(4096)];
        let mut len = 0;
        loop {
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            match file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(len);
        String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// procfs or sysfs, whose files are regenerated on every read.
    #[cfg(target_os = "linux")]
    fn is_pseudo(file: &File) -> bool {
        use std::os::fd::AsRawFd as _;
        const PROC_SUPER_MAGIC: i64 = 0x9fa0;
        const SYSFS_MAGIC: i64 = 0x6265_6572;
        // SAFETY: fstatfs fills the zeroed struct it is given, for an fd we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
            return false;
        }
        // f_type is i64 on x86_64 glibc, narrower elsewhere.
        #[allow(clippy::unnecessary_cast)]
        let magic = st.f_type as i64;
        magic == PROC_SUPER_MAGIC || magic == SYSFS_MAGIC
    }

    #[cfg(not(target_os = "linux"))]
    fn is_pseudo(_: &File) -> bool {
        false
    }

    #[cfg(test)]
    pub(super) fn is_kept(path: &Path) -> bool {
        FILES.with_borrow(|files| files.contains_key(path))
    }
}

/// Parses a whitespace-separated field as u64.
pub(crate) fn field(path: &Path, line: &str, s: Option<&str>) -> Result<u64, CollectError> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| CollectError::parse(path, format!("bad numeric field in line {line:?}")))
}

/// Clock ticks per second, the unit of /proc/stat and /proc/<pid>/stat times.
#[cfg(unix)]
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_kept_procfs_file_is_read_afresh_every_time() {
        let path = Path::new("/proc/self/stat");
        // utime+stime of this thread's process: burn CPU between the reads until they move.
        let ticks = |t: &str| -> u64 {
            let after = &t[t.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        };
        let first = read(path).unwrap();
        assert!(kept::is_kept(path), "a procfs file stays open");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut later = first.clone();
        while ticks(&later) == ticks(&first) && start.elapsed() < std::time::Duration::from_secs(10)
        {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            later = read(path).unwrap();
        }
        assert!(
            ticks(&later) > ticks(&first),
            "the kept file must show new values"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn within_a_cycle_a_kept_file_is_read_from_the_kernel_once() {
        // This thread's time on CPU, in ns: it moves while the thread spins.
        let path = Path::new("/proc/thread-self/schedstat");
        let spin = || {
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(5) {
                std::hint::black_box(0u64);
            }
        };
        std::thread::spawn(move || {
            new_cycle();
            let first = read(path).unwrap();
            spin();
            assert_eq!(
                read(path).unwrap(),
                first,
                "the same cycle shares one reading"
            );
            new_cycle();
            spin();
            assert_ne!(read(path).unwrap(), first, "a new cycle reads afresh");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_regular_file_is_opened_afresh_so_a_replaced_fixture_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stat");
        std::fs::write(&p, "one").unwrap();
        assert_eq!(read(&p).unwrap(), "one");
        assert!(!kept::is_kept(&p));
        // Replaced by rename (a new inode), as fixture writers and atomic updates do.
        let tmp = d.path().join("stat.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(read(&p).unwrap(), "two");
    }

    #[test]
    fn a_missing_file_is_an_io_error_that_names_it() {
        let e = read(Path::new("/no/such/file")).unwrap_err();
        assert!(e.to_string().contains("/no/such/file"), "{e}");
    }
}
