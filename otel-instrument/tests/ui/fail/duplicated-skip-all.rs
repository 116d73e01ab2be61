use otel_instrument::monitored;

#[monitored(skip_all, skip_all)]
fn f(a: u32) -> u32 {
    a
}

fn main() {}
