//! Xid events: an NVML event set on a thread of its own, waiting for critical Xid
//! errors. Counts per (GPU, code) and the time of the last one are read by the cycle.
//!
//! A GPU in trouble can raise thousands of Xid events (an Xid storm). Each is counted;
//! the log gets the first event of each (GPU, code) and then a summary at most every
//! [`SUMMARY_EVERY`](crate::quiet::SUMMARY_EVERY). The counts are kept for the GPUs
//! in the device table only ([`XidWatcher::retain`]), so GPUs that come and go, and
//! MIG reconfigurations, never grow them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};

use super::device::unix_now;
use crate::quiet::RateLimit;

/// Xid 79: the GPU has fallen off the bus.
pub(crate) const XID_FELL_OFF_THE_BUS: u64 = 79;

/// How long one wait on the event set blocks, in ms: the thread's stop latency. An event
/// ends the wait at once, so this only sets how often an idle thread wakes up (each
/// wake-up costs a context switch, which is most of an idle agent's CPU on a VM).
const WAIT_MS: u32 = 2000;

/// What the cycle reads from the event thread.
#[derive(Debug, Default, Clone)]
pub(crate) struct XidState {
    /// (GPU UUID, Xid code) → (events, Unix time of the last one in s). Cumulative.
    pub(crate) counts: HashMap<(String, u64), (u64, f64)>,
    /// GPUs that reported Xid 79 since the last cycle.
    pub(crate) fatal: HashSet<String>,
    /// Per (GPU UUID, Xid code): what the log was told.
    logged: HashMap<(String, u64), RateLimit>,
}

impl XidState {
    /// Keeps what is known about the GPUs in `uuids` only.
    fn retain(&mut self, uuids: &HashSet<&str>) {
        self.counts
            .retain(|(uuid, _), _| uuids.contains(uuid.as_str()));
        self.logged
            .retain(|(uuid, _), _| uuids.contains(uuid.as_str()));
        self.fatal.retain(|uuid| uuids.contains(uuid.as_str()));
    }
}

type Watch = Vec<(Device<'static>, String)>;

/// The event thread.
#[derive(Debug)]
pub(crate) struct XidWatcher {
    state: Arc<Mutex<XidState>>,
    devices: Sender<Watch>,
    stop: Arc<AtomicBool>,
}

impl XidWatcher {
    /// Starts the thread, or returns `None` when event sets are not available.
    pub(crate) fn start(nvml: &'static Nvml) -> Option<Self> {
        let state = Arc::new(Mutex::new(XidState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (st, sp) = (state.clone(), stop.clone());
        // Detached: `stop` never joins it.
        thread::Builder::new()
            .name("nvml-xid".into())
            .stack_size(256 * 1024)
            .spawn(move || run(nvml, rx, st, sp))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the Xid event thread"))
            .ok()?;
        Some(Self {
            state,
            devices: tx,
            stop,
        })
    }

    /// Sets the GPUs to watch (replaces the previous set).
    pub(crate) fn watch(&self, devices: impl Iterator<Item = (Device<'static>, String)>) {
        let _ = self.devices.send(devices.collect());
    }

    /// The counts so far, and the GPUs with Xid 79 since the previous call.
    pub(crate) fn take_state(&self) -> XidState {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        XidState {
            counts: g.counts.clone(),
            fatal: std::mem::take(&mut g.fatal),
            logged: HashMap::new(),
        }
    }

    /// Forgets the counts of GPUs that are no longer in the device table.
    pub(crate) fn retain(&self, uuids: &HashSet<&str>) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(uuids);
    }

    /// Tells the thread to stop and does not wait for it: it ends after its current wait
    /// (at most `WAIT_MS`), without recording what that wait returns. Its library stays
    /// loaded (`&'static`), so nothing it uses goes away meanwhile.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Registers `devices` on a fresh event set. Devices that do not support Xid events are
/// skipped (registering one would free the whole set).
fn register(
    nvml: &'static Nvml,
    devices: &Watch,
) -> Option<(EventSet<'static>, HashMap<usize, String>)> {
    let mut set = match nvml.create_event_set() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create an NVML event set; no Xid events");
            return None;
        }
    };
    let mut by_handle = HashMap::new();
    for (d, uuid) in devices {
        let supported = d
            .supported_event_types()
            .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
        if !supported {
            continue;
        }
        match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => set = s,
            Err(e) => {
                tracing::warn!(uuid = %uuid, error = %e.error, "cannot register for Xid events");
                // The failed registration freed the set: start over without this GPU.
                let rest: Watch = devices
                    .iter()
                    .filter(|(_, u)| u != uuid)
                    .map(|(d, u)| (super::device::dup(d), u.clone()))
                    .collect();
                return register(nvml, &rest);
            }
        }
        // SAFETY: only used as a map key, never dereferenced.
        by_handle.insert(unsafe { d.handle() } as usize, uuid.clone());
    }
    Some((set, by_handle))
}

fn run(
    nvml: &'static Nvml,
    devices: Receiver<Watch>,
    state: Arc<Mutex<XidState>>,
    stop: Arc<AtomicBool>,
) {
    let mut current: Option<(EventSet<'static>, HashMap<usize, String>)> = None;
    while !stop.load(Ordering::Relaxed) {
        // With nothing registered, block on the next list; else only look for one.
        let next = if current.is_none() {
            devices
                .recv_timeout(std::time::Duration::from_millis(u64::from(WAIT_MS)))
                .map_err(|e| match e {
                    RecvTimeoutError::Timeout => TryRecvError::Empty,
                    RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
                })
        } else {
            devices.try_recv()
        };
        match next {
            Ok(list) => {
                let mut list = list;
                // Only the latest list matters.
                while let Ok(l) = devices.try_recv() {
                    list = l;
                }
                if let Some((old, _)) = current.take() {
                    let _ = old.release_events();
                }
                current = register(nvml, &list);
            }
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {}
        }
        let Some((set, by_handle)) = &current else {
            continue;
        };
        let waited = set.wait(WAIT_MS);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match waited {
            Ok(ev) => {
                let Some(XidError::Value(code)) = ev.event_data else {
                    continue;
                };
                // SAFETY: only compared with the registered handles.
                let key = unsafe { ev.device.handle() } as usize;
                let Some(uuid) = by_handle.get(&key) else {
                    continue;
                };
                let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
                let e = g.counts.entry((uuid.clone(), code)).or_insert((0, 0.0));
                e.0 += 1;
                e.1 = unix_now();
                let total = e.0;
                if code == XID_FELL_OFF_THE_BUS {
                    g.fatal.insert(uuid.clone());
                }
                let limit = g.logged.entry((uuid.clone(), code)).or_default();
                if let Some(unlogged) = limit.hit(std::time::Instant::now()) {
                    drop(g);
                    if total == 1 {
                        tracing::warn!(uuid = %uuid, xid = code, "Xid event (more of this code on this GPU are counted in nvidia.gpu.xid.events and summarised every 5 minutes)");
                    } else {
                        tracing::warn!(uuid = %uuid, xid = code, total, unlogged, "Xid events since the last report");
                    }
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                tracing::debug!(error = %e, "event wait failed");
                thread::sleep(std::time::Duration::from_millis(u64::from(WAIT_MS)));
            }
        }
        summarise(&state);
    }
}

/// Logs the summaries that are due: events of a (GPU, code) not logged for a while.
fn summarise(state: &Mutex<XidState>) {
    let now = std::time::Instant::now();
    let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
    let XidState { counts, logged, .. } = &mut *g;
    for ((uuid, code), limit) in logged.iter_mut() {
        if let Some(unlogged) = limit.due(now) {
            let total = counts.get(&(uuid.clone(), *code)).map_or(0, |c| c.0);
            tracing::warn!(uuid = %uuid, xid = *code, total, unlogged, "Xid events since the last report");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_of_gpus_that_left_the_table_are_forgotten() {
        let mut s = XidState::default();
        for (uuid, code) in [("GPU-a", 13), ("GPU-a", 79), ("GPU-b", 48), ("MIG-c", 13)] {
            s.counts.insert((uuid.to_owned(), code), (1, 0.0));
            s.logged
                .insert((uuid.to_owned(), code), RateLimit::default());
            s.fatal.insert(uuid.to_owned());
        }
        s.retain(&["GPU-a"].into_iter().collect());
        let left: Vec<_> = s.counts.keys().map(|(u, c)| (u.as_str(), *c)).collect();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|(u, _)| *u == "GPU-a"));
        assert_eq!(s.logged.len(), 2);
        assert_eq!(s.fatal.len(), 1);
    }
}
