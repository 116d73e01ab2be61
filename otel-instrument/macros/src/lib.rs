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
mod expand;

use proc_macro::TokenStream;

/// Instruments a function (or every method of an impl block) with a span and
/// RED metrics. See the crate docs.
#[proc_macro_attribute]
pub fn monitored(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::monitored(args.into(), item.into()).into()
}
