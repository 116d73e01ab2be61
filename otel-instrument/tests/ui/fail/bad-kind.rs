use otel_instrument::monitored;

#[monitored(kind = sideways)]
fn f() {}

fn main() {}
