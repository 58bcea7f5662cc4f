//! The transaction context of projections whose read model lives in the
//! store's database.

use async_trait::async_trait;
use es_core::{Checkpoint, ContextProvider, Result};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::row::db_error;
use crate::store::{save_checkpoint_on, PgEventStore};

/// A PostgreSQL transaction handed to projection handlers
/// (`type Context = PgTx`).
///
/// In catch-up mode the projection runner opens it, the handler writes the
/// read model through [`conn`](PgTx::conn), and the runner commits it
/// together with the projection's checkpoint: a batch's effect and its
/// checkpoint are committed at once or not at all. In inline mode it is the
/// append's own transaction.
///
/// ```no_run
/// use es_core::{BoxError, Projection, RecordedEvent};
/// use es_postgres::PgTx;
///
/// struct EventCount;
///
/// #[async_trait::async_trait]
/// impl Projection for EventCount {
///     type Context = PgTx;
///     const NAME: &'static str = "event_count";
///     fn event_types() -> Option<Vec<String>> { None }
///     async fn handle(&self, tx: &mut PgTx, event: &RecordedEvent) -> Result<(), BoxError> {
///         sqlx::query("INSERT INTO event_counts (stream_id, n) VALUES ($1, 1)
///                      ON CONFLICT (stream_id) DO UPDATE SET n = event_counts.n + 1")
///             .bind(event.stream_id.as_str())
///             .execute(tx.conn())
///             .await?;
///         Ok(())
///     }
///     async fn reset(&self, tx: &mut PgTx) -> Result<(), BoxError> {
///         sqlx::query("DELETE FROM event_counts").execute(tx.conn()).await?;
///         Ok(())
///     }
/// }
/// ```
#[derive(Debug)]
pub struct PgTx {
    tx: Transaction<'static, Postgres>,
}

impl PgTx {
    pub(crate) fn new(tx: Transaction<'static, Postgres>) -> Self {
        Self { tx }
    }

    /// The transaction's connection, to run queries on:
    /// `sqlx::query(…).execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The sqlx transaction itself (for savepoints with `begin`).
    pub fn transaction(&mut self) -> &mut Transaction<'static, Postgres> {
        &mut self.tx
    }

    /// The sqlx transaction, to commit or roll back by hand.
    pub fn into_inner(self) -> Transaction<'static, Postgres> {
        self.tx
    }
}

impl AsMut<PgConnection> for PgTx {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[async_trait]
impl ContextProvider<PgTx> for PgEventStore {
    async fn begin(&self) -> Result<PgTx> {
        PgEventStore::begin(self).await
    }

    async fn commit(
        &self,
        mut context: PgTx,
        projection: &str,
        checkpoint: Option<Checkpoint>,
    ) -> Result<()> {
        if let Some(checkpoint) = checkpoint {
            save_checkpoint_on(context.conn(), self.sql(), projection, checkpoint).await?;
        }
        context.tx.commit().await.map_err(db_error(format!(
            "cannot commit the batch of projection `{projection}`"
        )))
    }

    fn is_transactional(&self) -> bool {
        true
    }
}
