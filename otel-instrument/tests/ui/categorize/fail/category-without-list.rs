use otel_instrument::errors::Categorize;

#[derive(Categorize)]
#[category = "internal"]
struct Oops;

fn main() {}
