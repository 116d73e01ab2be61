//! `statvfs` under a deadline, so that one dead mount (an NFS server gone, a FUSE daemon
//! wedged) never stalls the filesystem family.
//!
//! Calls run one at a time on a worker thread; the caller waits at most the per-mount
//! timeout. A call past it leaves its thread behind, blocked in the kernel, and its mount
//! is *stuck*: it is skipped, without a call, until that thread returns (the mount
//! answered after all), and then it is asked again. The next call gets a fresh worker.
//! At most `max_hung` threads are left behind; while that many are stuck, no new worker
//! is started and further calls are skipped, so a flapping NFS server cannot pile up
//! threads.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What `statvfs` says about one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Size in bytes.
    pub total: u64,
    /// Bytes free for unprivileged users.
    pub free: u64,
    /// Bytes reserved for root.
    pub reserved: u64,
    /// Inodes in all (0 where the filesystem has no fixed inode table, like btrfs).
    pub inodes: u64,
    /// Inodes free.
    pub inodes_free: u64,
}

/// Local filesystems whose statfs answers from in-memory counters, without I/O and
/// without a server that could go away: these are asked inline, which spares the
/// worker's two context switches per mount and cycle. Everything else (NFS, CIFS, Ceph,
/// FUSE, 9p, virtiofs, overlay over any of them, types this list does not know) goes
/// through the deadline.
pub fn answers_from_memory(fstype: &str) -> bool {
    matches!(
        fstype,
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "f2fs" | "vfat" | "tmpfs" | "ramfs"
    )
}

/// The call a [`Prober`] makes; tests replace it to model a hung mount.
pub type StatFn = Arc<dyn Fn(&Path) -> io::Result<Stat> + Send + Sync>;

/// The outcome of one [`Prober::probe`].
#[derive(Debug)]
pub enum Probe {
    /// The call returned (maybe with an error, such as a permission error).
    Answered(io::Result<Stat>),
    /// No answer within the timeout: the mount is stuck from now on.
    TimedOut,
    /// Skipped: the mount is still stuck from an earlier call.
    Stuck,
    /// Skipped: `max_hung` calls are still stuck, so no new worker may start.
    TooManyHung,
}

#[derive(Debug, Default)]
struct State {
    /// Stuck mount (the key given to `probe`) → when it got stuck.
    stuck: BTreeMap<String, Instant>,
    /// Workers that were given up on; each removes its mount from `stuck` on return.
    abandoned: HashSet<u64>,
}

type Request = (String, PathBuf);

#[derive(Debug)]
struct Worker {
    id: u64,
    requests: Sender<Request>,
    replies: Receiver<io::Result<Stat>>,
}

/// Runs `statvfs` calls under a deadline each. See the module docs.
pub struct Prober {
    timeout: Duration,
    max_hung: usize,
    call: StatFn,
    state: Arc<Mutex<State>>,
    worker: Option<Worker>,
    next_id: u64,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("timeout", &self.timeout)
            .field("max_hung", &self.max_hung)
            .field("stuck", &self.stuck())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Prober {
    /// Calls the real `statvfs`.
    pub fn new(timeout: Duration, max_hung: usize) -> Self {
        Self::with_call(timeout, max_hung, Arc::new(statvfs))
    }

    /// Calls `call` instead of `statvfs` (tests).
    pub fn with_call(timeout: Duration, max_hung: usize, call: StatFn) -> Self {
        Self {
            timeout,
            max_hung: max_hung.max(1),
            call,
            state: Arc::default(),
            worker: None,
            next_id: 0,
        }
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The mounts stuck now, with how long each has been stuck.
    pub fn stuck(&self) -> Vec<(String, Duration)> {
        lock(&self.state)
            .stuck
            .iter()
            .map(|(k, since)| (k.clone(), since.elapsed()))
            .collect()
    }

    /// Whether `key` is stuck now.
    pub fn is_stuck(&self, key: &str) -> bool {
        lock(&self.state).stuck.contains_key(key)
    }

    fn spawn(&mut self) -> io::Result<Worker> {
        let id = self.next_id;
        self.next_id += 1;
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let (rep_tx, rep_rx) = mpsc::channel();
        let state = self.state.clone();
        let call = self.call.clone();
        std::thread::Builder::new()
            .name("statvfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while let Ok((key, path)) = req_rx.recv() {
                    let r = call(&path);
                    // Under the lock, so that the caller's give-up and this answer
                    // cannot cross: either the caller sees the reply, or this thread
                    // sees that it was abandoned and clears the stuck mark.
                    let mut st = lock(&state);
                    if st.abandoned.remove(&id) {
                        st.stuck.remove(&key);
                        return;
                    }
                    if rep_tx.send(r).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker {
            id,
            requests: req_tx,
            replies: rep_rx,
        })
    }

    /// `statvfs(path)` on the calling thread, with no deadline: for filesystems whose
    /// statfs answers from memory (see [`answers_from_memory`]).
    pub fn probe_inline(&self, path: &Path) -> Probe {
        Probe::Answered((self.call)(path))
    }

    /// `statvfs(path)`, waiting at most the timeout; `key` names the mount in the
    /// stuck list.
    pub fn probe(&mut self, key: &str, path: &Path) -> Probe {
        {
            let st = lock(&self.state);
            if st.stuck.contains_key(key) {
                return Probe::Stuck;
            }
            if self.worker.is_none() && st.stuck.len() >= self.max_hung {
                return Probe::TooManyHung;
            }
        }
        let worker = match self.worker.take() {
            Some(w) => w,
            None => match self.spawn() {
                Ok(w) => w,
                Err(e) => return Probe::Answered(Err(e)),
            },
        };
        if worker
            .requests
            .send((key.to_owned(), path.to_owned()))
            .is_err()
        {
            // The worker is gone (it panicked): the next call gets a new one.
            return Probe::Answered(Err(io::Error::other("statvfs worker is gone")));
        }
        match worker.replies.recv_timeout(self.timeout) {
            Ok(r) => {
                self.worker = Some(worker);
                Probe::Answered(r)
            }
            Err(RecvTimeoutError::Disconnected) => {
                Probe::Answered(Err(io::Error::other("statvfs worker is gone")))
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut st = lock(&self.state);
                // It may have answered between the timeout and the lock.
                if let Ok(r) = worker.replies.try_recv() {
                    drop(st);
                    self.worker = Some(worker);
                    return Probe::Answered(r);
                }
                st.abandoned.insert(worker.id);
                st.stuck.insert(key.to_owned(), Instant::now());
                // Dropping `worker` closes its request channel: the thread exits as
                // soon as its call returns.
                Probe::TimedOut
            }
        }
    }
}

/// The real `statvfs`, in bytes and inodes.
#[cfg(unix)]
// The statvfs field types differ between platforms (u32 on some): keep the casts.
#[allow(clippy::unnecessary_cast)]
pub fn statvfs(path: &Path) -> io::Result<Stat> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `s` points to writable memory of
    // the right type; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let s = unsafe { s.assume_init() };
    let frsize = s.f_frsize as u64;
    let bfree = s.f_bfree as u64 * frsize;
    let bavail = s.f_bavail as u64 * frsize;
    Ok(Stat {
        total: s.f_blocks as u64 * frsize,
        free: bavail,
        reserved: bfree.saturating_sub(bavail),
        inodes: s.f_files as u64,
        inodes_free: s.f_ffree as u64,
    })
}

/// No statvfs off Unix.
#[cfg(not(unix))]
pub fn statvfs(_path: &Path) -> io::Result<Stat> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statvfs where paths under `/hung` block until `release` is sent.
    fn hanging() -> (
        StatFn,
        mpsc::Sender<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let f: StatFn = Arc::new(move |p: &Path| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if p.starts_with("/hung") {
                let _ = rx.lock().unwrap().recv();
            }
            Ok(Stat {
                total: 100,
                free: 40,
                reserved: 10,
                inodes: 10,
                inodes_free: 5,
            })
        });
        (f, tx, calls)
    }

    #[test]
    fn a_hung_mount_times_out_is_skipped_while_stuck_and_asked_again_once_it_answers() {
        let (f, release, calls) = hanging();
        let mut p = Prober::with_call(Duration::from_millis(50), 4, f);
        assert!(matches!(
            p.probe("/", Path::new("/")),
            Probe::Answered(Ok(_))
        ));
        let t = Instant::now();
        assert!(matches!(
            p.probe("/hung", Path::new("/hung")),
            Probe::TimedOut
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
        // The others go on, on a new worker; the stuck one is not called again.
        assert!(matches!(
            p.probe("/", Path::new("/")),
            Probe::Answered(Ok(_))
        ));
        let before = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(p.probe("/hung", Path::new("/hung")), Probe::Stuck));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), before);
        assert_eq!(p.stuck().len(), 1);
        // The mount answers at last: no longer stuck, and it is asked again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.is_stuck("/hung") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!p.is_stuck("/hung"));
        release.send(()).unwrap(); // lets the next call through at once
        assert!(matches!(
            p.probe("/hung", Path::new("/hung")),
            Probe::Answered(Ok(_))
        ));
    }

    #[test]
    fn no_more_than_max_hung_threads_are_left_behind() {
        let (f, release, calls) = hanging();
        let mut p = Prober::with_call(Duration::from_millis(20), 2, f);
        assert!(matches!(
            p.probe("/hung/a", Path::new("/hung/a")),
            Probe::TimedOut
        ));
        assert!(matches!(
            p.probe("/hung/b", Path::new("/hung/b")),
            Probe::TimedOut
        ));
        // Two threads are stuck: nothing more is started, not even for a healthy mount.
        let before = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(p.probe("/", Path::new("/")), Probe::TooManyHung));
        assert!(matches!(
            p.probe("/hung/c", Path::new("/hung/c")),
            Probe::TooManyHung
        ));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), before);
        // One answers: one new worker may start again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.stuck().len() == 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(
            p.probe("/", Path::new("/")),
            Probe::Answered(Ok(_))
        ));
        release.send(()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn statvfs_of_root_reports_sizes_and_inodes() {
        let s = statvfs(Path::new("/")).unwrap();
        assert!(s.total > 0 && s.free <= s.total);
        assert!(s.inodes_free <= s.inodes);
        assert!(statvfs(Path::new("/definitely/not/here")).is_err());
    }
}
