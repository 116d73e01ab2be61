use otel_instrument::monitored;

#[monitored(metrics = true, metrics = false)]
fn f() {}

fn main() {}
