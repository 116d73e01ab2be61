use otel_instrument::errors::Categorize;

#[derive(Categorize)]
enum E {
    #[category("not_found")]
    Missing,
}

fn main() {}
