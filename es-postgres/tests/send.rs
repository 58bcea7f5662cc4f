//! The store's futures are `Send`: they can be spawned on tokio tasks (a
//! compile-time check; the test itself does nothing at run time).

use std::time::Duration;

use es_core::{AppendOptions, EventStore, ExpectedVersion, ProjectionRunner, StreamId};
use es_postgres::{PgEventStore, PgStoreOptions, PgTx};

fn assert_send<T: Send>(_: &T) {}

struct Nothing;

#[async_trait::async_trait]
impl es_core::Projection for Nothing {
    type Context = PgTx;
    const NAME: &'static str = "nothing";
    fn event_types() -> Option<Vec<String>> {
        None
    }
    async fn handle(
        &self,
        _: &mut PgTx,
        _: &es_core::RecordedEvent,
    ) -> Result<(), es_core::BoxError> {
        Ok(())
    }
    async fn reset(&self, _: &mut PgTx) -> Result<(), es_core::BoxError> {
        Ok(())
    }
}

/// Never called: it only has to compile.
#[allow(dead_code)]
fn futures_are_send(store: &PgEventStore, pool: sqlx::PgPool) {
    assert_send(&PgEventStore::connect("postgres://127.0.0.1/test"));
    assert_send(&PgStoreOptions::new().open(pool));
    let stream = StreamId::new("s");
    let options = AppendOptions::default();
    assert_send(&store.append(&stream, ExpectedVersion::Any, Vec::new(), &options));
    assert_send(&store.wait_for_events(es_core::Position::START, Duration::ZERO));
    assert_send(&store.begin());
    assert_send(&store.try_lease("p"));
    assert_send(&store.run_leased(
        |leased| ProjectionRunner::new(leased, Nothing),
        Duration::from_secs(1),
        std::future::pending(),
    ));
}

#[test]
fn store_futures_can_be_spawned() {
    // The check is `futures_are_send` compiling.
    let _ = futures_are_send;
}
