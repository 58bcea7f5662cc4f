//! The checkout saga: a process manager that reserves stock for placed
//! orders, then confirms or cancels them, and releases or ships the stock
//! when an order changes.

use async_trait::async_trait;
use es_core::{
    BoxError, Envelope, EventStore, ExecuteError, Handles, Projection, Reaction, Repository,
    ResetProjection, SnapshotStore,
};

use crate::app::Watermark;
use crate::domain::{
    Inventory, InventoryCommand, InventoryEvent, Line, Order, OrderCommand, OrderEvent,
};
use crate::projections::order_id_of;

/// The checkout process manager.
///
/// | order event | steps |
/// | --- | --- |
/// | `OrderPlaced` | reserve each line's stock; then confirm the order, or release what was reserved and cancel it |
/// | `OrderLineAdded` | reserve the line's stock; then confirm the line, or reject it |
/// | `OrderLineRemoved` | release the line's stock |
/// | `OrderCancelled` | release the stock of every line |
/// | `OrderShipped` | take the stock of every line out of the warehouse |
///
/// Each step is a command run through [`Reaction`], whose idempotency key is
/// derived from the causing event: when the saga handles an event again
/// (after a crash between two steps, a restart, or a rebuild), the steps that
/// ran return their first outcome and append nothing, so no stock is
/// reserved twice and no order is confirmed twice. A reservation that is
/// rejected is recorded as an event too, so the decision to cancel is the
/// same every time.
///
/// A command the order refuses (the customer cancelled it meanwhile, say) is
/// logged and skipped: it is an outcome, not a failure. A failure of the store
/// stops the saga at the event, to be handled again when it restarts.
#[derive(Projection)]
#[projection(name = "checkout", version = 1, events(OrderEvent))]
pub struct Checkout<S: EventStore + SnapshotStore + Clone + 'static> {
    orders: Repository<Order, S>,
    inventory: Repository<Inventory, S>,
    appended: Watermark,
}

impl<S: EventStore + SnapshotStore + Clone + 'static> Checkout<S> {
    /// The saga, executing commands through these repositories.
    pub fn new(orders: Repository<Order, S>, inventory: Repository<Inventory, S>) -> Self {
        Self {
            orders,
            inventory,
            appended: Watermark::default(),
        }
    }

    /// This saga, noting what it appends in the app's watermark.
    pub(crate) fn noting(mut self, appended: Watermark) -> Self {
        self.appended = appended;
        self
    }

    /// Runs an order command; a refusal is logged and ends the reaction.
    async fn order_step(
        &self,
        reaction: &Reaction<'_>,
        order_id: &str,
        command: OrderCommand,
    ) -> Result<(), BoxError> {
        match reaction.execute(&self.orders, order_id, command).await {
            Ok(executed) => {
                self.appended.note(&executed);
                Ok(())
            }
            Err(ExecuteError::Rejected(refusal)) => {
                tracing::info!(order_id, rule = refusal.rule(), %refusal,
                    "checkout: the order refused the step; nothing to do");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Reserves a line's stock; returns whether it was reserved.
    async fn reserve(
        &self,
        reaction: &Reaction<'_>,
        order_id: &str,
        line: &Line,
    ) -> Result<bool, BoxError> {
        let command = InventoryCommand::Reserve {
            order_id: order_id.to_owned(),
            quantity: line.quantity,
        };
        let outcome = reaction
            .execute(&self.inventory, &line.sku, command)
            .await?;
        self.appended.note(&outcome);
        let rejected = outcome
            .events
            .iter()
            .any(|e| matches!(e, InventoryEvent::ReservationRejected { .. }));
        Ok(!rejected)
    }

    async fn inventory_step(
        &self,
        reaction: &Reaction<'_>,
        sku: &str,
        command: InventoryCommand,
    ) -> Result<(), BoxError> {
        let executed = reaction.execute(&self.inventory, sku, command).await?;
        self.appended.note(&executed);
        Ok(())
    }

    async fn placed(
        &self,
        reaction: &Reaction<'_>,
        order_id: &str,
        lines: &[Line],
    ) -> Result<(), BoxError> {
        let mut reserved = Vec::new();
        let mut missing = Vec::new();
        for line in lines {
            if self.reserve(reaction, order_id, line).await? {
                reserved.push(line.sku.clone());
            } else {
                missing.push(line.sku.clone());
            }
        }
        if missing.is_empty() {
            tracing::info!(order_id, "checkout: stock reserved; confirming the order");
            return self
                .order_step(
                    reaction,
                    order_id,
                    OrderCommand::ConfirmStock { skus: reserved },
                )
                .await;
        }
        for sku in &reserved {
            let release = InventoryCommand::Release {
                order_id: order_id.to_owned(),
            };
            self.inventory_step(reaction, sku, release).await?;
        }
        let reason = format!("out of stock: {}", missing.join(", "));
        tracing::info!(order_id, %reason, "checkout: cancelling the order");
        self.order_step(reaction, order_id, OrderCommand::Cancel { reason })
            .await
    }

    async fn line_added(
        &self,
        reaction: &Reaction<'_>,
        order_id: &str,
        line: &Line,
    ) -> Result<(), BoxError> {
        let reserved = self.reserve(reaction, order_id, line).await?;
        tracing::info!(order_id, sku = %line.sku, reserved, "checkout: added line handled");
        let command = if reserved {
            OrderCommand::ConfirmStock {
                skus: vec![line.sku.clone()],
            }
        } else {
            OrderCommand::RejectLine {
                sku: line.sku.clone(),
                reason: format!("out of stock: {}", line.sku),
            }
        };
        self.order_step(reaction, order_id, command).await
    }

    /// Releases or commits the stock of every line of a finished order. The
    /// order is final, so its current lines are its lines at that event.
    async fn finished(
        &self,
        reaction: &Reaction<'_>,
        order_id: &str,
        command: impl Fn() -> InventoryCommand + Send + Sync,
    ) -> Result<(), BoxError> {
        let order = self.orders.load(order_id).await?;
        for line in order.state.lines() {
            self.inventory_step(reaction, &line.line.sku, command())
                .await?;
        }
        Ok(())
    }
}

impl<S: EventStore + SnapshotStore + Clone + 'static> std::fmt::Debug for Checkout<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checkout")
    }
}

#[async_trait]
impl<S: EventStore + SnapshotStore + Clone + 'static> Handles<OrderEvent> for Checkout<S> {
    async fn handle_event(&self, (): &mut (), event: Envelope<OrderEvent>) -> Result<(), BoxError> {
        let order_id = order_id_of(&event.stream_id)?;
        let reaction = Reaction::new(<Self as Projection>::NAME, &event);
        let owned = order_id.to_owned();
        match &event.event {
            OrderEvent::Placed { lines, .. } => self.placed(&reaction, order_id, lines).await,
            OrderEvent::LineAdded { line } => self.line_added(&reaction, order_id, line).await,
            OrderEvent::LineRemoved { sku } => {
                let release = InventoryCommand::Release { order_id: owned };
                self.inventory_step(&reaction, sku, release).await
            }
            OrderEvent::Cancelled { .. } => {
                self.finished(&reaction, order_id, || InventoryCommand::Release {
                    order_id: owned.clone(),
                })
                .await
            }
            OrderEvent::Shipped => {
                self.finished(&reaction, order_id, || InventoryCommand::Commit {
                    order_id: owned.clone(),
                })
                .await
            }
            OrderEvent::LineRejected { .. }
            | OrderEvent::StockConfirmed { .. }
            | OrderEvent::Paid { .. } => Ok(()),
        }
    }
}

#[async_trait]
impl<S: EventStore + SnapshotStore + Clone + 'static> ResetProjection for Checkout<S> {
    /// The saga keeps no read model: a rebuild replays the log, and its
    /// idempotency keys make every replayed step a no-op.
    async fn reset_read_model(&self, (): &mut ()) -> Result<(), BoxError> {
        Ok(())
    }
}
