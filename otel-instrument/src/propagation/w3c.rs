//! The W3C `traceparent`, `tracestate` and `baggage` headers, parsed and written
//! within the bounds the specifications set, whatever a caller sends.
//!
//! - `traceparent` ([Trace Context]): version `00` is exactly 55 characters; a higher
//!   version (not `ff`) is read by its first four fields and may go on after a `-`.
//!   Ids are 32 and 16 lowercase hex digits, not all zero. Leading and trailing spaces
//!   and tabs are allowed; two `traceparent` headers are not.
//! - `tracestate`: at most [`MAX_TRACESTATE_MEMBERS`] members and
//!   [`MAX_TRACESTATE_LEN`] characters, in and out. A member whose key or value breaks
//!   the grammar, or whose key came earlier, is dropped and the rest kept; over the
//!   length, members longer than 128 characters go first, then members from the end
//!   (what the specification says to remove first).
//! - `baggage` ([Baggage]): at most [`MAX_BAGGAGE_ENTRIES`] entries and
//!   [`MAX_BAGGAGE_BYTES`] bytes of header, in and out; only whole entries are kept.
//!   OpenTelemetry's `Baggage` holds at most 64 entries, so that is what a context
//!   carries.
//!
//! An invalid `traceparent` starts a new trace (its `tracestate` is ignored with it);
//! it never fails the request. Whatever is dropped is counted
//! ([`rejected`], exported as `otel_instrument.propagation.rejected`).
//!
//! [Trace Context]: https://www.w3.org/TR/trace-context/
//! [Baggage]: https://www.w3.org/TR/baggage/

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt as _};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};

/// The most `tracestate` list members kept or sent.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The longest `tracestate` kept or sent, in characters.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// A `tracestate` member longer than this goes first when the header is too long.
const TRACESTATE_LONG_MEMBER: usize = 128;
/// The most `baggage` entries read or sent (the W3C limit; OpenTelemetry's `Baggage`
/// itself holds at most 64).
pub const MAX_BAGGAGE_ENTRIES: usize = 180;
/// The most `baggage` header bytes read or sent.
pub const MAX_BAGGAGE_BYTES: usize = 8192;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const BAGGAGE: &str = "baggage";

/// What was rejected on the way in or left out on the way out, by header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// `traceparent` headers present but invalid (each started a new trace).
    pub traceparent: u64,
    /// `tracestate` members dropped: invalid, repeated keys, or over the bounds.
    pub tracestate_members: u64,
    /// `baggage` entries dropped: invalid, or over the bounds.
    pub baggage_entries: u64,
}

static TRACEPARENT_REJECTED: AtomicU64 = AtomicU64::new(0);
static TRACESTATE_DROPPED: AtomicU64 = AtomicU64::new(0);
static BAGGAGE_DROPPED: AtomicU64 = AtomicU64::new(0);

/// What the propagators of this process have rejected so far.
pub fn rejected() -> Rejected {
    Rejected {
        traceparent: TRACEPARENT_REJECTED.load(Ordering::Relaxed),
        tracestate_members: TRACESTATE_DROPPED.load(Ordering::Relaxed),
        baggage_entries: BAGGAGE_DROPPED.load(Ordering::Relaxed),
    }
}

fn count(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// traceparent
// ---------------------------------------------------------------------------------------

/// The fields of a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The trace id (never all zero).
    pub trace_id: TraceId,
    /// The caller's span id (never all zero).
    pub parent_id: SpanId,
    /// The flags; only `sampled` is kept, as the specification asks of version 00.
    pub flags: TraceFlags,
}

fn lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_u128(s: &[u8]) -> u128 {
    s.iter().fold(0, |acc, &b| {
        let d = if b.is_ascii_digit() {
            b - b'0'
        } else {
            b - b'a' + 10
        };
        (acc << 4) | u128::from(d)
    })
}

/// A `traceparent` value read as the specification says, or `None` when it is not
/// valid (then the request starts a new trace).
pub fn parse_traceparent(value: &str) -> Option<Traceparent> {
    let v = value.trim_matches([' ', '\t']).as_bytes();
    // version "-" trace-id "-" parent-id "-" trace-flags: 2+1+32+1+16+1+2 = 55.
    if v.len() < 55 {
        return None;
    }
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if !lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" {
        if v.len() != 55 {
            return None;
        }
    } else if v.len() > 55 && v[55] != b'-' {
        // A future version may only add fields after another dash.
        return None;
    }
    if !lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) {
        return None;
    }
    let trace_id = hex_u128(trace);
    let parent_id = hex_u128(parent) as u64;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    let flags = TraceFlags::new(hex_u128(flags) as u8) & TraceFlags::SAMPLED;
    Some(Traceparent {
        trace_id: TraceId::from(trace_id),
        parent_id: SpanId::from(parent_id),
        flags,
    })
}

// ---------------------------------------------------------------------------------------
// tracestate
// ---------------------------------------------------------------------------------------

fn key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// A `tracestate` key: `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key.iter().all(|&b| key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant.iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system.iter().all(|&b| key_char(b))
        }
    }
}

/// A `tracestate` value: 1 to 256 printable characters without `,` or `=`, not
/// ending in a space.
fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| matches!(b, 0x20..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e))
        && value.last() != Some(&b' ')
}

/// Drops members until the header fits [`MAX_TRACESTATE_LEN`]: those longer than 128
/// characters first, then from the end. Returns how many were dropped.
fn fit_tracestate(members: &mut Vec<(&str, &str)>) -> usize {
    let len = |m: &[(&str, &str)]| -> usize {
        m.iter().map(|(k, v)| k.len() + 1 + v.len()).sum::<usize>() + m.len().saturating_sub(1)
    };
    let before = members.len();
    if len(members) > MAX_TRACESTATE_LEN {
        while len(members) > MAX_TRACESTATE_LEN {
            let Some(i) = members
                .iter()
                .rposition(|(k, v)| k.len() + 1 + v.len() > TRACESTATE_LONG_MEMBER)
            else {
                break;
            };
            members.remove(i);
        }
        while len(members) > MAX_TRACESTATE_LEN {
            members.pop();
        }
    }
    before - members.len()
}

/// The `tracestate` that `values` (one per header, in order) carry within the bounds,
/// and how many members were dropped: invalid, repeated keys (the first is kept), past
/// the 32nd, or over the length. Empty members are not counted.
pub fn parse_tracestate<'a, I>(values: I) -> (TraceState, usize)
where
    I: IntoIterator<Item = &'a str>,
{
    let mut members: Vec<(&str, &str)> = Vec::new();
    let mut dropped = 0;
    for value in values {
        for member in value.split(',') {
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            if members.len() == MAX_TRACESTATE_MEMBERS {
                dropped += 1;
                continue;
            }
            let valid = member.split_once('=').filter(|(k, v)| {
                valid_key(k.as_bytes())
                    && valid_value(v.as_bytes())
                    && !members.iter().any(|(seen, _)| seen == k)
                    // What opentelemetry's `TraceState` accepts is a little narrower
                    // (a 14-character system id): what it would refuse is dropped too.
                    && TraceState::from_key_value([(*k, *v)]).is_ok()
            });
            match valid {
                Some(kv) => members.push(kv),
                None => dropped += 1,
            }
        }
    }
    dropped += fit_tracestate(&mut members);
    let state = TraceState::from_key_value(members).unwrap_or_default();
    (state, dropped)
}

/// `state` as a `tracestate` header within the bounds, and how many members were left
/// out to fit.
pub fn format_tracestate(state: &TraceState) -> (String, usize) {
    let header = state.header();
    if header.len() <= MAX_TRACESTATE_LEN && header.split(',').count() <= MAX_TRACESTATE_MEMBERS {
        return (header, 0);
    }
    let mut members: Vec<(&str, &str)> = header
        .split(',')
        .filter_map(|m| m.split_once('='))
        .collect();
    let mut dropped = members.len().saturating_sub(MAX_TRACESTATE_MEMBERS);
    members.truncate(MAX_TRACESTATE_MEMBERS);
    dropped += fit_tracestate(&mut members);
    let out = members
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    (out, dropped)
}

// ---------------------------------------------------------------------------------------
// baggage
// ---------------------------------------------------------------------------------------

/// RFC 7230 `tchar`: what a baggage key is made of.
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `baggage-octet`, less `%` (which starts an escape).
fn value_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x24 | 0x26..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            // Two hex digits: `from_str_radix` alone would take a sign.
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str, out: &mut String) {
    for &b in s.as_bytes() {
        if value_char(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
}

/// One `key=value;properties` member, decoded; `None` when it breaks the grammar.
fn baggage_member(member: &str) -> Option<(&str, String, &str)> {
    let (kv, props) = match member.split_once(';') {
        Some((kv, props)) => (kv, props.trim_matches([' ', '\t'])),
        None => (member, ""),
    };
    let (key, value) = kv.split_once('=')?;
    let (key, value) = (
        key.trim_matches([' ', '\t']),
        value.trim_matches([' ', '\t']),
    );
    if key.is_empty() || !key.bytes().all(token_char) {
        return None;
    }
    if !value.bytes().all(|b| value_char(b) || b == b'%') {
        return None;
    }
    let value = percent_decode(value)?;
    if props.bytes().any(|b| b.is_ascii_control() || b == b',') {
        return None;
    }
    Some((key, value, props))
}

/// The baggage that `values` (one per header, in order) carry within the bounds, and
/// how many entries were dropped: invalid, past [`MAX_BAGGAGE_ENTRIES`] (or the 64 that
/// `Baggage` holds), or past [`MAX_BAGGAGE_BYTES`] of header. Only whole entries are kept.
pub fn parse_baggage<'a, I>(values: I) -> (Baggage, usize)
where
    I: IntoIterator<Item = &'a str>,
{
    let mut baggage = Baggage::new();
    let (mut dropped, mut bytes, mut entries) = (0, 0_usize, 0);
    for value in values {
        for member in value.split(',') {
            // Each member costs its bytes and the comma before it.
            bytes = bytes.saturating_add(member.len() + usize::from(bytes > 0));
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            if bytes > MAX_BAGGAGE_BYTES || entries == MAX_BAGGAGE_ENTRIES {
                dropped += 1;
                continue;
            }
            entries += 1;
            let Some((key, value, props)) = baggage_member(member) else {
                dropped += 1;
                continue;
            };
            let before = baggage.len();
            let replaced = baggage
                .insert_with_metadata(key.to_owned(), value, props)
                .is_some();
            if baggage.len() == before && !replaced {
                // Refused by `Baggage`: over its 64 entries or its own byte limit.
                dropped += 1;
            }
        }
    }
    (baggage, dropped)
}

/// `baggage` as a header within the bounds, and how many entries were left out to fit
/// (whole entries only).
pub fn format_baggage(baggage: &Baggage) -> (String, usize) {
    let mut out = String::new();
    let (mut dropped, mut entries) = (0, 0);
    let mut member = String::new();
    for (key, (value, metadata)) in baggage {
        member.clear();
        member.push_str(key.as_str());
        member.push('=');
        percent_encode(value.as_str(), &mut member);
        let metadata = metadata.as_str().trim();
        if !metadata.is_empty() {
            member.push(';');
            member.push_str(metadata);
        }
        let extra = member.len() + usize::from(!out.is_empty());
        if entries == MAX_BAGGAGE_ENTRIES || out.len() + extra > MAX_BAGGAGE_BYTES {
            dropped += 1;
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&member);
        entries += 1;
    }
    (out, dropped)
}

// ---------------------------------------------------------------------------------------
// The propagators
// ---------------------------------------------------------------------------------------

fn all<'a>(extractor: &'a dyn Extractor, key: &str) -> Vec<&'a str> {
    extractor.get_all(key).unwrap_or_default()
}

/// W3C Trace Context within the bounds above: what `OTEL_PROPAGATORS=tracecontext`
/// installs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextPropagator;

impl TraceContextPropagator {
    /// The span context that the headers carry, if they carry a valid one. Rejected
    /// headers and dropped `tracestate` members are counted.
    pub fn extract_span_context(extractor: &dyn Extractor) -> Option<SpanContext> {
        let parents = all(extractor, TRACEPARENT);
        if parents.is_empty() {
            return None;
        }
        // Two traceparent headers cannot both be the caller's.
        let parent = match parents.as_slice() {
            [one] => parse_traceparent(one),
            _ => None,
        };
        let Some(p) = parent else {
            count(&TRACEPARENT_REJECTED, 1);
            return None;
        };
        let (state, dropped) = parse_tracestate(all(extractor, TRACESTATE));
        count(&TRACESTATE_DROPPED, dropped);
        Some(SpanContext::new(
            p.trace_id,
            p.parent_id,
            p.flags,
            true,
            state,
        ))
    }
}

static TRACE_CONTEXT_FIELDS: std::sync::LazyLock<[String; 2]> =
    std::sync::LazyLock::new(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]);
static BAGGAGE_FIELDS: std::sync::LazyLock<[String; 1]> =
    std::sync::LazyLock::new(|| [BAGGAGE.to_owned()]);

impl TextMapPropagator for TraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set(
            TRACEPARENT,
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags() & TraceFlags::SAMPLED
            ),
        );
        let (state, dropped) = format_tracestate(sc.trace_state());
        count(&TRACESTATE_DROPPED, dropped);
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match Self::extract_span_context(extractor) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&*TRACE_CONTEXT_FIELDS)
    }
}

/// W3C Baggage within the bounds above: what `OTEL_PROPAGATORS=baggage` installs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BaggagePropagator;

impl TextMapPropagator for BaggagePropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let baggage = cx.baggage();
        if baggage.is_empty() {
            return;
        }
        let (header, dropped) = format_baggage(baggage);
        count(&BAGGAGE_DROPPED, dropped);
        if !header.is_empty() {
            injector.set(BAGGAGE, header);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let values = all(extractor, BAGGAGE);
        if values.is_empty() {
            return cx.clone();
        }
        let (baggage, dropped) = parse_baggage(values);
        count(&BAGGAGE_DROPPED, dropped);
        if baggage.is_empty() {
            return cx.clone();
        }
        cx.with_baggage(baggage)
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&*BAGGAGE_FIELDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_encoded_value_survives_the_round_trip() {
        let (b, dropped) = parse_baggage(["k=a%20b%2Cc%25d;p=1"]);
        assert_eq!(dropped, 0);
        assert_eq!(
            b.get("k").map(|v| v.as_str().to_owned()),
            Some("a b,c%d".into())
        );
        let (header, dropped) = format_baggage(&b);
        assert_eq!((header.as_str(), dropped), ("k=a%20b%2Cc%25d;p=1", 0));
    }

    #[test]
    fn a_broken_escape_drops_only_its_entry() {
        let (b, dropped) = parse_baggage(["a=%zz,b=%e2%82,c=1,d=%+1"]);
        assert_eq!(dropped, 3);
        assert_eq!(b.len(), 1);
        assert!(b.get("c").is_some());
    }
}
