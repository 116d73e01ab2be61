//! Async fns, methods, trait impls, generics, `impl Trait` and early returns.
use otel_instrument::monitored;

struct Service {
    prefix: String,
}

trait Greeter {
    fn greet(&self, name: &str) -> String;
}

impl Greeter for Service {
    #[monitored(skip_all)]
    fn greet(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl Service {
    #[monitored(skip(self))]
    async fn fetch(&self, id: u64) -> Result<&str, std::io::Error> {
        if id == 0 {
            return Err(std::io::Error::other("zero"));
        }
        Ok(&self.prefix)
    }

    #[monitored(skip_all)]
    fn words(&self) -> impl Iterator<Item = &str> + '_ {
        self.prefix.split(' ')
    }

    #[monitored(skip_all)]
    fn consume(self) -> String {
        self.prefix
    }
}

#[monitored(skip_all)]
fn largest<T: PartialOrd + Copy>(items: &[T]) -> Option<T> {
    let mut it = items.iter().copied();
    let mut best = it.next()?;
    for x in it {
        if x > best {
            best = x;
        }
    }
    Some(best)
}

#[monitored]
async fn spawnable(n: u32) -> u32 {
    n * 2
}

fn assert_send<T: Send>(_: &T) {}

#[monitored]
fn unit_with_return(flag: bool) {
    if flag {
        return;
    }
}

fn main() {
    let s = Service { prefix: "hi ".into() };
    assert_eq!(s.greet("x"), "hi x");
    assert_eq!(s.words().count(), 2);
    let fut = spawnable(1);
    assert_send(&fut);
    let fut2 = s.fetch(1);
    assert_send(&fut2);
    drop((fut, fut2));
    assert_eq!(largest(&[1, 3, 2]), Some(3));
    unit_with_return(true);
    assert_eq!(s.consume(), "hi ");
}
