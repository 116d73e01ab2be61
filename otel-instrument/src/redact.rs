//! Redaction: the rules applied to everything that leaves the process.
//!
//! On by default. It runs where the data is exported, off the caller's thread:
//! the span exporter (attributes, event attributes such as `exception.message`,
//! the status message), the log exporter (bodies and attributes), the metric
//! encoder (every point's attribute values, so the labels given to the metric
//! macros too) and the writer of the fmt lines that `init!()` prints. An
//! unsampled call exports nothing and so pays nothing.
//!
//! Two kinds of rule:
//! - **by key**: an attribute whose key names a secret (`authorization`,
//!   `cookie`, `set-cookie`, `password`, `passwd`, `secret`, `token`,
//!   `api key`, `access key`, `private key`, `session`) has its string value
//!   replaced by `[REDACTED]`; in free text (a message, a fmt line) the same
//!   keys followed by `=` or `:` have their value replaced.
//! - **by value**: e-mail addresses, bearer tokens, JWTs, card numbers
//!   (Luhn-checked, with a card-network prefix), AWS access key ids, PEM
//!   private keys, the password of a URL's user-info, and sensitive query
//!   parameters are replaced wherever they appear, by `[REDACTED:<rule>]`
//!   (the URL keeps its scheme, user and host; a parameter keeps its name).
//!
//! Configure with [`Redaction`] (builder: `.redaction(..)`) or
//! `OTEL_INSTRUMENT_REDACT` (see [`Redaction::parse`]).

use std::borrow::Cow;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use regex::{Captures, Regex, RegexSet};

/// The variable that configures redaction.
pub const ENV: &str = "OTEL_INSTRUMENT_REDACT";

/// What a value redacted by key becomes.
pub const REDACTED: &str = "[REDACTED]";

/// The keys whose values are redacted by default, as words (compared with the
/// key lowercased and with `.`, `_`, `-` and spaces removed).
pub const DEFAULT_KEYS: &[&str] = &[
    "authorization",
    "cookie",
    "setcookie",
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "accesskey",
    "privatekey",
    "session",
];

/// The built-in value rules, in the order they are applied.
pub const DEFAULT_VALUE_RULES: &[&str] = &[
    "private_key",
    "url_userinfo",
    "query_param",
    "bearer",
    "jwt",
    "aws_access_key",
    "email",
    "card",
    "key_value",
];

const EXAMPLE: &str =
    "OTEL_INSTRUMENT_REDACT='-email;key:customer_ref;value:order_ref=ORD-[0-9]{8}'";

/// A redaction setting that cannot be used. It names where the setting came
/// from and shows a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {item:?} is not a redaction rule: {reason}; example: {EXAMPLE}")]
#[non_exhaustive]
pub struct RedactionError {
    /// `OTEL_INSTRUMENT_REDACT`, or the builder.
    pub origin: String,
    /// The rule as written.
    pub item: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The redaction settings: on with the built-in rules by default; rules can be
/// removed, keys and value rules added, or everything turned off.
///
/// ```
/// use otel_instrument::redact::Redaction;
///
/// let r = Redaction::default()
///     .without("email")                       // keep e-mail addresses
///     .key("customer_ref")                    // redact this attribute's values
///     .value("order_ref", r"ORD-[0-9]{8}")    // and this pattern anywhere
///     .compile()
///     .unwrap();
/// assert_eq!(r.redact("order ORD-12345678 for a@b.io"), "order [REDACTED:order_ref] for a@b.io");
/// assert_eq!(r.redact_attribute("customer_ref", "c-42").as_deref(), Some("[REDACTED]"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    enabled: bool,
    removed: Vec<String>,
    keys: Vec<String>,
    values: Vec<(String, String)>,
}

impl Default for Redaction {
    /// On, with every built-in rule.
    fn default() -> Self {
        Self {
            enabled: true,
            removed: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl Redaction {
    /// Redaction off: everything is exported as it is.
    pub fn off() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Turns redaction on or off, keeping the rules.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// Removes a built-in value rule ([`DEFAULT_VALUE_RULES`]) or, as
    /// `"key:<word>"`, a built-in key ([`DEFAULT_KEYS`]).
    pub fn without(mut self, rule: impl Into<String>) -> Self {
        self.removed.push(rule.into());
        self
    }

    /// Adds a key whose values are redacted (compared as the built-in keys are).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Adds a value rule: matches of `pattern` (a `regex` crate pattern)
    /// become `[REDACTED:<name>]`.
    pub fn value(mut self, name: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.values.push((name.into(), pattern.into()));
        self
    }

    /// Applies `OTEL_INSTRUMENT_REDACT` on top of these settings: rules
    /// separated by `;`:
    /// - `off` / `on`: turns redaction off or on;
    /// - `-<rule>`: removes a built-in value rule (`-email`), `-key:<word>` a
    ///   built-in key (`-key:session`);
    /// - `key:<word>`: adds a key;
    /// - `value:<name>=<regex>`: adds a value rule.
    ///
    /// # Errors
    /// A rule of none of these forms, an unknown built-in rule, or a pattern
    /// that does not compile, naming the variable.
    pub fn parse(mut self, spec: &str) -> Result<Self, RedactionError> {
        let err = |item: &str, reason: &str| RedactionError {
            origin: ENV.to_owned(),
            item: item.to_owned(),
            reason: reason.to_owned(),
        };
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            if item.eq_ignore_ascii_case("off") {
                self.enabled = false;
            } else if item.eq_ignore_ascii_case("on") {
                self.enabled = true;
            } else if let Some(rule) = item.strip_prefix('-') {
                self.removed.push(rule.trim().to_owned());
            } else if let Some(key) = item.strip_prefix("key:") {
                if compact(key).is_empty() {
                    return Err(err(item, "the key is empty"));
                }
                self.keys.push(key.trim().to_owned());
            } else if let Some(rule) = item.strip_prefix("value:") {
                let Some((name, pattern)) = rule.split_once('=') else {
                    return Err(err(item, "a value rule is `value:<name>=<regex>`"));
                };
                self.values
                    .push((name.trim().to_owned(), pattern.to_owned()));
            } else {
                return Err(err(
                    item,
                    "expected off, on, -<rule>, key:<word> or value:<name>=<regex>",
                ));
            }
        }
        self.compile_as(ENV)?;
        Ok(self)
    }

    /// Compiles the rules.
    ///
    /// # Errors
    /// An unknown built-in rule to remove, an empty name, or a pattern that does not compile.
    pub fn compile(&self) -> Result<Redactor, RedactionError> {
        self.compile_as("the builder's .redaction(..)")
    }

    fn compile_as(&self, origin: &str) -> Result<Redactor, RedactionError> {
        let err = |item: &str, reason: String| RedactionError {
            origin: origin.to_owned(),
            item: item.to_owned(),
            reason,
        };
        let mut keys: Vec<String> = DEFAULT_KEYS.iter().map(|k| (*k).to_owned()).collect();
        let mut builtin: Vec<&str> = DEFAULT_VALUE_RULES.to_vec();
        for removed in &self.removed {
            if let Some(key) = removed.strip_prefix("key:") {
                let key = compact(key);
                let before = keys.len();
                keys.retain(|k| *k != key);
                if keys.len() == before {
                    return Err(err(
                        removed,
                        format!("no built-in key {key:?}; the keys are {DEFAULT_KEYS:?}"),
                    ));
                }
            } else {
                let before = builtin.len();
                builtin.retain(|r| r != removed);
                if builtin.len() == before {
                    return Err(err(
                        removed,
                        format!("no built-in rule; the rules are {DEFAULT_VALUE_RULES:?}"),
                    ));
                }
            }
        }
        keys.extend(self.keys.iter().map(|k| compact(k)));
        let mut rules: Vec<ValueRule> = builtin
            .iter()
            .map(|name| builtin_rule(name, &keys))
            .collect();
        for (name, pattern) in &self.values {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(err(
                    name,
                    "a rule's name is letters, digits, `_` and `-`".to_owned(),
                ));
            }
            let regex = Regex::new(pattern)
                .map_err(|e| err(pattern, format!("the pattern does not compile: {e}")))?;
            if regex.is_match("") {
                return Err(err(
                    pattern,
                    "the pattern matches the empty string, so it would redact everywhere"
                        .to_owned(),
                ));
            }
            rules.push(ValueRule {
                name: name.clone(),
                regex,
                kind: Kind::Whole,
            });
        }
        let set = RegexSet::new(rules.iter().map(|r| r.regex.as_str()))
            .map_err(|e| err("(all rules)", e.to_string()))?;
        Ok(Redactor {
            enabled: self.enabled,
            keys,
            rules,
            set,
        })
    }
}

/// How a value rule replaces what it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The whole match becomes `[REDACTED:<name>]`.
    Whole,
    /// Group 1 (and group 2, if any) stay, the rest becomes `[REDACTED]`
    /// (URL user-info, query parameters, `key=value` in text).
    KeepPrefix,
    /// Group 1 (the scheme word) stays, the token becomes `[REDACTED:<name>]`.
    KeepScheme,
    /// A card number only when its digits pass the Luhn check and start like one.
    Card,
}

#[derive(Debug)]
struct ValueRule {
    name: String,
    regex: Regex,
    kind: Kind,
}

fn builtin_rule(name: &str, keys: &[String]) -> ValueRule {
    let (pattern, kind) = match name {
        "private_key" => (
            r"-----BEGIN[A-Z ]* PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z ]* PRIVATE KEY-----|\z)"
                .to_owned(),
            Kind::Whole,
        ),
        "url_userinfo" => (
            r"(?i)(\b[a-z][a-z0-9+.\-]*://[^:/?#@\s]*:)[^@/?#\s]+(@)".to_owned(),
            Kind::KeepPrefix,
        ),
        "query_param" => (
            r"(?i)([?&](?:access_token|refresh_token|id_token|token|api_key|apikey|key|password|passwd|pwd|secret|client_secret|signature|sig|session|sessionid|session_id|auth|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&#\s]+"
                .to_owned(),
            Kind::KeepPrefix,
        ),
        "bearer" => (
            r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*".to_owned(),
            Kind::KeepScheme,
        ),
        "jwt" => (
            r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*".to_owned(),
            Kind::Whole,
        ),
        "aws_access_key" => (
            r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}\b"
                .to_owned(),
            Kind::Whole,
        ),
        "email" => (
            r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}".to_owned(),
            Kind::Whole,
        ),
        "card" => (r"\b[0-9](?:[ \-]?[0-9]){12,18}\b".to_owned(), Kind::Card),
        "key_value" => {
            // A sensitive key in free text: `password=x`, `token: "x"`,
            // `Authorization: x`. The key may have a prefix or suffix
            // (`db_password`, `session.id`), and a coloured fmt line has ANSI
            // escapes around its `=`.
            let alternatives: Vec<String> = keys.iter().map(|k| loose_key(k)).collect();
            (
                format!(
                    r#"(?i)(\b[\w.\-]*(?:{})[\w.\-]*"?(?:\x1b\[[0-9;]*m)*\s?(?:=|:)(?:\x1b\[[0-9;]*m)*\s?(?:(?:bearer|basic)\s+)?)(?:"[^"]*"|'[^']*'|[^\s,;&'"]+)"#,
                    alternatives.join("|")
                ),
                Kind::KeepPrefix,
            )
        }
        _ => unreachable!("built-in rules are listed in DEFAULT_VALUE_RULES"),
    };
    ValueRule {
        name: name.to_owned(),
        regex: Regex::new(&pattern).expect("the built-in rules compile"),
        kind,
    }
}

/// `apikey` as a pattern that also matches `api_key`, `api-key`, `api.key`.
fn loose_key(compact_key: &str) -> String {
    let chars: Vec<String> = compact_key
        .chars()
        .map(|c| regex::escape(&c.to_string()))
        .collect();
    chars.join(r"[_.\-]?")
}

/// A key lowercased, with everything but letters and digits removed.
fn compact(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The Luhn check, and a card network's prefix (Visa 4, Mastercard 51-55 and
/// 22-27, Amex 34/37, Discover and UnionPay 6, Diners 30/36/38, JCB 35), so
/// an order id or a timestamp is not taken for a card.
fn is_card(digits: &[u8]) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let prefix = u32::from(digits[0]) * 10 + u32::from(digits[1]);
    let network = matches!(digits[0], 4 | 6)
        || (51..=55).contains(&prefix)
        || (22..=27).contains(&prefix)
        || matches!(prefix, 30 | 34 | 35 | 36 | 37 | 38);
    if !network {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Compiled rules.
#[derive(Debug)]
pub struct Redactor {
    enabled: bool,
    keys: Vec<String>,
    rules: Vec<ValueRule>,
    set: RegexSet,
}

impl Default for Redactor {
    /// The built-in rules.
    fn default() -> Self {
        Redaction::default()
            .compile()
            .expect("the built-in rules compile")
    }
}

impl Redactor {
    /// Whether redaction is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether values under `key` are redacted whole.
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let key = compact(key);
        self.keys.iter().any(|k| key.contains(k.as_str()))
    }

    /// `value` with every value rule applied; borrowed when nothing matched.
    pub fn redact<'a>(&self, value: &'a str) -> Cow<'a, str> {
        if !self.enabled || value.is_empty() {
            return Cow::Borrowed(value);
        }
        // `is_match` first: it allocates nothing, and most strings match no rule.
        if !self.set.is_match(value) {
            return Cow::Borrowed(value);
        }
        let matched = self.set.matches(value);
        let mut out = Cow::Borrowed(value);
        for i in matched.iter() {
            let rule = &self.rules[i];
            let replaced = match rule.kind {
                Kind::Whole => rule
                    .regex
                    .replace_all(&out, |_: &Captures<'_>| format!("[REDACTED:{}]", rule.name)),
                Kind::KeepPrefix => rule.regex.replace_all(&out, |c: &Captures<'_>| {
                    let suffix = c.get(2).map_or("", |m| m.as_str());
                    format!("{}{REDACTED}{suffix}", &c[1])
                }),
                Kind::KeepScheme => rule.regex.replace_all(&out, |c: &Captures<'_>| {
                    format!("{} [REDACTED:{}]", &c[1], rule.name)
                }),
                Kind::Card => rule.regex.replace_all(&out, |c: &Captures<'_>| {
                    let digits: Vec<u8> = c[0]
                        .bytes()
                        .filter(u8::is_ascii_digit)
                        .map(|b| b - b'0')
                        .collect();
                    if is_card(&digits) {
                        "[REDACTED:card]".to_owned()
                    } else {
                        c[0].to_owned()
                    }
                }),
            };
            if let Cow::Owned(s) = replaced {
                out = Cow::Owned(s);
            }
        }
        out
    }

    /// The exported form of a string attribute: `[REDACTED]` under a
    /// sensitive key, else the value rules' result. `None` when unchanged.
    pub fn redact_attribute(&self, key: &str, value: &str) -> Option<String> {
        if !self.enabled {
            return None;
        }
        if self.is_sensitive_key(key) {
            return (value != REDACTED).then(|| REDACTED.to_owned());
        }
        match self.redact(value) {
            Cow::Borrowed(_) => None,
            Cow::Owned(s) => Some(s),
        }
    }
}

static ACTIVE: LazyLock<RwLock<Arc<Redactor>>> =
    LazyLock::new(|| RwLock::new(Arc::new(Redactor::default())));

/// The rules the exporters apply now: the built-in ones until `Telemetry`
/// installs the configured ones.
pub fn active() -> Arc<Redactor> {
    ACTIVE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Makes `redactor` the rules every exporter applies (`Telemetry` does this at build).
pub fn set_active(redactor: Arc<Redactor>) {
    *ACTIVE.write().unwrap_or_else(PoisonError::into_inner) = redactor;
}

/// Redacts exported spans in place: names, attributes, event names and
/// attributes (an `exception.message`), link attributes and the status message.
pub(crate) fn spans(batch: &mut [opentelemetry_sdk::trace::SpanData]) {
    let r = active();
    if !r.enabled() {
        return;
    }
    for span in batch {
        if let Cow::Owned(s) = r.redact(&span.name) {
            span.name = Cow::Owned(s);
        }
        key_values(&r, &mut span.attributes);
        for event in &mut span.events.events {
            // A `tracing` event inside a sampled call is a span event named by its message.
            if let Cow::Owned(s) = r.redact(&event.name) {
                event.name = Cow::Owned(s);
            }
            key_values(&r, &mut event.attributes);
        }
        for link in &mut span.links.links {
            key_values(&r, &mut link.attributes);
        }
        if let opentelemetry::trace::Status::Error { description } = &mut span.status
            && let Cow::Owned(s) = r.redact(description)
        {
            *description = Cow::Owned(s);
        }
    }
}

fn key_values(r: &Redactor, attributes: &mut [opentelemetry::KeyValue]) {
    use opentelemetry::{Array, StringValue, Value};
    for kv in attributes {
        match &mut kv.value {
            Value::String(s) => {
                if let Some(new) = r.redact_attribute(kv.key.as_str(), s.as_str()) {
                    *s = StringValue::from(new);
                }
            }
            Value::Array(Array::String(items)) => {
                for s in items {
                    if let Some(new) = r.redact_attribute(kv.key.as_str(), s.as_str()) {
                        *s = StringValue::from(new);
                    }
                }
            }
            _ => {}
        }
    }
}

fn any_value(
    r: &Redactor,
    key: &str,
    value: &opentelemetry::logs::AnyValue,
) -> Option<opentelemetry::logs::AnyValue> {
    use opentelemetry::logs::AnyValue;
    match value {
        AnyValue::String(s) => r
            .redact_attribute(key, s.as_str())
            .map(|s| AnyValue::String(s.into())),
        AnyValue::ListAny(items) => {
            let changed: Vec<Option<AnyValue>> =
                items.iter().map(|v| any_value(r, key, v)).collect();
            changed.iter().any(Option::is_some).then(|| {
                AnyValue::ListAny(Box::new(
                    items
                        .iter()
                        .zip(changed)
                        .map(|(old, new)| new.unwrap_or_else(|| old.clone()))
                        .collect(),
                ))
            })
        }
        AnyValue::Map(map) => {
            let mut changed = false;
            let new: std::collections::HashMap<_, _> = map
                .iter()
                .map(|(k, v)| match any_value(r, k.as_str(), v) {
                    Some(n) => {
                        changed = true;
                        (k.clone(), n)
                    }
                    None => (k.clone(), v.clone()),
                })
                .collect();
            changed.then(|| AnyValue::Map(Box::new(new)))
        }
        _ => None,
    }
}

/// Makes fresh log records (the SDK's cannot have an attribute replaced).
#[derive(Debug)]
pub(crate) struct LogRedactor {
    logger: opentelemetry_sdk::logs::SdkLogger,
    _provider: opentelemetry_sdk::logs::SdkLoggerProvider,
}

impl Default for LogRedactor {
    fn default() -> Self {
        use opentelemetry::logs::LoggerProvider as _;
        // No processor: it only makes records.
        let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder().build();
        Self {
            logger: provider.logger("otel-instrument.redact"),
            _provider: provider,
        }
    }
}

impl LogRedactor {
    /// The record with its body and attributes redacted; `None` when nothing changes.
    pub(crate) fn record(
        &self,
        record: &opentelemetry_sdk::logs::SdkLogRecord,
    ) -> Option<opentelemetry_sdk::logs::SdkLogRecord> {
        use opentelemetry::logs::{LogRecord as _, Logger as _};
        let r = active();
        if !r.enabled() {
            return None;
        }
        let body = record.body().and_then(|b| any_value(&r, "", b));
        let attributes: Vec<_> = record
            .attributes_iter()
            .map(|(k, v)| any_value(&r, k.as_str(), v))
            .collect();
        if body.is_none() && attributes.iter().all(Option::is_none) {
            return None;
        }
        let mut out = self.logger.create_log_record();
        if let Some(name) = record.event_name() {
            out.set_event_name(name);
        }
        if let Some(target) = record.target() {
            out.set_target(target.clone());
        }
        if let Some(t) = record.timestamp() {
            out.set_timestamp(t);
        }
        if let Some(t) = record.observed_timestamp() {
            out.set_observed_timestamp(t);
        }
        if let Some(cx) = record.trace_context() {
            out.set_trace_context(cx.trace_id, cx.span_id, cx.trace_flags);
        }
        if let Some(s) = record.severity_text() {
            out.set_severity_text(s);
        }
        if let Some(s) = record.severity_number() {
            out.set_severity_number(s);
        }
        if let Some(b) = body.or_else(|| record.body().cloned()) {
            out.set_body(b);
        }
        for ((k, v), new) in record.attributes_iter().zip(attributes) {
            out.add_attribute(k.clone(), new.unwrap_or_else(|| v.clone()));
        }
        Some(out)
    }
}

/// Redacts an encoded-to-be metrics request: every data point's (and
/// exemplar's) attribute values, so the labels given to the metric macros too.
pub(crate) fn metrics_request(
    request: &mut opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let r = active();
    if !r.enabled() {
        return;
    }
    for rm in &mut request.resource_metrics {
        for sm in &mut rm.scope_metrics {
            for m in &mut sm.metrics {
                match &mut m.data {
                    Some(Data::Sum(d)) => {
                        let changed = number_points(&r, &mut d.data_points);
                        if changed {
                            merge_points(&mut d.data_points, |a, b| {
                                add_number(a, b);
                                a.start_time_unix_nano =
                                    a.start_time_unix_nano.min(b.start_time_unix_nano);
                                a.time_unix_nano = a.time_unix_nano.max(b.time_unix_nano);
                                a.exemplars.append(&mut b.exemplars);
                                true
                            });
                        }
                    }
                    Some(Data::Gauge(d)) => {
                        let changed = number_points(&r, &mut d.data_points);
                        if changed {
                            // A gauge's latest value stands for the merged series.
                            merge_points(&mut d.data_points, |a, b| {
                                if b.time_unix_nano >= a.time_unix_nano {
                                    std::mem::swap(a, b);
                                }
                                true
                            });
                        }
                    }
                    Some(Data::Histogram(d)) => {
                        let mut changed = false;
                        for p in &mut d.data_points {
                            changed |= proto_attributes(&r, &mut p.attributes);
                            for e in &mut p.exemplars {
                                proto_attributes(&r, &mut e.filtered_attributes);
                            }
                        }
                        if changed {
                            merge_points(&mut d.data_points, |a, b| {
                                if a.explicit_bounds != b.explicit_bounds
                                    || a.bucket_counts.len() != b.bucket_counts.len()
                                {
                                    return false;
                                }
                                a.count += b.count;
                                a.sum = match (a.sum, b.sum) {
                                    (Some(x), Some(y)) => Some(x + y),
                                    (x, y) => x.or(y),
                                };
                                for (x, y) in a.bucket_counts.iter_mut().zip(&b.bucket_counts) {
                                    *x += y;
                                }
                                a.min = match (a.min, b.min) {
                                    (Some(x), Some(y)) => Some(x.min(y)),
                                    (x, y) => x.or(y),
                                };
                                a.max = match (a.max, b.max) {
                                    (Some(x), Some(y)) => Some(x.max(y)),
                                    (x, y) => x.or(y),
                                };
                                a.start_time_unix_nano =
                                    a.start_time_unix_nano.min(b.start_time_unix_nano);
                                a.time_unix_nano = a.time_unix_nano.max(b.time_unix_nano);
                                a.exemplars.append(&mut b.exemplars);
                                true
                            });
                        }
                    }
                    // Not produced by this crate's instruments: redacted, not merged.
                    Some(Data::ExponentialHistogram(d)) => {
                        for p in &mut d.data_points {
                            proto_attributes(&r, &mut p.attributes);
                        }
                    }
                    Some(Data::Summary(d)) => {
                        for p in &mut d.data_points {
                            proto_attributes(&r, &mut p.attributes);
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// Redacts number points' attributes; whether any changed.
fn number_points(
    r: &Redactor,
    points: &mut [opentelemetry_proto::tonic::metrics::v1::NumberDataPoint],
) -> bool {
    let mut changed = false;
    for p in points {
        changed |= proto_attributes(r, &mut p.attributes);
        for e in &mut p.exemplars {
            proto_attributes(r, &mut e.filtered_attributes);
        }
    }
    changed
}

fn add_number(
    a: &mut opentelemetry_proto::tonic::metrics::v1::NumberDataPoint,
    b: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint,
) {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    a.value = match (a.value, b.value) {
        (Some(Value::AsInt(x)), Some(Value::AsInt(y))) => Some(Value::AsInt(x.wrapping_add(y))),
        (Some(Value::AsDouble(x)), Some(Value::AsDouble(y))) => Some(Value::AsDouble(x + y)),
        (Some(Value::AsInt(x)), Some(Value::AsDouble(y)))
        | (Some(Value::AsDouble(y)), Some(Value::AsInt(x))) => Some(Value::AsDouble(x as f64 + y)),
        (x, y) => x.or(y),
    };
}

/// Points whose attributes became equal through redaction are one series now:
/// `merge(a, b)` folds `b` into `a` (false: they cannot be merged, both stay),
/// so the backend never sees one series twice in a request (Prometheus would
/// refuse the duplicate).
fn merge_points<P: HasAttributes>(
    points: &mut Vec<P>,
    mut merge: impl FnMut(&mut P, &mut P) -> bool,
) {
    let mut out: Vec<P> = Vec::with_capacity(points.len());
    'points: for mut p in points.drain(..) {
        for kept in out.iter_mut() {
            if kept.attributes() == p.attributes() && merge(kept, &mut p) {
                continue 'points;
            }
        }
        out.push(p);
    }
    *points = out;
}

trait HasAttributes {
    fn attributes(&self) -> &[opentelemetry_proto::tonic::common::v1::KeyValue];
}

impl HasAttributes for opentelemetry_proto::tonic::metrics::v1::NumberDataPoint {
    fn attributes(&self) -> &[opentelemetry_proto::tonic::common::v1::KeyValue] {
        &self.attributes
    }
}

impl HasAttributes for opentelemetry_proto::tonic::metrics::v1::HistogramDataPoint {
    fn attributes(&self) -> &[opentelemetry_proto::tonic::common::v1::KeyValue] {
        &self.attributes
    }
}

fn proto_attributes(
    r: &Redactor,
    attributes: &mut [opentelemetry_proto::tonic::common::v1::KeyValue],
) -> bool {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let mut changed = false;
    for kv in attributes {
        if let Some(Value::StringValue(s)) = kv.value.as_mut().and_then(|v| v.value.as_mut())
            && let Some(new) = r.redact_attribute(&kv.key, s)
        {
            *s = new;
            changed = true;
        }
    }
    changed
}

/// Redacts the label values of a Prometheus scrape (the optional `/metrics`
/// endpoint), as [`metrics_request`] does for OTLP.
#[cfg(feature = "prometheus")]
pub(crate) fn prometheus_families(families: &mut [prometheus::proto::MetricFamily]) {
    let r = active();
    if !r.enabled() {
        return;
    }
    use prometheus::proto::MetricType;
    for family in families {
        let mut any = false;
        for metric in family.mut_metric() {
            let mut labels = metric.get_label().to_vec();
            let mut changed = false;
            for label in &mut labels {
                if let Some(new) = r.redact_attribute(label.name(), label.value()) {
                    label.set_value(new);
                    changed = true;
                }
            }
            if changed {
                metric.set_label(labels);
                any = true;
            }
        }
        if !any {
            continue;
        }
        // Series whose labels became equal are one series now: a scrape with
        // one series twice fails as a whole.
        let kind = family.get_field_type();
        let metrics = std::mem::take(family.mut_metric());
        let mut out: Vec<prometheus::proto::Metric> = Vec::with_capacity(metrics.len());
        let same = |a: &prometheus::proto::Metric, b: &prometheus::proto::Metric| {
            let (a, b) = (a.get_label(), b.get_label());
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.name() == y.name() && x.value() == y.value())
        };
        'metrics: for m in metrics {
            for kept in out.iter_mut() {
                if !same(kept, &m) {
                    continue;
                }
                match kind {
                    MetricType::COUNTER => {
                        let mut c = kept.get_counter().clone();
                        c.set_value(c.get_value() + m.get_counter().get_value());
                        kept.set_counter(c);
                        continue 'metrics;
                    }
                    MetricType::GAUGE => {
                        // The latest stands for the merged series.
                        *kept = m;
                        continue 'metrics;
                    }
                    MetricType::HISTOGRAM => {
                        let (a, b) = (kept.get_histogram(), m.get_histogram());
                        let bounds = |h: &prometheus::proto::Histogram| -> Vec<f64> {
                            h.get_bucket().iter().map(|b| b.upper_bound()).collect()
                        };
                        if bounds(a) != bounds(b) {
                            continue;
                        }
                        let mut h = a.clone();
                        h.set_sample_count(a.get_sample_count() + b.get_sample_count());
                        h.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
                        let buckets = a
                            .get_bucket()
                            .iter()
                            .zip(b.get_bucket())
                            .map(|(x, y)| {
                                let mut n = x.clone();
                                n.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
                                n
                            })
                            .collect();
                        h.set_bucket(buckets);
                        kept.set_histogram(h);
                        continue 'metrics;
                    }
                    _ => {}
                }
            }
            out.push(m);
        }
        *family.mut_metric() = out;
    }
}

/// A `tracing_subscriber` writer that redacts each formatted line before it
/// reaches `inner` (the fmt lines `init!()` prints go through one on stdout).
#[derive(Debug, Clone)]
pub struct RedactingWriter<M> {
    inner: M,
}

impl<M> RedactingWriter<M> {
    /// Wraps a `MakeWriter`.
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

/// One event's writer: fmt hands it the whole formatted line in one write,
/// which is redacted on its way to `inner` (no buffer of its own).
#[derive(Debug)]
pub struct RedactingLine<W: std::io::Write> {
    inner: W,
}

impl<W: std::io::Write> std::io::Write for RedactingLine<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let r = active();
        match std::str::from_utf8(b) {
            Ok(text) if r.enabled() => self.inner.write_all(r.redact(text).as_bytes())?,
            _ => self.inner.write_all(b)?,
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for RedactingWriter<M>
{
    type Writer = RedactingLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine {
            inner: self.inner.make_writer(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingLine {
            inner: self.inner.make_writer_for(meta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::default()
    }

    #[test]
    fn the_four_secrets_of_the_issue_are_redacted() {
        let msg = "charge for jane.doe@example.com with 4111 1111 1111 1111 failed: \
                   Authorization: Bearer abcDEF123.xyz_987 at postgres://app:hunter2@db:5432/orders";
        let out = r().redact(msg).into_owned();
        for secret in [
            "jane.doe@example.com",
            "4111 1111 1111 1111",
            "abcDEF123.xyz_987",
            "hunter2",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("[REDACTED:email]"), "{out}");
        assert!(out.contains("[REDACTED:card]"), "{out}");
        assert!(
            out.contains("postgres://app:[REDACTED]@db:5432/orders"),
            "{out}"
        );
        assert!(out.contains("Authorization: Bearer [REDACTED"), "{out}");
        assert_eq!(
            r().redact("sent Bearer abc.def"),
            "sent Bearer [REDACTED:bearer]"
        );
    }

    #[test]
    fn values_by_rule() {
        let r = r();
        let cases = [
            (
                "key AKIAIOSFODNN7EXAMPLE used",
                "key [REDACTED:aws_access_key] used",
            ),
            (
                "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig-nature_x",
                "t=[REDACTED:jwt]",
            ),
            (
                "GET /cb?code=1&access_token=abc123&x=2",
                "GET /cb?code=1&access_token=[REDACTED]&x=2",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- tail",
                "[REDACTED:private_key] tail",
            ),
            ("login password=hunter2 ok", "login password=[REDACTED] ok"),
            (
                r#"db_password: "p w" next"#,
                r#"db_password: [REDACTED] next"#,
            ),
            ("amex 3782 822463 10005", "amex [REDACTED:card]"),
            (
                "\x1b[3mpassword\x1b[0m\x1b[2m=\x1b[0m\"hunter2\" next",
                "\x1b[3mpassword\x1b[0m\x1b[2m=\x1b[0m[REDACTED] next",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact(input), want, "{input}");
        }
    }

    #[test]
    fn false_positives_stay() {
        let r = r();
        for s in [
            "order 1234567890123456 shipped", // fails Luhn
            "order 1000000000000008",         // passes Luhn, no card network
            "version 1.2.3-beta.4+build.567", // version string
            "at 2026-12-07T06:15:00.123456789Z",
            "ts 1733552100123456789", // nanosecond timestamp
            "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
            "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "ip 10.0.0.1:8080 uuid 123e4567-e89b-12d3-a456-426614174000",
            "https://example.com/path?page=2&sort=asc",
            "token_count 12 tokens",
        ] {
            assert_eq!(r.redact(s), s);
        }
    }

    #[test]
    fn keys_are_matched_loosely() {
        let r = r();
        for k in [
            "http.request.header.authorization",
            "Set-Cookie",
            "db.password",
            "API_KEY",
            "x-api-key",
            "aws.access_key_id",
            "private-key",
            "session.id",
            "refreshToken",
        ] {
            assert!(r.is_sensitive_key(k), "{k}");
        }
        for k in ["user.id", "http.route", "order.size", "code.function.name"] {
            assert!(!r.is_sensitive_key(k), "{k}");
        }
    }

    #[test]
    fn the_environment_adds_removes_and_turns_off() {
        let r = Redaction::default()
            .parse("-email; key:customer_ref; value:order_ref=ORD-[0-9]{8}; -key:session")
            .unwrap()
            .compile()
            .unwrap();
        assert_eq!(
            r.redact("a@b.io ORD-12345678"),
            "a@b.io [REDACTED:order_ref]"
        );
        assert!(r.is_sensitive_key("customer_ref"));
        assert!(!r.is_sensitive_key("session.id"));
        let off = Redaction::default()
            .parse("off")
            .unwrap()
            .compile()
            .unwrap();
        assert_eq!(off.redact("a@b.io"), "a@b.io");
        assert_eq!(off.redact_attribute("password", "x"), None);
    }

    #[test]
    fn a_bad_rule_is_a_clear_error() {
        for (spec, needle) in [
            ("value:x=(", "does not compile"),
            ("-nosuch", "no built-in rule"),
            ("-key:nosuch", "no built-in key"),
            ("bogus", "expected off"),
            ("value:x", "value:<name>=<regex>"),
            ("value:x=a*", "empty string"),
            ("value:a b=x", "a rule's name"),
        ] {
            let e = Redaction::default().parse(spec).unwrap_err().to_string();
            assert!(
                e.contains(ENV) && e.contains(needle) && e.contains("example"),
                "{e}"
            );
        }
    }
}
