//! The first OTLP export: a fixed `--first-export-delay` holds it back that long and
//! no longer (the random default is covered by `otlp.rs`'s unit test and by the fleet
//! simulation in SCALING.md).

use std::time::{Duration, Instant};

use otel_instrument::testing::OtlpSink;

use crate::common::start_agent;

#[test]
fn a_fixed_first_export_delay_holds_the_first_push_back_that_long() {
    let sink = OtlpSink::start().unwrap();
    let started = Instant::now();
    // A 60 s interval: without the delay's override the first push could come at any
    // point in the next minute; with it, after 3 s.
    let _agent = start_agent(
        &[
            "--interval",
            "60s",
            "--otlp-endpoint",
            &sink.endpoint(),
            "--first-export-delay",
            "3s",
        ],
        &[("OTEL_GPU_RECEIVER_INSTANCE_ID", "first-export-1")],
    );
    let got = sink.wait_until(Duration::from_secs(45), |r| !r.metrics.is_empty());
    let elapsed = started.elapsed();
    assert!(
        got.is_some(),
        "no export within 45 s of a 3 s first-export delay"
    );
    // A slow machine only makes it later: the lower bound cannot race.
    assert!(
        elapsed >= Duration::from_secs(3),
        "the first export came {elapsed:?} after the start, before its 3 s delay"
    );
    // One push, not a burst: the next is an interval (60 s) away.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sink.received().metrics.len(), 1);
}

#[test]
fn a_bad_first_export_delay_exits_2_naming_the_flag_and_the_fix() {
    let out = crate::common::run(
        &[
            "--interval",
            "5s",
            "--first-export-delay",
            "10s",
            "--check-config",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--first-export-delay") && err.contains("within one export interval"),
        "{err}"
    );
}
