//! The inbox: per consumer and stream, the highest version applied of events
//! that come from outside the store's own log, claimed in the consumer's
//! transaction.

use async_trait::async_trait;
use es_core::{Inbox, StreamId, Version};

use crate::error::SqlContext;
use crate::rows;
use crate::store::SqliteEventStore;
use crate::tx::SqliteTx;

/// Records the version when it is higher than the stored one; a returned
/// row means it was recorded.
const CLAIM: &str = "INSERT INTO es_inbox (consumer, stream_id, version) VALUES (?1, ?2, ?3) \
     ON CONFLICT (consumer, stream_id) DO UPDATE SET version = excluded.version \
     WHERE es_inbox.version < excluded.version \
     RETURNING 1";

const RESET: &str = "DELETE FROM es_inbox WHERE consumer = ?1";

/// Refuses a transaction of another store: its claims would land in another file.
fn check_store(
    store: &SqliteEventStore,
    context: &SqliteTx,
    consumer: &str,
) -> es_core::Result<()> {
    if context.belongs_to(store) {
        return Ok(());
    }
    Err(es_core::Error::Store {
        message: format!("consumer `{consumer}` used a transaction of another SQLite store"),
        source: None,
    })
}

/// Claims run in the consumer's [`SqliteTx`]: a claim and the read model's
/// writes commit together, or roll back together.
#[async_trait]
impl Inbox<SqliteTx> for SqliteEventStore {
    async fn claim(
        &self,
        context: &mut SqliteTx,
        consumer: &str,
        stream_id: &StreamId,
        version: Version,
    ) -> es_core::Result<bool> {
        check_store(self, context, consumer)?;
        let claimed = sqlx::query(CLAIM)
            .bind(consumer)
            .bind(stream_id.as_str())
            .bind(rows::to_i64(version.0, "version")?)
            .fetch_optional(context.conn())
            .await
            .ctx(|| {
                format!("cannot claim version {version} of `{stream_id}` for consumer `{consumer}`")
            })?;
        Ok(claimed.is_some())
    }

    async fn reset_claims(&self, context: &mut SqliteTx, consumer: &str) -> es_core::Result<()> {
        check_store(self, context, consumer)?;
        sqlx::query(RESET)
            .bind(consumer)
            .execute(context.conn())
            .await
            .ctx(|| format!("cannot reset the claims of consumer `{consumer}`"))?;
        Ok(())
    }
}
