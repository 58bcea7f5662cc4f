use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    #[event(renmae = "OrderPlaced")]
    Placed { customer: String },
}

fn main() {}
