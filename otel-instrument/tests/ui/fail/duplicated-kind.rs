use otel_instrument::monitored;

#[monitored(kind = server, kind = client)]
fn f() {}

fn main() {}
