use otel_instrument::errors::Categorize;

#[derive(Debug, thiserror::Error, Categorize)]
enum E {
    #[error("copy")]
    #[category(source)]
    Copy {
        #[source]
        from: std::io::Error,
        #[from]
        to: std::num::ParseIntError,
    },
}

fn main() {}
