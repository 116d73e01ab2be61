use otel_instrument::monitored;

#[monitored(skip(nope))]
fn f(yes: u32) -> u32 {
    yes
}

fn main() {}
