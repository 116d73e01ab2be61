//! Code generation for `#[monitored]`.

use proc_macro2::{Delimiter, Group, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::visit_mut::VisitMut;
use syn::{
    Attribute, Block, Expr, ExprAsync, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn,
    ItemImpl, LitStr, Pat, PathArguments, ReturnType, Signature, Stmt, Token, Type, TypeParamBound,
    Visibility,
};

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

/// A fn without a body: a trait's required method (or a foreign fn).
struct Bodiless {
    sig: Signature,
}

impl Parse for Bodiless {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        input.call(Attribute::parse_outer)?;
        input.parse::<Visibility>()?;
        let sig: Signature = input.parse()?;
        input.parse::<Token![;]>()?;
        Ok(Self { sig })
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
    if args.off.is_some() {
        return item;
    }
    let result = if let Ok(func) = syn::parse2::<MaybeItemFn>(item.clone()) {
        generate(&args, func, true)
    } else if let Ok(decl) = syn::parse2::<Bodiless>(item.clone()) {
        // Nothing would run in a declaration; saying nothing would leave the
        // user believing the trait's implementations are monitored.
        Err(syn::Error::new(
            decl.sig.ident.span(),
            "#[monitored] needs a function body; put it on the impl's method",
        ))
    } else if let Ok(block) = syn::parse2::<ItemImpl>(item.clone()) {
        expand_impl(&args, block)
    } else {
        // Something that is not a fn at all gets a clear error; a fn (or an impl
        // block) whose tokens do not parse is left to rustc as it is.
        match syn::parse2::<syn::Item>(item.clone()) {
            Ok(other) if !matches!(other, syn::Item::Fn(_) | syn::Item::Verbatim(_)) => {
                Err(syn::Error::new_spanned(
                    other.to_token_stream().into_iter().next(),
                    "#[monitored] goes on a fn, a method or an impl block",
                ))
            }
            _ => return item,
        }
    };
    match result {
        Ok(tokens) => tokens,
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#e #item)
        }
    }
}

/// Whether an attribute is `#[monitored]` or `#[some::path::monitored(..)]`.
fn is_monitored(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "monitored")
}

/// `#[monitored(..)]` on an impl block: every method with a body, with the
/// block's arguments. A method's own `#[monitored(..)]` replaces them (and
/// `#[monitored(off)]` leaves the method alone); const fns are left alone,
/// since they cannot be monitored.
fn expand_impl(args: &Args, mut block: ItemImpl) -> syn::Result<TokenStream> {
    if let Some(span) = args.name_kw {
        return Err(syn::Error::new(
            span,
            "`name` on an impl block would give every method the same name; \
             put `#[monitored(name = ..)]` on the method",
        ));
    }
    let methods = block.items.iter().filter_map(|item| match item {
        ImplItem::Fn(f) if takes_block_args(f) => Some(&f.sig),
        _ => None,
    });
    // `skip(x)` on a block skips `x` wherever it is a parameter; a name that
    // no method has is a typo.
    if let Some(skips) = &args.skip {
        let names: Vec<Ident> = methods.flat_map(param_names).collect();
        for s in skips {
            if s != "self" && !names.iter().any(|p| p.unraw() == s.unraw()) {
                return Err(syn::Error::new(
                    s.span(),
                    format!(
                        "`skip({s})`: no method of this impl block has a parameter named `{s}`"
                    ),
                ));
            }
        }
    }
    for item in &mut block.items {
        let ImplItem::Fn(f) = item else { continue };
        if !takes_block_args(f) {
            continue;
        }
        let Some(TokenTree::Group(body)) = f.block.to_token_stream().into_iter().next() else {
            continue;
        };
        let func = MaybeItemFn {
            attrs: f.attrs.clone(),
            vis: f.vis.clone(),
            sig: f.sig.clone(),
            body,
        };
        *item = ImplItem::Verbatim(generate(args, func, false)?);
    }
    Ok(block.into_token_stream())
}

/// Whether a method of a monitored impl block is monitored with the block's
/// arguments: not when it has its own `#[monitored(..)]`, not a const fn (it
/// cannot be), not a `default fn` (specialization, nightly).
fn takes_block_args(f: &ImplItemFn) -> bool {
    f.sig.constness.is_none() && f.defaultness.is_none() && !f.attrs.iter().any(is_monitored)
}

/// The names of the parameters bound to a plain identifier.
fn param_names(sig: &Signature) -> Vec<Ident> {
    sig.inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) => Some(pi.ident.clone()),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect()
}

/// What the body returns, as far as the generated code needs to know.
enum Output {
    /// `()`: nothing to classify.
    Unit,
    /// `!`: the body never returns, so nothing after it may be generated.
    Never,
    /// A type, with every `impl Trait` in it replaced by `_` so that it can
    /// annotate a `let`; `None` when nothing of it is left to annotate.
    Type(Option<Box<Type>>),
}

impl Output {
    fn of(ty: Option<&Type>) -> Self {
        let Some(ty) = ty else {
            return Self::Type(None);
        };
        match ty {
            Type::Never(_) => Self::Never,
            Type::Tuple(t) if t.elems.is_empty() => Self::Unit,
            Type::Paren(p) => Self::of(Some(&p.elem)),
            _ => {
                let mut ty = ty.clone();
                ImplToInfer.visit_type_mut(&mut ty);
                if matches!(ty, Type::Infer(_)) {
                    Self::Type(None)
                } else {
                    Self::Type(Some(Box::new(ty)))
                }
            }
        }
    }

    fn of_return(output: &ReturnType) -> Self {
        match output {
            ReturnType::Default => Self::Unit,
            ReturnType::Type(_, ty) => Self::of(Some(ty)),
        }
    }
}

/// Replaces every `impl Trait` with `_`: a `let` cannot name an opaque type,
/// but `Result<_, AppError>` still pins the error type, which the error probe
/// needs to know before it picks a classifier.
struct ImplToInfer;

impl VisitMut for ImplToInfer {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::ImplTrait(it) = ty {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: Token![_](it.impl_token.span),
            });
        } else {
            syn::visit_mut::visit_type_mut(self, ty);
        }
    }
}

/// The `T` of the `Future<Output = T>` somewhere in a return type such as
/// `Pin<Box<dyn Future<Output = T> + Send + 'async_trait>>`.
fn future_output(ty: &Type) -> Option<&Type> {
    fn in_path(path: &syn::Path) -> Option<&Type> {
        for seg in &path.segments {
            let PathArguments::AngleBracketed(args) = &seg.arguments else {
                continue;
            };
            for arg in &args.args {
                match arg {
                    GenericArgument::AssocType(a) if a.ident == "Output" => return Some(&a.ty),
                    GenericArgument::Type(t) => {
                        if let Some(found) = future_output(t) {
                            return Some(found);
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }
    match ty {
        Type::Path(p) => in_path(&p.path),
        Type::TraitObject(t) => t.bounds.iter().find_map(|b| match b {
            TypeParamBound::Trait(t) => in_path(&t.path),
            _ => None,
        }),
        Type::ImplTrait(t) => t.bounds.iter().find_map(|b| match b {
            TypeParamBound::Trait(t) => in_path(&t.path),
            _ => None,
        }),
        Type::Paren(p) => future_output(&p.elem),
        Type::Group(g) => future_output(&g.elem),
        _ => None,
    }
}

/// A sync fn whose body ends in `Box::pin(async move { .. })`: what
/// `#[async_trait]` makes of an `async fn` (async-trait 0.1 puts the whole body,
/// parameter moves included, inside the async block), and what hand-written
/// boxed-future methods look like. The async block is the real body.
struct BoxedAsync {
    before: Vec<Stmt>,
    pin: Expr,
    block: ExprAsync,
}

impl BoxedAsync {
    fn find(body: &Group) -> Option<Self> {
        let block: Block = syn::parse2(TokenTree::Group(body.clone()).into()).ok()?;
        let mut before = block.stmts;
        let Some(Stmt::Expr(Expr::Call(call), None)) = before.pop() else {
            return None;
        };
        let Expr::Path(path) = &*call.func else {
            return None;
        };
        let segments: Vec<String> = path
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        if !segments.ends_with(&["Box".to_owned(), "pin".to_owned()]) || call.args.len() != 1 {
            return None;
        }
        let Some(Expr::Async(block)) = call.args.first() else {
            return None;
        };
        block.capture?;
        Some(Self {
            before,
            pin: (*call.func).clone(),
            block: block.clone(),
        })
    }
}

/// Gives every token the span `span` (a caret on a user's argument).
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut t| {
            if let TokenTree::Group(g) = &t {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                t = TokenTree::Group(group);
            } else {
                t.set_span(span);
            }
            t
        })
        .collect()
}

/// Whether an expression names a place (a variable, a field, an element): its
/// field value is taken by reference, so an owned parameter stays usable.
fn is_place(expr: &Expr) -> bool {
    match expr {
        Expr::Path(_) | Expr::Field(_) | Expr::Index(_) => true,
        Expr::Unary(u) => matches!(u.op, syn::UnOp::Deref(_)),
        Expr::Paren(p) => is_place(&p.expr),
        Expr::Group(g) => is_place(&g.expr),
        _ => false,
    }
}

/// Generates one monitored fn. `check_skip`: reject `skip(x)` for an `x` this
/// fn lacks (an impl block checks its `skip` against all its methods instead).
fn generate(args: &Args, func: MaybeItemFn, check_skip: bool) -> syn::Result<TokenStream> {
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
    let params = param_names(&sig);
    if check_skip && let Some(skips) = &args.skip {
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

    // Each `fields(..)` value is computed at most once per call, lazily (only
    // when the span or the sampled OTel span wants it), into a cell that both
    // read by reference. A place (`s`, `self.id`) is borrowed, not moved, so an
    // owned parameter stays usable in the body.
    let mut field_cells = TokenStream::new();
    let mut user_fields = Vec::new();
    let mut user_attrs = Vec::new();
    for (i, f) in args.fields.iter().flatten().enumerate() {
        let key = &f.name;
        let Some((sigil, expr)) = &f.value else {
            user_fields.push(quote!(#key = #tracing::field::Empty));
            continue;
        };
        let cell = format_ident!("__otel_field_{i}");
        field_cells.extend(if is_place(expr) {
            quote! {
                let #cell = ::core::cell::OnceCell::new();
                let #cell = || *#cell.get_or_init(|| &(#expr));
            }
        } else {
            quote! {
                let #cell = ::core::cell::OnceCell::new();
                let #cell = || #cell.get_or_init(|| #expr);
            }
        });
        user_fields.push(quote!(#key = #sigil #cell()));
        let value = match sigil.as_ref().map(ToString::to_string).as_deref() {
            Some("?") => quote!(#support::debug_value(#cell())),
            Some("%") => quote!(#support::display_value(#cell())),
            _ => quote!(#support::value(::core::clone::Clone::clone(#cell()))),
        };
        user_attrs.push(quote!(#support::KeyValue::new(#key, #value)));
    }
    // Exactly the room for the call's own attributes (the native recorder
    // keeps them as they are, and adds `code.*` on its own thread); nothing at
    // all for a call without any.
    let reserve = if user_attrs.is_empty() && recorded.is_empty() {
        quote!()
    } else {
        let n = user_attrs.len() + recorded.len();
        quote!(__otel_attrs.reserve_exact(#n);)
    };
    let attrs_expr = quote! {
        |__otel_attrs: &mut ::std::vec::Vec<#support::KeyValue>| -> bool {
            // The OTel span honours the subscriber's maximum level. (A full
            // `enabled!` with per-target directives costs more than the rest of
            // a sampled call on a scoped dispatcher.)
            if !#tracing::level_enabled!(#level) {
                return false;
            }
            #reserve
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
    // The cells live in a block of their own, so that nothing of them is held
    // across the body (or an `.await`, which would make the future `!Send`).
    let open = |start: TokenStream| {
        if field_cells.is_empty() {
            start
        } else {
            quote!({ #field_cells #start })
        }
    };
    // A metrics-only call has a guard of its own: no span, no trace, no
    // record (its fields are still checked, never evaluated).
    let (enter, start) = if want_span {
        (
            open(quote!(#monitored::Call::enter(&__OTEL_CALLSITE, || #span_expr, #attrs_expr))),
            open(
                quote!(#monitored::AsyncCall::start(&__OTEL_CALLSITE, || #span_expr, #attrs_expr)),
            ),
        )
    } else {
        (
            open(quote!(#monitored::MetricsCall::enter(&__OTEL_CALLSITE))),
            open(quote!(#monitored::AsyncMetricsCall::start(&__OTEL_CALLSITE))),
        )
    };

    // `fields(k)` without a value is recorded later through the tracing span.
    let deferred = args
        .fields
        .iter()
        .flatten()
        .any(|f| f.value.is_none())
        .then(|| quote!(.with_deferred_fields()));
    let slow = args.slow.map(|nanos| quote!(.with_slow(#nanos)));
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
        )#deferred #slow;
    };

    // An explicit `err` demands a `Fallible` return type (a clear error
    // otherwise); by default any `Fallible` return is classified and anything
    // else is `ok`, decided by the types, not by how the return type is spelt.
    let classify = |output: &Output| -> TokenStream {
        if !matches!(output, Output::Type(_)) {
            return TokenStream::new();
        }
        let require = match args.err {
            Some((false, _)) => return TokenStream::new(),
            // The caret of a wrong `err` goes on `err`.
            Some((true, span)) => respan(quote!(#support::require_fallible(&__otel_ret);), span),
            None => TokenStream::new(),
        };
        quote! {{
            #[allow(unused_imports)]
            use #support::{ViaAny as _, ViaCategorize as _, ViaError as _};
            #[allow(unused_imports)]
            use #support::{ViaFallible as _, ViaInfallible as _};
            #[allow(unused_imports)]
            use #support::{ViaDisplay as _, ViaNoDisplay as _};
            #require
            #[allow(clippy::needless_borrow)]
            let __otel_failure = (&&#support::Ret(&__otel_ret)).failure();
            if let ::core::option::Option::Some(__otel_error) = __otel_failure {
                #[allow(clippy::needless_borrow)]
                let __otel_class = (&&&#support::Probe(__otel_error)).classify();
                #[allow(clippy::needless_borrow)]
                let __otel_message = (&&#support::Message(__otel_error)).message();
                __otel_call.fail_with(__otel_class, __otel_message);
            }
        }}
    };
    let annotation = |output: &Output| match output {
        Output::Type(Some(ty)) => quote!(: #ty),
        _ => TokenStream::new(),
    };
    // A never-taken early return of the declared type fixes the closure's or
    // async block's return type, so a type error points at the user's code.
    let with_fake_return = |body: &Group, output: &Output| -> Group {
        let fake_return = match output {
            Output::Type(Some(ty)) => quote_spanned! {ty.span()=>
                #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::needless_return, clippy::empty_loop)]
                if false {
                    let __otel_fake_return: #ty = loop {};
                    return __otel_fake_return;
                }
            },
            _ => TokenStream::new(),
        };
        let stream = body.stream();
        let mut group = Group::new(Delimiter::Brace, quote!(#fake_return #stream));
        group.set_span(body.span());
        group
    };
    // The body of an async call: polled with the call's frame current, then
    // classified. `-> !` ends in the poll itself, so no code follows it.
    let async_block = |body: Group, output: &Output| -> TokenStream {
        let poll = quote! {
            #callsite
            let mut __otel_call = #start;
            let __otel_fut = async move #body;
            let mut __otel_fut = ::core::pin::pin!(__otel_fut);
        };
        let wait = quote! {
            ::core::future::poll_fn(|__otel_cx| {
                __otel_call.poll(__otel_fut.as_mut(), __otel_cx)
            })
            .await
        };
        if matches!(output, Output::Never) {
            return quote!(#poll #wait);
        }
        let annotation = annotation(output);
        let classify = classify(output);
        quote! {
            #poll
            let __otel_ret #annotation = #wait;
            #classify
            __otel_call.finish();
            __otel_ret
        }
    };

    // `#[async_trait]` ran first when a sync fn ends in `Box::pin(async move
    // {..})`: the future's body is what is measured, so the call spans the
    // awaited work and the future's output is classified.
    let boxed = if sig.asyncness.is_none() {
        BoxedAsync::find(&body)
    } else {
        None
    };
    let output = match (&boxed, &sig.output) {
        (Some(_), ReturnType::Type(_, ty)) => Output::of(future_output(ty)),
        (Some(_), ReturnType::Default) => Output::Type(None),
        (None, output) => Output::of_return(output),
    };
    if let Some((true, span)) = args.err
        && matches!(output, Output::Unit | Output::Never)
    {
        return Err(syn::Error::new(
            span,
            "`err` needs a return type that can fail: a `Result`, or a type that implements \
             `otel_instrument::Fallible`",
        ));
    }
    let block = if sig.asyncness.is_some() {
        let body = with_fake_return(&body, &output);
        async_block(body, &output)
    } else if let Some(BoxedAsync { before, pin, block }) = boxed {
        let inner = match block.block.to_token_stream().into_iter().next() {
            Some(TokenTree::Group(g)) => g,
            _ => Group::new(Delimiter::Brace, TokenStream::new()),
        };
        let instrumented = async_block(inner, &output);
        let async_attrs = &block.attrs;
        quote! {
            #(#before)*
            #pin(#(#async_attrs)* async move { #instrumented })
        }
    } else {
        let classify = classify(&output);
        if classify.is_empty() {
            quote! {
                #callsite
                let __otel_call = #enter;
                #body
            }
        } else {
            // The body runs in a closure so that its `return`s and `?`s come
            // back here; `run_body` makes it `FnOnce`, so a body may return a
            // borrow of a `&mut` parameter.
            let annotation = annotation(&output);
            let body = with_fake_return(&body, &output);
            quote! {
                #callsite
                let mut __otel_call = #enter;
                let __otel_ret #annotation = #support::run_body(move || #body);
                #classify
                __otel_ret
            }
        }
    };
    let block = Group::new(Delimiter::Brace, block);
    Ok(quote! {
        #(#attrs)*
        #vis #sig #block
    })
}
