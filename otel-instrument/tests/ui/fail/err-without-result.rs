use otel_instrument::monitored;

#[monitored(err)]
fn f() -> u32 {
    1
}

fn main() {}
