use otel_instrument::errors::Categorize;

#[derive(Categorize)]
enum E {
    #[category(source)]
    Copy(std::io::Error, std::io::Error),
}

fn main() {}
