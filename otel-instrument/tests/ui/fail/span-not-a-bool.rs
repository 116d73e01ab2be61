use otel_instrument::monitored;

#[monitored(span = "no")]
fn f() {}

fn main() {}
