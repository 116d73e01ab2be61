use otel_instrument::errors::Categorize;

#[derive(Categorize)]
enum E {
    #[category(not_fuond)]
    Missing,
}

fn main() {}
