use otel_instrument::monitored;

#[monitored(err, err = false)]
fn f() -> Result<(), String> {
    Ok(())
}

fn main() {}
