//! Generic returns: `-> T`, `-> Result<T, E>` with generic `T` and `E`, and a
//! `T: Fallible` bound, which makes a generic return classified.
#![deny(warnings)]
use otel_instrument::{Fallible, monitored};

#[monitored(skip_all)]
fn identity<T>(value: T) -> T {
    value
}

#[monitored(skip_all)]
fn parse<T: std::str::FromStr>(s: &str) -> Result<T, T::Err> {
    s.parse()
}

#[monitored(skip_all)]
async fn first<T: Clone + Send + Sync>(items: &[T]) -> Option<T> {
    items.first().cloned()
}

#[monitored(skip_all, err)]
fn retry<R: Fallible, F: FnMut() -> R>(mut f: F) -> R {
    let first = f();
    if first.failure().is_some() { f() } else { first }
}

fn main() {
    assert_eq!(identity(3), 3);
    assert_eq!(parse::<u8>("7").unwrap(), 7);
    drop(first(&[1u8]));
    let mut n = 0;
    let r: Result<u32, String> = retry(|| {
        n += 1;
        if n == 1 { Err("once".into()) } else { Ok(n) }
    });
    assert_eq!(r.unwrap(), 2);
}
