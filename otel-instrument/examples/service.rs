//! A single-process example: a long-running workload of `#[monitored]`
//! functions with varied latency and categorised errors. (The compose stack
//! runs the demo in `demo/` instead: three services and one trace across them.)
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run -p otel-instrument --example service
//! ```
//!
//! Settings (environment):
//! - `EXAMPLE_RATE`: requests per second, default 20;
//! - `EXAMPLE_DURATION_SECS`: stop after this long, default: run until killed;
//! - `EXAMPLE_PROMETHEUS_ADDR`: also serve `/metrics` here (`--features prometheus`).

use std::time::Duration;

use otel_instrument::{Categorize, ErrorCategory, monitored};

/// A request that did not parse.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("order {0} has no items")]
    Empty(u64),
    #[error("order {0} is for an unknown GPU model")]
    UnknownModel(u64),
}

impl Categorize for OrderError {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::InvalidArgument
    }
    fn error_type(&self) -> &'static str {
        match self {
            Self::Empty(_) => "Empty",
            Self::UnknownModel(_) => "UnknownModel",
        }
    }
}

/// The payment provider said no.
#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("the payment provider is unavailable")]
    Unavailable,
    #[error("card declined")]
    Declined,
}

impl Categorize for PaymentError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Unavailable => ErrorCategory::Unavailable,
            Self::Declined => ErrorCategory::FailedPrecondition,
        }
    }
    fn error_type(&self) -> &'static str {
        match self {
            Self::Unavailable => "Unavailable",
            Self::Declined => "Declined",
        }
    }
}

/// Anything that fails a request; its category comes from the cause.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    #[error("GPU reservation failed")]
    Reserve(#[from] std::io::Error),
}

impl Categorize for ServiceError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Order(e) => e.category(),
            Self::Payment(e) => e.category(),
            Self::Reserve(e) => e.category(),
        }
    }
    fn error_type(&self) -> &'static str {
        match self {
            Self::Order(e) => e.error_type(),
            Self::Payment(e) => e.error_type(),
            Self::Reserve(e) => e.error_type(),
        }
    }
}

#[derive(Debug)]
struct Order {
    id: u64,
    gpus: u32,
}

/// Deterministic "randomness", so a run is reproducible.
fn pick(id: u64, salt: u64) -> u64 {
    id.wrapping_mul(6364136223846793005).wrapping_add(salt) >> 33
}

#[monitored]
fn parse_order(id: u64) -> Result<Order, OrderError> {
    match pick(id, 1) % 50 {
        0 => Err(OrderError::Empty(id)),
        1 => Err(OrderError::UnknownModel(id)),
        n => Ok(Order {
            id,
            gpus: 1 + (n % 8) as u32,
        }),
    }
}

#[monitored(kind = "client")]
async fn reserve_gpus(order: &Order) -> Result<(), std::io::Error> {
    tokio::time::sleep(Duration::from_millis(2 + pick(order.id, 2) % 40)).await;
    if pick(order.id, 3).is_multiple_of(40) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "scheduler did not answer",
        ));
    }
    Ok(())
}

#[derive(Debug)]
struct Payments;

impl Payments {
    #[monitored(kind = "client")]
    async fn charge(&self, order: &Order) -> Result<u64, PaymentError> {
        // A long tail: most charges are quick, a few take ~0.6 s.
        let ms = if pick(order.id, 4).is_multiple_of(20) {
            600
        } else {
            5 + pick(order.id, 5) % 60
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        match pick(order.id, 6) % 30 {
            0 => Err(PaymentError::Unavailable),
            1 => Err(PaymentError::Declined),
            _ => Ok(u64::from(order.gpus) * 250),
        }
    }
}

#[monitored(kind = "server", name = "checkout", skip(payments))]
async fn checkout(payments: &Payments, id: u64) -> Result<u64, ServiceError> {
    let order = parse_order(id)?;
    reserve_gpus(&order).await?;
    Ok(payments.charge(&order).await?)
}

#[monitored]
fn report(done: u64, failed: u64) {
    tracing::info!(done, failed, "progress");
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not valid; for example {name}=20")),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rate: u64 = env_parse("EXAMPLE_RATE", 20)?;
    if rate == 0 {
        return Err("EXAMPLE_RATE=0 is not valid; for example EXAMPLE_RATE=20".into());
    }
    let duration: u64 = env_parse("EXAMPLE_DURATION_SECS", 0)?;
    #[allow(unused_mut)]
    let mut builder = otel_instrument::builder!();
    #[cfg(feature = "prometheus")]
    if let Ok(addr) = std::env::var("EXAMPLE_PROMETHEUS_ADDR") {
        let addr = addr.parse().map_err(|_| {
            format!(
                "EXAMPLE_PROMETHEUS_ADDR={addr:?} is not an address; for example 127.0.0.1:9465"
            )
        })?;
        builder = builder.prometheus_endpoint(addr);
    }
    let guard = builder.install()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let payments = std::sync::Arc::new(Payments);
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let (mut done, mut failed) = (0u64, 0u64);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
        for id in 0u64.. {
            if duration > 0 && started.elapsed() >= Duration::from_secs(duration) {
                break;
            }
            tick.tick().await;
            let payments = payments.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(checkout(&payments, id).await.is_ok());
            });
            while let Ok(ok) = rx.try_recv() {
                if ok { done += 1 } else { failed += 1 }
            }
            if id.is_multiple_of(rate * 10) {
                report(done, failed);
            }
        }
    });
    drop(rt);
    guard.shutdown();
    Ok(())
}
