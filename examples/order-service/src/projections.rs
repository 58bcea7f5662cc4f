//! The projections that keep the read models: `order_summaries` and
//! `customer_totals`.

use async_trait::async_trait;
use es_core::{BoxError, Envelope, Handles, Projection, ResetProjection, StreamId};

use crate::domain::{Order, OrderEvent, OrderStatus};
use crate::read_model::{CustomerTotals, OrderOwner, OrderSummary, ReadModelStore, SummaryLine};

/// The order id of an order's stream (`order-<id>`).
pub(crate) fn order_id_of(stream_id: &StreamId) -> Result<&str, BoxError> {
    stream_id
        .as_str()
        .strip_prefix(<Order as es_core::Aggregate>::NAME)
        .and_then(|rest| rest.strip_prefix('-'))
        .ok_or_else(|| format!("`{stream_id}` is not an order stream").into())
}

/// Keeps one [`OrderSummary`] per order, for the order list.
#[derive(Projection)]
#[projection(name = "order_summaries", version = 1, events(OrderEvent), context = R::Tx)]
pub struct OrderSummaries<R: ReadModelStore> {
    read_models: R,
}

impl<R: ReadModelStore> OrderSummaries<R> {
    /// The projection over these read models.
    pub fn new(read_models: R) -> Self {
        Self { read_models }
    }
}

impl<R: ReadModelStore> std::fmt::Debug for OrderSummaries<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrderSummaries")
    }
}

/// The status of an open order from its lines.
fn open_status(lines: &[SummaryLine]) -> OrderStatus {
    if lines.iter().all(|l| l.reserved) {
        OrderStatus::Confirmed
    } else {
        OrderStatus::AwaitingStock
    }
}

fn total(lines: &[SummaryLine]) -> u64 {
    lines
        .iter()
        .map(|l| l.unit_price.saturating_mul(u64::from(l.quantity)))
        .fold(0, u64::saturating_add)
}

#[async_trait]
impl<R: ReadModelStore> Handles<OrderEvent> for OrderSummaries<R> {
    async fn handle_event(
        &self,
        tx: &mut R::Tx,
        event: Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        let order_id = order_id_of(&event.stream_id)?;
        if let OrderEvent::Placed {
            customer,
            currency,
            lines,
        } = &event.event
        {
            let lines: Vec<SummaryLine> = lines
                .iter()
                .map(|l| SummaryLine {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                    unit_price: l.unit_price.amount,
                    reserved: false,
                })
                .collect();
            let summary = OrderSummary {
                order_id: order_id.to_owned(),
                customer: customer.clone(),
                status: open_status(&lines),
                currency: currency.clone(),
                total: total(&lines),
                paid: 0,
                lines,
                placed_at: event.recorded_at,
                updated_at: event.recorded_at,
                version: event.version.get(),
            };
            return self.read_models.put_summary(tx, &summary).await;
        }
        let mut summary = self
            .read_models
            .summary(tx, order_id)
            .await?
            .ok_or_else(|| format!("no summary of order {order_id} before {}", event.event_type))?;
        if summary.version >= event.version.get() {
            return Ok(()); // already applied
        }
        match &event.event {
            OrderEvent::Placed { .. } => {}
            OrderEvent::LineAdded { line } => summary.lines.push(SummaryLine {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price: line.unit_price.amount,
                reserved: false,
            }),
            OrderEvent::LineRemoved { sku } | OrderEvent::LineRejected { sku, .. } => {
                summary.lines.retain(|l| &l.sku != sku);
            }
            OrderEvent::StockConfirmed { skus } => {
                for line in &mut summary.lines {
                    line.reserved |= skus.contains(&line.sku);
                }
            }
            OrderEvent::Paid { amount } => {
                summary.paid = summary.paid.saturating_add(amount.amount);
                summary.status = OrderStatus::Paid;
            }
            OrderEvent::Shipped => summary.status = OrderStatus::Shipped,
            OrderEvent::Cancelled { refund, .. } => {
                let refunded = refund.as_ref().map_or(0, |m| m.amount);
                summary.paid = summary.paid.saturating_sub(refunded);
                summary.status = OrderStatus::Cancelled;
            }
        }
        if matches!(
            summary.status,
            OrderStatus::AwaitingStock | OrderStatus::Confirmed
        ) {
            summary.status = open_status(&summary.lines);
        }
        summary.total = total(&summary.lines);
        summary.updated_at = event.recorded_at;
        summary.version = event.version.get();
        self.read_models.put_summary(tx, &summary).await
    }
}

#[async_trait]
impl<R: ReadModelStore> ResetProjection for OrderSummaries<R> {
    async fn reset_read_model(&self, tx: &mut R::Tx) -> Result<(), BoxError> {
        self.read_models.clear_summaries(tx).await
    }
}

/// Keeps [`CustomerTotals`] per customer and currency.
#[derive(Projection)]
#[projection(name = "customer_totals", version = 1, events(OrderEvent), context = R::Tx)]
pub struct CustomerTotalsProjection<R: ReadModelStore> {
    read_models: R,
}

impl<R: ReadModelStore> CustomerTotalsProjection<R> {
    /// The projection over these read models.
    pub fn new(read_models: R) -> Self {
        Self { read_models }
    }
}

impl<R: ReadModelStore> std::fmt::Debug for CustomerTotalsProjection<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerTotalsProjection")
    }
}

#[async_trait]
impl<R: ReadModelStore> Handles<OrderEvent> for CustomerTotalsProjection<R> {
    async fn handle_event(
        &self,
        tx: &mut R::Tx,
        event: Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        let order_id = order_id_of(&event.stream_id)?;
        let owner = match &event.event {
            OrderEvent::Placed {
                customer, currency, ..
            } => {
                let owner = OrderOwner {
                    customer: customer.clone(),
                    currency: currency.clone(),
                };
                self.read_models.put_owner(tx, order_id, &owner).await?;
                owner
            }
            OrderEvent::Paid { .. } | OrderEvent::Shipped | OrderEvent::Cancelled { .. } => self
                .read_models
                .owner(tx, order_id)
                .await?
                .ok_or_else(|| format!("no customer known for order {order_id}"))?,
            _ => return Ok(()),
        };
        let mut totals = self
            .read_models
            .totals(tx, &owner)
            .await?
            .unwrap_or_else(|| CustomerTotals::new(owner.customer.clone(), owner.currency.clone()));
        match &event.event {
            OrderEvent::Placed { .. } => totals.orders = totals.orders.saturating_add(1),
            OrderEvent::Paid { amount } => totals.paid = totals.paid.saturating_add(amount.amount),
            OrderEvent::Shipped => totals.shipped = totals.shipped.saturating_add(1),
            OrderEvent::Cancelled { refund, .. } => {
                totals.cancelled = totals.cancelled.saturating_add(1);
                let refunded = refund.as_ref().map_or(0, |m| m.amount);
                totals.paid = totals.paid.saturating_sub(refunded);
            }
            _ => {}
        }
        self.read_models.put_totals(tx, &totals).await
    }
}

#[async_trait]
impl<R: ReadModelStore> ResetProjection for CustomerTotalsProjection<R> {
    async fn reset_read_model(&self, tx: &mut R::Tx) -> Result<(), BoxError> {
        self.read_models.clear_totals(tx).await
    }
}
