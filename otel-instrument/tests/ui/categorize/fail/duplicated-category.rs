use otel_instrument::errors::Categorize;

#[derive(Categorize)]
enum E {
    #[category(not_found, internal)]
    Missing,
}

fn main() {}
