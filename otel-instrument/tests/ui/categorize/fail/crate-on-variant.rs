use otel_instrument::errors::Categorize;

#[derive(Categorize)]
enum E {
    #[category(internal, crate = otel_instrument)]
    Bug,
}

fn main() {}
