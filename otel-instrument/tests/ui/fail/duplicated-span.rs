use otel_instrument::monitored;

#[monitored(span = true, span = false)]
fn f() {}

fn main() {}
