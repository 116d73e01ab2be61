//! A redaction rule that cannot be used stops the build with an error that
//! names where it came from and shows a valid setting; nothing panics.

use otel_instrument::InitError;
use otel_instrument::redact::Redaction;

#[test]
fn a_bad_rule_from_the_builder_is_a_clear_error() {
    let Err(err) = otel_instrument::builder!()
        .env_lookup(|_| None)
        .redaction(Redaction::default().value("order_ref", "ORD-("))
        .build()
    else {
        panic!("a pattern that does not compile is refused");
    };
    assert!(matches!(err, InitError::Redaction(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("redaction") && text.contains("does not compile") && text.contains("example"),
        "{text}"
    );
}

#[test]
fn a_bad_rule_from_the_environment_names_the_variable() {
    for (value, why) in [
        ("-nosuch", "no built-in rule"),
        ("value:x=(", "does not compile"),
        ("bogus", "expected off"),
    ] {
        let v = value.to_owned();
        let Err(err) = otel_instrument::builder!()
            .env_lookup(move |k| (k == "OTEL_INSTRUMENT_REDACT").then(|| v.clone()))
            .build()
        else {
            panic!("{value:?} is refused");
        };
        let text = err.to_string();
        assert!(
            text.contains("OTEL_INSTRUMENT_REDACT")
                && text.contains(why)
                && text.contains("Example"),
            "{value}: {text}"
        );
    }
    // And a good one builds.
    let ok = otel_instrument::builder!()
        .env_lookup(|k| {
            (k == "OTEL_INSTRUMENT_REDACT").then(|| "-email;key:customer_ref".to_owned())
        })
        .traces_export(false)
        .metrics_export(false)
        .logs_export(false)
        .build();
    assert!(ok.is_ok(), "{:?}", ok.err());
}
