use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    #[event(version = 2, upcast(from = 1))]
    Placed { customer: String },
}

fn main() {}
