//! `impl Trait` anywhere in the return type: the annotation becomes `_`, so
//! `Result<_, AppError>` still pins the error type for the classifier.
#![deny(warnings)]
use std::fmt::Display;

use otel_instrument::monitored;

/// Neither `Categorize` nor `std::error::Error`: classified as unknown.
#[derive(Debug)]
struct AppError;

#[monitored]
fn sync_display(n: u32) -> Result<impl Display, AppError> {
    if n == 0 {
        return Err(AppError);
    }
    Ok(n)
}

#[monitored]
async fn async_display(n: u32) -> Result<impl Display + Send, AppError> {
    if n == 0 {
        return Err(AppError);
    }
    Ok(format!("{n}"))
}

#[monitored]
fn plain_impl(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

#[monitored]
async fn async_impl(n: u32) -> impl Display {
    n
}

#[monitored]
fn nested_impl(v: &[u32]) -> Option<Result<impl Iterator<Item = &u32> + '_, AppError>> {
    Some(Ok(v.iter()))
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    assert_eq!(sync_display(3).ok().unwrap().to_string(), "3");
    let fut = async_display(1);
    assert_send(&fut);
    drop(fut);
    assert_eq!(plain_impl(3).count(), 3);
    drop(async_impl(1));
    assert_eq!(nested_impl(&[1, 2]).unwrap().ok().unwrap().count(), 2);
}
