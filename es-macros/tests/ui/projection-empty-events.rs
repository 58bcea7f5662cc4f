use es_core::Projection;

#[derive(Projection)]
#[projection(name = "order_summary", events())]
struct OrderSummary;

fn main() {}
