use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    Placed { customer: String },
    #[event(rename = "OrderCancelled", alias = "Placed")]
    Cancelled { reason: String },
}

fn main() {}
