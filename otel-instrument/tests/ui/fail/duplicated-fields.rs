use otel_instrument::monitored;

#[monitored(fields(a = 1), fields(b = 2))]
fn f() {}

fn main() {}
