use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    #[event(version = 0)]
    Placed { customer: String },
    #[event(colour = "blue")]
    Paid,
    #[event(rename = "")]
    Shipped,
}

fn main() {}
