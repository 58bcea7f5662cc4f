//! Read models in the PostgreSQL schema of the event store, written in the
//! projection's transaction.

use std::sync::Arc;

use async_trait::async_trait;
use es_core::BoxError;
use es_postgres::{PgEventStore, PgTx};

use super::{CustomerTotals, OrderFilter, OrderOwner, OrderSummary, ReadModelStore};
use crate::domain::{Currency, OrderStatus};

/// The statements of the read models, with the store's schema in their
/// table names (es-postgres accepts only plain lower-case schema names, so
/// quoting them is enough).
#[derive(Debug)]
struct Statements {
    create: Vec<String>,
    summary: String,
    put_summary: String,
    clear_summaries: String,
    owner: String,
    put_owner: String,
    totals: String,
    put_totals: String,
    clear_totals: String,
    clear_owners: String,
    list_orders: String,
    list_totals: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let summaries = format!("\"{schema}\".rm_order_summaries");
        let owners = format!("\"{schema}\".rm_order_owners");
        let totals = format!("\"{schema}\".rm_customer_totals");
        let columns = "customer, currency, orders, shipped, cancelled, paid";
        Self {
            create: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {summaries} (
                        order_id TEXT PRIMARY KEY,
                        customer TEXT NOT NULL,
                        status TEXT NOT NULL,
                        summary TEXT NOT NULL
                    )"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS rm_order_summaries_customer
                     ON {summaries} (customer, order_id)"
                ),
                format!(
                    "CREATE INDEX IF NOT EXISTS rm_order_summaries_status
                     ON {summaries} (status, order_id)"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {owners} (
                        order_id TEXT PRIMARY KEY,
                        customer TEXT NOT NULL,
                        currency TEXT NOT NULL
                    )"
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {totals} (
                        customer TEXT NOT NULL,
                        currency TEXT NOT NULL,
                        orders BIGINT NOT NULL,
                        shipped BIGINT NOT NULL,
                        cancelled BIGINT NOT NULL,
                        paid BIGINT NOT NULL,
                        PRIMARY KEY (customer, currency)
                    )"
                ),
            ],
            summary: format!("SELECT summary FROM {summaries} WHERE order_id = $1"),
            put_summary: format!(
                "INSERT INTO {summaries} (order_id, customer, status, summary) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (order_id) DO UPDATE SET customer = excluded.customer,
                    status = excluded.status, summary = excluded.summary"
            ),
            clear_summaries: format!("DELETE FROM {summaries}"),
            owner: format!("SELECT customer, currency FROM {owners} WHERE order_id = $1"),
            put_owner: format!(
                "INSERT INTO {owners} (order_id, customer, currency) VALUES ($1, $2, $3)
                 ON CONFLICT (order_id) DO UPDATE SET customer = excluded.customer,
                    currency = excluded.currency"
            ),
            totals: format!(
                "SELECT {columns} FROM {totals} WHERE customer = $1 AND currency = $2"
            ),
            put_totals: format!(
                "INSERT INTO {totals} ({columns}) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (customer, currency) DO UPDATE SET orders = excluded.orders,
                    shipped = excluded.shipped, cancelled = excluded.cancelled, paid = excluded.paid"
            ),
            clear_totals: format!("DELETE FROM {totals}"),
            clear_owners: format!("DELETE FROM {owners}"),
            list_orders: format!(
                "SELECT summary FROM {summaries}
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR customer = $2)
                 ORDER BY order_id LIMIT $3"
            ),
            list_totals: format!(
                "SELECT {columns} FROM {totals} WHERE $1::text IS NULL OR customer = $1
                 ORDER BY customer, currency"
            ),
        }
    }
}

/// Read models in the event store's PostgreSQL schema. The projections write
/// them on the [`PgTx`] the runner opens for each batch, so a batch's rows
/// and the projection's checkpoint commit together; the API reads them on
/// the store's pool.
#[derive(Clone, Debug)]
pub struct PgReadModels {
    store: PgEventStore,
    sql: Arc<Statements>,
}

impl PgReadModels {
    /// The read models of a store, creating their tables in its schema when
    /// missing.
    pub async fn open(store: PgEventStore) -> Result<Self, es_core::Error> {
        let sql = Statements::new(store.schema());
        let cannot = |e| es_core::Error::store("cannot create the read model tables", e);
        let mut tx = store.begin().await?;
        for statement in &sql.create {
            sqlx::query(statement)
                .execute(tx.conn())
                .await
                .map_err(cannot)?;
        }
        tx.into_inner().commit().await.map_err(cannot)?;
        Ok(Self {
            store,
            sql: Arc::new(sql),
        })
    }
}

fn to_i64(value: u64) -> Result<i64, BoxError> {
    i64::try_from(value).map_err(|_| format!("{value} does not fit in a BIGINT").into())
}

fn to_u64(value: i64) -> Result<u64, BoxError> {
    u64::try_from(value).map_err(|_| format!("{value} is negative").into())
}

type TotalsRow = (String, String, i64, i64, i64, i64);

fn totals_from_row(row: TotalsRow) -> Result<CustomerTotals, BoxError> {
    let (customer, currency, orders, shipped, cancelled, paid) = row;
    Ok(CustomerTotals {
        customer,
        currency: Currency::new(currency)?,
        orders: to_u64(orders)?,
        shipped: to_u64(shipped)?,
        cancelled: to_u64(cancelled)?,
        paid: to_u64(paid)?,
    })
}

#[async_trait]
impl ReadModelStore for PgReadModels {
    type Tx = PgTx;

    async fn summary(
        &self,
        tx: &mut PgTx,
        order_id: &str,
    ) -> Result<Option<OrderSummary>, BoxError> {
        let json: Option<String> = sqlx::query_scalar(&self.sql.summary)
            .bind(order_id)
            .fetch_optional(tx.conn())
            .await?;
        json.map(|json| serde_json::from_str(&json).map_err(Into::into))
            .transpose()
    }

    async fn put_summary(&self, tx: &mut PgTx, summary: &OrderSummary) -> Result<(), BoxError> {
        sqlx::query(&self.sql.put_summary)
            .bind(&summary.order_id)
            .bind(&summary.customer)
            .bind(summary.status.as_str())
            .bind(serde_json::to_string(summary)?)
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn clear_summaries(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        sqlx::query(&self.sql.clear_summaries)
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn owner(&self, tx: &mut PgTx, order_id: &str) -> Result<Option<OrderOwner>, BoxError> {
        let row: Option<(String, String)> = sqlx::query_as(&self.sql.owner)
            .bind(order_id)
            .fetch_optional(tx.conn())
            .await?;
        row.map(|(customer, currency)| {
            Ok(OrderOwner {
                customer,
                currency: Currency::new(currency)?,
            })
        })
        .transpose()
    }

    async fn put_owner(
        &self,
        tx: &mut PgTx,
        order_id: &str,
        owner: &OrderOwner,
    ) -> Result<(), BoxError> {
        sqlx::query(&self.sql.put_owner)
            .bind(order_id)
            .bind(&owner.customer)
            .bind(owner.currency.as_str())
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn totals(
        &self,
        tx: &mut PgTx,
        owner: &OrderOwner,
    ) -> Result<Option<CustomerTotals>, BoxError> {
        let row: Option<TotalsRow> = sqlx::query_as(&self.sql.totals)
            .bind(&owner.customer)
            .bind(owner.currency.as_str())
            .fetch_optional(tx.conn())
            .await?;
        row.map(totals_from_row).transpose()
    }

    async fn put_totals(&self, tx: &mut PgTx, totals: &CustomerTotals) -> Result<(), BoxError> {
        sqlx::query(&self.sql.put_totals)
            .bind(&totals.customer)
            .bind(totals.currency.as_str())
            .bind(to_i64(totals.orders)?)
            .bind(to_i64(totals.shipped)?)
            .bind(to_i64(totals.cancelled)?)
            .bind(to_i64(totals.paid)?)
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn clear_totals(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        sqlx::query(&self.sql.clear_totals)
            .execute(tx.conn())
            .await?;
        sqlx::query(&self.sql.clear_owners)
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, BoxError> {
        let rows: Vec<String> = sqlx::query_scalar(&self.sql.list_orders)
            .bind(filter.status.map(OrderStatus::as_str))
            .bind(filter.customer.as_deref())
            .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
            .fetch_all(self.store.pool())
            .await?;
        rows.iter()
            .map(|json| serde_json::from_str(json).map_err(Into::into))
            .collect()
    }

    async fn list_totals(&self, customer: Option<&str>) -> Result<Vec<CustomerTotals>, BoxError> {
        let rows: Vec<TotalsRow> = sqlx::query_as(&self.sql.list_totals)
            .bind(customer)
            .fetch_all(self.store.pool())
            .await?;
        rows.into_iter().map(totals_from_row).collect()
    }
}
