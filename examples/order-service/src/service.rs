//! What the HTTP API asks of the application, independent of the store:
//! the [`OrderService`] trait, its views and its error.

use async_trait::async_trait;
use es_core::BoxError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{
    Currency, Inventory, InventoryError, Line, Money, Order, OrderCommand, OrderError, OrderStatus,
};
use crate::read_model::{CustomerTotals, OrderFilter, OrderSummary};

/// What the API knows of the request that asks: its id, which becomes the
/// correlation id of the events it causes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMeta {
    /// The request id (`x-request-id`).
    pub request_id: String,
}

/// An order as its aggregate holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    /// The order's id.
    pub id: Uuid,
    /// Who ordered.
    pub customer: String,
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// The order's currency.
    pub currency: Currency,
    /// The lines.
    pub lines: Vec<LineView>,
    /// The sum of the lines.
    pub total: Money,
    /// What was paid.
    pub paid: Money,
    /// The version of the order's stream: how many events it has.
    pub version: u64,
}

/// A line of an [`OrderView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LineView {
    /// The SKU.
    pub sku: String,
    /// How many units.
    pub quantity: u32,
    /// The price of one unit.
    pub unit_price: Money,
    /// Whether the checkout reserved its stock.
    pub stock_reserved: bool,
}

impl OrderView {
    /// The view of a loaded order.
    pub fn new(id: Uuid, order: &Order, version: u64) -> Self {
        let currency = order.currency();
        Self {
            id,
            customer: order.customer().to_owned(),
            status: order.status().unwrap_or(OrderStatus::AwaitingStock),
            lines: order
                .lines()
                .iter()
                .map(|l| LineView {
                    sku: l.line.sku.clone(),
                    quantity: l.line.quantity,
                    unit_price: l.line.unit_price.clone(),
                    stock_reserved: l.reserved,
                })
                .collect(),
            total: Money::new(order.total(), currency.clone()),
            paid: Money::new(order.paid(), currency.clone()),
            currency,
            version,
        }
    }
}

/// The stock of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockView {
    /// The SKU.
    pub sku: String,
    /// Units in the warehouse.
    pub on_hand: u64,
    /// Units reserved for orders.
    pub reserved: u64,
    /// Units free to reserve.
    pub available: u64,
}

impl StockView {
    /// The view of a SKU's stock.
    pub fn new(sku: String, inventory: &Inventory) -> Self {
        Self {
            sku,
            on_hand: inventory.on_hand(),
            reserved: inventory.reserved(),
            available: inventory.available(),
        }
    }
}

/// Where a projection stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectionView {
    /// Its name.
    pub name: String,
    /// The version of its code.
    pub version: u32,
    /// The position of the last event it handled.
    pub position: u64,
    /// The position of the last event of the log.
    pub head: u64,
    /// How many positions it is behind the log: 0 once it caught up. Not a
    /// count of events (positions are not contiguous on PostgreSQL).
    pub lag: u64,
    /// How many events it parked (failed and set aside).
    pub parked: usize,
    /// `running`, `retrying` (after an error), `rebuilding`, `stopped` or `not_started`.
    pub state: String,
    /// The error it last stopped on, while it is retrying.
    pub last_error: Option<String>,
}

/// Whether the service can take traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    /// True when the store answers and every projection runs.
    pub ready: bool,
    /// Each check and its outcome.
    pub checks: Vec<Check>,
}

/// One readiness check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Details.
    pub detail: String,
}

/// Why the application could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// An order refused a command: a rule was broken.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The stock of a SKU refused a command.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Another writer kept changing the same aggregate through every retry.
    #[error("the {0} was changed concurrently; try again")]
    Conflict(String),
    /// The store or a read model failed.
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
}

impl ServiceError {
    /// An internal error.
    pub fn internal(error: impl Into<BoxError>) -> Self {
        ServiceError::Internal(error.into())
    }
}

/// The application as the HTTP API uses it: every operation of the API,
/// whatever store is behind it. Implemented by [`App`](crate::App).
#[async_trait]
pub trait OrderService: Send + Sync + 'static {
    /// Places a new order.
    async fn place_order(
        &self,
        meta: &RequestMeta,
        customer: String,
        currency: Currency,
        lines: Vec<Line>,
    ) -> Result<OrderView, ServiceError>;

    /// Executes a command on an existing order.
    async fn change_order(
        &self,
        meta: &RequestMeta,
        id: Uuid,
        command: OrderCommand,
    ) -> Result<OrderView, ServiceError>;

    /// An order, from its aggregate.
    async fn order(&self, id: Uuid) -> Result<OrderView, ServiceError>;

    /// Orders from the `order_summaries` read model.
    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, ServiceError>;

    /// Totals from the `customer_totals` read model.
    async fn customer_totals(
        &self,
        customer: Option<&str>,
    ) -> Result<Vec<CustomerTotals>, ServiceError>;

    /// Adds stock of a SKU.
    async fn restock(
        &self,
        meta: &RequestMeta,
        sku: &str,
        quantity: u32,
    ) -> Result<StockView, ServiceError>;

    /// The stock of a SKU.
    async fn stock(&self, sku: &str) -> Result<StockView, ServiceError>;

    /// Every projection's position, lag and parked count.
    async fn projections(&self) -> Result<Vec<ProjectionView>, ServiceError>;

    /// Rebuilds a projection from the start of the log.
    async fn rebuild_projection(&self, name: &str) -> Result<ProjectionView, ServiceError>;

    /// Whether the service can take traffic.
    async fn readiness(&self) -> Readiness;
}
