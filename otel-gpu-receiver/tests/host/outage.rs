use std::time::{Duration, Instant};

use otel_instrument::testing::proto::metrics::v1::metric::Data;
use otel_instrument::testing::proto::metrics::v1::number_data_point::Value;
use otel_instrument::testing::{Behaviour, OtlpSink, Received};

use crate::common::{free_port, http_get, poll, rss_bytes, start_agent};

/// The last reported value of a single-series counter.
fn last_value(r: &Received, name: &str) -> Option<f64> {
    let m = r.last_metric(name)?;
    let Some(Data::Sum(s)) = m.metric.data else {
        return None;
    };
    s.data_points.last().and_then(|p| match p.value {
        Some(Value::AsInt(i)) => Some(i as f64),
        Some(Value::AsDouble(d)) => Some(d),
        None => None,
    })
}

#[test]
fn collector_down_then_up_collection_continues_memory_stays_bounded_and_export_resumes() {
    let interval = Duration::from_secs(1);
    let sink = OtlpSink::start().unwrap();
    let addr = sink.addr();
    let health_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut agent = start_agent(
        &[
            "--interval",
            "1s",
            "--otlp-endpoint",
            &sink.endpoint(),
            "--prometheus",
            &health_addr.to_string(),
        ],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "500")],
    );
    let before = sink
        .wait_until(Duration::from_secs(20), |r| {
            last_value(r, "otel_gpu_receiver.cycles").is_some()
        })
        .expect("first export");
    let cycles_before = last_value(&before, "otel_gpu_receiver.cycles").unwrap();

    // The collector goes away for a while.
    sink.shutdown();
    let down_since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let rss_start = rss_bytes(agent.pid());
    let mut rss_max = rss_start;
    while down_since.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        rss_max = rss_max.max(rss_bytes(agent.pid()));
        assert_eq!(
            http_get(health_addr, "/healthz").map(|(s, _)| s),
            Some(200),
            "/healthz while the collector is down:\n{}",
            agent.stderr()
        );
    }
    assert!(
        agent.alive(),
        "the agent died during the outage:\n{}",
        agent.stderr()
    );
    assert!(rss_start > 0);
    // Nothing queues up while export fails: memory stays flat (a generous 8 MiB bound).
    assert!(
        rss_max <= rss_start + 8 * 1024 * 1024,
        "RSS grew from {rss_start} to {rss_max} bytes during the outage"
    );
    let outage = down_since.elapsed();
    // The outage is logged once, not once per failed export, and that line names the
    // cause (the collector cannot be reached): no second line is needed to say why.
    let log = agent.stderr();
    let failing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("OTLP export is failing"))
        .collect();
    assert_eq!(failing.len(), 1, "{log}");
    assert!(
        failing[0].contains("error=") && failing[0].contains("Unavailable"),
        "the outage line does not name its cause:\n{log}"
    );

    // The collector returns on the same address.
    let sink = OtlpSink::start_at(addr).unwrap();
    let returned = Instant::now();
    // The next periodic export (at most one interval away) reaches it; the second
    // interval is slack for a loaded test machine.
    let back = sink
        .wait_until(interval * 2, |r| {
            last_value(r, "otel_gpu_receiver.cycles").is_some()
        })
        .unwrap_or_else(|| {
            panic!(
                "export did not resume after the sink returned:\n{}",
                agent.stderr()
            )
        });
    eprintln!(
        "export resumed {:?} after the sink returned",
        returned.elapsed()
    );
    // Collection kept running through the outage...
    let cycles_after = last_value(&back, "otel_gpu_receiver.cycles").unwrap();
    let expected = (outage.as_secs_f64() / interval.as_secs_f64()).floor() - 2.0;
    assert!(
        cycles_after - cycles_before >= expected,
        "only {} cycles during a {outage:?} outage",
        cycles_after - cycles_before
    );
    // ...and the failed exports were counted.
    let failures = last_value(&back, "otel_gpu_receiver.export.failures").unwrap();
    assert!(failures >= 1.0, "export failures counted: {failures}");
}

/// The value of a single-series counter in a Prometheus text exposition.
fn scraped(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name || series.starts_with(&format!("{name}{{")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

#[test]
fn a_hanging_collector_does_not_stop_collection_or_health_and_export_resumes() {
    let sink = OtlpSink::start().unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // The collector accepts connections but never answers: every export hangs
    // until its timeout.
    sink.set_behaviour(Behaviour::Hang);
    let mut agent = start_agent(
        &[
            "--interval",
            "1s",
            "--otlp-endpoint",
            &sink.endpoint(),
            "--prometheus",
            &addr.to_string(),
        ],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")],
    );
    let cycles = || {
        http_get(addr, "/metrics")
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| scraped(&body, "otel_gpu_receiver_cycles_total"))
    };
    let first = poll(Duration::from_secs(20), cycles)
        .unwrap_or_else(|| panic!("no cycles served:\n{}", agent.stderr()));
    let hung_since = Instant::now();
    let rss_start = rss_bytes(agent.pid());
    let mut rss_max = rss_start;
    while hung_since.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(500));
        rss_max = rss_max.max(rss_bytes(agent.pid()));
        let health = http_get(addr, "/healthz").map(|(s, _)| s);
        assert_eq!(
            health,
            Some(200),
            "/healthz while the collector hangs:\n{}",
            agent.stderr()
        );
    }
    let during = cycles().expect("/metrics while the collector hangs");
    assert!(
        during - first >= 3.0,
        "collection stalled behind a hanging collector: {first} -> {during} cycles in {:?}",
        hung_since.elapsed()
    );
    assert!(
        rss_max <= rss_start + 8 * 1024 * 1024,
        "RSS grew from {rss_start} to {rss_max} bytes while the collector hung"
    );
    assert!(agent.alive(), "{}", agent.stderr());
    assert!(
        sink.received().metrics.is_empty(),
        "a hanging collector must have kept nothing"
    );

    // The collector recovers: held and new exports are answered, and the
    // exports that timed out meanwhile are counted. The export in flight when it
    // recovers carries a snapshot up to an interval old, so wait for a fresh one.
    sink.set_behaviour(Behaviour::Accept);
    let back = sink
        .wait_until(Duration::from_secs(5), |r| {
            last_value(r, "otel_gpu_receiver.export.failures").is_some_and(|f| f >= 1.0)
                && last_value(r, "otel_gpu_receiver.cycles").is_some_and(|c| c >= during)
        })
        .unwrap_or_else(|| {
            panic!(
                "export did not resume with the failures counted:\n{}",
                agent.stderr()
            )
        });
    assert!(last_value(&back, "otel_gpu_receiver.cycles").is_some_and(|c| c >= during));
}

#[test]
fn a_throttling_collector_is_counted_and_a_partial_success_is_counted_in_its_own_metric() {
    let sink = OtlpSink::start().unwrap();
    // RESOURCE_EXHAUSTED with RetryInfo longer than the export timeout: each export
    // fails without waiting it out, and is counted.
    sink.set_behaviour(Behaviour::Throttle(Duration::from_secs(5)));
    let mut agent = start_agent(
        &["--interval", "1s", "--otlp-endpoint", &sink.endpoint()],
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "500")],
    );
    assert!(
        sink.wait_until(Duration::from_secs(20), |r| r.refused >= 2)
            .is_some(),
        "no throttled attempts:\n{}",
        agent.stderr()
    );
    assert!(sink.received().metrics.is_empty());
    // The collector takes the data again but rejects part of every request.
    sink.set_behaviour(Behaviour::PartialSuccess(3));
    let got = sink
        .wait_until(Duration::from_secs(5), |r| {
            last_value(r, "otel_gpu_receiver.export.failures").is_some_and(|f| f >= 1.0)
                && last_value(r, "otel_gpu_receiver.export.rejected").is_some_and(|n| n >= 3.0)
        })
        .unwrap_or_else(|| {
            panic!(
                "throttling and rejected points were not both counted:\n{}",
                agent.stderr()
            )
        });
    assert!(agent.alive(), "{}", agent.stderr());
    assert!(last_value(&got, "otel_gpu_receiver.cycles").is_some());
    let log = agent.stderr();
    let failing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("OTLP export is failing"))
        .collect();
    assert_eq!(failing.len(), 1, "{log}");
    assert!(
        failing[0].contains("ResourceExhausted"),
        "the outage line does not say the collector throttles:\n{log}"
    );
    assert_eq!(
        log.matches("rejected part of an OTLP export").count(),
        1,
        "{log}"
    );
}
