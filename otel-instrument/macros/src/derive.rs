//! `#[derive(Categorize)]`: parses `#[category(..)]` on the type and its
//! variants and generates `otel_instrument::errors::Categorize`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Fields, Ident, Index, Item, Member, Path, Token};

/// The names `#[category(..)]` accepts (the `error.category` values) and the
/// `ErrorCategory` variant each stands for. A pass case of the UI tests uses
/// every one, so a name here without a variant there fails to compile.
const CATEGORIES: &[(&str, &str)] = &[
    ("cancelled", "Cancelled"),
    ("invalid_argument", "InvalidArgument"),
    ("not_found", "NotFound"),
    ("already_exists", "AlreadyExists"),
    ("permission_denied", "PermissionDenied"),
    ("unauthenticated", "Unauthenticated"),
    ("resource_exhausted", "ResourceExhausted"),
    ("failed_precondition", "FailedPrecondition"),
    ("aborted", "Aborted"),
    ("timeout", "Timeout"),
    ("unavailable", "Unavailable"),
    ("unimplemented", "Unimplemented"),
    ("internal", "Internal"),
    ("data_loss", "DataLoss"),
    ("unknown", "Unknown"),
];

/// How one variant (or the struct, or by default every variant) is classified.
enum Rule {
    /// A fixed category: the `ErrorCategory` variant, spanned at the user's name.
    Fixed(Ident),
    /// The category of the wrapped error; `error.type` stays the variant name.
    Source(Span),
    /// Category and `error.type` of the wrapped error.
    Transparent(Span),
}

impl Rule {
    fn span(&self) -> Span {
        match self {
            Rule::Fixed(i) => i.span(),
            Rule::Source(s) | Rule::Transparent(s) => *s,
        }
    }

    fn keyword(&self) -> &'static str {
        match self {
            Rule::Fixed(_) => "a category",
            Rule::Source(_) => "source",
            Rule::Transparent(_) => "transparent",
        }
    }
}

/// One entry of `#[category(..)]`.
enum Entry {
    Rule(Rule),
    Crate(Token![crate], Path),
}

impl Parse for Entry {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(Token![crate]) {
            let k: Token![crate] = input.parse()?;
            input.parse::<Token![=]>()?;
            return Ok(Entry::Crate(k, input.call(Path::parse_mod_style)?));
        }
        if input.peek(syn::LitStr) {
            let lit: syn::LitStr = input.parse()?;
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "write the category without quotes: `#[category({})]`",
                    lit.value()
                ),
            ));
        }
        let name = input.call(Ident::parse_any)?;
        let text = name.unraw().to_string();
        let rule = match text.as_str() {
            "source" => Rule::Source(name.span()),
            "transparent" => Rule::Transparent(name.span()),
            _ => match CATEGORIES.iter().find(|(n, _)| *n == text) {
                Some((_, variant)) => Rule::Fixed(Ident::new(variant, name.span())),
                None => {
                    let names: Vec<&str> = CATEGORIES.iter().map(|(n, _)| *n).collect();
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "unknown error category `{text}`; expected one of {}, \
                             or `source` / `transparent` to classify by the wrapped error",
                            names.join(", ")
                        ),
                    ));
                }
            },
        };
        Ok(Entry::Rule(rule))
    }
}

/// What the `#[category(..)]` attributes of one item say.
#[derive(Default)]
struct Attrs {
    rule: Option<Rule>,
    krate: Option<Path>,
}

/// Reads every `#[category(..)]` in `attrs`. `crate = path` is allowed only on
/// the type (`on_type`); each item has at most one rule and one crate path.
fn parse_attrs(attrs: &[Attribute], on_type: bool) -> syn::Result<Attrs> {
    let mut out = Attrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("category")) {
        let items = attr.parse_args_with(Punctuated::<Entry, Token![,]>::parse_terminated)?;
        if items.is_empty() {
            return Err(syn::Error::new_spanned(
                attr,
                "expected an error category, such as `#[category(not_found)]`",
            ));
        }
        for item in items {
            match item {
                Entry::Rule(rule) => {
                    if out.rule.is_some() {
                        return Err(syn::Error::new(
                            rule.span(),
                            "duplicated category: a variant or type takes one category \
                             name, `source` or `transparent`",
                        ));
                    }
                    out.rule = Some(rule);
                }
                Entry::Crate(k, path) => {
                    if !on_type {
                        return Err(syn::Error::new(
                            k.span,
                            "`crate = ..` goes on the type, not on a variant",
                        ));
                    }
                    if out.krate.is_some() {
                        return Err(syn::Error::new(k.span, "duplicated argument `crate`"));
                    }
                    out.krate = Some(path);
                }
            }
        }
    }
    Ok(out)
}

/// `#[category]` on a field would be silently ignored: reject it.
fn reject_field_attrs(fields: &Fields) -> syn::Result<()> {
    for field in fields {
        if let Some(attr) = field.attrs.iter().find(|a| a.path().is_ident("category")) {
            return Err(syn::Error::new_spanned(
                attr,
                "`#[category]` goes on the type or on a variant, not on a field; \
                 mark the wrapped error `#[source]` or `#[from]` instead",
            ));
        }
    }
    Ok(())
}

/// The field that holds the wrapped error: the one marked `#[source]` or
/// `#[from]` (thiserror's attributes), else the only field, else the field
/// named `source`.
fn wrapped_field(fields: &Fields, owner: &Ident, rule: &Rule) -> syn::Result<Member> {
    let member = |i: usize, f: &syn::Field| match &f.ident {
        Some(name) => Member::Named(name.clone()),
        None => Member::Unnamed(Index {
            index: i as u32,
            span: owner.span(),
        }),
    };
    let marker = |f: &syn::Field| {
        f.attrs
            .iter()
            .find(|a| a.path().is_ident("source") || a.path().is_ident("from"))
            .cloned()
    };
    let marked: Vec<(usize, &syn::Field, Attribute)> = fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| marker(f).map(|a| (i, f, a)))
        .collect();
    match marked.as_slice() {
        [(i, f, _)] => return Ok(member(*i, f)),
        [_, (_, _, second), ..] => {
            return Err(syn::Error::new_spanned(
                second,
                "more than one field is marked `#[source]` or `#[from]`",
            ));
        }
        [] => {}
    }
    if let Some(f) = fields.iter().next().filter(|_| fields.len() == 1) {
        return Ok(member(0, f));
    }
    if let Some(f) = fields
        .iter()
        .find(|f| f.ident.as_ref().is_some_and(|i| i == "source"))
    {
        return Ok(member(0, f));
    }
    if fields.is_empty() {
        return Err(syn::Error::new(
            owner.span(),
            format!(
                "`{}` wraps no error, so `#[category({})]` cannot classify it: \
                 give it a category of its own, such as `#[category(internal)]`",
                owner.unraw(),
                rule.keyword()
            ),
        ));
    }
    Err(syn::Error::new(
        owner.span(),
        format!(
            "`{}` has no wrapped error for `#[category({})]`: mark its field `#[source]` \
             or `#[from]`, name it `source`, or give it exactly one field",
            owner.unraw(),
            rule.keyword()
        ),
    ))
}

/// The two match arms (for `category` and `error_type`) of one variant or struct.
fn arms(
    pattern_path: &TokenStream,
    name: &Ident,
    fields: &Fields,
    rule: &Rule,
    krate: &Path,
) -> syn::Result<(TokenStream, TokenStream)> {
    let type_name = name.unraw().to_string();
    if let Rule::Fixed(variant) = rule {
        return Ok((
            quote!(#pattern_path { .. } => #krate::errors::ErrorCategory::#variant,),
            quote!(#pattern_path { .. } => #type_name,),
        ));
    }
    let member = wrapped_field(fields, name, rule)?;
    let source = format_ident!("__otel_source");
    // The same autoref probe `#[monitored]` uses: `Categorize` if the wrapped
    // error has it, else its `source()` chain, else unknown.
    let classify = quote! {{
        #[allow(unused_imports)]
        use #krate::errors::probe::{ViaAny as _, ViaCategorize as _, ViaError as _};
        #[allow(clippy::needless_borrow)]
        (&&&#krate::errors::probe::Probe(#source)).classify()
    }};
    let bind = quote!(#pattern_path { #member: #source, .. });
    let category = quote!(#bind => #classify.0,);
    let error_type = match rule {
        Rule::Transparent(_) => quote!(#bind => #classify.1,),
        _ => quote!(#pattern_path { .. } => #type_name,),
    };
    Ok((category, error_type))
}

/// Expands `#[derive(Categorize)]`; errors become `compile_error!`s.
pub(crate) fn categorize(item: TokenStream) -> TokenStream {
    // `syn::Item` rather than `DeriveInput`: this crate builds syn with "full"
    // only, and the two cover the same structs, enums and unions.
    match syn::parse2::<Item>(item).and_then(|item| expand(&item)) {
        Ok(tokens) => tokens,
        Err(e) => e.to_compile_error(),
    }
}

fn expand(item: &Item) -> syn::Result<TokenStream> {
    let (attrs, name, generics) = match item {
        Item::Struct(s) => (&s.attrs, &s.ident, &s.generics),
        Item::Enum(e) => (&e.attrs, &e.ident, &e.generics),
        Item::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "`Categorize` can be derived for structs and enums, not unions",
            ));
        }
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "`Categorize` can be derived for structs and enums",
            ));
        }
    };
    let top = parse_attrs(attrs, true)?;
    let krate = top
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::otel_instrument));
    let (mut category_arms, mut type_arms) = (Vec::new(), Vec::new());
    let mut errors: Option<syn::Error> = None;
    let mut push_error = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };

    match item {
        Item::Struct(s) => {
            reject_field_attrs(&s.fields)?;
            let Some(rule) = &top.rule else {
                return Err(syn::Error::new(
                    name.span(),
                    format!(
                        "`{}` has no error category: add `#[category(..)]` to it, \
                         such as `#[category(internal)]`",
                        name.unraw()
                    ),
                ));
            };
            let (c, t) = arms(&quote!(Self), name, &s.fields, rule, &krate)?;
            category_arms.push(c);
            type_arms.push(t);
        }
        Item::Enum(e) => {
            for variant in &e.variants {
                let result = reject_field_attrs(&variant.fields)
                    .and_then(|()| parse_attrs(&variant.attrs, false))
                    .and_then(|own| {
                        let vname = &variant.ident;
                        let rule = own.rule.as_ref().or(top.rule.as_ref()).ok_or_else(|| {
                            syn::Error::new(
                                vname.span(),
                                format!(
                                    "variant `{}` has no error category: add \
                                     `#[category(..)]` to it, or a default \
                                     `#[category(..)]` on the enum",
                                    vname.unraw()
                                ),
                            )
                        })?;
                        arms(&quote!(Self::#vname), vname, &variant.fields, rule, &krate)
                    });
                match result {
                    Ok((c, t)) => {
                        category_arms.push(c);
                        type_arms.push(t);
                    }
                    Err(e) => push_error(e),
                }
            }
        }
        _ => {}
    }
    if let Some(e) = errors {
        return Err(e);
    }

    let scrutinee = if category_arms.is_empty() {
        quote!(*self)
    } else {
        quote!(self)
    };
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::errors::Categorize for #name #ty_generics #where_clause {
            fn category(&self) -> #krate::errors::ErrorCategory {
                match #scrutinee {
                    #(#category_arms)*
                }
            }
            fn error_type(&self) -> &'static str {
                match #scrutinee {
                    #(#type_arms)*
                }
            }
        }
    })
}
