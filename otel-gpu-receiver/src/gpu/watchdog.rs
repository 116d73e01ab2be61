//! The watchdog: NVML calls run on a worker thread, one cycle's calls as one job, and
//! the caller enforces a deadline per call and a budget per cycle.
//!
//! NVML calls hang in the field (a GPU falling off the bus, a wedged driver). A call
//! cannot be cancelled, so when one runs past its deadline the caller counts it,
//! abandons that worker (it exits once the call returns), and hands the rest of the
//! job to a fresh worker: the cycle goes on without that one call. The call is not
//! made again on that device while the abandoned worker is still stuck in it, and at
//! most [`MAX_STUCK`] abandoned workers may exist at once.
//!
//! A whole cycle is one hand-off between threads, not one per call: the worker
//! publishes its progress (which step, since when) under a mutex it holds only
//! between calls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nvml_wrapper::error::NvmlError;

use super::calls::{self, Call, StepOut};
use super::device::{Ctx, DeviceEntry, error_type};
use super::lifecycle::driver_gone;
use crate::snapshot::Points;

/// At most this many abandoned (stuck) NVML workers at once; beyond it, the GPU part
/// of the cycle is skipped until one of them returns.
pub(crate) const MAX_STUCK: usize = 4;

/// Bit in [`DeviceEntry::logged`]: the loss was logged (above every [`Call`] bit).
const LOGGED_LOST: u64 = 1 << 63;
/// Bit in [`DeviceEntry::logged`]: the device is lost (logged or not).
const LOST: u64 = 1 << 62;

/// Health hints of one device in one cycle.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DevFlags {
    pub(crate) lost: bool,
    pub(crate) predicted_failure: bool,
    pub(crate) degraded: bool,
    /// The cycle got to the device's calls (made them, or knew to skip them). When it did
    /// not (NVML hung, budget spent), its health is unknown and not reported.
    pub(crate) reached: bool,
    /// A MIG instance whose handle no longer answers (INVALID_ARGUMENT, NOT_FOUND): a
    /// reconfiguration removed it. Its other calls are skipped.
    pub(crate) vanished: bool,
}

/// What one cycle produced.
#[derive(Debug, Default)]
pub(crate) struct CycleReport {
    pub(crate) points: Points,
    pub(crate) flags: Vec<DevFlags>,
    /// NVML functions that ran past their deadline this cycle.
    pub(crate) timeouts: Vec<&'static str>,
    /// (NVML function, error.type) of calls that failed this cycle.
    pub(crate) errors: Vec<(&'static str, &'static str)>,
    /// A call found the driver gone (DRIVER_NOT_LOADED, UNINITIALIZED): (NVML function,
    /// error.type). The job stops there: NVML has to be initialised again.
    pub(crate) driver_gone: Option<(&'static str, &'static str)>,
    /// The devices should be looked up again next cycle: a MIG instance vanished.
    pub(crate) rediscover: bool,
    /// MIG instances that processes run in but that are not known (created since the
    /// last discovery?).
    pub(crate) unknown_instances: Vec<(u32, Option<u32>)>,
}

#[derive(Debug)]
struct JobState {
    owner: u64,
    cursor: usize,
    running_since: Option<Instant>,
    finished: bool,
    cancelled: bool,
    report: CycleReport,
}

#[derive(Debug)]
struct Job {
    id: u64,
    ctx: Arc<Ctx>,
    devices: Vec<Arc<DeviceEntry>>,
    steps: Vec<(usize, Call)>,
    state: Mutex<JobState>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs steps from the cursor while `me` owns the job. True when it ran to the end.
    fn run(&self, me: u64) -> bool {
        loop {
            let (i, di, call) = {
                let mut g = self.lock();
                if g.owner != me || g.cancelled {
                    return false;
                }
                loop {
                    let Some(&(di, call)) = self.steps.get(g.cursor) else {
                        g.finished = true;
                        return true;
                    };
                    let skip = match g.report.flags.get_mut(di) {
                        Some(f) => {
                            f.reached = true;
                            f.lost || f.vanished
                        }
                        None => true,
                    };
                    if skip || self.devices[di].skips(call) {
                        g.cursor += 1;
                        continue;
                    }
                    break;
                }
                g.running_since = Some(Instant::now());
                let (di, call) = self.steps[g.cursor];
                (g.cursor, di, call)
            };
            let dev = &self.devices[di];
            let mut out = StepOut::default();
            let r = calls::run(call, dev, &self.ctx, &mut out);
            let mut g = self.lock();
            if g.owner != me || g.cancelled {
                // Abandoned while in the call (the new worker owns the job now), or the
                // cycle's budget ran out meanwhile (the watchdog has taken the report):
                // this answer is too late either way.
                return false;
            }
            g.running_since = None;
            g.cursor = i + 1;
            match r {
                Ok(()) => {
                    g.report.points.append(&mut out.points);
                    g.report.errors.append(&mut out.errors);
                    g.report
                        .unknown_instances
                        .append(&mut out.unknown_instances);
                    if let Some(f) = g.report.flags.get_mut(di) {
                        f.predicted_failure |= out.predicted_failure;
                        f.degraded |= out.degraded;
                    }
                    if dev
                        .logged
                        .fetch_and(!(LOGGED_LOST | LOST), Ordering::Relaxed)
                        & LOGGED_LOST
                        != 0
                    {
                        tracing::info!(uuid = %dev.info.uuid, "GPU answers again");
                    }
                }
                Err(e) => self.failed(&mut g, di, call, &e),
            }
            if g.report.driver_gone.is_some() {
                // Every other call would fail the same way: stop here.
                g.finished = true;
                return true;
            }
        }
    }

    fn failed(&self, g: &mut JobState, di: usize, call: Call, e: &NvmlError) {
        let dev = &self.devices[di];
        match e {
            // Counted by the session, which initialises NVML again.
            e if driver_gone(e) => {
                g.report.driver_gone = Some((call.nvml_name(), error_type(e)));
            }
            // A stale MIG handle: the instance was removed. Not an error, and not a
            // failure of the GPU: rediscovery drops it.
            NvmlError::InvalidArg | NvmlError::NotFound if dev.info.parent_uuid.is_some() => {
                if let Some(f) = g.report.flags.get_mut(di) {
                    f.vanished = true;
                }
                g.report.rediscover = true;
            }
            // Remembered, never retried on this device, logged once at debug level.
            NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_) => {
                dev.not_supported.fetch_or(call.bit(), Ordering::Relaxed);
                tracing::debug!(uuid = %dev.info.uuid, call = call.nvml_name(), "not supported; not asked again");
            }
            NvmlError::GpuLost => {
                if let Some(f) = g.report.flags.get_mut(di) {
                    f.lost = true;
                }
                // Once per loss, and for a GPU that flaps at most once per summary
                // window; its recovery is logged only when its loss was.
                if dev.logged.fetch_or(LOST, Ordering::Relaxed) & LOST == 0
                    && let Some(unlogged) = dev
                        .losses
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .hit(Instant::now())
                {
                    dev.logged.fetch_or(LOGGED_LOST, Ordering::Relaxed);
                    tracing::warn!(uuid = %dev.info.uuid, index = dev.info.index, earlier_losses_not_logged = unlogged, "GPU is lost (fell off the bus?); reporting it as failed, the others continue");
                }
            }
            _ => {
                g.report.errors.push((call.nvml_name(), error_type(e)));
                if dev.logged.fetch_or(call.bit(), Ordering::Relaxed) & call.bit() == 0 {
                    tracing::warn!(uuid = %dev.info.uuid, call = call.nvml_name(), error = %e, "NVML call failed; omitting its metrics (logged once)");
                }
            }
        }
    }
}

/// A closure for the worker; its argument marks the worker idle.
type CallFn = Box<dyn FnOnce(&dyn Fn()) + Send>;

/// Work for the NVML worker: a cycle's calls, or one closure (discovery).
enum Msg {
    Job(Arc<Job>),
    /// The closure is given a function that marks the worker idle: it must call it
    /// before it hands its result over, so that the caller never sees a worker that has
    /// answered as still busy (and abandons it).
    Call(CallFn),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Job(j) => write!(f, "Job({})", j.id),
            Msg::Call(_) => f.write_str("Call"),
        }
    }
}

#[derive(Debug)]
struct Worker {
    id: u64,
    jobs: Sender<Msg>,
    busy: Arc<AtomicBool>,
    /// Set by the watchdog when it abandons the worker; cleared by the worker when
    /// its call finally returns.
    stuck: Arc<AtomicBool>,
}

/// Runs cycles' NVML calls under per-call deadlines and a per-cycle budget.
#[derive(Debug)]
pub(crate) struct Watchdog {
    call_timeout: Duration,
    worker: Option<Worker>,
    done_tx: Sender<u64>,
    done_rx: Receiver<u64>,
    next_id: AtomicU64,
    stuck: Vec<Arc<AtomicBool>>,
    warned_full: bool,
    /// Worker threads started so far (1 unless calls hung).
    pub(crate) started: u64,
}

impl Watchdog {
    pub(crate) fn new(call_timeout: Duration) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Self {
            call_timeout,
            worker: None,
            done_tx,
            done_rx,
            next_id: AtomicU64::new(1),
            stuck: Vec::new(),
            warned_full: false,
            started: 0,
        }
    }

    fn spawn(&mut self) -> Option<&Worker> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (jobs, rx) = mpsc::channel::<Msg>();
        let busy = Arc::new(AtomicBool::new(false));
        let stuck = Arc::new(AtomicBool::new(false));
        let (b, s, done) = (busy.clone(), stuck.clone(), self.done_tx.clone());
        let spawned = thread::Builder::new()
            .name("nvml-worker".into())
            .stack_size(512 * 1024)
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Msg::Job(job) => {
                            let finished = job.run(id);
                            b.store(false, Ordering::Release);
                            s.store(false, Ordering::Release);
                            if finished {
                                let _ = done.send(job.id);
                            }
                        }
                        Msg::Call(f) => f(&|| {
                            b.store(false, Ordering::Release);
                            s.store(false, Ordering::Release);
                        }),
                    }
                }
            });
        match spawned {
            Ok(_) => {
                self.started += 1;
                self.worker = Some(Worker {
                    id,
                    jobs,
                    busy,
                    stuck,
                });
                self.worker.as_ref()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start an NVML worker thread");
                None
            }
        }
    }

    /// Gives up on the current worker: it finishes its call on its own and exits.
    fn abandon(&mut self) -> Option<Arc<AtomicBool>> {
        let w = self.worker.take()?;
        w.stuck.store(true, Ordering::Release);
        // If it returned in the meantime it clears the flag itself; either way it exits
        // when it sees its job channel closed.
        if w.busy.load(Ordering::Acquire) {
            self.stuck.push(w.stuck.clone());
        } else {
            w.stuck.store(false, Ordering::Release);
        }
        Some(w.stuck)
    }

    /// Runs `f` (NVML calls outside a device's cycle: initialisation, discovery) on the
    /// worker, abandoning it after `timeout`.
    ///
    /// # Errors
    /// `label` (the NVML function it is counted under) when `f` ran past `timeout` and
    /// was abandoned, `"skipped"` when too many workers are stuck to try, `"worker"` when
    /// no worker thread could be started.
    pub(crate) fn call<T: Send + 'static>(
        &mut self,
        label: &'static str,
        timeout: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, &'static str> {
        self.stuck.retain(|s| s.load(Ordering::Acquire));
        if self
            .worker
            .as_ref()
            .is_some_and(|w| w.busy.load(Ordering::Acquire))
        {
            self.abandon();
        }
        if self.stuck.len() >= MAX_STUCK {
            return Err("skipped");
        }
        if self.worker.is_none() && self.spawn().is_none() {
            return Err("worker");
        }
        let (tx, rx) = mpsc::channel();
        let sent = self.worker.as_ref().is_some_and(|w| {
            w.busy.store(true, Ordering::Release);
            w.jobs
                .send(Msg::Call(Box::new(move |idle: &dyn Fn()| {
                    let v = f();
                    idle();
                    let _ = tx.send(v);
                })))
                .is_ok()
        });
        if !sent {
            self.worker = None;
            return Err("worker");
        }
        match rx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(_) => {
                tracing::warn!(
                    call = label,
                    ?timeout,
                    "NVML call ran past its deadline; the cycle goes on without it"
                );
                self.abandon();
                Err(label)
            }
        }
    }

    /// Runs `steps` (device index, call) over `devices` until `deadline` and returns what
    /// they read. Steps not begun by then are dropped and counted as `"budget"`.
    pub(crate) fn run(
        &mut self,
        ctx: &Arc<Ctx>,
        devices: &[Arc<DeviceEntry>],
        steps: Vec<(usize, Call)>,
        deadline: Instant,
    ) -> CycleReport {
        self.stuck.retain(|s| s.load(Ordering::Acquire));
        let mut report = CycleReport {
            flags: vec![DevFlags::default(); devices.len()],
            ..CycleReport::default()
        };
        // A worker cut off by last cycle's budget may still be in a call.
        if self
            .worker
            .as_ref()
            .is_some_and(|w| w.busy.load(Ordering::Acquire))
        {
            self.abandon();
        }
        if self.stuck.len() >= MAX_STUCK {
            if !self.warned_full {
                self.warned_full = true;
                tracing::warn!(
                    stuck = self.stuck.len(),
                    "NVML calls are hung; skipping GPU readings until they return"
                );
            }
            report.timeouts.push("skipped");
            return report;
        }
        self.warned_full = false;
        if steps.is_empty() {
            return report;
        }
        if Instant::now() >= deadline {
            // Initialisation or discovery spent the budget: nothing is begun.
            report.timeouts.push("budget");
            return report;
        }
        let job = Arc::new(Job {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            ctx: ctx.clone(),
            devices: devices.to_vec(),
            steps,
            state: Mutex::new(JobState {
                owner: 0,
                cursor: 0,
                running_since: None,
                finished: false,
                cancelled: false,
                report,
            }),
        });
        if !self.hand_to_worker(&job) {
            return std::mem::take(&mut job.lock().report);
        }
        let mut timeouts = Vec::new();
        loop {
            let wake = {
                let g = job.lock();
                if g.finished {
                    break;
                }
                match g.running_since {
                    Some(t) => (t + self.call_timeout).min(deadline),
                    None => (Instant::now() + self.call_timeout).min(deadline),
                }
            };
            match self
                .done_rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(id) if id == job.id => break,
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let mut g = job.lock();
                    if g.finished {
                        break;
                    }
                    if let Some(t) = g.running_since
                        && now >= t + self.call_timeout
                    {
                        let (di, call) = job.steps[g.cursor];
                        let dev = &job.devices[di];
                        timeouts.push(call.nvml_name());
                        tracing::warn!(
                            uuid = %dev.info.uuid,
                            call = call.nvml_name(),
                            timeout = ?self.call_timeout,
                            "NVML call ran past its deadline; the cycle goes on without it"
                        );
                        g.cursor += 1;
                        g.running_since = None;
                        if let Some(flag) = self.abandon() {
                            dev.stuck
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((call, flag));
                        }
                        if self.stuck.len() >= MAX_STUCK || now >= deadline {
                            g.cancelled = true;
                            break;
                        }
                        drop(g);
                        if !self.hand_to_worker(&job) {
                            break;
                        }
                        continue;
                    }
                    if now >= deadline {
                        // Out of budget: the worker stops after its current call.
                        g.cancelled = true;
                        timeouts.push("budget");
                        tracing::debug!("GPU cycle budget spent");
                        break;
                    }
                }
            }
        }
        let mut g = job.lock();
        g.cancelled = true;
        let mut report = std::mem::take(&mut g.report);
        report.timeouts.extend(timeouts);
        report
    }

    /// Makes a worker (a fresh one if needed) the job's owner and sends it the job.
    fn hand_to_worker(&mut self, job: &Arc<Job>) -> bool {
        if self.worker.is_none() && self.spawn().is_none() {
            return false;
        }
        let Some(w) = self.worker.as_ref() else {
            return false;
        };
        job.lock().owner = w.id;
        w.busy.store(true, Ordering::Release);
        if w.jobs.send(Msg::Job(job.clone())).is_err() {
            self.worker = None;
            return false;
        }
        true
    }
}
