use otel_instrument::errors::Categorize;

#[derive(Categorize)]
struct Oops;

fn main() {}
