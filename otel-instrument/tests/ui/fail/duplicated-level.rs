use otel_instrument::monitored;

#[monitored(level = info, level = debug)]
fn f() {}

fn main() {}
