use otel_instrument::monitored;

#[monitored(err)]
fn f() -> u32 {
    1
}

#[monitored(err)]
async fn g() -> Option<u32> {
    None
}

fn main() {
    f();
    let _ = g();
}
