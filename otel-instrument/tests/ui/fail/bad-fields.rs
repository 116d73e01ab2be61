use otel_instrument::monitored;

#[monitored(fields(= 3))]
fn f() {}

fn main() {}
