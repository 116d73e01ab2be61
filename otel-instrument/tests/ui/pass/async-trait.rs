//! `#[async_trait]` (tonic's re-export) runs before the method's `#[monitored]`
//! and leaves a sync fn returning `Box::pin(async move { .. })`: the async
//! block is instrumented, so the call covers the awaited body. Both orders of
//! `#[async_trait]` and an impl-block `#[monitored]` work too.
#![deny(warnings)]
use otel_instrument::monitored;

#[derive(Debug)]
struct AppError;

#[tonic::async_trait]
trait Store: Send + Sync {
    async fn get(&self, id: u32) -> Result<String, AppError>;
    async fn put(&self, id: u32, value: String);
    async fn count(&self) -> usize;
    async fn fetch(&self, id: u32) -> Result<u32, std::io::Error>;
}

struct Memory {
    prefix: String,
}

#[tonic::async_trait]
impl Store for Memory {
    #[monitored(kind = server, fields(prefix = self.prefix))]
    async fn get(&self, id: u32) -> Result<String, AppError> {
        if id == 0 {
            return Err(AppError);
        }
        Ok(format!("{}{id}", self.prefix))
    }

    #[monitored(skip(value), err = false)]
    async fn put(&self, id: u32, value: String) {
        let _ = (id, value);
    }

    #[monitored]
    async fn count(&self) -> usize {
        self.prefix.len()
    }

    #[monitored(err)]
    async fn fetch(&self, id: u32) -> Result<u32, std::io::Error> {
        Ok(id)
    }
}

struct Outer;

// `#[monitored]` outside: it sees `async fn`s and instruments them as such;
// `#[async_trait]` then boxes the instrumented bodies.
#[monitored(skip_all)]
#[tonic::async_trait]
impl Store for Outer {
    async fn get(&self, id: u32) -> Result<String, AppError> {
        Err(AppError).map(|()| id.to_string())
    }
    async fn put(&self, _id: u32, _value: String) {}
    async fn count(&self) -> usize {
        0
    }
    async fn fetch(&self, id: u32) -> Result<u32, std::io::Error> {
        Ok(id)
    }
}

struct Inner;

// `#[monitored]` inside: `#[async_trait]` has already boxed the methods.
#[tonic::async_trait]
#[monitored(skip_all)]
impl Store for Inner {
    async fn get(&self, id: u32) -> Result<String, AppError> {
        Ok(id.to_string())
    }
    async fn put(&self, _id: u32, _value: String) {}
    async fn count(&self) -> usize {
        1
    }
    async fn fetch(&self, id: u32) -> Result<u32, std::io::Error> {
        Ok(id)
    }
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    let stores: Vec<Box<dyn Store>> = vec![
        Box::new(Memory { prefix: "m".into() }),
        Box::new(Outer),
        Box::new(Inner),
    ];
    for s in &stores {
        let fut = s.get(1);
        assert_send(&fut);
        drop(fut);
        drop(s.put(1, String::new()));
        drop(s.count());
        drop(s.fetch(1));
    }
}
