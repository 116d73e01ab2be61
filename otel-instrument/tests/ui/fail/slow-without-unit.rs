use otel_instrument::monitored;

#[monitored(slow = "250")]
fn f() {}

fn main() {}
