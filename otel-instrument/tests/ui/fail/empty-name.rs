use otel_instrument::monitored;

#[monitored(name = "")]
fn f() {}

fn main() {}
