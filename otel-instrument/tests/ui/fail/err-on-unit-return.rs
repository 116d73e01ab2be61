use otel_instrument::monitored;

#[monitored(err)]
fn f() {}

fn main() {
    f();
}
