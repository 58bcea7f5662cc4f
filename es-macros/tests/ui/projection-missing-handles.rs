use es_core::{BoxError, Event, Projection, ResetProjection};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    Placed { customer: String },
}

#[derive(Projection)]
#[projection(name = "order_summary", events(OrderEvent))]
struct OrderSummary;

#[async_trait::async_trait]
impl ResetProjection for OrderSummary {
    async fn reset_read_model(&self, _: &mut ()) -> Result<(), BoxError> {
        Ok(())
    }
}

fn main() {}
