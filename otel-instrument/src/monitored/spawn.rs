//! Carrying the current monitored call into other tasks, so that work a
//! handler spawns continues its trace instead of starting a new root.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::{Context, ContextGuard};

use super::frame::{Frame, PollGuard, Trace, UNSAMPLED_TRACE_ID, current, set_current};
use super::tail;

/// Everything a task needs to continue the current trace: the monitored frame
/// (caller and sampling decision), the unsampled trace id and the tail
/// keeper's record of it, the OTel context and the current `tracing` span.
#[derive(Debug, Clone)]
pub struct TraceHandle {
    frame: Frame,
    unsampled: u128,
    cx: Context,
    span: tracing::Span,
    /// The tail keeper's trace, when it tracks an unsampled one.
    tail: Option<tail::Handle>,
}

impl TraceHandle {
    /// Captures the current call's trace.
    pub fn current() -> Self {
        Self {
            frame: current(),
            unsampled: UNSAMPLED_TRACE_ID.with(Cell::get),
            cx: Context::current(),
            span: tracing::Span::current(),
            tail: tail::Handle::current(match current().trace {
                Trace::Recorded => UNSAMPLED_TRACE_ID.with(Cell::get),
                _ => 0,
            }),
        }
    }

    /// Runs `f` (on any thread) inside the captured trace.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _restore = self.enter();
        f()
    }

    fn enter(&self) -> Entered<'_> {
        let frame = PollGuard::save();
        set_current(self.frame);
        if matches!(self.frame.trace, Trace::Unsampled | Trace::Recorded) {
            UNSAMPLED_TRACE_ID.with(|t| t.set(self.unsampled));
        }
        let tail = match &self.tail {
            Some(handle) => handle.enter(),
            None => tail::untracked(),
        };
        Entered {
            _span: self.span.enter(),
            _cx: self.cx.clone().attach(),
            _tail: tail,
            _frame: frame,
        }
    }
}

/// The captured trace, current until dropped. Fields drop in order: the span
/// is exited, the context detached, then the frame restored.
struct Entered<'a> {
    _span: tracing::span::Entered<'a>,
    _cx: ContextGuard,
    _tail: tail::PollScope,
    _frame: PollGuard,
}

pin_project_lite::pin_project! {
    /// A future that runs inside a captured trace; see [`FutureExt`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct InTrace<F> {
        #[pin]
        inner: F,
        handle: TraceHandle,
    }
}

impl<F: Future> Future for InTrace<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.handle.enter();
        this.inner.poll(cx)
    }
}

/// Makes a future continue the current monitored call's trace wherever it is
/// polled: `tokio::spawn(work().in_current_trace())`.
pub trait FutureExt: Future + Sized {
    /// Captures the current trace now; every poll runs inside it.
    fn in_current_trace(self) -> InTrace<Self> {
        InTrace {
            inner: self,
            handle: TraceHandle::current(),
        }
    }

    /// Runs inside `handle`'s trace.
    fn in_trace(self, handle: TraceHandle) -> InTrace<Self> {
        InTrace {
            inner: self,
            handle,
        }
    }
}

impl<F: Future> FutureExt for F {}

/// `tokio::spawn` for a future that continues the current trace: monitored
/// calls in the task are children of the current call (and follow its
/// sampling decision) instead of new roots.
///
/// # Panics
/// Outside a Tokio runtime, as `tokio::spawn` does.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_trace())
}
