use otel_instrument::monitored;

#[monitored(metrics = false, span = false)]
fn f() {}

fn main() {}
