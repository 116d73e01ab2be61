use otel_instrument::monitored;

#[monitored]
const fn f() -> u32 {
    1
}

fn main() {}
