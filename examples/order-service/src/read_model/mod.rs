//! Read models: order summaries and per-customer totals, and where they are
//! kept (in memory, or in the database of the events: the SQLite file or the
//! PostgreSQL schema).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use es_core::BoxError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{Currency, OrderStatus};

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// One row of the order list: an order as the `order_summaries` projection
/// sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderSummary {
    /// The order's id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// The order's currency.
    pub currency: Currency,
    /// The sum of the lines, in minor units.
    pub total: u64,
    /// What was paid (net of refunds), in minor units.
    pub paid: u64,
    /// The lines.
    pub lines: Vec<SummaryLine>,
    /// When the order was placed.
    pub placed_at: DateTime<Utc>,
    /// When the order last changed.
    pub updated_at: DateTime<Utc>,
    /// The version of the order's stream this row includes.
    pub version: u64,
}

/// A line of an [`OrderSummary`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SummaryLine {
    /// The SKU.
    pub sku: String,
    /// How many units.
    pub quantity: u32,
    /// The unit price in minor units of the order's currency.
    pub unit_price: u64,
    /// Whether stock is reserved for it.
    pub reserved: bool,
}

/// What one customer ordered, in one currency: the `customer_totals`
/// projection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CustomerTotals {
    /// The customer.
    pub customer: String,
    /// The currency of these totals.
    pub currency: Currency,
    /// Orders placed.
    pub orders: u64,
    /// Orders shipped.
    pub shipped: u64,
    /// Orders cancelled.
    pub cancelled: u64,
    /// Money received, net of refunds, in minor units.
    pub paid: u64,
}

impl CustomerTotals {
    /// Totals of a customer without orders yet.
    pub fn new(customer: String, currency: Currency) -> Self {
        Self {
            customer,
            currency,
            orders: 0,
            shipped: 0,
            cancelled: 0,
            paid: 0,
        }
    }
}

/// The customer and currency of an order, as the totals projection keeps
/// them to attribute later events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderOwner {
    /// Who ordered.
    pub customer: String,
    /// In which currency.
    pub currency: Currency,
}

/// Which orders to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Only orders with this status.
    pub status: Option<OrderStatus>,
    /// Only orders of this customer.
    pub customer: Option<String>,
    /// At most this many, oldest first.
    pub limit: usize,
}

/// Where the read models are kept: the storage the projections write
/// through and the queries the API reads with.
///
/// `Tx` is the context the projection runner opens for each batch: `()` for
/// [`MemoryReadModels`], the store's transaction for [`SqliteReadModels`]
/// (then the rows and the projection's checkpoint commit together).
#[async_trait]
pub trait ReadModelStore: Clone + Send + Sync + 'static {
    /// The projections' context.
    type Tx: Send;

    /// An order's summary.
    async fn summary(
        &self,
        tx: &mut Self::Tx,
        order_id: &str,
    ) -> Result<Option<OrderSummary>, BoxError>;
    /// Writes an order's summary.
    async fn put_summary(&self, tx: &mut Self::Tx, summary: &OrderSummary) -> Result<(), BoxError>;
    /// Removes every summary.
    async fn clear_summaries(&self, tx: &mut Self::Tx) -> Result<(), BoxError>;

    /// The customer and currency of an order.
    async fn owner(
        &self,
        tx: &mut Self::Tx,
        order_id: &str,
    ) -> Result<Option<OrderOwner>, BoxError>;
    /// Remembers the customer and currency of an order.
    async fn put_owner(
        &self,
        tx: &mut Self::Tx,
        order_id: &str,
        owner: &OrderOwner,
    ) -> Result<(), BoxError>;
    /// A customer's totals in a currency.
    async fn totals(
        &self,
        tx: &mut Self::Tx,
        owner: &OrderOwner,
    ) -> Result<Option<CustomerTotals>, BoxError>;
    /// Writes a customer's totals.
    async fn put_totals(&self, tx: &mut Self::Tx, totals: &CustomerTotals) -> Result<(), BoxError>;
    /// Removes every total and owner.
    async fn clear_totals(&self, tx: &mut Self::Tx) -> Result<(), BoxError>;

    /// Lists orders, oldest first.
    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, BoxError>;
    /// The totals of one customer, or of every customer, by customer and currency.
    async fn list_totals(&self, customer: Option<&str>) -> Result<Vec<CustomerTotals>, BoxError>;
}

pub use postgres::PgReadModels;
pub use sqlite::SqliteReadModels;

/// Read models in memory, for `--store memory` and tests. Cloning gives
/// another handle to the same data.
#[derive(Clone, Debug, Default)]
pub struct MemoryReadModels {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    summaries: BTreeMap<String, OrderSummary>,
    owners: HashMap<String, OrderOwner>,
    totals: BTreeMap<(String, Currency), CustomerTotals>,
}

impl MemoryReadModels {
    /// Empty read models.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // Every update is a single insert or clear: a panic cannot leave it half done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ReadModelStore for MemoryReadModels {
    type Tx = ();

    async fn summary(&self, (): &mut (), order_id: &str) -> Result<Option<OrderSummary>, BoxError> {
        Ok(self.lock().summaries.get(order_id).cloned())
    }

    async fn put_summary(&self, (): &mut (), summary: &OrderSummary) -> Result<(), BoxError> {
        self.lock()
            .summaries
            .insert(summary.order_id.clone(), summary.clone());
        Ok(())
    }

    async fn clear_summaries(&self, (): &mut ()) -> Result<(), BoxError> {
        self.lock().summaries.clear();
        Ok(())
    }

    async fn owner(&self, (): &mut (), order_id: &str) -> Result<Option<OrderOwner>, BoxError> {
        Ok(self.lock().owners.get(order_id).cloned())
    }

    async fn put_owner(
        &self,
        (): &mut (),
        order_id: &str,
        owner: &OrderOwner,
    ) -> Result<(), BoxError> {
        self.lock()
            .owners
            .insert(order_id.to_owned(), owner.clone());
        Ok(())
    }

    async fn totals(
        &self,
        (): &mut (),
        owner: &OrderOwner,
    ) -> Result<Option<CustomerTotals>, BoxError> {
        let key = (owner.customer.clone(), owner.currency.clone());
        Ok(self.lock().totals.get(&key).cloned())
    }

    async fn put_totals(&self, (): &mut (), totals: &CustomerTotals) -> Result<(), BoxError> {
        let key = (totals.customer.clone(), totals.currency.clone());
        self.lock().totals.insert(key, totals.clone());
        Ok(())
    }

    async fn clear_totals(&self, (): &mut ()) -> Result<(), BoxError> {
        let mut state = self.lock();
        state.totals.clear();
        state.owners.clear();
        Ok(())
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, BoxError> {
        Ok(self
            .lock()
            .summaries
            .values()
            .filter(|s| filter.status.is_none_or(|status| s.status == status))
            .filter(|s| filter.customer.as_ref().is_none_or(|c| &s.customer == c))
            .take(filter.limit)
            .cloned()
            .collect())
    }

    async fn list_totals(&self, customer: Option<&str>) -> Result<Vec<CustomerTotals>, BoxError> {
        Ok(self
            .lock()
            .totals
            .values()
            .filter(|t| customer.is_none_or(|c| t.customer == c))
            .cloned()
            .collect())
    }
}
