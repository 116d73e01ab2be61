//! Redaction and error fingerprints over the real wire, with the setup
//! `builder!().install()` makes: an error whose message carries an e-mail, a
//! card number, a bearer token and a password in a URL, raised from a
//! function whose fields, log lines and metric labels carry the same. None of
//! the four reaches the sink in any signal; their redacted forms do, and the
//! error's fingerprint is on the span, its `exception` event, its report log
//! record and the `function.errors` counter.

use std::time::Duration;

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::metric;
use otel_instrument::monitored;
use otel_instrument::testing::{OtlpSink, Received, attributes, log_body};

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";
const TOKEN: &str = "s3cr3tT0kenValue42";
const PASSWORD: &str = "hunter2pw";
const SECRETS: [&str; 4] = [EMAIL, "4111111111111111", TOKEN, PASSWORD];

#[derive(Debug, thiserror::Error)]
#[error(
    "charging order {order} for {email} with card {card} failed: upstream said 401 to \
     'Authorization: Bearer {token}' at postgres://app:{password}@db.internal:5432/payments"
)]
struct ChargeError {
    order: u64,
    email: String,
    card: String,
    token: String,
    password: String,
}

#[derive(Debug, thiserror::Error)]
#[error("ledger {0} is closed")]
struct LedgerClosed(u64);

#[monitored(skip_all, fields(customer.email = email, payment.card = card, http.request.header.authorization = auth.as_str(), db.url = url.as_str()))]
fn charge(
    order: u64,
    email: &str,
    card: &str,
    auth: String,
    url: String,
) -> Result<(), ChargeError> {
    tracing::warn!(
        customer = email,
        card,
        authorization = auth.as_str(),
        "paying with {email} and {card} at {url}"
    );
    otel_instrument::counter!("payments.attempts", 1, "customer" => email.to_owned());
    Err(ChargeError {
        order,
        email: email.to_owned(),
        card: card.to_owned(),
        token: TOKEN.to_owned(),
        password: PASSWORD.to_owned(),
    })
}

/// Unsampled: the tail keeper keeps its trace because it fails.
#[monitored(sample = 0.0, skip_all)]
fn refund(email: &str) -> Result<(), ChargeError> {
    Err(ChargeError {
        order: 77,
        email: email.to_owned(),
        card: CARD.to_owned(),
        token: TOKEN.to_owned(),
        password: PASSWORD.to_owned(),
    })
}

#[monitored]
fn close_ledger(id: u64) -> Result<(), LedgerClosed> {
    Err(LedgerClosed(id))
}

/// Every string in every request, in protobuf debug form: a secret anywhere
/// (attribute, event, body, label, status) shows here.
fn everything(r: &Received) -> String {
    format!("{:?}\n{:?}\n{:?}", r.traces, r.logs, r.metrics)
}

/// `function.errors` in the last request that has it: fingerprint -> count.
fn error_counts(r: &Received, function: &str) -> Vec<(String, String, u64)> {
    let last = r
        .metrics()
        .into_iter()
        .rev()
        .find(|m| m.metric.name == "function.errors");
    let Some(m) = last else { return Vec::new() };
    let Some(metric::Data::Sum(sum)) = m.metric.data else {
        panic!("function.errors is a sum: {:?}", m.metric);
    };
    sum.data_points
        .iter()
        .filter_map(|p| {
            let a = attributes(&p.attributes);
            let v = match p.value {
                Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                    v,
                )) => v as u64,
                _ => return None,
            };
            (a.get("function").map(String::as_str) == Some(function)).then(|| {
                (
                    a.get("error.type").cloned().unwrap_or_default(),
                    a.get("error.fingerprint").cloned().unwrap_or_default(),
                    v,
                )
            })
        })
        .collect()
}

#[test]
fn no_secret_reaches_the_collector_and_errors_carry_their_fingerprint() {
    let sink = OtlpSink::start().unwrap();
    let guard = otel_instrument::builder!()
        .endpoint(sink.endpoint())
        .fmt(false)
        .install()
        .unwrap();
    let auth = format!("Bearer {TOKEN}");
    let url = format!("postgres://app:{PASSWORD}@db.internal:5432/payments?password={PASSWORD}");
    // The same error with different ids: one fingerprint.
    for order in [1001, 2_000_042] {
        assert!(charge(order, EMAIL, CARD, auth.clone(), url.clone()).is_err());
    }
    assert!(close_ledger(7).is_err());
    assert!(refund(EMAIL).is_err());
    // Another customer: its series becomes the same as the first one's once
    // redacted, and the two are exported as one.
    otel_instrument::counter!("payments.attempts", 1, "customer" => "joe@example.org".to_owned());
    for who in [EMAIL, "joe@example.org"] {
        otel_instrument::histogram!("payment.amount", 12.5, "customer" => who.to_owned());
    }
    assert!(guard.flush(), "flush timed out");
    let got = sink
        .wait_until(Duration::from_secs(20), |r| {
            r.spans().iter().filter(|s| s.span.name == "charge").count() == 2
                && r.spans().iter().any(|s| s.span.name == "close_ledger")
                && r.spans().iter().any(|s| s.span.name == "refund")
                && r.log_records()
                    .iter()
                    .any(|l| log_body(l).contains("ledger"))
                && error_counts(r, "charge").iter().map(|c| c.2).sum::<u64>() == 2
                && r.metrics()
                    .iter()
                    .any(|m| m.metric.name == "payments.attempts")
        })
        .unwrap_or_else(|| panic!("telemetry did not arrive: {:#?}", sink.received().spans()));
    drop(guard);
    let got_all = sink.received();
    let text = everything(&got_all);
    for secret in SECRETS {
        if let Some(i) = text.find(secret) {
            let from = text[..i]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(j, _)| j);
            panic!(
                "{secret} reached the collector: …{}…",
                &text[from..(i + 60).min(text.len())]
            );
        }
    }
    for redacted in [
        "[REDACTED:email]",
        "[REDACTED:card]",
        "Bearer [REDACTED",
        "postgres://app:[REDACTED]@db.internal:5432/payments",
        "password=[REDACTED]",
    ] {
        assert!(text.contains(redacted), "{redacted} is missing");
    }

    // Spans: the fields by key, the error's fingerprint.
    let spans: Vec<_> = got
        .spans()
        .into_iter()
        .filter(|s| s.span.name == "charge")
        .collect();
    let a = spans[0].attributes();
    assert_eq!(a["http.request.header.authorization"], "[REDACTED]");
    assert_eq!(a["customer.email"], "[REDACTED:email]");
    assert_eq!(a["payment.card"], "[REDACTED:card]");
    assert_eq!(
        a["db.url"],
        "postgres://app:[REDACTED]@db.internal:5432/payments?password=[REDACTED]"
    );
    let fp = a["error.fingerprint"].clone();
    assert_eq!(fp.len(), 16, "{fp}");
    assert_eq!(
        spans[1].attributes()["error.fingerprint"],
        fp,
        "one fingerprint for other ids"
    );
    let ledger = got
        .spans()
        .into_iter()
        .find(|s| s.span.name == "close_ledger")
        .unwrap();
    let ledger_fp = ledger.attributes()["error.fingerprint"].clone();
    assert_ne!(ledger_fp, fp, "another error, another fingerprint");

    // A call the head sampler dropped and the tail keeper kept: the same.
    let refund = got
        .spans()
        .into_iter()
        .find(|s| s.span.name == "refund")
        .unwrap();
    assert_eq!(refund.attributes()["sampling.kept"], "error");
    let refund_fp = refund.attributes()["error.fingerprint"].clone();
    assert_eq!(refund_fp.len(), 16);
    let event = refund
        .span
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("its exception event");
    let ea = attributes(&event.attributes);
    assert_eq!(ea["error.fingerprint"], refund_fp);
    assert!(
        ea["exception.message"].contains("[REDACTED:email]"),
        "{}",
        ea["exception.message"]
    );

    // The exception event: type, redacted message, fingerprint.
    let exception = spans[0]
        .span
        .events
        .iter()
        .find(|e| e.name == "exception")
        .expect("an exception event");
    let ea = attributes(&exception.attributes);
    assert_eq!(ea["exception.type"], "ChargeError");
    assert_eq!(ea["error.fingerprint"], fp);
    assert!(
        ea["exception.message"]
            .starts_with("charging order 1001 for [REDACTED:email] with card [REDACTED:card]"),
        "{}",
        ea["exception.message"]
    );

    // The report log record: in the call's trace, with the fingerprint.
    let reports: Vec<LogRecord> = got
        .log_records()
        .into_iter()
        .filter(|l| attributes(&l.attributes).get("error.fingerprint") == Some(&fp))
        .collect();
    assert_eq!(reports.len(), 2, "one report per error (under the limit)");
    assert_eq!(reports[0].severity_text, "ERROR");
    assert!(
        spans.iter().any(|s| s.span.trace_id == reports[0].trace_id),
        "the report is in its call's trace"
    );
    // The log line inside the call: attributes by key and by value.
    let warning = got
        .log_records()
        .into_iter()
        .find(|l| log_body(l).starts_with("paying with "))
        .expect("the warning");
    let wa = attributes(&warning.attributes);
    assert_eq!(wa["authorization"], "[REDACTED]");
    assert_eq!(wa["customer"], "[REDACTED:email]");
    assert_eq!(wa["card"], "[REDACTED:card]");

    // The bounded counter: one series per fingerprint, every error counted.
    assert_eq!(
        error_counts(&got, "charge"),
        vec![("ChargeError".to_owned(), fp, 2)]
    );
    assert_eq!(
        error_counts(&got, "close_ledger"),
        vec![("LedgerClosed".to_owned(), ledger_fp, 1)]
    );
    // The metric macro's label value.
    let attempts = got
        .metrics()
        .into_iter()
        .rev()
        .find(|m| m.metric.name == "payments.attempts")
        .unwrap();
    let Some(metric::Data::Sum(sum)) = attempts.metric.data else {
        panic!("a sum")
    };
    assert_eq!(
        sum.data_points.len(),
        1,
        "one series after redaction: {sum:?}"
    );
    assert_eq!(
        attributes(&sum.data_points[0].attributes)["customer"],
        "[REDACTED:email]"
    );
    assert_eq!(
        sum.data_points[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(3)),
        "both customers' counts"
    );
    let amount = got
        .metrics()
        .into_iter()
        .rev()
        .find(|m| m.metric.name == "payment.amount")
        .expect("payment.amount");
    let Some(metric::Data::Histogram(h)) = amount.metric.data else {
        panic!("a histogram")
    };
    assert_eq!(h.data_points.len(), 1, "one series after redaction: {h:?}");
    assert_eq!(h.data_points[0].count, 2);
    assert_eq!(h.data_points[0].sum, Some(25.0));
}

#[test]
fn the_fmt_lines_are_redacted() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // The writer and format `init!()` installs (plain, and coloured as on a
    // terminal), writing into a buffer.
    for ansi in [false, true] {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .event_format(monitored::fmt_format())
            .with_writer(otel_instrument::redact::RedactingWriter::new(move || {
                buf.clone()
            }))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                password = PASSWORD,
                card = CARD,
                "login {EMAIL} with Bearer {TOKEN}"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.contains('\x1b'),
            ansi,
            "coloured only when asked: {text:?}"
        );
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{secret} printed (ansi {ansi}): {text:?}"
            );
        }
        assert!(
            text.contains("[REDACTED:email]") && text.contains("[REDACTED]"),
            "{text:?}"
        );
    }
}
