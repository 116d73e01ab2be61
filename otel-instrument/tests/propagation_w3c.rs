//! The W3C propagators against the cases of the W3C trace-context test suite
//! (`test/test.py` of w3c/trace-context: one row per case, named after it), and the
//! bounds of `tracestate` and `baggage` in and out.
//!
//! The propagators are the ones `OTEL_PROPAGATORS` installs and `ServerLayer` and
//! `propagation::extract` call; an invalid header must start a new trace, so a case
//! either continues the caller's trace or yields no remote parent at all.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt as _};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use otel_instrument::propagation::w3c::{
    self, BaggagePropagator, MAX_BAGGAGE_BYTES, MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS,
    TraceContextPropagator,
};

const TRACE: &str = "12345678901234567890123456789012";
const PARENT: &str = "1234567890123456";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// The remote span context the headers give, if any.
fn extract(pairs: &[(&str, &str)]) -> Option<SpanContext> {
    let h = headers(pairs);
    let cx = TraceContextPropagator.extract(&HeaderExtractor(&h));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

fn tp(value: &str) -> Option<SpanContext> {
    extract(&[("traceparent", value)])
}

/// `(case, traceparent headers, continued?)`, from the suite's traceparent tests.
#[rustfmt::skip]
const TRACEPARENT_CASES: &[(&str, &[&str], bool)] = &[
    ("test_traceparent_included", &["00-12345678901234567890123456789012-1234567890123456-01"], true),
    ("test_traceparent_duplicated", &["00-12345678901234567890123456789011-1234567890123456-01", "00-12345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_version_0x00 (trailing dot)", &["00-12345678901234567890123456789012-1234567890123456-01."], false),
    ("test_traceparent_version_0x00 (future fields)", &["00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like"], false),
    ("test_traceparent_version_0xcc", &["cc-12345678901234567890123456789012-1234567890123456-01"], true),
    ("test_traceparent_version_0xcc (future fields)", &["cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like"], true),
    ("test_traceparent_version_0xcc (no dash before the future)", &["cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like"], false),
    ("test_traceparent_version_0xff", &["ff-12345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_version_illegal_characters (.0)", &[".0-12345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_version_illegal_characters (0.)", &["0.-12345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_version_too_long (000)", &["000-12345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_version_too_long (0000)", &["0000-12345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_version_too_short", &["0-12345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_trace_id_all_zero", &["00-00000000000000000000000000000000-1234567890123456-01"], false),
    ("test_traceparent_trace_id_illegal_characters (first)", &["00-.2345678901234567890123456789012-1234567890123456-01"], false),
    ("test_traceparent_trace_id_illegal_characters (last)", &["00-1234567890123456789012345678901.-1234567890123456-01"], false),
    ("test_traceparent_trace_id_too_long", &["00-123456789012345678901234567890123-1234567890123456-01"], false),
    ("test_traceparent_trace_id_too_short", &["00-1234567890123456789012345678901-1234567890123456-01"], false),
    ("test_traceparent_parent_id_all_zero", &["00-12345678901234567890123456789012-0000000000000000-01"], false),
    ("test_traceparent_parent_id_illegal_characters (first)", &["00-12345678901234567890123456789012-.234567890123456-01"], false),
    ("test_traceparent_parent_id_illegal_characters (last)", &["00-12345678901234567890123456789012-123456789012345.-01"], false),
    ("test_traceparent_parent_id_too_long", &["00-12345678901234567890123456789012-12345678901234567-01"], false),
    ("test_traceparent_parent_id_too_short", &["00-12345678901234567890123456789012-123456789012345-01"], false),
    ("test_traceparent_trace_flags_illegal_characters (first)", &["00-12345678901234567890123456789012-1234567890123456-.0"], false),
    ("test_traceparent_trace_flags_illegal_characters (last)", &["00-12345678901234567890123456789012-1234567890123456-0."], false),
    ("test_traceparent_trace_flags_too_long", &["00-12345678901234567890123456789012-1234567890123456-001"], false),
    ("test_traceparent_trace_flags_too_short", &["00-12345678901234567890123456789012-1234567890123456-0"], false),
    ("test_traceparent_ows_handling (leading space)", &[" 00-12345678901234567890123456789012-1234567890123456-01"], true),
    ("test_traceparent_ows_handling (leading tab)", &["\t00-12345678901234567890123456789012-1234567890123456-01"], true),
    ("test_traceparent_ows_handling (trailing space)", &["00-12345678901234567890123456789012-1234567890123456-01 "], true),
    ("test_traceparent_ows_handling (trailing tab)", &["00-12345678901234567890123456789012-1234567890123456-01\t"], true),
    ("test_traceparent_ows_handling (both)", &["\t 00-12345678901234567890123456789012-1234567890123456-01 \t"], true),
    // The issue's own: uppercase ids, empty and missing fields.
    ("uppercase trace id", &["00-1234567890ABCDEF1234567890123456-1234567890123456-01"], false),
    ("uppercase parent id", &["00-12345678901234567890123456789012-1234567890ABCDEF-01"], false),
    ("uppercase flags", &["00-12345678901234567890123456789012-1234567890123456-0A"], false),
    ("uppercase version", &["CC-12345678901234567890123456789012-1234567890123456-01"], false),
    ("signed hex is not hex", &["00-+2345678901234567890123456789012-1234567890123456-01"], false),
    ("trailing dash on version 00", &["00-12345678901234567890123456789012-1234567890123456-01-"], false),
    ("empty", &[""], false),
    ("missing flags", &["00-12345678901234567890123456789012-1234567890123456"], false),
];

#[test]
fn traceparent_cases_of_the_w3c_suite() {
    let mut failures = Vec::new();
    for (case, values, continued) in TRACEPARENT_CASES {
        let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("traceparent", *v)).collect();
        let got = extract(&pairs);
        let ok = match (&got, continued) {
            (Some(sc), true) => {
                sc.trace_id() == TraceId::from_hex(TRACE).unwrap()
                    && sc.span_id() == SpanId::from_hex(PARENT).unwrap()
                    && sc.is_sampled()
                    && sc.is_remote()
            }
            (None, false) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!("{case}: {values:?} gave {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn traceparent_header_names_are_case_insensitive() {
    // test_traceparent_header_name_valid_casing
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        let sc = extract(&[(name, &format!("00-{TRACE}-{PARENT}-01"))]);
        assert!(sc.is_some(), "{name}");
    }
    // test_traceparent_header_name: other names are not traceparent.
    for name in ["trace-parent", "trace.parent"] {
        assert!(extract(&[(name, &format!("00-{TRACE}-{PARENT}-01"))]).is_none());
    }
}

#[test]
fn flags_other_than_sampled_are_not_carried_on() {
    // Version 00: only `sampled` is defined; a higher version's other flags likewise.
    let sc = tp(&format!("00-{TRACE}-{PARENT}-09")).unwrap();
    assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
    let sc = tp(&format!("cc-{TRACE}-{PARENT}-08-x")).unwrap();
    assert_eq!(sc.trace_flags(), TraceFlags::default());
}

/// The tracestate that `tracestate` headers give beside a valid traceparent.
fn ts(values: &[&str]) -> String {
    let parent = format!("00-{TRACE}-{PARENT}-00");
    let mut pairs = vec![("traceparent", parent.as_str())];
    pairs.extend(values.iter().map(|v| ("tracestate", *v)));
    extract(&pairs)
        .expect("the traceparent is valid: tracestate never invalidates it")
        .trace_state()
        .header()
}

/// `(case, tracestate headers, the tracestate kept)`, from the suite's tracestate tests.
/// Invalid members are dropped and the rest kept; a repeated key keeps its first value.
#[rustfmt::skip]
const TRACESTATE_CASES: &[(&str, &[&str], &str)] = &[
    ("test_tracestate_included_in_traceparent", &["foo=1"], "foo=1"),
    ("test_tracestate_empty_header", &[""], ""),
    ("test_tracestate_empty_header (then a value)", &["", "foo=1"], "foo=1"),
    ("test_tracestate_empty_header (value first)", &["foo=1", ""], "foo=1"),
    ("test_tracestate_multiple_headers_different_keys", &["foo=1,bar=2", "rojo=1,congo=2", "baz=3"], "foo=1,bar=2,rojo=1,congo=2,baz=3"),
    ("test_tracestate_duplicated_keys (same value)", &["foo=1,foo=1"], "foo=1"),
    ("test_tracestate_duplicated_keys (other value)", &["foo=1,foo=2"], "foo=1"),
    ("test_tracestate_duplicated_keys (across headers)", &["foo=1", "foo=1"], "foo=1"),
    ("test_tracestate_all_allowed_characters (simple key)", &["abcdefghijklmnopqrstuvwxyz0123456789_-*/= !\"#$%&'()*+-./0123456789:;<>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"], "abcdefghijklmnopqrstuvwxyz0123456789_-*/= !\"#$%&'()*+-./0123456789:;<>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"),
    ("test_tracestate_ows_handling", &["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3"),
    ("test_tracestate_ows_handling (around)", &["\t foo=1 \t"], "foo=1"),
    ("test_tracestate_key_illegal_characters (space)", &["foo =1,bar=2"], "bar=2"),
    ("test_tracestate_key_illegal_characters (uppercase)", &["FOO=1,bar=2"], "bar=2"),
    ("test_tracestate_key_illegal_characters (dot)", &["foo.bar=1,bar=2"], "bar=2"),
    ("test_tracestate_key_illegal_vendor_format (no system)", &["foo@=1,bar=2"], "bar=2"),
    ("test_tracestate_key_illegal_vendor_format (no tenant)", &["@foo=1,bar=2"], "bar=2"),
    ("test_tracestate_key_illegal_vendor_format (two @)", &["foo@@bar=1,bar=2"], "bar=2"),
    ("test_tracestate_key_illegal_vendor_format (@ twice)", &["foo@bar@baz=1,bar=2"], "bar=2"),
    ("test_tracestate_value_illegal_characters (=)", &["foo=bar=baz,bar=2"], "bar=2"),
    ("test_tracestate_value_illegal_characters (empty)", &["foo=,bar=3"], "bar=3"),
    ("multi-tenant key", &["t3n4nt@vendor=1"], "t3n4nt@vendor=1"),
    ("no equals sign", &["foo,bar=2"], "bar=2"),
    ("control character in a value", &["foo=a\u{7f}b,bar=2"], "bar=2"),
    ("value ending in a space is trimmed as OWS", &["foo=a ,bar=2"], "foo=a,bar=2"),
];

#[test]
fn tracestate_cases_of_the_w3c_suite() {
    let mut failures = Vec::new();
    for (case, values, want) in TRACESTATE_CASES {
        // Header values cannot hold some bytes (DEL): such a header never reaches us.
        if values.iter().any(|v| HeaderValue::from_str(v).is_err()) {
            let (state, dropped) = w3c::parse_tracestate(values.iter().copied());
            if state.header() != *want || dropped == 0 {
                failures.push(format!("{case}: parse gave {:?}", state.header()));
            }
            continue;
        }
        let got = ts(values);
        if got != *want {
            failures.push(format!("{case}: {values:?} gave {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn tracestate_keeps_32_members_at_most() {
    // test_tracestate_member_count_limit: 32 are kept whole, a 33rd is not.
    let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
    let state = ts(&[
        &members[..10].join(","),
        &members[10..20].join(","),
        &members[20..30].join(","),
        &members[30..32].join(","),
    ]);
    assert_eq!(state, members[..32].join(","));
    let state = ts(&[&members.join(",")]);
    assert_eq!(state.split(',').count(), MAX_TRACESTATE_MEMBERS);
    assert_eq!(
        state,
        members[..32].join(","),
        "the first 32 are the ones kept"
    );
}

#[test]
fn tracestate_key_lengths_follow_the_grammar() {
    // test_tracestate_key_length_limit
    let long = format!("foo{}", "z".repeat(253));
    assert_eq!(
        ts(&[&format!("{long}=1")]),
        format!("{long}=1"),
        "256 characters"
    );
    assert_eq!(
        ts(&[&format!("{long}z=1,bar=2")]),
        "bar=2",
        "257 characters"
    );
    let tenant = "t".repeat(241);
    assert_eq!(ts(&[&format!("{tenant}@v=1")]), format!("{tenant}@v=1"));
    assert_eq!(
        ts(&[&format!("{tenant}t@v=1,bar=2")]),
        "bar=2",
        "242-character tenant"
    );
    assert_eq!(
        ts(&[&format!("t@{}=1,bar=2", "v".repeat(15))]),
        "bar=2",
        "15-character system"
    );
    let value = "v".repeat(256);
    assert_eq!(ts(&[&format!("foo={value}")]), format!("foo={value}"));
    assert_eq!(
        ts(&[&format!("foo={value}v,bar=2")]),
        "bar=2",
        "257-character value"
    );
}

#[test]
fn tracestate_over_512_characters_drops_long_members_first_then_from_the_end() {
    // Five 101-character members (505 with commas), one 140-character one in the middle.
    let short: Vec<String> = (0..5).map(|i| format!("k{i}={}", "x".repeat(98))).collect();
    let long = format!("big={}", "y".repeat(136));
    let mut all = short.clone();
    all.insert(2, long);
    let state = ts(&[&all.join(",")]);
    assert_eq!(state, short.join(","), "the long member goes first");
    assert!(state.len() <= MAX_TRACESTATE_LEN);

    // Six short ones (611): the last goes.
    let mut six = short.clone();
    six.push(format!("k5={}", "x".repeat(98)));
    let state = ts(&[&six.join(",")]);
    assert_eq!(state, short.join(","));
}

#[test]
fn an_invalid_traceparent_ignores_its_tracestate_and_is_counted() {
    let before = w3c::rejected();
    let sc = extract(&[
        (
            "traceparent",
            "00-00000000000000000000000000000000-1234567890123456-01",
        ),
        ("tracestate", "foo=1"),
    ]);
    assert!(sc.is_none());
    let after = w3c::rejected();
    assert!(after.traceparent > before.traceparent);
}

#[test]
fn outgoing_tracestate_is_bounded_too() {
    // A TraceState the application built (TraceState caps members itself; length is ours).
    let members: Vec<(String, String)> = (0..32)
        .map(|i| (format!("k{i:02}"), "v".repeat(40)))
        .collect();
    let state = TraceState::from_key_value(members.clone()).unwrap();
    assert!(state.header().len() > MAX_TRACESTATE_LEN);
    let sc = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex(PARENT).unwrap(),
        TraceFlags::SAMPLED,
        true,
        state,
    );
    let cx = Context::new().with_remote_span_context(sc);
    let mut out = HeaderMap::new();
    TraceContextPropagator.inject_context(&cx, &mut HeaderInjector(&mut out));
    assert_eq!(
        out["traceparent"],
        format!("00-{TRACE}-{PARENT}-01").as_str()
    );
    let sent = out["tracestate"].to_str().unwrap();
    assert!(sent.len() <= MAX_TRACESTATE_LEN, "{}", sent.len());
    let kept = 512_usize.div_ceil(4 + 40); // 44 characters a member with its comma
    assert_eq!(sent.split(',').count(), kept - 1);
    assert!(
        sent.starts_with("k00="),
        "the first members are the ones kept: {sent}"
    );
}

/// The context (and so the baggage) that `baggage` headers give.
fn baggage_of(values: &[&str]) -> Context {
    let h = headers(&values.iter().map(|v| ("baggage", *v)).collect::<Vec<_>>());
    BaggagePropagator.extract(&HeaderExtractor(&h))
}

#[test]
fn baggage_keeps_whole_entries_within_8192_bytes() {
    // 100 entries of 100 bytes: 10,099 bytes with commas.
    let entries: Vec<String> = (0..100)
        .map(|i| format!("k{i:02}={}", "v".repeat(96)))
        .collect();
    let before = w3c::rejected();
    let cx = baggage_of(&[&entries.join(",")]);
    let b = cx.baggage();
    // 8192 bytes hold 81 entries (81 * 101 - 1 = 8180), but `Baggage` keeps 64.
    assert_eq!(b.len(), 64);
    assert!(b.get("k00").is_some() && b.get("k63").is_some() && b.get("k64").is_none());
    assert!(w3c::rejected().baggage_entries >= before.baggage_entries + 36);

    // Small entries past the byte bound: only what fits in the first 8192 bytes.
    let big = format!("big={}", "x".repeat(8181)); // 8185 bytes: with ",after=1", 8193
    let cx = baggage_of(&[&big, "after=1"]);
    let b = cx.baggage();
    assert_eq!(b.len(), 1, "the entry past 8192 bytes is dropped");
    assert!(b.get("big").is_some());
}

#[test]
fn baggage_counts_entries_over_180() {
    // 200 one-byte-key entries: 180 are looked at, 64 fit in `Baggage`.
    let entries: Vec<String> = (0..200).map(|i| format!("k{i}=1")).collect();
    let (b, dropped) = w3c::parse_baggage([entries.join(",").as_str()]);
    assert_eq!(b.len(), 64);
    assert_eq!(dropped, 200 - 64);
}

#[test]
fn invalid_baggage_entries_are_dropped_and_the_rest_kept() {
    let cx = baggage_of(&["good=1,bad key=2,=3,noequals,k=v v,ok=%41"]);
    let b = cx.baggage();
    let mut kept: Vec<String> = b.iter().map(|(k, (v, _))| format!("{k}={v}")).collect();
    kept.sort();
    assert_eq!(kept, ["good=1", "ok=A"]);
}

#[test]
fn outgoing_baggage_is_bounded_to_8192_bytes_of_header() {
    // Values that percent-encode to three times their size: Baggage's own 8192 bytes
    // of content would make a 24 KiB header.
    let mut b = Baggage::new();
    for i in 0..8 {
        b.insert(format!("k{i}"), " ".repeat(1000));
    }
    assert_eq!(b.len(), 8);
    let cx = Context::new().with_baggage(b);
    let mut out = HeaderMap::new();
    BaggagePropagator.inject_context(&cx, &mut HeaderInjector(&mut out));
    let sent = out["baggage"].to_str().unwrap();
    assert!(sent.len() <= MAX_BAGGAGE_BYTES, "{}", sent.len());
    // Each entry is 3003 bytes: two fit.
    assert_eq!(sent.split(',').count(), 2);
    // And what goes out reads back the same.
    let cx = baggage_of(&[sent]);
    let back = cx.baggage();
    assert_eq!(back.len(), 2);
    assert!(
        back.iter()
            .all(|(_, (v, _))| v.as_str() == " ".repeat(1000))
    );
}
