use otel_instrument::monitored;

#[monitored(level = "loud")]
fn f() {}

fn main() {}
