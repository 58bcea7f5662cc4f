use es_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
enum OrderEvent {
    Placed { customer: String },
}

#[derive(Debug, Clone)]
enum OrderCommand {
    Place { customer: String },
}

#[derive(Debug, thiserror::Error)]
#[error("order error")]
struct OrderError;

#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError)]
struct Order {
    placed: bool,
}

impl Order {
    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { .. } => self.placed = true,
        }
    }
}

fn main() {}
