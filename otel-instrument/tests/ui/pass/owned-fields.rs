//! `fields(..)` values that are owned (a `String` parameter, an expression
//! that builds a `String`) compile, are computed once, and leave the
//! parameter usable in the body.
#![deny(warnings)]
use otel_instrument::monitored;

struct Request {
    path: String,
    id: u64,
}

#[monitored(fields(user = user, upper = user.to_uppercase(), shown = %user, dbg = ?user))]
fn greet(user: String) -> String {
    format!("hello {user}")
}

#[monitored(skip_all, fields(path = req.path, id = req.id, len = req.path.len(), first = &req.path[..1]))]
fn route(req: Request) -> Request {
    req
}

#[monitored(fields(user = user))]
async fn greet_async(user: String) -> String {
    tokio_free_yield().await;
    user
}

async fn tokio_free_yield() {}

struct Service {
    name: String,
}

impl Service {
    #[monitored(skip(self), fields(service = self.name, owned = self.name.clone()))]
    fn call(&mut self, n: u32) -> &mut String {
        self.name.push_str(&n.to_string());
        &mut self.name
    }
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    assert_eq!(greet("ann".to_owned()), "hello ann");
    let req = route(Request { path: "/x".into(), id: 7 });
    assert_eq!((req.path.as_str(), req.id), ("/x", 7));
    let fut = greet_async("bob".to_owned());
    assert_send(&fut);
    drop(fut);
    let mut s = Service { name: "s".into() };
    s.call(1).push('!');
    assert_eq!(s.name, "s1!");
}
