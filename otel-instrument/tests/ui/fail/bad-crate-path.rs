use otel_instrument::monitored;

#[monitored(crate = "otel_instrument")]
fn f() {}

fn main() {}
