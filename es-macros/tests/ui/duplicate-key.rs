use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    #[event(version = 2, version = 3)]
    Placed { customer: String },
}

fn main() {}
