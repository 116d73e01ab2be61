use otel_instrument::monitored;

struct Repo;

#[monitored(kind = client, name = "repo")]
impl Repo {
    fn find(&self) -> u32 {
        1
    }
}

fn main() {
    Repo.find();
}
