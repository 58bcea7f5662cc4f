use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    Placed { customer: String },
    #[event(rename = "Placed")]
    Replaced { customer: String },
}

fn main() {}
