use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct V1 {}
#[derive(Deserialize, Serialize)]
struct V2 {}

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    #[event(version = 2, upcast_from = V1, upcast_from = V2)]
    Placed { customer: String },
}

fn main() {}
