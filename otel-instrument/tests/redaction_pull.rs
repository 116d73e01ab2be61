//! The optional Prometheus `/metrics` endpoint serves label values redacted,
//! as the OTLP path sends them, in both the text and the OpenMetrics format.
#![cfg(feature = "prometheus")]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

const EMAIL: &str = "jane.doe@example.com";

fn get(addr: SocketAddr, accept: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn scraped_label_values_are_redacted() {
    let guard = otel_instrument::builder!()
        .fmt(false)
        .traces_export(false)
        .metrics_export(false)
        .logs_export(false)
        .prometheus_endpoint("127.0.0.1:0".parse().unwrap())
        .install()
        .unwrap();
    let addr = guard.prometheus_addr().expect("bound");
    otel_instrument::counter!("payments.attempts", 1, "customer" => EMAIL, "session_id" => "s-8f2k", "plan" => "gold");
    for accept in [
        "text/plain;version=0.0.4",
        "application/openmetrics-text;version=1.0.0",
    ] {
        let body = get(addr, accept);
        let line = body
            .lines()
            .find(|l| l.starts_with("payments_attempts"))
            .unwrap_or_else(|| panic!("no payments_attempts in {body}"));
        assert!(!body.contains(EMAIL) && !body.contains("s-8f2k"), "{line}");
        assert!(line.contains(r#"customer="[REDACTED:email]""#), "{line}");
        assert!(line.contains(r#"session_id="[REDACTED]""#), "{line}");
        assert!(line.contains(r#"plan="gold""#), "{line}");
    }
    drop(guard);
}
