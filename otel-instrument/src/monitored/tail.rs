//! The tail keeper: every failing and every slow call keeps its trace, whatever
//! the head sampler decided.
//!
//! # What is recorded
//! A local root that the head sampler did not pick is still *tracked*: each
//! `#[monitored]` call in it (the root, the calls it makes, the async calls it
//! awaits and the tasks it spawns with [`spawn`](super::spawn)) leaves one
//! fixed-size [`Record`] (callsite, ids, start and end ticks, outcome) on the
//! calling thread. No SDK span, no lock, no allocation beyond a reused
//! per-thread buffer.
//! - A sync root's records gather in its thread's staging buffer; the root
//!   decides when it ends.
//! - An async root owns a [`Root`]; each poll moves what it staged into it,
//!   and the root decides when it finishes (or is dropped). Spawned children
//!   hold the root and add to it from any thread; a record that arrives after
//!   the decision is forwarded if the trace was kept and dropped (and counted)
//!   if not.
//!
//! # The decision
//! When the local root ends, its trace is kept if any of its calls failed
//! (after categorisation: `result="error"`), or if the root was slow: slower
//! than its function's recent p99 (estimated from a sample of its roots, never
//! below a floor), or than a fixed threshold (per function with
//! `#[monitored(slow = "250ms")]`, or for all). Kept traces pass a rate limit
//! and are handed, off the calling thread, to the same batch span processor as
//! head-sampled spans, so the queue bound, the export counters and the outage
//! behaviour are the same. Everything else is dropped and counted.
//!
//! # Bounds
//! Records per root, records held by unfinished async roots in all, and how
//! long an async root is held before it is exported early (as slow): beyond
//! them records are dropped and counted. The staging buffers are bounded by
//! the per-root cap.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};

use super::call::Outcome;
use super::callsite::Callsite;
use super::clock::{self, Stamp};
use super::{ERROR_CATEGORY, ERROR_TYPE, RESULT, RESULT_CANCELLED, SCOPE_NAME};

/// The attribute that says why a trace the head sampler did not pick was kept.
pub const SAMPLING_KEPT: &str = "sampling.kept";

/// The tail keeper's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TailSettings {
    /// Whether unsampled roots are tracked and failing or slow ones kept.
    /// Default: on.
    pub enabled: bool,
    /// A root slower than this is slow, for every function without its own
    /// `slow = ".."`. Default: none (each function's recent p99).
    pub slow: Option<Duration>,
    /// Under this a root is never slow by the p99 rule. Default: 5 ms.
    pub slow_floor: Duration,
    /// Most traces kept per second (by this process). Default: 100.
    pub rate: u32,
    /// Most spans recorded for one root; more are dropped and counted.
    /// Default: 512.
    pub max_spans_per_root: usize,
    /// Most spans held by unfinished async roots in all; more are dropped and
    /// counted. Default: 65,536 (about 4 MiB).
    pub max_held_spans: usize,
    /// An async root running longer than this is decided early (as slow), so
    /// that what it recorded is exported before it ends. Default: 30 s.
    pub max_hold: Duration,
}

impl Default for TailSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            slow: None,
            slow_floor: Duration::from_millis(5),
            rate: 100,
            max_spans_per_root: 512,
            max_held_spans: 65_536,
            max_hold: Duration::from_secs(30),
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Whether head-sampled calls are recorded here too (the native recorder),
/// instead of as SDK spans: whenever there is a sink.
static RECORDING: AtomicBool = AtomicBool::new(false);
static SLOW_FIXED_NS: AtomicU64 = AtomicU64::new(0);
static SLOW_FLOOR_NS: AtomicU64 = AtomicU64::new(5_000_000);
static MAX_SPANS: AtomicUsize = AtomicUsize::new(512);
static MAX_HELD: AtomicUsize = AtomicUsize::new(65_536);
static MAX_HOLD_NS: AtomicU64 = AtomicU64::new(30_000_000_000);
/// Records held by unfinished async roots.
static HELD: AtomicUsize = AtomicUsize::new(0);
static RATE: Mutex<Bucket> = Mutex::new(Bucket {
    rate: 100.0,
    tokens: 100.0,
    last: None,
});

/// Whether unsampled roots are tracked now.
#[inline(always)]
pub(super) fn on() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether sampled calls are recorded natively (no SDK span on the calling
/// thread) and converted to spans by the keeper's thread.
#[inline(always)]
pub(super) fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Applies `settings` and hands kept traces to `sink` (the batch span
/// processor that head-sampled spans go to). Without a sink nothing is tracked.
pub fn configure(settings: &TailSettings, sink: Option<Arc<dyn SpanProcessor>>) {
    SLOW_FIXED_NS.store(
        settings.slow.map_or(0, |d| nanos(d).max(1)),
        Ordering::Relaxed,
    );
    SLOW_FLOOR_NS.store(nanos(settings.slow_floor), Ordering::Relaxed);
    MAX_SPANS.store(settings.max_spans_per_root.max(1), Ordering::Relaxed);
    MAX_HELD.store(settings.max_held_spans, Ordering::Relaxed);
    MAX_HOLD_NS.store(nanos(settings.max_hold).max(1), Ordering::Relaxed);
    {
        let mut bucket = RATE.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.rate = f64::from(settings.rate);
        bucket.tokens = bucket.rate;
        bucket.last = None;
    }
    let enabled = settings.enabled && sink.is_some();
    let recording = sink.is_some();
    *SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
    let running = (enabled || recording) && collector().is_some();
    ENABLED.store(enabled && running, Ordering::Release);
    RECORDING.store(recording && running, Ordering::Release);
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Counters

/// What the tail keeper decided and dropped since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TailStats {
    /// Unsampled traces kept because a call failed.
    pub kept_error: u64,
    /// Unsampled traces kept because the root was slow.
    pub kept_slow: u64,
    /// Unsampled traces kept because a service they called kept its part
    /// (its `traceresponse` said sampled).
    pub kept_downstream: u64,
    /// Unsampled traces that were neither: their records were dropped.
    pub dropped: u64,
    /// Failing or slow traces the rate limit refused.
    pub refused: u64,
    /// Spans beyond the per-root cap.
    pub spans_over_root_cap: u64,
    /// Spans beyond the cap on spans held in all.
    pub spans_over_held_cap: u64,
    /// Spans that ended after their trace was decided and not kept, or whose
    /// root could not be reached.
    pub spans_late: u64,
    /// Spans of kept traces that the hand-off to the exporter had no room for.
    pub spans_queue_full: u64,
}

static KEPT_ERROR: AtomicU64 = AtomicU64::new(0);
static KEPT_SLOW: AtomicU64 = AtomicU64::new(0);
static KEPT_DOWNSTREAM: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static OVER_ROOT_CAP: AtomicU64 = AtomicU64::new(0);
static OVER_HELD_CAP: AtomicU64 = AtomicU64::new(0);
static LATE: AtomicU64 = AtomicU64::new(0);
static QUEUE_FULL: AtomicU64 = AtomicU64::new(0);

/// The tail keeper's counters.
pub fn stats() -> TailStats {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    TailStats {
        kept_error: get(&KEPT_ERROR),
        kept_slow: get(&KEPT_SLOW),
        kept_downstream: get(&KEPT_DOWNSTREAM),
        dropped: get(&DROPPED),
        refused: get(&REFUSED),
        spans_over_root_cap: get(&OVER_ROOT_CAP),
        spans_over_held_cap: get(&OVER_HELD_CAP),
        spans_late: get(&LATE),
        spans_queue_full: get(&QUEUE_FULL),
    }
}

fn count(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// Records

/// One finished call of a tracked trace.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    pub(super) callsite: &'static Callsite,
    pub(super) span_id: u64,
    pub(super) parent: u64,
    pub(super) start: Stamp,
    pub(super) end: Stamp,
    pub(super) outcome: Outcome,
}

/// What the enrichment API added to a tracked call.
#[derive(Debug, Clone)]
pub(super) struct Extra {
    span_id: u64,
    what: ExtraKind,
    /// Given at the call's start (`fields(..)`), not added during it.
    at_start: bool,
}

#[derive(Debug, Clone)]
enum ExtraKind {
    Attribute(KeyValue),
    Event(Event),
}

/// Records and extras of calls that ended on this thread and are not yet
/// decided (a sync root) or moved to their root (an async poll).
#[derive(Debug)]
struct Staging {
    records: Vec<Record>,
    extras: Vec<Extra>,
}

/// Where the running code's records go: the async root (null for a sync root,
/// whose records stay in the staging buffer), the running call's span (the
/// parent of the next; 0 when nothing is tracked), the trace (low 64 bits of
/// its id, to tell traces apart) and where this scope's records start in the
/// staging buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cursor {
    root: *const Root,
    span: u64,
    trace: u64,
    /// Where this scope's records start, with [`SAMPLED`] set for a
    /// head-sampled trace (kept whatever happens, so what a sync scope stages
    /// beyond the per-root cap is sent early rather than dropped). One word
    /// with `extras_base`: the guards that hold a saved cursor stay small,
    /// and they are moved on every call.
    base: u32,
    extras_base: u32,
}

// SAFETY: the root pointer is only compared, or dereferenced (to clone the
// `Arc`) while the scope that set it, which holds that `Arc`, is running.
unsafe impl Send for Cursor {}
unsafe impl Sync for Cursor {}

const INACTIVE: Cursor = Cursor {
    root: std::ptr::null(),
    span: 0,
    trace: 0,
    base: 0,
    extras_base: 0,
};

/// The flag in `Cursor::base` that marks a head-sampled trace.
const SAMPLED: u32 = 1 << 31;

impl Cursor {
    #[inline(always)]
    fn active(&self) -> bool {
        self.span != 0
    }

    /// Where this scope's records start in the staging buffer.
    #[inline(always)]
    fn base(&self) -> usize {
        (self.base & !SAMPLED) as usize
    }

    /// Whether the trace is head-sampled.
    #[inline(always)]
    fn sampled(&self) -> bool {
        self.base & SAMPLED != 0
    }
}

/// A staging position, marked when the trace is head-sampled.
#[inline(always)]
fn base_of(base: u32, sampled: bool) -> u32 {
    if sampled { base | SAMPLED } else { base }
}

thread_local! {
    static CURSOR: Cell<Cursor> = const { Cell::new(INACTIVE) };
    /// In a head-sampled trace: the span of the OTel context that was current
    /// when the running call started (0: none). A call that finds another one
    /// current was started inside a plain `tracing` span, which is then its
    /// parent. Kept beside the cursor, not in it: only sampled traces pay.
    static SCOPE_CTX: Cell<u64> = const { Cell::new(0) };
    static STAGING: RefCell<Staging> = const {
        RefCell::new(Staging { records: Vec::new(), extras: Vec::new() })
    };
}

#[inline(always)]
fn cursor() -> Cursor {
    CURSOR.with(Cell::get)
}

#[inline(always)]
fn set_cursor(c: Cursor) {
    CURSOR.with(|cell| cell.set(c));
}

/// A new handle to the async root that the cursor `c` records into, if any.
#[inline(always)]
fn root_of(c: &Cursor) -> Option<Arc<Root>> {
    // SAFETY: a non-null cursor root is kept alive by the poll scope or trace
    // handle that set it, which is running now.
    (!c.root.is_null()).then(|| unsafe {
        Arc::increment_strong_count(c.root);
        Arc::from_raw(c.root)
    })
}

fn staged() -> (u32, u32) {
    STAGING.with(|s| {
        let s = s.borrow();
        (s.records.len() as u32, s.extras.len() as u32)
    })
}

/// The span id that outgoing propagation and logs should name inside an
/// unsampled call: the tracked call's own, or 0 when nothing is tracked.
#[inline]
pub(super) fn current_span() -> u64 {
    cursor().span
}

/// An unfinished async root: what its calls recorded so far.
#[derive(Debug)]
pub(super) struct Root {
    trace_id: u128,
    span_id: u64,
    info: RootInfo,
    /// Head-sampled: kept from the start, so each poll's records go out as
    /// they come.
    sampled: bool,
    /// A service this trace called kept its part: keep this one too.
    downstream: AtomicBool,
    opened: Instant,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    records: Vec<Record>,
    extras: Vec<Extra>,
    verdict: Verdict,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    #[default]
    Pending,
    Kept(Reason),
    Dropped,
}

impl Verdict {
    /// A head-sampled root is kept from its start; any other waits.
    fn first(sampled: bool) -> Self {
        if sampled {
            Verdict::Kept(Reason::Sampled)
        } else {
            Verdict::Pending
        }
    }
}

/// Why a trace was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Error,
    Slow,
    /// A service this trace called kept its part.
    Downstream,
    /// Picked by the head sampler: exported as a sampled trace, with no
    /// `sampling.kept`, past no rate limit.
    Sampled,
}

impl Reason {
    /// The value of `sampling.kept`, for a trace the head sampler did not pick.
    fn kept_as(self) -> Option<&'static str> {
        match self {
            Reason::Error => Some("error"),
            Reason::Slow => Some("slow"),
            Reason::Downstream => Some("downstream"),
            Reason::Sampled => None,
        }
    }
}

/// Where a local root's trace came from: the parent's span (remote: an
/// extracted `traceparent`; local: a plain `tracing` span) and trace state.
#[derive(Debug, Clone, Default)]
pub(super) struct RootInfo {
    pub(super) parent_remote: bool,
    pub(super) state: Option<Box<TraceState>>,
}

impl RootInfo {
    /// The parent's id and where it came from, read from an OTel context.
    pub(super) fn of(cx: &Context) -> (u64, Self) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return (0, Self::default());
        }
        let state =
            (*sc.trace_state() != TraceState::NONE).then(|| Box::new(sc.trace_state().clone()));
        (
            u64::from_be_bytes(sc.span_id().to_bytes()),
            Self {
                parent_remote: sc.is_remote(),
                state,
            },
        )
    }
}

/// A tracked call's part in the keeper, held in its guard.
#[derive(Debug)]
pub(super) struct TailCall {
    pub(super) span_id: u64,
    parent: u64,
    mode: Mode,
    /// The parameters and `fields(..)` a sampled call gave at its start; they
    /// join its record when it ends. Boxed: most calls have none, and the
    /// guard that holds this is moved on every call.
    attributes: Option<Box<[KeyValue]>>,
}

#[derive(Debug)]
enum Mode {
    Off,
    /// A sync root: its trace's records are on this thread's staging buffer
    /// from `saved`'s position on.
    /// `ctx`, in a head-sampled trace: the `SCOPE_CTX` to restore at its end.
    /// (Whether it is head-sampled is in its own cursor.)
    SyncRoot {
        info: RootInfo,
        saved: Cursor,
        ctx: u64,
    },
    SyncChild {
        saved: Cursor,
        ctx: u64,
    },
    /// `ctx`, in a head-sampled trace: the current OTel context's span when it
    /// started (see `SCOPE_CTX`), for its polls.
    AsyncRoot(Arc<Root>, u64),
    /// An async call inside a tracked trace; `root` is its async root, if the
    /// trace has one (a sync root's async children run inline). In a
    /// head-sampled trace (`sampled`) its records are sent even when it runs
    /// away from its root.
    AsyncChild {
        root: Option<Arc<Root>>,
        trace: u64,
        sampled: bool,
        ctx: u64,
    },
}

impl TailCall {
    /// Not tracked.
    pub(super) const OFF: TailCall = TailCall {
        span_id: 0,
        parent: 0,
        mode: Mode::Off,
        attributes: None,
    };

    /// Whether this call is tracked.
    #[inline(always)]
    pub(super) fn tracked(&self) -> bool {
        !matches!(self.mode, Mode::Off)
    }

    /// Starts tracking a local root: one the head sampler did not pick, or,
    /// with `sampled`, one it picked (recorded natively, always exported).
    /// `parent` is its parent's span id (0 if none). For a sync root the
    /// cursor moves here until [`close`](Self::close).
    #[inline]
    pub(super) fn root(
        is_async: bool,
        trace_id: u128,
        parent: u64,
        info: RootInfo,
        sampled: bool,
    ) -> Self {
        let span_id = super::frame::next_u64().max(1);
        if is_async {
            let root = Root::take(trace_id, span_id, info, sampled);
            return Self {
                span_id,
                parent,
                mode: Mode::AsyncRoot(root, parent),
                attributes: None,
            };
        }
        let saved = cursor();
        let (base, extras_base) = staged();
        set_cursor(Cursor {
            root: std::ptr::null(),
            span: span_id,
            trace: trace_id as u64,
            base: base_of(base, sampled),
            extras_base,
        });
        let ctx = if sampled {
            SCOPE_CTX.with(|c| c.replace(parent))
        } else {
            0
        };
        Self {
            span_id,
            parent,
            mode: Mode::SyncRoot { info, saved, ctx },
            attributes: None,
        }
    }

    /// Starts tracking a call inside a tracked trace, if the running code is
    /// in one; otherwise [`OFF`](Self::OFF). `sampled` is the trace id when
    /// the trace is head-sampled (else 0): then the current OTel context is
    /// read, and a plain `tracing` span entered inside the running call
    /// becomes the new call's parent.
    #[inline]
    pub(super) fn child(is_async: bool, sampled: u128) -> Self {
        if sampled != 0 {
            return Self::recorded_child(is_async, sampled);
        }
        let c = cursor();
        if !c.active() {
            return Self::OFF;
        }
        Self::child_of(c, is_async, c.span, false, 0)
    }

    /// [`child`](Self::child) in a head-sampled trace (out of line: the
    /// unsampled path stays short).
    #[inline(never)]
    fn recorded_child(is_async: bool, trace_id: u128) -> Self {
        let c = cursor();
        if !c.active() {
            return Self::OFF;
        }
        let sampled = c.sampled();
        let (parent, ctx) = if sampled {
            let scope = SCOPE_CTX.with(Cell::get);
            match super::frame::context_span(trace_id) {
                0 => (c.span, 0),
                ctx if ctx != scope => (ctx, ctx),
                ctx => (c.span, ctx),
            }
        } else {
            (c.span, 0)
        };
        Self::child_of(c, is_async, parent, sampled, ctx)
    }

    /// A call tracked under the running scope `c`, with its parent span; in
    /// a head-sampled trace (`sampled`), `ctx` is the OTel context's span it
    /// started under (see `SCOPE_CTX`). A sync call moves the cursor to it.
    #[inline(always)]
    fn child_of(c: Cursor, is_async: bool, parent: u64, sampled: bool, ctx: u64) -> Self {
        let span_id = super::frame::next_u64().max(1);
        let mode = if is_async {
            Mode::AsyncChild {
                root: root_of(&c),
                trace: c.trace,
                sampled,
                ctx,
            }
        } else {
            set_cursor(Cursor { span: span_id, ..c });
            // A sync call keeps the scope's context to restore at its end.
            let prev = if sampled {
                SCOPE_CTX.with(|s| s.replace(ctx))
            } else {
                0
            };
            Mode::SyncChild {
                saved: c,
                ctx: prev,
            }
        };
        Self {
            span_id,
            parent,
            mode,
            attributes: None,
        }
    }

    /// Gives the call the attributes of its `fields(..)`.
    #[inline]
    pub(super) fn with_attributes(mut self, attributes: Vec<KeyValue>) -> Self {
        if self.tracked() && !attributes.is_empty() {
            self.attributes = Some(attributes.into_boxed_slice());
        }
        self
    }

    /// Ends a tracked call: records it, and decides its trace if it is the
    /// local root.
    /// `trace_id` is the call's trace (the guard keeps it).
    pub(super) fn close(
        &mut self,
        callsite: &'static Callsite,
        trace_id: u128,
        start: Stamp,
        end: Stamp,
        outcome: Outcome,
    ) {
        let record = Record {
            callsite,
            span_id: self.span_id,
            parent: self.parent,
            start,
            end,
            outcome,
        };
        // A sync child, the most common tracked call, is read in place: its
        // state is plain data, and replacing the whole mode costs a copy of
        // the largest variant on every call.
        if let Mode::SyncChild { saved, ctx } = self.mode {
            // Nothing in it to drop: forgotten, not dropped through a call.
            std::mem::forget(std::mem::replace(&mut self.mode, Mode::Off));
            set_cursor(saved);
            if saved.sampled() {
                SCOPE_CTX.with(|c| c.set(ctx));
            }
            stage(saved, record);
            if let Some(attributes) = self.attributes.take() {
                stage_attributes(self.span_id, attributes);
            }
            return;
        }
        self.close_other(trace_id, record);
    }

    /// [`close`](Self::close) for every mode but a sync child's.
    fn close_other(&mut self, trace_id: u128, record: Record) {
        let span_id = self.span_id;
        let attributes = self.attributes.take();
        let as_extras = |attributes: Option<Box<[KeyValue]>>| {
            Vec::from(attributes.unwrap_or_default())
                .into_iter()
                .map(move |kv| Extra {
                    span_id,
                    what: ExtraKind::Attribute(kv),
                    at_start: true,
                })
        };
        match std::mem::replace(&mut self.mode, Mode::Off) {
            Mode::Off | Mode::SyncChild { .. } => {}
            Mode::SyncRoot { info, saved, ctx } => {
                let mine = cursor();
                let sampled = mine.sampled();
                set_cursor(saved);
                if sampled {
                    SCOPE_CTX.with(|c| c.set(ctx));
                }
                let taken = STAGING.with(|s| {
                    let mut s = s.borrow_mut();
                    s.records.push(record);
                    let base = mine.base().min(s.records.len());
                    let extras_base = (mine.extras_base as usize).min(s.extras.len());
                    let downstream = KEEP_FOR_DOWNSTREAM.with(|k| k.replace(0)) == mine.trace;
                    let reason = if sampled {
                        Some(Reason::Sampled)
                    } else {
                        decide(&s.records[base..], &record, downstream)
                    };
                    let taken = reason.map(|r| {
                        let records = if s.records.len() - base == 1 {
                            Batch::One(record)
                        } else {
                            Batch::Many(s.records.drain(base..).collect())
                        };
                        let extras = if s.extras.len() > extras_base {
                            s.extras.drain(extras_base..).collect()
                        } else {
                            Vec::new()
                        };
                        (r, records, extras)
                    });
                    s.records.truncate(base);
                    s.extras.truncate(extras_base);
                    taken
                });
                // When the root is not kept, its attributes drop here.
                if let Some((reason, ..)) = &taken
                    && *reason != Reason::Sampled
                {
                    note_kept(trace_id, self.span_id);
                }
                match taken {
                    Some((reason, records, extras)) => send(Kept {
                        trace_id,
                        root_span: self.span_id,
                        info,
                        reason,
                        records,
                        extras,
                        root_attributes: attributes.map(Vec::from).unwrap_or_default(),
                    }),
                    None => count(&DROPPED, 1),
                }
            }
            Mode::AsyncRoot(root, _) => {
                root.finish(record, attributes.map(Vec::from).unwrap_or_default());
                Root::give_back(root);
            }
            Mode::AsyncChild {
                root,
                trace,
                sampled,
                ..
            } => {
                let c = cursor();
                let inline = c.active()
                    && c.trace == trace
                    && root
                        .as_ref()
                        .is_none_or(|r| std::ptr::eq(Arc::as_ptr(r), c.root));
                if inline {
                    stage(c, record);
                    if let Some(attributes) = attributes {
                        stage_attributes(span_id, attributes);
                    }
                } else if let Some(root) = root {
                    root.add(std::iter::once(record), as_extras(attributes));
                } else if sampled {
                    send(Kept {
                        trace_id,
                        root_span: 0,
                        info: RootInfo::default(),
                        reason: Reason::Sampled,
                        records: Batch::One(record),
                        extras: as_extras(attributes).collect(),
                        root_attributes: Vec::new(),
                    });
                } else {
                    count(&LATE, 1);
                }
            }
        }
    }

    /// Makes this async call's records go where they belong while it is
    /// polled; see [`PollScope`].
    #[inline]
    pub(super) fn poll_scope(&self, trace_id: u128) -> PollScope {
        let saved = cursor();
        match &self.mode {
            Mode::AsyncRoot(root, ctx) => {
                PollScope::detached(saved, Flush::Root(Arc::clone(root)), self.span_id, *ctx)
            }
            Mode::AsyncChild {
                root,
                trace,
                sampled,
                ctx,
            } => {
                let inline = saved.active()
                    && saved.trace == *trace
                    && root
                        .as_ref()
                        .is_none_or(|r| std::ptr::eq(Arc::as_ptr(r), saved.root));
                if inline {
                    set_cursor(Cursor {
                        span: self.span_id,
                        ..saved
                    });
                    PollScope {
                        saved,
                        flush: None,
                        ctx: sampled.then(|| SCOPE_CTX.with(|c| c.replace(*ctx))),
                    }
                } else if let Some(root) = root {
                    PollScope::detached(saved, Flush::Root(Arc::clone(root)), self.span_id, *ctx)
                } else if *sampled {
                    // A sampled trace's call polled away from its sync root:
                    // what it records goes out at the end of each poll.
                    PollScope::detached(saved, Flush::Part(trace_id), self.span_id, *ctx)
                } else {
                    // Polled away from its sync root: nothing can collect it.
                    set_cursor(INACTIVE);
                    PollScope {
                        saved,
                        flush: None,
                        ctx: None,
                    }
                }
            }
            _ => PollScope {
                saved,
                flush: None,
                ctx: None,
            },
        }
    }
}

/// Where a detached scope's staged records go when it ends.
#[derive(Debug, Clone)]
enum Flush {
    /// To the trace's async root.
    Root(Arc<Root>),
    /// Straight to the exporter: a part of a head-sampled trace (by its id)
    /// whose root cannot be reached (a sync root's spawned task).
    Part(u128),
}

/// A tracked async call's poll (or a spawned task's, through a trace handle):
/// the cursor points at its span, and when the poll runs away from its root's
/// own poll, what the poll staged moves to the root at its end.
#[derive(Debug)]
pub(super) struct PollScope {
    saved: Cursor,
    flush: Option<Flush>,
    /// In a head-sampled trace, the `SCOPE_CTX` to restore.
    ctx: Option<u64>,
}

impl PollScope {
    fn detached(saved: Cursor, flush: Flush, span: u64, ctx: u64) -> Self {
        let (base, extras_base) = staged();
        let (root, trace, sampled) = match &flush {
            Flush::Root(root) => (Arc::as_ptr(root), root.trace_id as u64, root.sampled),
            Flush::Part(trace_id) => (std::ptr::null(), *trace_id as u64, true),
        };
        set_cursor(Cursor {
            root,
            span,
            trace,
            base: base_of(base, sampled),
            extras_base,
        });
        Self {
            saved,
            flush: Some(flush),
            ctx: sampled.then(|| SCOPE_CTX.with(|c| c.replace(ctx))),
        }
    }
}

impl Drop for PollScope {
    #[inline]
    fn drop(&mut self) {
        if let Some(flush) = self.flush.take() {
            let mine = cursor();
            STAGING.with(|s| {
                let mut s = s.borrow_mut();
                let Staging { records, extras } = &mut *s;
                let base = mine.base().min(records.len());
                let extras_base = (mine.extras_base as usize).min(extras.len());
                if records.len() > base || extras.len() > extras_base {
                    match flush {
                        // Moved under the root's lock, without a buffer in between.
                        Flush::Root(root) => {
                            root.add(records.drain(base..), extras.drain(extras_base..));
                        }
                        Flush::Part(trace_id) => send(Kept {
                            trace_id,
                            root_span: 0,
                            info: RootInfo::default(),
                            reason: Reason::Sampled,
                            records: Batch::Many(records.drain(base..).collect()),
                            extras: extras.drain(extras_base..).collect(),
                            root_attributes: Vec::new(),
                        }),
                    }
                }
            });
        }
        set_cursor(self.saved);
        if let Some(ctx) = self.ctx {
            SCOPE_CTX.with(|c| c.set(ctx));
        }
    }
}

/// The current tracked trace, for a task to continue (see `TraceHandle`).
#[derive(Debug, Clone)]
pub(super) struct Handle {
    flush: Flush,
    span: u64,
    ctx: u64,
}

impl Handle {
    /// The running code's tracked trace and span, if it has an async root, or
    /// if it is head-sampled (`sampled` is then its trace id, else 0).
    pub(super) fn current(sampled: u128) -> Option<Self> {
        let c = cursor();
        if !c.active() {
            return None;
        }
        if c.root.is_null() {
            return (c.sampled() && sampled != 0).then_some(Self {
                flush: Flush::Part(sampled),
                span: c.span,
                ctx: SCOPE_CTX.with(Cell::get),
            });
        }
        Some(Self {
            flush: Flush::Root(root_of(&c)?),
            span: c.span,
            ctx: if c.sampled() {
                SCOPE_CTX.with(Cell::get)
            } else {
                0
            },
        })
    }

    /// Makes the running code record into this trace until the scope drops.
    pub(super) fn enter(&self) -> PollScope {
        PollScope::detached(cursor(), self.flush.clone(), self.span, self.ctx)
    }
}

/// Stops tracking in the running code until the scope drops (a task that
/// continues a trace it cannot record into).
pub(super) fn untracked() -> PollScope {
    let saved = cursor();
    set_cursor(INACTIVE);
    PollScope {
        saved,
        flush: None,
        ctx: None,
    }
}

/// Adds `record` (and its own attributes) to the running scope's staging
/// buffer, within the per-root cap. A head-sampled sync scope that reaches
/// the cap sends what it staged so far instead of dropping.
#[inline]
fn stage(scope: Cursor, record: Record) {
    STAGING.with(|s| {
        let mut s = s.borrow_mut();
        let records = &mut s.records;
        // The common case inline: within the cap, and room in the buffer.
        if records.len().saturating_sub(scope.base()) < MAX_SPANS.load(Ordering::Relaxed)
            && records.len() < records.capacity()
        {
            records.push(record);
        } else {
            stage_slow(&mut s, scope, record);
        }
    });
}

/// [`stage`] at the per-root cap, or when the buffer must grow.
#[cold]
#[inline(never)]
fn stage_slow(s: &mut Staging, scope: Cursor, record: Record) {
    if s.records.len().saturating_sub(scope.base()) >= MAX_SPANS.load(Ordering::Relaxed) {
        if scope.sampled() && scope.root.is_null() {
            send_early(s, scope);
        } else {
            count(&OVER_ROOT_CAP, 1);
            return;
        }
    }
    s.records.push(record);
}

/// Adds a call's parameters and `fields(..)` to the running scope's staging
/// buffer, beside its record.
#[cold]
fn stage_attributes(span_id: u64, attributes: Box<[KeyValue]>) {
    STAGING.with(|s| {
        s.borrow_mut()
            .extras
            .extend(Vec::from(attributes).into_iter().map(|kv| Extra {
                span_id,
                what: ExtraKind::Attribute(kv),
                at_start: true,
            }));
    });
}

/// Sends the records a head-sampled sync scope staged so far, with the
/// attributes and events of those calls (the others stay for their calls).
#[cold]
fn send_early(s: &mut Staging, scope: Cursor) {
    let base = scope.base().min(s.records.len());
    let extras_base = (scope.extras_base as usize).min(s.extras.len());
    let records: Vec<Record> = s.records.drain(base..).collect();
    let (extras, keep): (Vec<Extra>, Vec<Extra>) = s
        .extras
        .drain(extras_base..)
        .partition(|e| records.iter().any(|r| r.span_id == e.span_id));
    s.extras.extend(keep);
    send(Kept {
        trace_id: super::frame::unsampled_trace_id(),
        root_span: 0,
        info: RootInfo::default(),
        reason: Reason::Sampled,
        records: Batch::Many(records),
        extras,
        root_attributes: Vec::new(),
    });
}

/// Adds an attribute or event to the running tracked call; false if nothing
/// is tracked.
fn extra(what: ExtraKind) -> bool {
    let c = cursor();
    if !c.active() {
        return false;
    }
    STAGING.with(|s| {
        // Busy only if this runs from inside the keeper's own hand-off.
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        if s.extras.len().saturating_sub(c.extras_base as usize)
            >= MAX_SPANS.load(Ordering::Relaxed)
        {
            count(&OVER_ROOT_CAP, 1);
        } else {
            s.extras.push(Extra {
                span_id: c.span,
                what,
                at_start: false,
            });
        }
    });
    true
}

/// Sets an attribute on the running tracked call's span.
pub(super) fn set_attribute(attribute: KeyValue) -> bool {
    extra(ExtraKind::Attribute(attribute))
}

/// Adds an event to the running tracked call's span.
pub(super) fn add_event(name: Cow<'static, str>, attributes: Vec<KeyValue>) -> bool {
    extra(ExtraKind::Event(Event::new(
        name,
        SystemTime::now(),
        attributes,
        0,
    )))
}

/// Async roots whose records are kept for reuse, per thread, so that an async
/// root allocates nothing once its thread has made a few.
const POOLED_ROOTS: usize = 16;

thread_local! {
    static ROOTS: RefCell<Vec<Arc<Root>>> = const { RefCell::new(Vec::new()) };
}

impl Root {
    /// A root for a new trace, from this thread's pool if it has one.
    fn take(trace_id: u128, span_id: u64, info: RootInfo, sampled: bool) -> Arc<Root> {
        let pooled = ROOTS.with(|p| p.borrow_mut().pop());
        if let Some(mut root) = pooled
            && let Some(r) = Arc::get_mut(&mut root)
        {
            r.trace_id = trace_id;
            r.span_id = span_id;
            r.info = info;
            r.sampled = sampled;
            *r.downstream.get_mut() = false;
            r.opened = Instant::now();
            let held = r.held.get_mut().unwrap_or_else(PoisonError::into_inner);
            held.records.clear();
            held.extras.clear();
            held.verdict = Verdict::first(sampled);
            return root;
        }
        Arc::new(Root {
            trace_id,
            span_id,
            info,
            sampled,
            downstream: AtomicBool::new(false),
            opened: Instant::now(),
            held: Mutex::new(Held {
                verdict: Verdict::first(sampled),
                ..Held::default()
            }),
        })
    }

    /// Back to this thread's pool, unless a spawned child still holds it.
    fn give_back(mut root: Arc<Root>) {
        if Arc::get_mut(&mut root).is_some() {
            ROOTS.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOLED_ROOTS {
                    p.push(root);
                }
            });
        }
    }

    /// Hands this trace's records (all of it, or a part that ended late) to
    /// the converter, with the trace state and the root's parent.
    fn send(&self, reason: Reason, records: Batch, extras: Vec<Extra>) {
        self.send_with(reason, records, extras, Vec::new());
    }

    fn send_with(
        &self,
        reason: Reason,
        records: Batch,
        extras: Vec<Extra>,
        root_attributes: Vec<KeyValue>,
    ) {
        send(Kept {
            trace_id: self.trace_id,
            root_span: self.span_id,
            info: self.info.clone(),
            reason,
            records,
            extras,
            root_attributes,
        });
    }

    /// Takes records from a poll or a late child.
    fn add(
        &self,
        records: impl ExactSizeIterator<Item = Record>,
        extras: impl Iterator<Item = Extra>,
    ) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.verdict {
            Verdict::Kept(reason) => {
                drop(held);
                self.send(reason, Batch::Many(records.collect()), extras.collect());
            }
            Verdict::Dropped => count(&LATE, records.len()),
            Verdict::Pending => {
                let max = MAX_SPANS.load(Ordering::Relaxed);
                let n = records.len();
                let fit = n.min(max.saturating_sub(held.records.len()));
                if n > fit {
                    count(&OVER_ROOT_CAP, n - fit);
                }
                if HELD.fetch_add(fit, Ordering::Relaxed) + fit > MAX_HELD.load(Ordering::Relaxed) {
                    HELD.fetch_sub(fit, Ordering::Relaxed);
                    count(&OVER_HELD_CAP, fit);
                } else {
                    held.records.extend(records.take(fit));
                }
                let room = max.saturating_sub(held.extras.len());
                held.extras.extend(extras.take(room));
                let hold = MAX_HOLD_NS.load(Ordering::Relaxed);
                if nanos(self.opened.elapsed()) > hold {
                    // Held too long: export what it has now, as slow; the rest
                    // follows as late records of a kept trace.
                    let verdict = admit(Reason::Slow);
                    held.verdict = verdict;
                    HELD.fetch_sub(held.records.len(), Ordering::Relaxed);
                    let records = std::mem::take(&mut held.records);
                    let extras = std::mem::take(&mut held.extras);
                    drop(held);
                    if let Verdict::Kept(reason) = verdict {
                        self.send(reason, Batch::Many(records), extras);
                    }
                }
            }
        }
    }

    /// The root call ended (with its parameters and `fields(..)`): decide.
    fn finish(&self, own: Record, attributes: Vec<KeyValue>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.verdict {
            Verdict::Kept(reason) => {
                drop(held);
                self.send_with(reason, Batch::One(own), Vec::new(), attributes);
            }
            Verdict::Dropped => count(&LATE, 1),
            Verdict::Pending => {
                HELD.fetch_sub(held.records.len(), Ordering::Relaxed);
                let downstream = self.downstream.load(Ordering::Relaxed);
                match decide(&held.records, &own, downstream) {
                    Some(reason) => {
                        note_kept(self.trace_id, self.span_id);
                        held.verdict = Verdict::Kept(reason);
                        let mut records = std::mem::take(&mut held.records);
                        let extras = std::mem::take(&mut held.extras);
                        drop(held);
                        records.push(own);
                        self.send_with(reason, Batch::Many(records), extras, attributes);
                    }
                    None => {
                        // Cleared, not freed: the pool reuses the capacity.
                        held.verdict = Verdict::Dropped;
                        held.records.clear();
                        held.extras.clear();
                        count(&DROPPED, 1);
                    }
                }
            }
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(PoisonError::into_inner);
        if held.verdict == Verdict::Pending {
            HELD.fetch_sub(held.records.len(), Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------
// Across processes: `traceresponse`

thread_local! {
    /// The low bits of the trace whose sync root this thread should keep
    /// because a service it called kept its part (0: none).
    static KEEP_FOR_DOWNSTREAM: Cell<u64> = const { Cell::new(0) };
    /// The trace and root span this thread last kept (not head-sampled ones).
    static LAST_KEPT: Cell<(u128, u64)> = const { Cell::new((0, 0)) };
}

fn note_kept(trace_id: u128, span: u64) {
    LAST_KEPT.with(|k| k.set((trace_id, span)));
}

/// The root span of trace `trace_id`, if this thread's last kept trace is that
/// one: a server that ran the handler's root here answers with a sampled
/// `traceresponse` naming it.
pub(crate) fn kept_root(trace_id: u128) -> Option<u64> {
    match LAST_KEPT.with(Cell::get) {
        (t, span) if t == trace_id && trace_id != 0 => Some(span),
        _ => None,
    }
}

/// A service called from the running tracked code kept its part of trace
/// `trace_id` (its `traceresponse` said sampled): keep this process's part
/// too, as `sampling.kept = "downstream"`, within the rate limit. False when
/// nothing here tracks that trace.
pub(crate) fn keep_for_downstream(trace_id: u128) -> bool {
    let c = cursor();
    if !c.active() || c.sampled() || c.trace != trace_id as u64 {
        return false;
    }
    if c.root.is_null() {
        KEEP_FOR_DOWNSTREAM.with(|k| k.set(c.trace));
    } else {
        // SAFETY: a non-null cursor root is kept alive by the scope that set
        // it, which is running now.
        let root = unsafe { &*c.root };
        root.downstream.store(true, Ordering::Relaxed);
    }
    true
}

// ---------------------------------------------------------------------------
// The decision

/// Why to keep the trace whose local root is `root` (and whose other calls
/// are `records`), after the rate limit; None to drop it (counted).
fn decide(records: &[Record], root: &Record, downstream: bool) -> Option<Reason> {
    let failed = |r: &Record| matches!(r.outcome, Outcome::Error(..));
    let reason = if failed(root) || records.iter().any(failed) {
        Reason::Error
    } else if slow(root) {
        Reason::Slow
    } else if downstream {
        Reason::Downstream
    } else {
        return None;
    };
    match admit(reason) {
        Verdict::Kept(reason) => Some(reason),
        _ => None,
    }
}

/// Passes a kept trace through the rate limit, counting either way.
fn admit(reason: Reason) -> Verdict {
    let ok = RATE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(Instant::now());
    if !ok {
        count(&REFUSED, 1);
        return Verdict::Dropped;
    }
    match reason {
        Reason::Error => count(&KEPT_ERROR, 1),
        Reason::Slow => count(&KEPT_SLOW, 1),
        Reason::Downstream => count(&KEPT_DOWNSTREAM, 1),
        Reason::Sampled => {}
    }
    Verdict::Kept(reason)
}

/// A token bucket: `rate` per second, a second's worth of burst.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.rate);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Whether a root took longer than its function's threshold. Also feeds the
/// function's latency estimate (one root in four).
fn slow(root: &Record) -> bool {
    let ns = root.start.nanos_until(root.end);
    let callsite = root.callsite;
    if root.span_id & 3 == 0 {
        callsite.latency.observe(ns);
    }
    let fixed = match callsite.slow_ns {
        0 => SLOW_FIXED_NS.load(Ordering::Relaxed),
        n => n,
    };
    if fixed != 0 {
        return ns > fixed;
    }
    match callsite.latency.p99() {
        0 => false,
        p99 => ns > p99.max(SLOW_FLOOR_NS.load(Ordering::Relaxed)),
    }
}

/// Buckets of the per-function latency estimate: an underflow bucket, then
/// four per octave from 2^17 ns (131 µs) to 2^41 ns (37 min).
const LATENCY_BUCKETS: usize = 1 + 4 * 24;
const LOW_OCTAVE: u32 = 17;

/// A function's recent root latencies, coarsely, for its p99.
#[derive(Debug)]
pub struct Latency {
    buckets: [AtomicU32; LATENCY_BUCKETS],
    samples: AtomicU32,
    /// The estimate, in ns; 0 until there are enough samples.
    p99: AtomicU64,
}

impl Latency {
    /// An empty estimate.
    pub(super) const fn new() -> Self {
        Self {
            buckets: [const { AtomicU32::new(0) }; LATENCY_BUCKETS],
            samples: AtomicU32::new(0),
            p99: AtomicU64::new(0),
        }
    }

    fn p99(&self) -> u64 {
        self.p99.load(Ordering::Relaxed)
    }

    fn observe(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        let n = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        // First estimate after 64 samples, then refined, then every 1,024.
        if n == 64 || n == 256 || n.is_multiple_of(1024) {
            self.estimate();
        }
    }

    /// Recomputes the p99 and halves the counts, so the estimate follows the
    /// function's recent latency.
    #[cold]
    fn estimate(&self) {
        // On the calling thread, so nothing is allocated: two passes over the
        // counts (a count that moves in between only shifts the estimate a little).
        let total: u64 = self
            .buckets
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed)))
            .sum();
        if total == 0 {
            return;
        }
        let rank = total - total / 100;
        let mut seen = 0;
        let mut at = LATENCY_BUCKETS - 1;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += u64::from(b.load(Ordering::Relaxed));
            if seen >= rank {
                at = i;
                break;
            }
        }
        self.p99.store(upper_edge(at), Ordering::Relaxed);
        if total >= 2048 {
            for b in &self.buckets {
                let v = b.load(Ordering::Relaxed);
                b.store(v / 2, Ordering::Relaxed);
            }
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < 1 << LOW_OCTAVE {
        return 0;
    }
    let octave = 63 - ns.leading_zeros();
    let sub = (ns >> (octave - 2)) & 3;
    (1 + (octave - LOW_OCTAVE) as usize * 4 + sub as usize).min(LATENCY_BUCKETS - 1)
}

/// The largest duration in bucket `i` (the floor's bucket: 2^17 ns).
fn upper_edge(i: usize) -> u64 {
    if i == 0 {
        return 1 << LOW_OCTAVE;
    }
    let octave = LOW_OCTAVE + ((i - 1) / 4) as u32;
    let sub = ((i - 1) % 4) as u64;
    (5 + sub) << (octave - 2)
}

// ---------------------------------------------------------------------------
// Hand-off and conversion

/// A kept trace (or late records of one) on its way to the exporter.
#[derive(Debug)]
struct Kept {
    trace_id: u128,
    /// The local root's span id, when the root is among the records (0: not).
    root_span: u64,
    info: RootInfo,
    reason: Reason,
    records: Batch,
    extras: Vec<Extra>,
    /// The `fields(..)` and parameters of the root's own call, moved as they
    /// are (no second buffer for a root alone).
    root_attributes: Vec<KeyValue>,
}

/// The records of a [`Kept`]: a root alone (the common sampled call) goes
/// without an allocation.
#[derive(Debug)]
enum Batch {
    One(Record),
    Many(Vec<Record>),
}

impl Batch {
    fn as_slice(&self) -> &[Record] {
        match self {
            Batch::One(r) => std::slice::from_ref(r),
            Batch::Many(v) => v,
        }
    }
}

enum Msg {
    Kept(Kept),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Kept traces waiting for the converter thread.
const HANDOFF: usize = 1024;
/// Messages waiting, as the senders count them: at a quarter of the hand-off
/// the converter is woken; otherwise it wakes on its own timer, so a sender
/// never pays for a wake-up (a futex call) per message.
static WAITING: AtomicUsize = AtomicUsize::new(0);
/// How long the converter sleeps when it finds nothing.
const IDLE_WAIT: Duration = Duration::from_millis(20);

static SINK: RwLock<Option<Arc<dyn SpanProcessor>>> = RwLock::new(None);
/// The span queue's admission (see [`crate::export::SpanAdmission`]), set
/// with the sink: a leaked box per configuration (there are few), read with
/// one load per hand-off.
static ADMISSION: std::sync::atomic::AtomicPtr<crate::export::SpanAdmission> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Makes hand-offs take their places in the span queue of `admission` (none:
/// the span processor admits them when they arrive).
pub(crate) fn set_admission(admission: Option<crate::export::SpanAdmission>) {
    let p = admission.map_or(std::ptr::null_mut(), |a| Box::into_raw(Box::new(a)));
    // The previous one is leaked: a thread may still be reading it.
    ADMISSION.store(p, Ordering::Release);
}

fn admission() -> Option<&'static crate::export::SpanAdmission> {
    // SAFETY: null or a pointer from `Box::into_raw` that is never freed.
    unsafe { ADMISSION.load(Ordering::Acquire).as_ref() }
}
static SENDER: OnceLock<(SyncSender<Msg>, std::thread::Thread)> = OnceLock::new();

fn collector() -> Option<&'static SyncSender<Msg>> {
    if let Some((s, _)) = SENDER.get() {
        return Some(s);
    }
    let (tx, rx) = sync_channel(HANDOFF);
    let spawned = std::thread::Builder::new()
        .name("otel-tail-keeper".into())
        .spawn(move || convert_loop(rx));
    let Ok(handle) = spawned else {
        return None;
    };
    let _ = SENDER.set((tx, handle.thread().clone()));
    SENDER.get().map(|(s, _)| s)
}

fn wake() {
    if let Some((_, thread)) = SENDER.get() {
        thread.unpark();
    }
}

fn send(kept: Kept) {
    let n = kept.records.as_slice().len();
    if n == 0 {
        return;
    }
    let Some((tx, _)) = SENDER.get() else {
        count(&QUEUE_FULL, n);
        return;
    };
    // Events logged from here (the queue-full warning) must not reach span
    // state: this may run with the staging buffer borrowed.
    let _sdk = super::SdkScope::enter();
    if let Some(a) = admission()
        && !a.admit(n)
    {
        // The queue is full: dropped and counted there, before any work.
        for r in kept.records.as_slice() {
            crate::exemplars::span_ended(r.span_id, false);
        }
        return;
    }
    // Counted before the send, so the converter never counts below zero.
    let waiting = WAITING.fetch_add(1, Ordering::Relaxed);
    match tx.try_send(Msg::Kept(kept)) {
        Ok(()) => {
            if waiting + 1 == HANDOFF / 4 {
                wake();
            }
        }
        Err(TrySendError::Full(msg)) => {
            WAITING.fetch_sub(1, Ordering::Relaxed);
            wake();
            // The converter is behind: this thread converts its own trace and
            // hands it to the span processor, whose queue bound (and count)
            // applies as for any span. Nothing is lost here.
            if let Msg::Kept(kept) = msg {
                convert(kept);
            }
        }
        Err(TrySendError::Disconnected(_)) => {
            WAITING.fetch_sub(1, Ordering::Relaxed);
            count(&QUEUE_FULL, n);
        }
    }
}

/// Converts a kept trace and hands its spans to the span processor.
fn convert(kept: Kept) {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    let scope = SCOPE.get_or_init(|| {
        InstrumentationScope::builder(SCOPE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    });
    let sink = SINK.read().unwrap_or_else(PoisonError::into_inner).clone();
    let n = kept.records.as_slice().len();
    let Some(sink) = sink else {
        if let Some(a) = admission() {
            a.release(n);
        }
        count(&QUEUE_FULL, n);
        return;
    };
    // The processors run our own code; events from them stay off spans.
    let _sdk = super::SdkScope::enter();
    let spans = spans(kept, scope, clock::anchor());
    if admission().is_some() {
        // Their places in the queue were taken at the hand-off.
        crate::export::pre_admitted(|| spans.into_iter().for_each(|s| sink.on_end(s)));
    } else {
        spans.into_iter().for_each(|s| sink.on_end(s));
    }
}

/// Waits (up to `timeout`) until every trace kept so far has reached the span
/// processor. `TelemetryGuard` calls it before the processor shuts down.
pub fn flush(timeout: Duration) -> bool {
    let Some((tx, _)) = SENDER.get() else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut msg = Msg::Flush(done_tx);
    loop {
        WAITING.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                WAITING.fetch_sub(1, Ordering::Relaxed);
                msg = m;
                wake();
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => {
                WAITING.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
        }
    }
    wake();
    done_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}

fn convert_loop(rx: Receiver<Msg>) {
    loop {
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                // Parked, not blocked in `recv`: a blocked receiver would
                // make every send wake it.
                std::thread::park_timeout(IDLE_WAIT);
                continue;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
        };
        WAITING.fetch_sub(1, Ordering::Relaxed);
        match msg {
            Msg::Flush(done) => {
                let _ = done.send(());
            }
            Msg::Kept(kept) => convert(kept),
        }
    }
}

/// The OTLP spans of a kept trace.
fn spans(kept: Kept, scope: &InstrumentationScope, anchor: (Stamp, SystemTime)) -> Vec<SpanData> {
    let Kept {
        trace_id,
        root_span,
        info,
        reason,
        records,
        extras,
        mut root_attributes,
    } = kept;
    let state = info.state.map(|s| *s).unwrap_or_default();
    records
        .as_slice()
        .iter()
        .map(|r| {
            let is_root = r.span_id == root_span;
            let parent_remote = is_root && info.parent_remote;
            let kind = match r.callsite.span_kind() {
                // A server call under a local parent: the request entered above.
                SpanKind::Server if r.parent != 0 && !parent_remote => SpanKind::Internal,
                kind => kind,
            };
            let own = extras.iter().filter(|e| e.span_id == r.span_id);
            let mut attributes = Vec::with_capacity(7 + own.clone().count());
            // Parameters and `fields(..)` first, as the SDK path had them.
            if is_root {
                attributes.append(&mut root_attributes);
            }
            for e in own.clone() {
                if let ExtraKind::Attribute(kv) = &e.what
                    && e.at_start
                {
                    attributes.push(kv.clone());
                }
            }
            attributes.extend([
                KeyValue::new("code.function.name", r.callsite.function),
                KeyValue::new("code.module.name", r.callsite.module),
                KeyValue::new("code.file.path", r.callsite.file),
                KeyValue::new("code.line.number", i64::from(r.callsite.line)),
            ]);
            if let Some(kept_as) = reason.kept_as() {
                attributes.push(KeyValue::new(SAMPLING_KEPT, kept_as));
            }
            let mut events = SpanEvents::default();
            for e in own {
                match &e.what {
                    ExtraKind::Attribute(kv) if !e.at_start => attributes.push(kv.clone()),
                    ExtraKind::Attribute(_) => {}
                    ExtraKind::Event(ev) => events.events.push(ev.clone()),
                }
            }
            let status = match r.outcome {
                Outcome::Error(category, error_type) => {
                    attributes.push(KeyValue::new(ERROR_TYPE, error_type));
                    attributes.push(KeyValue::new(ERROR_CATEGORY, category.as_str()));
                    Status::error("")
                }
                Outcome::Cancelled => {
                    attributes.push(KeyValue::new(RESULT, RESULT_CANCELLED));
                    Status::Unset
                }
                Outcome::Ok => Status::Unset,
            };
            SpanData {
                span_context: SpanContext::new(
                    TraceId::from(trace_id),
                    SpanId::from(r.span_id),
                    TraceFlags::SAMPLED,
                    false,
                    state.clone(),
                ),
                parent_span_id: SpanId::from(r.parent),
                parent_span_is_remote: parent_remote,
                span_kind: kind,
                name: Cow::Borrowed(r.callsite.function),
                start_time: r.start.system_time_at(anchor),
                end_time: r.end.system_time_at(anchor),
                attributes,
                dropped_attributes_count: 0,
                events,
                links: SpanLinks::default(),
                status,
                instrumentation_scope: scope.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_ordered_and_their_edges_contain_them() {
        let mut last = 0;
        for ns in [
            1u64,
            100_000,
            131_072,
            200_000,
            1_000_000,
            5_000_000,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket(ns);
            assert!(b >= last, "{ns} ns in bucket {b} after {last}");
            last = b;
            if b > 0 && b < LATENCY_BUCKETS - 1 {
                assert!(
                    ns < upper_edge(b),
                    "{ns} ns above its bucket's edge {}",
                    upper_edge(b)
                );
                assert!(ns >= upper_edge(b - 1), "{ns} ns below its bucket's start");
            }
        }
    }

    #[test]
    fn the_p99_estimate_follows_the_slowest_hundredth() {
        let l = Latency::new();
        for i in 0..1024u64 {
            // 0.6% at 80 ms, the rest at 2 ms: the p99 is in the 2 ms bucket.
            l.observe(if i % 200 == 0 { 80_000_000 } else { 2_000_000 });
        }
        let p99 = l.p99();
        assert!(p99 > 2_000_000 && p99 <= 2_200_000, "p99 estimate {p99} ns");
        // Once the slow calls pass 1%, the estimate moves up to them.
        for i in 0..1024u64 {
            l.observe(if i % 20 == 0 { 80_000_000 } else { 2_000_000 });
        }
        assert!(l.p99() > 70_000_000, "p99 estimate {} ns", l.p99());
    }

    #[test]
    fn the_rate_limit_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 10.0,
            tokens: 10.0,
            last: None,
        };
        let taken = (0..50).filter(|_| b.take(t0)).count();
        assert_eq!(taken, 10);
        assert!(!b.take(t0 + Duration::from_millis(50)));
        assert!(b.take(t0 + Duration::from_millis(200)));
    }
}
