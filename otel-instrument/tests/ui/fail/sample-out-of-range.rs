use otel_instrument::monitored;

#[monitored(sample = 1.5)]
fn f() {}

fn main() {}
