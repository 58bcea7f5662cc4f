use es_core::Aggregate;

#[derive(Aggregate)]
#[aggregate(name = "order", event = (), command = (), error = std::fmt::Error)]
enum Order {
    Open,
    Closed,
}

fn main() {}
