//! Projections applied inside the append's transaction.

use async_trait::async_trait;
use es_core::{BoxError, EventFilter, Projection, RecordedEvent};

use crate::tx::PgTx;

/// A projection with `Context = PgTx`, without its type.
#[async_trait]
pub(crate) trait InlineHandler: Send + Sync {
    /// The projection's name.
    fn name(&self) -> &'static str;

    /// Whether the projection handles events of this stored type.
    fn wants(&self, event_type: &str) -> bool;

    /// Handles one appended event in the append's transaction.
    async fn handle(&self, tx: &mut PgTx, event: &RecordedEvent) -> Result<(), BoxError>;
}

pub(crate) struct InlineProjection<P> {
    projection: P,
    filter: EventFilter,
}

impl<P: Projection<Context = PgTx>> InlineProjection<P> {
    pub(crate) fn new(projection: P) -> Self {
        Self {
            projection,
            filter: EventFilter {
                event_types: P::event_types(),
            },
        }
    }
}

#[async_trait]
impl<P: Projection<Context = PgTx>> InlineHandler for InlineProjection<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn wants(&self, event_type: &str) -> bool {
        self.filter.matches(event_type)
    }

    async fn handle(&self, tx: &mut PgTx, event: &RecordedEvent) -> Result<(), BoxError> {
        self.projection.handle(tx, event).await
    }
}
