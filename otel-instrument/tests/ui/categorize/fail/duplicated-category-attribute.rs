use otel_instrument::errors::Categorize;

#[derive(Categorize)]
enum E {
    #[category(not_found)]
    #[category(source)]
    Missing(std::io::Error),
}

fn main() {}
