use otel_instrument::monitored;

#[monitored(crate = not_a_crate)]
fn f() {}

fn main() {}
