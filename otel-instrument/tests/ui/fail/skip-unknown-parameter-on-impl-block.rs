use otel_instrument::monitored;

struct Repo;

#[monitored(skip(pasword))]
impl Repo {
    fn login(&self, password: &str) -> bool {
        !password.is_empty()
    }
}

fn main() {
    Repo.login("pw");
}
