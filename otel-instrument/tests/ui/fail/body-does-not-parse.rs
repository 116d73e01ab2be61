use otel_instrument::monitored;

#[monitored]
fn f() -> u32 {
    let x = ;
    1
}

fn main() {}
