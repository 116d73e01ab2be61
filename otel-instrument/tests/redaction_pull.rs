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
    // Two customers: one series once redacted (a scrape with a series twice fails).
    for who in [EMAIL, "joe@example.org"] {
        otel_instrument::counter!(
            "payments.attempts",
            1,
            "customer" => who.to_owned(),
            "session_id" => "s-8f2k",
            "plan" => "gold"
        );
        otel_instrument::histogram!("payment.amount", 12.5, "customer" => who.to_owned());
    }
    for accept in [
        "text/plain;version=0.0.4",
        "application/openmetrics-text;version=1.0.0",
    ] {
        let body = get(addr, accept);
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("payments_attempts"))
            .collect();
        assert_eq!(lines.len(), 1, "one series: {body}");
        let line = lines[0];
        assert!(
            line.split(' ')
                .nth(1)
                .is_some_and(|v| v.parse::<f64>() == Ok(2.0)),
            "both counted: {line}"
        );
        let counts: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("payment_amount") && l.contains("_count"))
            .collect();
        assert_eq!(counts.len(), 1, "one histogram series: {body}");
        assert!(
            counts[0]
                .split(' ')
                .nth(1)
                .is_some_and(|v| v.parse::<f64>() == Ok(2.0)),
            "{}",
            counts[0]
        );
        assert!(!body.contains(EMAIL) && !body.contains("s-8f2k"), "{line}");
        assert!(line.contains(r#"customer="[REDACTED:email]""#), "{line}");
        assert!(line.contains(r#"session_id="[REDACTED]""#), "{line}");
        assert!(line.contains(r#"plan="gold""#), "{line}");
    }
    drop(guard);
}
