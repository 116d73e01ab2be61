use otel_instrument::errors::Categorize;

#[derive(Categorize)]
#[category(internal)]
union U {
    a: u32,
    b: f32,
}

fn main() {}
