use otel_instrument::monitored;

#[monitored]
fn f(x: u32) -> Result<u32, std::io::Error> {
    Ok("not a number")
}

#[monitored]
async fn g() -> u32 {
    "not a number either"
}

fn main() {
    let _ = f(1);
    let _ = g();
}
