use otel_instrument::monitored;

#[monitored(sample = "half")]
fn f() {}

fn main() {}
