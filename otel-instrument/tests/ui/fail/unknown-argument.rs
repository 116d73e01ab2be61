use otel_instrument::monitored;

#[monitored(nmae = "x")]
fn f() {}

fn main() {}
