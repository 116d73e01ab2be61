//! Feature `serve`: HTTP/1 serving with bounds, for the endpoints we expose to
//! whoever can reach them (`/metrics` of the library and the receiver, `/healthz`).
//!
//! [`serve`] takes an axum `Router` and holds every client to [`Limits`]:
//!
//! - at most `max_connections` at once; further clients wait in the listen backlog
//!   (the kernel's, bounded) until one closes, rather than being refused, so a scrape
//!   behind a burst of idle connections is answered once they time out;
//! - `header_read_timeout` to send a request's head, from the moment the server is
//!   ready to read one (so it also ends idle keep-alive connections): a slowloris
//!   client that drips bytes is closed;
//! - `write_timeout` for a response write that makes no progress: a client that
//!   never reads is closed, and with it the response it held;
//! - `max_header_bytes` and `max_headers` for a request's head (`431` beyond them);
//!   a request with a body is answered `413` and closed, unread.
//!
//! What each connection can hold is then bounded: its read buffer
//! (`max_header_bytes` rounded up to hyper's 8 KiB minimum, twice at most), and the one
//! response it is writing. Every connection closed for a limit is counted in
//! [`Stats`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// The bounds [`serve`] holds each client to. The defaults suit a metrics endpoint
/// that Prometheus scrapes every few seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog. Default 64.
    pub max_connections: usize,
    /// Time to send a request's head, counted from when the server is ready to read
    /// it (after the previous response, for a kept-alive connection). Default 10 s.
    pub header_read_timeout: Duration,
    /// Time a response write may make no progress before the connection is closed.
    /// Default 10 s.
    pub write_timeout: Duration,
    /// The largest request head (request line and headers), in bytes. Default 16 KiB.
    pub max_header_bytes: usize,
    /// The most request headers. Default 64.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

impl Limits {
    /// These limits with `n` connections at once (at least 1).
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// These limits with the given header-read and stuck-write timeouts.
    pub fn with_timeouts(mut self, header_read: Duration, write: Duration) -> Self {
        self.header_read_timeout = header_read;
        self.write_timeout = write;
        self
    }
}

/// What [`serve`] has done with its clients, for self-metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    write_timeouts: AtomicU64,
    errors: AtomicU64,
    bodies_refused: AtomicU64,
}

impl Stats {
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
    /// The most connections that were ever open at once (never above the cap).
    pub fn peak_open(&self) -> usize {
        self.peak_open.load(Ordering::Relaxed)
    }
    /// Connections closed because a response write made no progress for
    /// `write_timeout`.
    pub fn write_timeouts(&self) -> u64 {
        self.write_timeouts.load(Ordering::Relaxed)
    }
    /// Connections that ended in an HTTP error: a head not sent within
    /// `header_read_timeout`, too large, malformed, or a reset.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Requests answered `413` because they carried a body.
    pub fn bodies_refused(&self) -> u64 {
        self.bodies_refused.load(Ordering::Relaxed)
    }
}

/// When the connection last made progress, and since when a write has been stuck.
#[derive(Debug)]
struct Progress {
    /// Milliseconds since `start` at which the pending write began; 0 when none is.
    write_blocked_since: AtomicU64,
    start: Instant,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "no write pending".
        self.start.elapsed().as_millis() as u64 + 1
    }
}

pin_project_lite::pin_project! {
    /// A connection that notes when a write is stuck.
    struct Watched<S> {
        #[pin]
        inner: S,
        progress: Arc<Progress>,
    }
}

impl<S> Watched<S> {
    fn track<T>(progress: &Progress, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &poll {
            Poll::Pending => {
                let _ = progress.write_blocked_since.compare_exchange(
                    0,
                    progress.now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(_) => progress.write_blocked_since.store(0, Ordering::Relaxed),
        }
        poll
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        Self::track(this.progress, this.inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        Self::track(this.progress, this.inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        Self::track(this.progress, this.inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Whether a request says it carries a body.
fn has_body<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(http::header::TRANSFER_ENCODING)
        || h.get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Serves `router` on `listener` within `limits` until the listener fails; `stats`
/// counts what happened. Spawn it on the runtime that should carry the endpoint.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    stats: Arc<Stats>,
) -> io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        // A slot first, then the client: over the cap, clients wait in the backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if is_transient(&e) => {
                // Out of descriptors or a client that left before we got to it: keep
                // serving the others after a breath.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        let (router, stats) = (router.clone(), stats.clone());
        tokio::spawn(async move {
            serve_connection(stream, router, limits, &stats).await;
            drop(slot);
        });
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12)) // ENFILE, EMFILE, ENOBUFS, ENOMEM
}

/// Serves one accepted connection (any byte stream) within `limits`, as [`serve`] does
/// each of its own, until it closes or a limit closes it. [`serve`] adds the cap on
/// connections; this is for callers that accept their own, and for fuzzing.
pub async fn serve_connection<S>(
    stream: S,
    router: axum::Router,
    limits: Limits,
    stats: &Arc<Stats>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
    stats.peak_open.fetch_max(open, Ordering::Relaxed);
    connection(stream, router, limits, stats).await;
    stats.open.fetch_sub(1, Ordering::Relaxed);
}

async fn connection<S>(stream: S, router: axum::Router, limits: Limits, stats: &Arc<Stats>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let progress = Arc::new(Progress {
        write_blocked_since: AtomicU64::new(0),
        start: Instant::now(),
    });
    let io = TokioIo::new(Watched {
        inner: stream,
        progress: progress.clone(),
    });
    let refused = stats.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let router = router.clone();
        let refused = refused.clone();
        async move {
            if has_body(&req) {
                refused.bodies_refused.fetch_add(1, Ordering::Relaxed);
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
                return Ok::<_, std::convert::Infallible>(resp);
            }
            let mut router = router;
            tower::Service::call(&mut router, req.map(Body::new)).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    // Check a stuck write a few times per timeout.
    let tick = (limits.write_timeout / 4).max(Duration::from_millis(10));
    let write_timeout_ms = limits.write_timeout.as_millis() as u64;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if r.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            () = tokio::time::sleep(tick) => {
                let since = progress.write_blocked_since.load(Ordering::Relaxed);
                if since != 0 && progress.now_ms().saturating_sub(since) >= write_timeout_ms {
                    stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                    // Dropping the connection closes the socket and frees the response.
                    return;
                }
            }
        }
    }
}
