use otel_instrument::monitored;

#[monitored]
struct NotAFunction;

fn main() {}
