use es_core::{BoxError, Envelope, Event, Handles, Projection};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    Placed { customer: String },
}

#[derive(Projection)]
#[projection(name = "order_summary", events(OrderEvent))]
struct OrderSummary;

#[async_trait::async_trait]
impl Handles<OrderEvent> for OrderSummary {
    async fn handle_event(&self, _: &mut (), _: Envelope<OrderEvent>) -> Result<(), BoxError> {
        Ok(())
    }
}

fn main() {}
