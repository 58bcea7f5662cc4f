use es_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum Changed<T> {
    Set { value: T },
}

fn main() {}
