use otel_instrument::monitored;

#[monitored(name = "a", name = "b")]
fn f() {}

fn main() {}
