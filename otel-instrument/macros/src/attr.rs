//! Parsing of `#[monitored(..)]` arguments.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitBool, LitStr, Path, Token};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(kind);
    syn::custom_keyword!(level);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(skip_all);
    syn::custom_keyword!(fields);
    syn::custom_keyword!(err);
    syn::custom_keyword!(sample);
    syn::custom_keyword!(slow);
    syn::custom_keyword!(metrics);
    syn::custom_keyword!(span);
    syn::custom_keyword!(off);
}

/// Every argument `#[monitored]` accepts, each at most once.
#[derive(Default)]
pub(crate) struct Args {
    pub name: Option<LitStr>,
    /// Where `name` was written: an impl block rejects it.
    pub name_kw: Option<Span>,
    pub kind: Option<(&'static str, Span)>,
    pub level: Option<(&'static str, Span)>,
    pub skip: Option<Vec<Ident>>,
    pub skip_all: Option<Span>,
    pub fields: Option<Vec<Field>>,
    pub err: Option<(bool, Span)>,
    pub sample: Option<f64>,
    /// `slow = "250ms"`, in nanoseconds.
    pub slow: Option<u64>,
    pub metrics: Option<bool>,
    pub span: Option<bool>,
    span_kw: Option<Span>,
    pub krate: Option<Path>,
    /// `#[monitored(off)]`: leave this fn (or a method of a monitored impl
    /// block) as it is. It takes no other argument.
    pub off: Option<Span>,
}

/// One `fields(..)` entry: `a.b = expr`, `a = ?expr`, `a = %expr`, `"a.b" = expr` or `a`.
pub(crate) struct Field {
    pub name: LitStr,
    pub value: Option<(Option<TokenStream>, Expr)>,
}

impl Parse for Field {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name = if input.peek(LitStr) {
            input.parse::<LitStr>()?
        } else {
            let parts = Punctuated::<Ident, Token![.]>::parse_separated_nonempty_with(
                input,
                Ident::parse_any,
            )?;
            let text: Vec<String> = parts.iter().map(|i| i.unraw().to_string()).collect();
            let span = parts.first().map_or_else(Span::call_site, Ident::span);
            LitStr::new(&text.join("."), span)
        };
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            let sigil = if input.peek(Token![?]) {
                Some(input.parse::<Token![?]>()?.into_token_stream())
            } else if input.peek(Token![%]) {
                Some(input.parse::<Token![%]>()?.into_token_stream())
            } else {
                None
            };
            Some((sigil, input.parse::<Expr>()?))
        } else {
            None
        };
        Ok(Field { name, value })
    }
}

fn duplicate(span: Span, what: &str) -> syn::Error {
    syn::Error::new(span, format!("duplicated argument `{what}`"))
}

fn parse_bool(input: ParseStream<'_>) -> syn::Result<bool> {
    input.parse::<Token![=]>()?;
    Ok(input.parse::<LitBool>()?.value)
}

/// Parses `= ident` or `= "string"` into one of `allowed`.
fn parse_choice(
    input: ParseStream<'_>,
    what: &str,
    allowed: &[&'static str],
) -> syn::Result<(&'static str, Span)> {
    input.parse::<Token![=]>()?;
    let (value, span) = if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        (lit.value(), lit.span())
    } else {
        let ident = Ident::parse_any(input)?;
        (ident.to_string(), ident.span())
    };
    let lower = value.to_ascii_lowercase();
    match allowed.iter().find(|a| **a == lower) {
        Some(a) => Ok((a, span)),
        None => Err(syn::Error::new(
            span,
            format!(
                "unknown {what} `{value}`; expected one of {}",
                allowed.join(", ")
            ),
        )),
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let look = input.lookahead1();
            if look.peek(kw::name) {
                let k: kw::name = input.parse()?;
                if args.name.is_some() {
                    return Err(duplicate(k.span, "name"));
                }
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(lit.span(), "`name` must not be empty"));
                }
                args.name = Some(lit);
                args.name_kw = Some(k.span);
            } else if look.peek(kw::kind) {
                let k: kw::kind = input.parse()?;
                if args.kind.is_some() {
                    return Err(duplicate(k.span, "kind"));
                }
                args.kind = Some(parse_choice(
                    input,
                    "kind",
                    &["server", "client", "internal", "producer", "consumer"],
                )?);
            } else if look.peek(kw::level) {
                let k: kw::level = input.parse()?;
                if args.level.is_some() {
                    return Err(duplicate(k.span, "level"));
                }
                args.level = Some(parse_choice(
                    input,
                    "level",
                    &["trace", "debug", "info", "warn", "error"],
                )?);
            } else if look.peek(kw::skip_all) {
                let k: kw::skip_all = input.parse()?;
                if args.skip_all.is_some() {
                    return Err(duplicate(k.span, "skip_all"));
                }
                if args.skip.is_some() {
                    return Err(syn::Error::new(
                        k.span,
                        "`skip_all` and `skip(..)` together: use one",
                    ));
                }
                args.skip_all = Some(k.span);
            } else if look.peek(kw::skip) {
                let k: kw::skip = input.parse()?;
                if args.skip.is_some() {
                    return Err(duplicate(k.span, "skip"));
                }
                if args.skip_all.is_some() {
                    return Err(syn::Error::new(
                        k.span,
                        "`skip_all` and `skip(..)` together: use one",
                    ));
                }
                let content;
                syn::parenthesized!(content in input);
                let names = Punctuated::<Ident, Token![,]>::parse_terminated_with(
                    &content,
                    Ident::parse_any,
                )?;
                args.skip = Some(names.into_iter().collect());
            } else if look.peek(kw::fields) {
                let k: kw::fields = input.parse()?;
                if args.fields.is_some() {
                    return Err(duplicate(k.span, "fields"));
                }
                let content;
                syn::parenthesized!(content in input);
                let fields = Punctuated::<Field, Token![,]>::parse_terminated(&content)?;
                args.fields = Some(fields.into_iter().collect());
            } else if look.peek(kw::err) {
                let k: kw::err = input.parse()?;
                if args.err.is_some() {
                    return Err(duplicate(k.span, "err"));
                }
                let on = if input.peek(Token![=]) {
                    parse_bool(input)?
                } else {
                    true
                };
                args.err = Some((on, k.span));
            } else if look.peek(kw::sample) {
                let k: kw::sample = input.parse()?;
                if args.sample.is_some() {
                    return Err(duplicate(k.span, "sample"));
                }
                input.parse::<Token![=]>()?;
                let lit: syn::Lit = input.parse()?;
                let ratio = match &lit {
                    syn::Lit::Float(f) => f.base10_parse::<f64>()?,
                    syn::Lit::Int(i) => i.base10_parse::<f64>()?,
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            "`sample` takes a ratio between 0 and 1, such as `sample = 0.25`",
                        ));
                    }
                };
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`sample` must be between 0 and 1, such as `sample = 0.25`",
                    ));
                }
                args.sample = Some(ratio);
            } else if look.peek(kw::slow) {
                let k: kw::slow = input.parse()?;
                if args.slow.is_some() {
                    return Err(duplicate(k.span, "slow"));
                }
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                args.slow = Some(parse_duration(&lit.value()).ok_or_else(|| {
                    syn::Error::new_spanned(
                        &lit,
                        "`slow` takes a positive duration with its unit (ns, us, ms, s or m), \
                         such as `slow = \"250ms\"`",
                    )
                })?);
            } else if look.peek(kw::metrics) {
                let k: kw::metrics = input.parse()?;
                if args.metrics.is_some() {
                    return Err(duplicate(k.span, "metrics"));
                }
                args.metrics = Some(parse_bool(input)?);
            } else if look.peek(kw::span) {
                let k: kw::span = input.parse()?;
                if args.span.is_some() {
                    return Err(duplicate(k.span, "span"));
                }
                args.span = Some(parse_bool(input)?);
                args.span_kw = Some(k.span);
            } else if look.peek(kw::off) {
                let k: kw::off = input.parse()?;
                if args.off.is_some() {
                    return Err(duplicate(k.span, "off"));
                }
                args.off = Some(k.span);
            } else if look.peek(Token![crate]) {
                let k: Token![crate] = input.parse()?;
                if args.krate.is_some() {
                    return Err(duplicate(k.span, "crate"));
                }
                input.parse::<Token![=]>()?;
                args.krate = Some(input.call(Path::parse_mod_style)?);
            } else if input.peek(Ident::peek_any) {
                let unknown = Ident::parse_any(input)?;
                return Err(syn::Error::new(
                    unknown.span(),
                    format!(
                        "unknown argument `{unknown}`; expected one of name, kind, level, skip, \
                         skip_all, fields, err, sample, slow, metrics, span, crate, off"
                    ),
                ));
            } else {
                return Err(look.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        if let Some(off) = args.off
            && (args.name.is_some()
                || args.kind.is_some()
                || args.level.is_some()
                || args.skip.is_some()
                || args.skip_all.is_some()
                || args.fields.is_some()
                || args.err.is_some()
                || args.sample.is_some()
                || args.slow.is_some()
                || args.metrics.is_some()
                || args.span.is_some()
                || args.krate.is_some())
        {
            return Err(syn::Error::new(
                off,
                "`off` leaves the function unmonitored; it takes no other argument",
            ));
        }
        if args.metrics == Some(false) && args.span == Some(false) {
            return Err(syn::Error::new(
                args.span_kw.unwrap_or_else(Span::call_site),
                "`metrics = false` with `span = false` leaves nothing to monitor",
            ));
        }
        Ok(args)
    }
}

/// A duration with its unit, in nanoseconds: `250ms`, `1.5s`, `500us`; None if
/// it is not one, or not positive. (`OTEL_INSTRUMENT_TAIL_SLOW` takes the same.)
fn parse_duration(text: &str) -> Option<u64> {
    let v = text.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        _ => return None,
    };
    let nanos = number.parse::<f64>().ok()? * scale;
    (1.0..1e18).contains(&nanos).then_some(nanos as u64)
}
