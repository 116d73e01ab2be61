//! `otel_instrument::serve` under hostile clients: slowloris heads, readers that never
//! read, and idle connections, past the connection cap. Well-behaved scrapes must still
//! be answered in full within their (generous) timeout, the server must never hold
//! more connections than its cap, and every attacker must be closed.
//!
//! Nothing here races the clock: the server's timeouts are short (1 s) and every wait
//! on the client side is a generous deadline that only a hang would reach.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use otel_instrument::serve::{Limits, Stats, serve};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const CAP: usize = 8;
/// Larger than loopback's socket buffers on both ends, so a reader that never reads
/// leaves the server's write stuck.
const BODY: usize = 16 << 20;
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

async fn start() -> (std::net::SocketAddr, Arc<Stats>) {
    let body = Bytes::from(vec![b'x'; BODY]);
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let body = body.clone();
                async move { body }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let limits = Limits::default()
        .with_max_connections(CAP)
        .with_timeouts(Duration::from_secs(1), Duration::from_secs(1));
    let s = stats.clone();
    tokio::spawn(async move { serve(listener, router, limits, s).await });
    (addr, stats)
}

/// A well-behaved client: one request, the whole response read.
async fn scrape(addr: std::net::SocketAddr, path: &str) -> (u16, usize) {
    let work = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head[9..12].parse().unwrap();
        (status, buf.len() - head_end)
    };
    tokio::time::timeout(CLIENT_DEADLINE, work)
        .await
        .expect("a well-behaved scrape is answered within its timeout")
}

/// Reads until the server closes (EOF or reset), within the deadline.
async fn closed_by_server(mut s: TcpStream) -> bool {
    let work = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLIENT_DEADLINE, work).await.is_ok()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_stalled_readers_past_the_cap_do_not_stop_scrapes() {
    let (addr, stats) = start().await;
    // Warm up: the body and the runtime's first allocations are in the baseline.
    assert_eq!(scrape(addr, "/metrics").await, (200, BODY));
    let rss_before = rss_bytes();

    // 1. Slowloris: a head that never ends, a header line every 300 ms (more often
    //    than the 1 s header timeout: activity must not extend it).
    let mut slowloris = Vec::new();
    for _ in 0..CAP {
        let s = TcpStream::connect(addr).await.unwrap();
        slowloris.push(tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let drip = async move {
                let _ = w.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n").await;
                for i in 0.. {
                    if w.write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                std::future::pending::<()>().await;
            };
            let closed = async move {
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            tokio::time::timeout(CLIENT_DEADLINE, async {
                tokio::select! { () = drip => {}, () = closed => {} }
            })
            .await
            .is_ok()
        }));
    }
    // 2. Readers that send a request and never read the response.
    let mut stalled = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // 3. Connections that send nothing at all.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }

    // Well-behaved clients behind all of them are answered in full.
    assert_eq!(scrape(addr, "/metrics").await, (200, BODY));
    assert_eq!(scrape(addr, "/healthz").await, (200, 2));
    assert_eq!(scrape(addr, "/metrics").await, (200, BODY));

    // Every attacker is closed by the server.
    for t in slowloris {
        assert!(t.await.unwrap(), "a slowloris head was closed");
    }
    // The stalled readers' writes time out (count-based, generous deadline) before they
    // read anything: reading earlier would unstick the write.
    let deadline = tokio::time::Instant::now() + CLIENT_DEADLINE;
    while stats.write_timeouts() < CAP as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every reader that never reads is closed for its stuck write: {} of {CAP}",
            stats.write_timeouts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in stalled.into_iter().chain(idle) {
        assert!(closed_by_server(s).await, "an attacker was closed");
    }

    // Never more than the cap at once, and the process did not keep a response per
    // attacker (16 of them would be 256 MiB).
    assert!(
        stats.peak_open() <= CAP,
        "peak {} over the cap {CAP}",
        stats.peak_open()
    );
    assert_eq!(stats.peak_open(), CAP, "the cap was reached");
    assert!(
        stats.errors() >= CAP as u64,
        "slowloris heads end in header timeouts"
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(grown < 96 << 20, "RSS grew by {} MiB", grown >> 20);
    // Nothing left open but what the test itself still holds (none).
    let deadline = tokio::time::Instant::now() + CLIENT_DEADLINE;
    while stats.open() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} still open",
            stats.open()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let work = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    };
    tokio::time::timeout(CLIENT_DEADLINE, work)
        .await
        .expect("answered")
}

#[tokio::test]
async fn oversized_heads_and_request_bodies_are_refused() {
    let (addr, stats) = start().await;
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let answer = raw(addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.60}");

    let many: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
    let answer = raw(
        addr,
        format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.60}");

    let answer = raw(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\nxxxx",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.60}");
    let answer = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffff\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.60}");
    assert_eq!(stats.bodies_refused(), 2);

    // An unknown path answers the same small 404 whatever its length.
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "p".repeat(8000)
    );
    let answer = raw(addr, long_path.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:.60}");
    assert!(answer.len() < 200, "{}", answer.len());
}

#[tokio::test]
async fn a_kept_alive_connection_left_idle_is_closed_after_the_header_timeout() {
    let (addr, stats) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // The answer (Content-Length framed, kept alive), then nothing more from us.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let answered = tokio::time::timeout(CLIENT_DEADLINE, async {
        while !buf.ends_with(b"\r\n\r\nok") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before the answer: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "answered");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(
        closed_by_server(s).await,
        "an idle kept-alive connection is closed"
    );
    assert!(stats.errors() >= 1, "and counted as a header timeout");
}
