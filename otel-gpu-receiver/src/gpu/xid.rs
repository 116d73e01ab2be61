//! Xid events: an NVML event set on a thread of its own, waiting for critical Xid
//! errors. Counts per (GPU, code) and the time of the last one are read by the cycle.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};

use super::session::unix_now;

/// Xid 79: the GPU has fallen off the bus.
pub(crate) const XID_FELL_OFF_THE_BUS: u64 = 79;

/// How long one wait on the event set blocks, in ms (also the stop latency).
const WAIT_MS: u32 = 200;

/// What the cycle reads from the event thread.
#[derive(Debug, Default, Clone)]
pub(crate) struct XidState {
    /// (GPU UUID, Xid code) → (events, Unix time of the last one in s). Cumulative.
    pub(crate) counts: HashMap<(String, u64), (u64, f64)>,
    /// GPUs that reported Xid 79 since the last cycle.
    pub(crate) fatal: HashSet<String>,
}

type Watch = Vec<(Device<'static>, String)>;

/// The event thread.
#[derive(Debug)]
pub(crate) struct XidWatcher {
    state: Arc<Mutex<XidState>>,
    devices: Sender<Watch>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl XidWatcher {
    /// Starts the thread, or returns `None` when event sets are not available.
    pub(crate) fn start(nvml: &'static Nvml) -> Option<Self> {
        let state = Arc::new(Mutex::new(XidState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (st, sp) = (state.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("nvml-xid".into())
            .stack_size(256 * 1024)
            .spawn(move || run(nvml, rx, st, sp))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the Xid event thread"))
            .ok()?;
        Some(Self {
            state,
            devices: tx,
            stop,
            thread: Some(thread),
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
        }
    }

    /// Stops the thread (within one wait).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
                    .map(|(d, u)| (super::session::dup(d), u.clone()))
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
        match devices.try_recv() {
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
            thread::sleep(std::time::Duration::from_millis(u64::from(WAIT_MS)));
            continue;
        };
        match set.wait(WAIT_MS) {
            Ok(ev) => {
                let Some(XidError::Value(code)) = ev.event_data else {
                    continue;
                };
                // SAFETY: only compared with the registered handles.
                let key = unsafe { ev.device.handle() } as usize;
                let Some(uuid) = by_handle.get(&key) else {
                    continue;
                };
                tracing::warn!(uuid = %uuid, xid = code, "Xid event");
                let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
                let e = g.counts.entry((uuid.clone(), code)).or_insert((0, 0.0));
                e.0 += 1;
                e.1 = unix_now();
                if code == XID_FELL_OFF_THE_BUS {
                    g.fatal.insert(uuid.clone());
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                tracing::debug!(error = %e, "event wait failed");
                thread::sleep(std::time::Duration::from_millis(u64::from(WAIT_MS)));
            }
        }
    }
}
