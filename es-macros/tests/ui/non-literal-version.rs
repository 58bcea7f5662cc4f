use es_core::Event;
use serde::{Deserialize, Serialize};

const TWO: u32 = 2;

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    #[event(version = TWO)]
    Placed { customer: String },
    #[event(rename = OrderPaid)]
    Paid,
}

fn main() {}
