use otel_instrument::monitored;

#[monitored(sample = 0.1, sample = 0.2)]
fn f() {}

fn main() {}
