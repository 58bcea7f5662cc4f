use es_core::Aggregate;
use serde::{Deserialize, Serialize};

include!("support/order.rs");

#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "order", event = OrderEvent)]
struct Order {
    placed: bool,
}

fn main() {}
