use otel_instrument::monitored;

#[monitored(off, kind = server)]
fn f() {}

fn main() {
    f();
}
