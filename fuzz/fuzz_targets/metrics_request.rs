//! Raw bytes as an HTTP/1 client's side of a connection to the `/metrics` endpoints,
//! through the real stack: `otel_instrument::serve` (hyper, the limits) and the
//! routers of both crates (the receiver's `/metrics` and `/healthz`, the library's
//! `/metrics` with its `Accept` negotiation). The receiver's negotiation functions are
//! also called on the bytes directly. The answer must come, and stay small for a
//! request the endpoints do not serve.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use otel_gpu_receiver::exposition::{accepts_gzip, negotiate};
use otel_instrument::serve::{Limits, Stats, serve_connection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

static ROUTERS: LazyLock<[axum::Router; 2]> = LazyLock::new(|| {
    let _enter = RT.enter();
    let cell = otel_gpu_receiver::snapshot::SnapshotCell::default();
    let resource = opentelemetry_sdk::Resource::builder_empty().build();
    let health = otel_gpu_receiver::telemetry::Health::new(Duration::from_secs(3600));
    [
        otel_gpu_receiver::telemetry::router(&cell, &resource, health),
        otel_instrument::prometheus::router(prometheus::Registry::new()),
    ]
});

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (accept, encoding) = text.split_once('\n').unwrap_or((text, ""));
        let _ = negotiate(Some(accept));
        let _ = accepts_gzip(Some(encoding));
    }
    let limits = Limits::default().with_timeouts(Duration::from_secs(1), Duration::from_secs(1));
    for router in ROUTERS.iter() {
        let router = router.clone();
        RT.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let stats = Arc::new(Stats::default());
            let served = tokio::spawn(async move {
                serve_connection(server, router, limits, &stats).await;
            });
            let exchange = async {
                // The client may be refused before it has written everything.
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let mut answer = Vec::new();
                let _ = client.read_to_end(&mut answer).await;
                answer
            };
            let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
                .await
                .expect("the endpoint answers or closes");
            let _ = tokio::time::timeout(Duration::from_secs(30), served)
                .await
                .expect("the connection ends");
            // Nothing but the metrics themselves may be large: an error answer's size
            // does not follow the request.
            let text = String::from_utf8_lossy(&answer);
            if !text.contains(" 200 OK") {
                let answers = text.matches("HTTP/1.").count().max(1);
                assert!(
                    answer.len() <= answers * 1024,
                    "{} bytes for {answers} answers",
                    answer.len()
                );
            }
        });
    }
});
