//! Nothing allocates on the unsampled path: a counting allocator watches the
//! calling thread while monitored calls run in an unsampled trace.

mod counting_alloc;

use otel_instrument::testing::OtlpSink;
use otel_instrument::{ParentRoot, SamplerConfig, Telemetry, monitored};

use counting_alloc::allocations;

#[monitored]
fn unsampled_root(n: u64) -> u64 {
    (0..n).map(unsampled_leaf).sum()
}

#[monitored]
fn unsampled_leaf(x: u64) -> u64 {
    x * 3
}

#[monitored(span = false)]
fn metrics_only(x: u64) -> Result<u64, std::io::Error> {
    Ok(x + 1)
}

#[monitored]
async fn unsampled_async(x: u64) -> u64 {
    unsampled_leaf(x) + metrics_only_async(x).await
}

#[monitored(span = false)]
async fn metrics_only_async(x: u64) -> u64 {
    x
}

#[test]
fn unsampled_and_metrics_only_calls_allocate_nothing() {
    let sink = OtlpSink::start().unwrap();
    // The defaults, as init!() installs them (fmt on, RUST_LOG-style filter),
    // with a sampler that samples nothing.
    let _guard = Telemetry::builder()
        .service_name("monitored-alloc-tests")
        .endpoint(sink.endpoint())
        .sampler(SamplerConfig::ParentBased(ParentRoot::AlwaysOff))
        // The tail keeper tracks these calls; a root that a loaded machine
        // preempts past the default threshold (5 ms) would be kept, and a kept
        // trace is exported, which allocates. What is measured here is the
        // path of the calls that are not kept.
        .slow_threshold(std::time::Duration::from_secs(3600))
        .filter("monitored_alloc=trace")
        .install()
        .unwrap();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut run_async = |x| {
        let mut fut = std::pin::pin!(unsampled_async(x));
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => unreachable!("nothing awaits"),
        }
    };
    // A label value known only at run time, as most are.
    let queue = String::from("emails");
    let record = |queue: &str| {
        otel_instrument::counter!("alloc.jobs", 1, "queue" => queue);
        otel_instrument::histogram!("alloc.job.duration", 0.01, "queue" => queue, "ok" => true);
    };
    // Warm up: the first call of each callsite binds its instruments, and
    // the tail keeper's per-thread buffers (its staging records and a pooled
    // async root) grow to the size these calls need, once.
    record(&queue);
    assert_eq!(unsampled_root(10), 135);
    assert_eq!(metrics_only(1).unwrap(), 2);
    assert_eq!(run_async(2), 8);
    assert_eq!(run_async(2), 8);

    let before = allocations();
    let mut total = 0;
    for i in 0..1000 {
        total += unsampled_root(10);
        total += metrics_only(i).unwrap();
        total += run_async(i);
        record(&queue);
    }
    let allocated = allocations() - before;
    assert!(total > 0);
    assert_eq!(
        allocated, 0,
        "the unsampled path and the metric macros allocated {allocated} times"
    );
}
