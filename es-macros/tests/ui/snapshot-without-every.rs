use es_core::Aggregate;
use serde::{Deserialize, Serialize};

include!("support/order.rs");

#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError, snapshot(version = 2, evry = 10))]
struct Order {
    placed: bool,
}

fn main() {}
