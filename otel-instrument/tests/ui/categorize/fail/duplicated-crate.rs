use otel_instrument::errors::Categorize;

#[derive(Categorize)]
#[category(internal, crate = otel_instrument, crate = otel_instrument)]
struct S;

fn main() {}
