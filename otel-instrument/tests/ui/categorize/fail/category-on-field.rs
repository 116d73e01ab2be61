use otel_instrument::errors::Categorize;

#[derive(Categorize)]
#[category(internal)]
enum E {
    Io(#[category(source)] std::io::Error),
}

fn main() {}
