//! Every failed export is logged and counted the same way on both transports:
//! the outage line ("OTLP export is failing") with the signal and the cause,
//! and `ExportStats`. That includes the exports a short-lived program's guard
//! cuts off at its shutdown deadline, while they are still being retried.
//!
//! The outage line is written from the SDK's export threads, so it goes to the
//! global subscriber: this binary installs one that keeps the lines in memory,
//! and its tests run one at a time.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use otel_instrument::config::Signal;
use otel_instrument::{Protocol, Telemetry, TelemetryGuard};
use tracing_subscriber::layer::SubscriberExt;

static SERIAL: Mutex<()> = Mutex::new(());

/// Everything logged at warn and above since the last [`clear`].
fn lines() -> &'static Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Lines(writer.clone()))
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        buf
    })
}

struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lines().lock().unwrap().clear();
    guard
}

fn logged() -> String {
    String::from_utf8(lines().lock().unwrap().clone()).unwrap()
}

/// The outage line of a signal, once it has been written.
fn outage_line(signal: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let found = logged()
            .lines()
            .find(|l| {
                l.contains("OTLP export is failing") && l.contains(&format!("signal=\"{signal}\""))
            })
            .map(str::to_owned);
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `http://127.0.0.1:<port>` with nothing listening.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn protocols() -> Vec<(Protocol, &'static str)> {
    let mut p = vec![(Protocol::Grpc, "grpc")];
    if cfg!(feature = "http-proto") {
        p.push((Protocol::HttpProtobuf, "http/protobuf"));
    }
    p
}

fn send_a_span(t: Telemetry) -> TelemetryGuard {
    let (layer, guard) = t.into_layer();
    let sub = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(sub, || {
        tracing::info_span!("doomed").in_scope(|| {});
    });
    guard
}

#[test]
fn a_dead_endpoint_is_logged_with_its_cause_and_counted_on_both_transports() {
    let _serial = serial();
    for (protocol, name) in protocols() {
        lines().lock().unwrap().clear();
        let t = Telemetry::builder()
            .env_lookup(|_| None)
            .protocol(protocol)
            .endpoint(dead_endpoint())
            .timeout(Duration::from_millis(300))
            .build()
            .expect("telemetry");
        let guard = send_a_span(t);
        guard.flush();
        let line = outage_line("traces", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{name}: no outage line for traces:\n{}", logged()));
        assert!(
            line.contains("Connection refused"),
            "{name}: the line must say why the export failed: {line}"
        );
        let stats = guard.stats();
        assert!(stats.failures(Signal::Traces) >= 1, "{name}");
        assert!(stats.spans_lost() >= 1, "{name}");
        assert_eq!(stats.successes(Signal::Traces), 0, "{name}");
    }
}

/// The quickstart's situation: the collector is down and the program exits. The
/// export timeout (10 s by default) outlasts the guard's shutdown deadline, so
/// the last exports are still being retried when the guard gives up on them.
#[test]
fn exports_cut_off_by_the_shutdown_deadline_are_logged_on_both_transports() {
    let _serial = serial();
    for (protocol, name) in protocols() {
        lines().lock().unwrap().clear();
        let t = Telemetry::builder()
            .env_lookup(|_| None)
            .protocol(protocol)
            .endpoint(dead_endpoint())
            .shutdown_timeout(Duration::from_millis(800))
            .build()
            .expect("telemetry");
        let guard = send_a_span(t);
        let started = Instant::now();
        let done = guard.shutdown();
        assert!(!done, "{name}: nothing can be exported to a dead endpoint");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}: shutdown took {:?}",
            started.elapsed()
        );
        let line = outage_line("traces", Duration::ZERO)
            .unwrap_or_else(|| panic!("{name}: no outage line for traces:\n{}", logged()));
        assert!(
            line.contains("shutdown deadline"),
            "{name}: the line must say the export was cut off: {line}"
        );
    }
}
