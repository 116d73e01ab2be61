use otel_instrument::errors::Categorize;

#[derive(Categorize)]
#[category(source)]
enum E {
    Io(std::io::Error),
    Nothing,
}

fn main() {}
