//! A mount whose `statfs` never answers (what a dead NFS server looks like) against the
//! real binary: a FUSE filesystem served by this test, which first leaves the kernel's
//! requests unanswered and then answers them.
//!
//! Everything happens in a private mount namespace of one thread of this test (and the
//! agent it spawns), so the hung mount is invisible to anything else on the machine.
//! Needs root and /dev/fuse; skipped with a printed reason otherwise.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use otel_instrument::testing::proto::metrics::v1::metric::Data;
use otel_instrument::testing::proto::metrics::v1::number_data_point::Value;
use otel_instrument::testing::{OtlpSink, Received, attributes};

use crate::common::{Running, agent_cmd};

const FUSE_GETATTR: u32 = 3;
const FUSE_FORGET: u32 = 2;
const FUSE_STATFS: u32 = 17;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;

/// What the fake filesystem's statfs reports: 1000 blocks of 4 KiB, 100 inodes.
const BLOCKS: u64 = 1000;
const FRSIZE: u32 = 4096;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in path")
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Moves the calling thread into a private mount namespace and mounts a FUSE
/// filesystem at `at`, returning the /dev/fuse connection.
fn private_fuse_mount(at: &Path) -> Result<OwnedFd, String> {
    // SAFETY: plain syscalls with valid, NUL-terminated arguments; unshare(CLONE_NEWNS)
    // affects this thread only (it unshares the fs struct with it).
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!("unshare(CLONE_NEWNS) is refused: {}", errno()));
        }
        // Nothing mounted here may propagate back to the machine's namespace.
        let root = cstr(Path::new("/"));
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!("cannot make / private: {}", errno()));
        }
        let dev = cstr(Path::new("/dev/fuse"));
        let fd = libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(format!("cannot open /dev/fuse: {}", errno()));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let opts = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fd.as_raw_fd()
        ))
        .expect("options");
        let src = CString::new("otel-fixture").expect("source");
        let fstype = CString::new("fuse").expect("type");
        let target = cstr(at);
        if libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        ) != 0
        {
            return Err(format!("cannot mount FUSE: {}", errno()));
        }
        Ok(fd)
    }
}

fn unmount(at: &Path) {
    let t = cstr(at);
    // SAFETY: a valid path; MNT_DETACH never blocks on the filesystem.
    unsafe {
        libc::umount2(t.as_ptr(), libc::MNT_DETACH);
    }
}

/// Answers the kernel's requests on `fd` until `stop`: INIT and STATFS properly, the
/// rest with ENOSYS.
fn serve(fd: &OwnedFd, stop: &AtomicBool) {
    let mut buf = vec![0u8; (1 << 20) + 4096];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 40 {
            if n < 0 && errno().raw_os_error() == Some(libc::ENODEV) {
                return;
            }
            continue;
        }
        let u32_at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
        let opcode = u32_at(4);
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        let mut body = Vec::new();
        let mut error: i32 = 0;
        match opcode {
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => continue,
            FUSE_INIT => {
                // fuse_init_out: major 7, the kernel's minor, then zeros but max_write.
                let minor = u32_at(44).min(31);
                body.extend_from_slice(&7u32.to_ne_bytes());
                body.extend_from_slice(&minor.to_ne_bytes());
                body.extend_from_slice(&0u32.to_ne_bytes()); // max_readahead
                body.extend_from_slice(&0u32.to_ne_bytes()); // flags
                body.extend_from_slice(&0u16.to_ne_bytes()); // max_background
                body.extend_from_slice(&0u16.to_ne_bytes()); // congestion_threshold
                body.extend_from_slice(&4096u32.to_ne_bytes()); // max_write
                body.resize(64, 0);
            }
            FUSE_STATFS => {
                for v in [BLOCKS, 600, 500, 100, 40] {
                    body.extend_from_slice(&v.to_ne_bytes());
                }
                for v in [FRSIZE, 255, FRSIZE, 0] {
                    body.extend_from_slice(&v.to_ne_bytes());
                }
                body.resize(80, 0);
            }
            FUSE_GETATTR => error = -libc::ENOSYS,
            _ => error = -libc::ENOSYS,
        }
        let mut reply = Vec::with_capacity(16 + body.len());
        reply.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        reply.extend_from_slice(&error.to_ne_bytes());
        reply.extend_from_slice(&unique.to_ne_bytes());
        reply.extend_from_slice(&body);
        // SAFETY: `reply` is readable for its length.
        unsafe { libc::write(fd.as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
    }
}

enum Setup {
    Started(Box<Running>),
    Refused(String),
}

/// Values of `name` in the last request, by the value of attribute `key`.
fn last_values(r: &Received, name: &str, key: &str) -> Option<BTreeMap<String, f64>> {
    last_values_where(r, name, key, |_| true)
}

/// Like [`last_values`], for the points whose attributes pass `keep`.
fn last_values_where(
    r: &Received,
    name: &str,
    key: &str,
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Option<BTreeMap<String, f64>> {
    let req = r.metrics.last()?;
    let mut out = BTreeMap::new();
    for m in req
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == name)
    {
        let points = match m.data.as_ref()? {
            Data::Sum(s) => &s.data_points,
            Data::Gauge(g) => &g.data_points,
            _ => continue,
        };
        for p in points {
            let v = match p.value {
                Some(Value::AsDouble(d)) => d,
                Some(Value::AsInt(i)) => i as f64,
                None => continue,
            };
            let attrs = attributes(&p.attributes);
            if keep(&attrs) {
                out.insert(attrs.get(key).cloned().unwrap_or_default(), v);
            }
        }
    }
    Some(out)
}

#[test]
fn a_mount_that_never_answers_never_stalls_the_agent_and_is_read_again_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mnt: PathBuf = dir.path().join("nfs-like");
    std::fs::create_dir_all(&mnt).unwrap();
    let proc = dir.path().join("proc");
    std::fs::create_dir_all(proc.join("1")).unwrap();
    let mnt_s = mnt.display().to_string();
    std::fs::write(
        proc.join("1/mountinfo"),
        format!(
            "22 1 253:1 / / rw - ext4 /dev/root rw\n\
             40 22 0:99 / {mnt_s} rw,nosuid,nodev - fuse otel-fixture rw\n"
        ),
    )
    .unwrap();
    let sink = OtlpSink::start().unwrap();
    let endpoint = sink.endpoint();

    let stop = Arc::new(AtomicBool::new(false));
    let answer = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Setup>();
    let fuse_thread = {
        let (stop, answer, mnt, proc) = (stop.clone(), answer.clone(), mnt.clone(), proc.clone());
        std::thread::spawn(move || {
            let fd = match private_fuse_mount(&mnt) {
                Ok(fd) => fd,
                Err(why) => {
                    let _ = tx.send(Setup::Refused(why));
                    return;
                }
            };
            // Spawned from this thread, the agent shares its mount namespace.
            let mut cmd: Command = agent_cmd(
                &[
                    "--families",
                    "filesystem",
                    "--proc-root",
                    proc.to_str().unwrap(),
                    "--interval",
                    "1s",
                    "--statvfs-timeout",
                    "150ms",
                    "--otlp-endpoint",
                    &endpoint,
                ],
                &[("OTEL_METRIC_EXPORT_INTERVAL", "500")],
            );
            cmd.env("RUST_LOG", "info");
            let _ = tx.send(Setup::Started(Box::new(Running::spawn(cmd))));
            // Leave the kernel's requests (INIT, then every statfs) unanswered...
            while !answer.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // ...then answer them.
            serve(&fd, &stop);
            unmount(&mnt);
        })
    };
    let mut agent = match rx.recv().expect("the FUSE thread reports") {
        Setup::Started(a) => a,
        Setup::Refused(why) => {
            println!("SKIPPED: {why}");
            fuse_thread.join().unwrap();
            return;
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // 1. The mount hangs: it is marked stuck, `/` keeps being reported, and the
        //    family never runs past its budget.
        let stuck = |r: &Received| {
            last_values(
                r,
                "otel_gpu_receiver.filesystem.stuck",
                "system.filesystem.mountpoint",
            )
            .is_some_and(|v| v.get(&mnt_s) == Some(&1.0))
        };
        sink.wait_until(Duration::from_secs(20), stuck)
            .unwrap_or_else(|| {
                panic!(
                    "the hung mount was never reported stuck; agent log:\n{}",
                    agent.stderr()
                )
            });
        let cycles = |r: &Received| {
            last_values(r, "otel_gpu_receiver.cycles", "")
                .and_then(|v| v.values().next().copied())
                .unwrap_or(0.0)
        };
        let at_stuck = cycles(&sink.received());
        let later = sink
            .wait_until(Duration::from_secs(20), |r| {
                cycles(r) >= at_stuck + 3.0 && stuck(r)
            })
            .expect("cycles go on while the mount hangs");
        let limits = last_values(
            &later,
            "system.filesystem.limit",
            "system.filesystem.mountpoint",
        )
        .unwrap();
        assert!(limits.contains_key("/"), "{limits:?}");
        assert!(!limits.contains_key(&mnt_s), "{limits:?}");
        // One call timed out; while stuck, the mount is skipped without a call.
        let timeouts = last_values(&later, "otel_gpu_receiver.filesystem.timeouts", "").unwrap();
        assert_eq!(timeouts.values().copied().collect::<Vec<_>>(), [1.0]);
        let skipped =
            last_values(&later, "otel_gpu_receiver.filesystem.skipped", "error.type").unwrap();
        assert!(
            skipped.get("stuck").is_some_and(|n| *n >= 2.0),
            "{skipped:?}"
        );
        // The family itself never timed out or was found busy.
        let errors = last_values(&later, "otel_gpu_receiver.errors", "source").unwrap();
        assert!(!errors.contains_key("filesystem"), "{errors:?}");
        assert!(agent.alive());

        // 2. The server answers: the hung call returns, the mount is asked again and
        //    reported with what its statfs says.
        answer.store(true, Ordering::Relaxed);
        let back = sink
            .wait_until(Duration::from_secs(20), |r| {
                !stuck(r)
                    && last_values(r, "system.filesystem.limit", "system.filesystem.mountpoint")
                        .is_some_and(|v| {
                            v.get(&mnt_s) == Some(&((BLOCKS * u64::from(FRSIZE)) as f64))
                        })
            })
            .unwrap_or_else(|| {
                panic!(
                    "the mount was never read again; agent log:\n{}",
                    agent.stderr()
                )
            });
        let stuck_now = last_values(
            &back,
            "otel_gpu_receiver.filesystem.stuck",
            "system.filesystem.mountpoint",
        )
        .unwrap();
        assert!(stuck_now.is_empty(), "{stuck_now:?}");
        // Its inodes as its statfs gives them: 100 in all, 40 free.
        let inodes = last_values_where(
            &back,
            "system.filesystem.inodes.usage",
            "system.filesystem.state",
            |a| a.get("system.filesystem.mountpoint") == Some(&mnt_s),
        )
        .unwrap();
        assert_eq!(
            inodes,
            BTreeMap::from([("free".to_owned(), 40.0), ("used".to_owned(), 60.0)])
        );
        let log = agent.stderr();
        assert!(log.contains("statvfs did not answer"), "{log}");
        assert!(log.contains("statvfs answers again"), "{log}");
    }));
    drop(agent);
    stop.store(true, Ordering::Relaxed);
    answer.store(true, Ordering::Relaxed);
    fuse_thread.join().unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
