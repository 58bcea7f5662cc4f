use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PlacedV1 {
    customer: String,
}

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    #[event(version = 2, upcast_from = PlacedV1)]
    Placed { customer: String, currency: String },
}

fn main() {}
