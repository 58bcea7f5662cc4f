use es_core::Projection;

#[derive(Projection)]
#[projection(name = "order_summary", verison = 2, events(u32))]
struct OrderSummary;

fn main() {}
