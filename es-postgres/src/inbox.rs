//! The inbox: per consumer and stream, the highest version applied of events
//! that come from outside the store's own log, claimed in the consumer's
//! transaction.

use async_trait::async_trait;
use es_core::{Inbox, Result, StreamId, Version};

use crate::row::{db_error, to_i64};
use crate::store::PgEventStore;
use crate::tx::PgTx;

/// Claims run in the consumer's [`PgTx`]: a claim and the read model's
/// writes commit together, or roll back together. Two transactions claiming
/// the same stream for the same consumer take turns on the inbox row: the
/// second sees what the first committed, so only one of them claims a
/// version.
#[async_trait]
impl Inbox<PgTx> for PgEventStore {
    async fn claim(
        &self,
        context: &mut PgTx,
        consumer: &str,
        stream_id: &StreamId,
        version: Version,
    ) -> Result<bool> {
        let claimed = sqlx::query(&self.sql().claim)
            .bind(consumer)
            .bind(stream_id.as_str())
            .bind(to_i64(version.0, "version")?)
            .fetch_optional(context.conn())
            .await
            .map_err(db_error(format!(
                "cannot claim version {version} of `{stream_id}` for consumer `{consumer}`"
            )))?;
        Ok(claimed.is_some())
    }

    async fn reset_claims(&self, context: &mut PgTx, consumer: &str) -> Result<()> {
        sqlx::query(&self.sql().reset_claims)
            .bind(consumer)
            .execute(context.conn())
            .await
            .map_err(db_error(format!(
                "cannot reset the claims of consumer `{consumer}`"
            )))?;
        Ok(())
    }
}
