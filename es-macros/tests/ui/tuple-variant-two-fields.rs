use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    Placed(String, u32),
}

fn main() {}
