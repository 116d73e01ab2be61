//! The `#[monitored]` attribute of `otel-instrument`. Use it as
//! `otel_instrument::monitored`; this crate is not meant to be used directly.
//!
//! `#[monitored]` gives a function a `tracing` span (with the `code.*` attributes
//! and `otel.kind`) and the autometrics-compatible RED metrics
//! `function.calls`, `function.calls.duration` and `function.calls.concurrent`.
//!
//! Arguments, all optional:
//! - `name = "..."`: the span name and `function` label (default: the fn's name);
//! - `kind = server|client|internal|producer|consumer` (default: internal);
//! - `level = trace|debug|info|warn|error` (default: info);
//! - `skip(a, b)`, `skip_all`: parameters not recorded on the span;
//! - `fields(key = expr, key = ?expr, key = %expr, ..)`: extra span fields;
//! - `err` / `err = false`: record a failure as an error (on by default when the
//!   return type implements `otel_instrument::Fallible`, as `Result` and its
//!   aliases do; written out, it requires such a return type);
//! - `sample = 0.25`: this function's sampling ratio when it is a local root;
//! - `slow = "250ms"`: a root slower than this keeps its trace even when the head
//!   sampler did not pick it (the tail keeper; default: the function's recent p99);
//! - `metrics = false`, `span = false`: turn either half off;
//! - `crate = path`: where `otel_instrument` is, for re-exports;
//! - `off`: leave the fn unmonitored (alone; for a method of a monitored impl block).
//!
//! It goes on a fn, a method with a body, or an impl block (every method with a
//! body, with the block's arguments; a method's own `#[monitored(..)]` replaces
//! them). A sync fn whose body ends in `Box::pin(async move { .. })`, which is
//! what `#[async_trait]` makes of an `async fn`, is measured over the async
//! block, like an `async fn`.

mod attr;
mod derive;
mod expand;

use proc_macro::TokenStream;

/// Instruments a function (or every method of an impl block) with a span and
/// RED metrics. See the crate docs.
#[proc_macro_attribute]
pub fn monitored(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::monitored(args.into(), item.into()).into()
}

/// Derives `Categorize` (`otel_instrument::errors::Categorize`) for an error
/// enum or struct. Use it as `otel_instrument::errors::Categorize`.
///
/// - `#[category(name)]` on a variant gives its category; `name` is an
///   `error.category` value: `cancelled`, `invalid_argument`, `not_found`,
///   `already_exists`, `permission_denied`, `unauthenticated`,
///   `resource_exhausted`, `failed_precondition`, `aborted`, `timeout`,
///   `unavailable`, `unimplemented`, `internal`, `data_loss` or `unknown`.
/// - `#[category(name)]` on the enum is the default for variants without one;
///   on a struct it is the struct's category. A variant with neither is a
///   compile error, so nothing falls into `unknown` by accident.
/// - `#[category(source)]` classifies a variant by the error it wraps (the
///   field marked `#[source]` or `#[from]`, else its only field, else the field
///   named `source`), with `Categorize` if that error has it, else its
///   `source()` chain. `error.type` stays the variant name.
/// - `#[category(transparent)]` takes `error.type` from the wrapped error too,
///   like thiserror's `#[error(transparent)]`.
/// - A wrapped error of a generic type is classified only as far as the type's
///   bounds tell (`T: Categorize`, or `T: Error + 'static` for its chain);
///   without one it is `unknown`.
/// - `#[category(crate = path)]` on the type: where `otel_instrument` is, for
///   re-exports (default `::otel_instrument`).
///
/// `error_type()` is the variant's name (the struct's name for a struct).
#[proc_macro_derive(Categorize, attributes(category))]
pub fn derive_categorize(item: TokenStream) -> TokenStream {
    derive::categorize(item.into()).into()
}
