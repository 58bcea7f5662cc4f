use es_core::Aggregate;
use serde::{Deserialize, Serialize};

include!("support/order.rs");

#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError)]
struct Order {
    placed: bool,
}

impl Order {
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { customer } => Ok(vec![OrderEvent::Placed { customer }]),
        }
    }

    fn apply(&mut self, event: OrderEvent) {
        match event {
            OrderEvent::Placed { .. } => self.placed = true,
        }
    }
}

fn main() {}
