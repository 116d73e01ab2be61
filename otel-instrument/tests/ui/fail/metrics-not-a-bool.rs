use otel_instrument::monitored;

#[monitored(metrics = 0)]
fn f() {}

fn main() {}
