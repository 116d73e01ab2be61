//! `-> !`: a diverging fn compiles, and no warning about unreachable generated
//! code reaches the user (`deny(warnings)` would turn it into an error).
#![deny(warnings)]
use otel_instrument::monitored;

#[monitored]
fn exits(code: i32) -> ! {
    std::process::exit(code)
}

#[monitored]
fn panics() -> ! {
    panic!("never returns")
}

#[monitored]
async fn serves_forever() -> ! {
    loop {
        std::future::pending::<()>().await;
    }
}

fn main() {
    if std::env::args().count() > 100 {
        exits(1);
    }
    if std::env::args().count() > 100 {
        panics();
    }
    drop(serves_forever());
}
