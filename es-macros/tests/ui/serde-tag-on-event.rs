use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[serde(tag = "type")]
enum OrderEvent {
    Placed { customer: String },
}

fn main() {}
