use otel_instrument::errors::Categorize;

#[derive(Categorize)]
#[category(Internal)]
struct S;

fn main() {}
