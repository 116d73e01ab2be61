//! Code generation for `#[monitored]`.

use proc_macro2::{Delimiter, Group, Literal, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{Attribute, FnArg, LitStr, Pat, ReturnType, Signature, Type, Visibility};

use crate::attr::Args;

/// A function whose body is kept as raw tokens, so that a body that does not
/// parse is still instrumented and rustc reports its real error.
struct MaybeItemFn {
    attrs: Vec<Attribute>,
    vis: Visibility,
    sig: Signature,
    body: Group,
}

impl Parse for MaybeItemFn {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let sig: Signature = input.parse()?;
        let body: Group = input.parse()?;
        if body.delimiter() != Delimiter::Brace {
            return Err(syn::Error::new(body.span(), "expected a function body"));
        }
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the function"));
        }
        Ok(Self {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

/// Entry point: never panics; errors become `compile_error!` next to the
/// unchanged item so that no second error about a missing fn follows.
pub(crate) fn monitored(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = match syn::parse2::<Args>(args) {
        Ok(args) => args,
        Err(e) => {
            let e = e.to_compile_error();
            return quote!(#e #item);
        }
    };
    let func = match syn::parse2::<MaybeItemFn>(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            // Something that is not a fn at all gets a clear error; a fn whose
            // tokens do not parse is left to rustc as it is.
            if let Ok(other) = syn::parse2::<syn::Item>(item.clone())
                && !matches!(other, syn::Item::Fn(_) | syn::Item::Verbatim(_))
            {
                let e = syn::Error::new_spanned(
                    other.to_token_stream().into_iter().next(),
                    "#[monitored] goes on a fn or method",
                )
                .to_compile_error();
                return quote!(#e #item);
            }
            return item;
        }
    };
    match generate(args, func) {
        Ok(tokens) => tokens,
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#e #item)
        }
    }
}

/// Whether the return type is written as a `Result` (any path ending in `Result`).
fn returns_result(output: &ReturnType) -> bool {
    match output {
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
            _ => false,
        },
        ReturnType::Default => false,
    }
}

/// Whether the type mentions `impl Trait`, which a `let` cannot name.
fn mentions_impl(ty: &Type) -> bool {
    ty.to_token_stream()
        .into_iter()
        .any(|t| matches!(&t, proc_macro2::TokenTree::Ident(i) if i == "impl"))
        || ty.to_token_stream().to_string().contains("impl ")
}

fn generate(args: Args, func: MaybeItemFn) -> syn::Result<TokenStream> {
    let MaybeItemFn {
        attrs,
        vis,
        sig,
        body,
    } = func;
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span,
            "#[monitored] cannot go on a const fn",
        ));
    }
    let krate = args
        .krate
        .clone()
        .map(ToTokens::into_token_stream)
        .unwrap_or_else(|| quote!(::otel_instrument));
    let monitored = quote!(#krate::monitored);
    let support = quote!(#monitored::__macro_support);
    let tracing = quote!(#support::tracing);

    let fn_name = sig.ident.unraw().to_string();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&fn_name, sig.ident.span()));
    let is_result = returns_result(&sig.output);
    let err = match args.err {
        Some((true, span)) if !is_result => {
            return Err(syn::Error::new(
                span,
                "`err` needs a function whose return type is a `Result`",
            ));
        }
        Some((on, _)) => on,
        None => is_result,
    };
    let metrics = args.metrics.unwrap_or(true);
    let want_span = args.span.unwrap_or(true);
    let sample = match args.sample {
        Some(r) => {
            let lit = Literal::f64_suffixed(r);
            quote!(::core::option::Option::Some(#lit))
        }
        None => quote!(::core::option::Option::None),
    };
    let level = match args.level.map_or("info", |l| l.0) {
        "trace" => quote!(#tracing::Level::TRACE),
        "debug" => quote!(#tracing::Level::DEBUG),
        "warn" => quote!(#tracing::Level::WARN),
        "error" => quote!(#tracing::Level::ERROR),
        _ => quote!(#tracing::Level::INFO),
    };
    let kind = args.kind.map_or("internal", |k| k.0);

    // Parameters recorded on the span, by Debug, as #[tracing::instrument] does.
    let mut params = Vec::new();
    for input in &sig.inputs {
        if let FnArg::Typed(pt) = input
            && let Pat::Ident(pi) = &*pt.pat
        {
            params.push(pi.ident.clone());
        }
    }
    if let Some(skips) = &args.skip {
        for s in skips {
            // `self` is never recorded, so skipping it is always allowed.
            if s != "self" && !params.iter().any(|p| p.unraw() == s.unraw()) {
                return Err(syn::Error::new(
                    s.span(),
                    format!("`skip({s})`: this function has no parameter named `{s}`"),
                ));
            }
        }
    }
    let recorded: Vec<_> = if args.skip_all.is_some() {
        Vec::new()
    } else {
        params
            .iter()
            .filter(|p| {
                !args
                    .skip
                    .as_ref()
                    .is_some_and(|s| s.iter().any(|s| s.unraw() == p.unraw()))
            })
            .collect()
    };
    let param_fields = recorded.iter().map(|p| {
        let key = LitStr::new(&p.unraw().to_string(), p.span());
        quote!(#key = #tracing::field::debug(&#p))
    });
    let user_fields = args.fields.iter().flatten().map(|f| {
        let key = &f.name;
        match &f.value {
            Some((sigil, expr)) => quote!(#key = #sigil #expr),
            None => quote!(#key = #tracing::field::Empty),
        }
    });
    let param_attrs = recorded.iter().map(|p| {
        let key = LitStr::new(&p.unraw().to_string(), p.span());
        quote!(#support::KeyValue::new(#key, {
            #[allow(unused_imports)]
            use #support::{ViaDebug as _, ViaFieldValue as _};
            #[allow(clippy::needless_borrow)]
            let __otel_value = (&&#support::ParamProbe(&#p)).param_value();
            __otel_value
        }))
    });
    let user_attrs = args.fields.iter().flatten().filter_map(|f| {
        let key = &f.name;
        let (sigil, expr) = f.value.as_ref()?;
        let value = match sigil.as_ref().map(ToString::to_string).as_deref() {
            Some("?") => quote!(#support::debug_value(&(#expr))),
            Some("%") => quote!(#support::display_value(&(#expr))),
            _ => quote!(#support::value(#expr)),
        };
        Some(quote!(#support::KeyValue::new(#key, #value)))
    });
    let attrs_expr = quote! {
        |__otel_attrs: &mut ::std::vec::Vec<#support::KeyValue>| -> bool {
            // The OTel span honours the subscriber's maximum level. (A full
            // `enabled!` with per-target directives costs more than the rest of
            // a sampled call on a scoped dispatcher.)
            if !#tracing::level_enabled!(#level) {
                return false;
            }
            __otel_attrs.reserve(8);
            #(__otel_attrs.push(#user_attrs);)*
            #(__otel_attrs.push(#param_attrs);)*
            true
        }
    };
    let span_expr = if want_span {
        quote_spanned! {sig.ident.span()=>
            #tracing::span!(
                target: ::core::module_path!(),
                #level,
                #name,
                "code.function.name" = #name,
                "otel.kind" = #kind,
                "otel.status_code" = #tracing::field::Empty,
                "error.type" = #tracing::field::Empty,
                "error.category" = #tracing::field::Empty,
                "otel_instrument.monitored" = #tracing::field::Empty,
                #(#user_fields,)*
                #(#param_fields,)*
            )
        }
    } else {
        quote!(#tracing::Span::none())
    };

    // `fields(k)` without a value is recorded later through the tracing span.
    let deferred = args
        .fields
        .iter()
        .flatten()
        .any(|f| f.value.is_none())
        .then(|| quote!(.with_deferred_fields()));
    let callsite = quote_spanned! {sig.ident.span()=>
        static __OTEL_CALLSITE: #monitored::Callsite = #monitored::Callsite::new(
            #name,
            ::core::module_path!(),
            ::core::file!(),
            ::core::line!(),
            #kind,
            #sample,
            #metrics,
            #want_span,
        )#deferred;
    };
    let annotation = match &sig.output {
        ReturnType::Type(_, ty) if !mentions_impl(ty) => quote!(: #ty),
        _ => TokenStream::new(),
    };
    // A never-taken early return of the declared type fixes the closure's or
    // async block's return type, so a type error points at the user's code.
    let fake_return = match &sig.output {
        ReturnType::Type(_, ty) if !mentions_impl(ty) => quote_spanned! {ty.span()=>
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return, clippy::empty_loop)]
            if false {
                let __otel_fake_return: #ty = loop {};
                return __otel_fake_return;
            }
        },
        _ => TokenStream::new(),
    };
    let body_stream = body.stream();
    let body = Group::new(Delimiter::Brace, quote!(#fake_return #body_stream));
    let classify = quote! {
        if let ::core::result::Result::Err(__otel_error) = &__otel_ret {
            #[allow(unused_imports)]
            use #support::{ViaAny as _, ViaCategorize as _, ViaError as _};
            #[allow(clippy::needless_borrow)]
            let __otel_class = (&&&#support::Probe(__otel_error)).classify();
            __otel_call.fail(__otel_class);
        }
    };

    let block = if sig.asyncness.is_some() {
        let classify = if err { classify } else { TokenStream::new() };
        quote! {
            #callsite
            let mut __otel_call = #monitored::AsyncCall::start(&__OTEL_CALLSITE, || #span_expr, #attrs_expr);
            let __otel_fut = async move #body;
            let mut __otel_fut = ::core::pin::pin!(__otel_fut);
            let __otel_ret #annotation = ::core::future::poll_fn(|__otel_cx| {
                __otel_call.poll(__otel_fut.as_mut(), __otel_cx)
            })
            .await;
            #classify
            __otel_call.finish();
            __otel_ret
        }
    } else if err {
        quote! {
            #callsite
            let mut __otel_call = #monitored::Call::enter(&__OTEL_CALLSITE, || #span_expr, #attrs_expr);
            #[allow(clippy::redundant_closure_call)]
            let __otel_ret #annotation = (move || #body)();
            #classify
            __otel_ret
        }
    } else {
        quote! {
            #callsite
            let __otel_call = #monitored::Call::enter(&__OTEL_CALLSITE, || #span_expr, #attrs_expr);
            #body
        }
    };
    let block = Group::new(Delimiter::Brace, block);
    Ok(quote! {
        #(#attrs)*
        #vis #sig #block
    })
}
