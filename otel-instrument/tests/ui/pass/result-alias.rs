//! A `Result` behind a type alias is still a `Result`: the macro decides by the
//! type, not by how the return type is spelt.
#![deny(warnings)]
use otel_instrument::monitored;

#[derive(Debug)]
struct AppError;

type AppResult<T> = Result<T, AppError>;

#[monitored]
fn aliased(n: u32) -> AppResult<u32> {
    if n == 0 { Err(AppError) } else { Ok(n) }
}

#[monitored(err)]
fn aliased_with_err(n: u32) -> AppResult<u32> {
    let m = aliased(n)?;
    Ok(m + 1)
}

#[monitored]
async fn aliased_async(n: u32) -> AppResult<u32> {
    aliased(n)
}

#[monitored]
fn io_alias() -> std::io::Result<()> {
    Ok(())
}

fn main() {
    assert!(aliased(0).is_err());
    assert_eq!(aliased_with_err(1).unwrap(), 2);
    drop(aliased_async(1));
    io_alias().unwrap();
}
