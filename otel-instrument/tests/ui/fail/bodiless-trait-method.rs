use otel_instrument::monitored;

trait Store {
    #[monitored]
    fn get(&self, id: u32) -> Option<u32>;
}

fn main() {}
