use otel_instrument::errors::Categorize;

#[derive(Categorize)]
#[category()]
struct Oops;

fn main() {}
