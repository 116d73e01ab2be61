//! `#[monitored]` on an impl block instruments every method with a body, with
//! the block's arguments; a method's own `#[monitored(..)]` replaces them and
//! `#[monitored(off)]` leaves it alone. Trait impls too.
#![deny(warnings)]
use otel_instrument::monitored;

struct Repo {
    rows: Vec<u32>,
}

#[monitored(kind = client, skip(secret))]
impl Repo {
    const LIMIT: usize = 10;

    const fn limit() -> usize {
        Self::LIMIT
    }

    fn new(rows: Vec<u32>) -> Self {
        Self { rows }
    }

    fn find(&self, id: u32) -> Result<u32, std::io::Error> {
        self.rows
            .iter()
            .copied()
            .find(|r| *r == id)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn login(&self, secret: &str) -> bool {
        !secret.is_empty()
    }

    async fn total(&self) -> u32 {
        self.rows.iter().sum()
    }

    #[monitored(name = "repo_rows", skip_all)]
    fn rows(&self) -> &[u32] {
        &self.rows
    }

    #[monitored(off)]
    fn hot_path(&self) -> usize {
        self.rows.len()
    }
}

trait Named {
    fn name(&self) -> String;
    fn describe(&self) -> String {
        self.name()
    }
}

#[monitored]
impl Named for Repo {
    fn name(&self) -> String {
        "repo".into()
    }
}

fn main() {
    let repo = Repo::new(vec![1, 2]);
    assert_eq!(Repo::limit(), 10);
    assert!(repo.find(3).is_err());
    assert!(repo.login("pw"));
    drop(repo.total());
    assert_eq!(repo.rows(), &[1, 2]);
    assert_eq!(repo.hot_path(), 2);
    assert_eq!(repo.describe(), "repo");
}
