//! Read models in the SQLite file of the event store, written in the
//! projection's transaction.

use async_trait::async_trait;
use es_core::BoxError;
use es_sqlite::sqlx::{self, SqliteConnection};
use es_sqlite::{SqliteEventStore, SqliteTx};

use super::{CustomerTotals, OrderFilter, OrderOwner, OrderSummary, ReadModelStore};
use crate::domain::{Currency, OrderStatus};

/// The read models' tables, created when missing. Prefixed `rm_` beside the
/// store's own `es_` tables.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS rm_order_summaries (
        order_id TEXT PRIMARY KEY NOT NULL,
        customer TEXT NOT NULL,
        status TEXT NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS rm_order_summaries_customer
        ON rm_order_summaries (customer, order_id);
    CREATE INDEX IF NOT EXISTS rm_order_summaries_status
        ON rm_order_summaries (status, order_id);
    CREATE TABLE IF NOT EXISTS rm_order_owners (
        order_id TEXT PRIMARY KEY NOT NULL,
        customer TEXT NOT NULL,
        currency TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS rm_customer_totals (
        customer TEXT NOT NULL,
        currency TEXT NOT NULL,
        orders INTEGER NOT NULL,
        shipped INTEGER NOT NULL,
        cancelled INTEGER NOT NULL,
        paid INTEGER NOT NULL,
        PRIMARY KEY (customer, currency)
    );
";

/// Read models in the event store's SQLite file. The projections write them
/// on the [`SqliteTx`] the runner opens for each batch, so a batch's rows and
/// the projection's checkpoint commit together (or not at all); the API
/// reads them on the store's read connections.
#[derive(Clone, Debug)]
pub struct SqliteReadModels {
    store: SqliteEventStore,
}

impl SqliteReadModels {
    /// The read models of a store, creating their tables when missing.
    pub async fn open(store: SqliteEventStore) -> Result<Self, es_core::Error> {
        let mut tx = store.transaction().await?;
        sqlx::raw_sql(SCHEMA)
            .execute(tx.conn())
            .await
            .map_err(|e| es_core::Error::store("cannot create the read model tables", e))?;
        tx.commit().await?;
        Ok(Self { store })
    }
}

fn to_i64(value: u64) -> Result<i64, BoxError> {
    i64::try_from(value).map_err(|_| format!("{value} does not fit in an SQLite integer").into())
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

async fn list_orders_on(
    conn: &mut SqliteConnection,
    filter: &OrderFilter,
) -> Result<Vec<OrderSummary>, BoxError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT summary FROM rm_order_summaries
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR customer = ?2)
         ORDER BY order_id LIMIT ?3",
    )
    .bind(filter.status.map(OrderStatus::as_str))
    .bind(filter.customer.as_deref())
    .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|json| serde_json::from_str(json).map_err(Into::into))
        .collect()
}

#[async_trait]
impl ReadModelStore for SqliteReadModels {
    type Tx = SqliteTx;

    async fn summary(
        &self,
        tx: &mut SqliteTx,
        order_id: &str,
    ) -> Result<Option<OrderSummary>, BoxError> {
        let json: Option<String> =
            sqlx::query_scalar("SELECT summary FROM rm_order_summaries WHERE order_id = ?")
                .bind(order_id)
                .fetch_optional(tx.conn())
                .await?;
        json.map(|json| serde_json::from_str(&json).map_err(Into::into))
            .transpose()
    }

    async fn put_summary(&self, tx: &mut SqliteTx, summary: &OrderSummary) -> Result<(), BoxError> {
        sqlx::query(
            "INSERT INTO rm_order_summaries (order_id, customer, status, summary) VALUES (?, ?, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET
                customer = excluded.customer, status = excluded.status, summary = excluded.summary",
        )
        .bind(&summary.order_id)
        .bind(&summary.customer)
        .bind(summary.status.as_str())
        .bind(serde_json::to_string(summary)?)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn clear_summaries(&self, tx: &mut SqliteTx) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM rm_order_summaries")
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn owner(
        &self,
        tx: &mut SqliteTx,
        order_id: &str,
    ) -> Result<Option<OrderOwner>, BoxError> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT customer, currency FROM rm_order_owners WHERE order_id = ?")
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
        tx: &mut SqliteTx,
        order_id: &str,
        owner: &OrderOwner,
    ) -> Result<(), BoxError> {
        sqlx::query(
            "INSERT INTO rm_order_owners (order_id, customer, currency) VALUES (?, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET customer = excluded.customer, currency = excluded.currency",
        )
        .bind(order_id)
        .bind(&owner.customer)
        .bind(owner.currency.as_str())
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn totals(
        &self,
        tx: &mut SqliteTx,
        owner: &OrderOwner,
    ) -> Result<Option<CustomerTotals>, BoxError> {
        let row: Option<TotalsRow> = sqlx::query_as(
            "SELECT customer, currency, orders, shipped, cancelled, paid FROM rm_customer_totals
             WHERE customer = ? AND currency = ?",
        )
        .bind(&owner.customer)
        .bind(owner.currency.as_str())
        .fetch_optional(tx.conn())
        .await?;
        row.map(totals_from_row).transpose()
    }

    async fn put_totals(&self, tx: &mut SqliteTx, totals: &CustomerTotals) -> Result<(), BoxError> {
        sqlx::query(
            "INSERT INTO rm_customer_totals (customer, currency, orders, shipped, cancelled, paid)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (customer, currency) DO UPDATE SET orders = excluded.orders,
                shipped = excluded.shipped, cancelled = excluded.cancelled, paid = excluded.paid",
        )
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

    async fn clear_totals(&self, tx: &mut SqliteTx) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM rm_customer_totals")
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM rm_order_owners")
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<OrderSummary>, BoxError> {
        let mut reader = self.store.reader().await?;
        list_orders_on(reader.conn(), filter).await
    }

    async fn list_totals(&self, customer: Option<&str>) -> Result<Vec<CustomerTotals>, BoxError> {
        let mut reader = self.store.reader().await?;
        let rows: Vec<TotalsRow> = sqlx::query_as(
            "SELECT customer, currency, orders, shipped, cancelled, paid FROM rm_customer_totals
             WHERE ?1 IS NULL OR customer = ?1 ORDER BY customer, currency",
        )
        .bind(customer)
        .fetch_all(reader.conn())
        .await?;
        rows.into_iter().map(totals_from_row).collect()
    }
}
