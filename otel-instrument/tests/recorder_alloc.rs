//! A sampled call allocates nothing on its thread: the native recorder leaves
//! a fixed-size record in a reused per-thread buffer and hands a root that is
//! alone in its trace to the keeper's thread without an allocation. A counting
//! allocator watches the calling thread.

mod counting_alloc;

use otel_instrument::testing::OtlpSink;
use otel_instrument::{Telemetry, monitored};

use counting_alloc::allocations;

// `skip_all`: a recorded parameter is an attribute, which the span has to own.
#[monitored(skip_all)]
fn sampled_alone(x: u64) -> u64 {
    x * 3
}

#[monitored(skip_all)]
fn sampled_root(n: u64) -> u64 {
    (0..n).map(sampled_alone).sum()
}

#[monitored(skip_all)]
async fn sampled_async(x: u64) -> u64 {
    x + 1
}

#[monitored]
fn with_parameter(x: u64) -> u64 {
    x + 2
}

#[test]
fn a_sampled_root_alone_in_its_trace_allocates_nothing_on_its_thread() {
    let sink = OtlpSink::start().unwrap();
    // The defaults, as init!() installs them: every root sampled, fmt on.
    let guard = Telemetry::builder()
        .service_name("recorder-alloc-tests")
        .endpoint(sink.endpoint())
        .filter("recorder_alloc=trace")
        .install()
        .unwrap();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut run_async = |x| {
        let mut fut = std::pin::pin!(sampled_async(x));
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => unreachable!("nothing awaits"),
        }
    };
    // Warm up: instruments bound, the per-thread buffers grown, a pooled async root.
    assert_eq!(sampled_alone(1), 3);
    assert_eq!(run_async(1), 2);
    assert_eq!(run_async(1), 2);

    let before = allocations();
    let mut total = 0;
    // Fewer roots than the hand-off holds, in bursts the keeper's thread
    // drains in between: a full hand-off makes this thread convert (and
    // allocate) instead, which is the overload path, not this one.
    for burst in 0..10 {
        for i in 0..200 {
            total += sampled_alone(i);
            total += run_async(i);
        }
        std::thread::sleep(std::time::Duration::from_millis(50 + burst));
    }
    let allocated = allocations() - before;
    assert!(total > 0);
    assert_eq!(
        allocated, 0,
        "sampled roots alone in their traces allocated {allocated} times"
    );

    // A root with children hands its records over in one buffer: one
    // allocation per root, not per call.
    assert_eq!(sampled_root(10), 135);
    let before = allocations();
    for _ in 0..100 {
        total += sampled_root(10);
    }
    let allocated = allocations() - before;
    assert!(
        allocated <= 100,
        "{allocated} allocations for 100 roots of 11 calls"
    );

    // A recorded parameter costs the one buffer its attribute lives in, as
    // with an SDK span; moving it to the keeper's thread costs nothing more.
    assert_eq!(with_parameter(1), 3);
    let before = allocations();
    for i in 0..100 {
        total += with_parameter(i);
    }
    let allocated = allocations() - before;
    assert!(total > 0);
    assert_eq!(allocated, 100, "one allocation per call with a parameter");

    // And they were all exported.
    assert!(guard.flush());
    let expected = 3 + 4_000 + 11 * 101 + 101;
    let spans = sink
        .wait_until(std::time::Duration::from_secs(10), |r| {
            r.spans().len() >= expected
        })
        .map(|r| r.spans().len());
    assert_eq!(spans, Some(expected), "every sampled call exported");
}
