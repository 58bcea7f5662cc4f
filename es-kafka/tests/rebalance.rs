//! Two consumers of one group over a PostgreSQL read model: partitions move
//! between them as one joins and the other leaves, and every event's effect
//! is applied once.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::*;
use es_core::{BoxError, Envelope, EventStore, Handles, InMemoryStore, ResetProjection};
use es_kafka::{KafkaConfig, KafkaProjectionRunner, KafkaRelay, TopicMapping};
use es_postgres::{PgEventStore, PgTx};

/// `ItemTotals` with its table in PostgreSQL.
#[derive(es_core::Projection)]
#[projection(name = "item_totals", events(ItemEvent), context = PgTx)]
struct PgItemTotals {
    /// The schema of the table.
    schema: String,
}

/// How long each event takes, so that the consumers overlap.
const DELAY: Duration = Duration::from_millis(2);

#[async_trait]
impl Handles<ItemEvent> for PgItemTotals {
    async fn handle_event(
        &self,
        tx: &mut PgTx,
        event: Envelope<ItemEvent>,
    ) -> Result<(), BoxError> {
        tokio::time::sleep(DELAY).await;
        let delta = event.event.delta();
        sqlx::query(&format!(
            "INSERT INTO {}.item_totals AS t (stream_id, total, events, last_version)
             VALUES ($1, $2, 1, $3)
             ON CONFLICT (stream_id) DO UPDATE SET total = t.total + excluded.total,
                 events = t.events + 1, last_version = excluded.last_version",
            self.schema
        ))
        .bind(event.stream_id.as_str())
        .bind(delta)
        .bind(event.version.0 as i64)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ResetProjection for PgItemTotals {
    async fn reset_read_model(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        sqlx::query(&format!("DELETE FROM {}.item_totals", self.schema))
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

/// A store in a new schema of the local server, with the read model's table.
async fn pg_store() -> Option<PgEventStore> {
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let schema = unique("kafka").replace('-', "_");
    let store = match PgEventStore::options().schema(&schema).connect(url).await {
        Ok(store) => store,
        Err(error) if in_ci() => panic!("PostgreSQL is required at {url} when CI=true: {error}"),
        Err(error) => {
            eprintln!("SKIPPED: PostgreSQL is unreachable at {url} ({error})");
            return None;
        }
    };
    sqlx::query(&format!(
        "CREATE TABLE {schema}.item_totals (stream_id TEXT PRIMARY KEY, total BIGINT NOT NULL,
             events BIGINT NOT NULL, last_version BIGINT NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    Some(store)
}

async fn pg_totals(store: &PgEventStore) -> Totals {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT stream_id, total, events, last_version FROM {}.item_totals",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(s, t, e, v)| (s, (t, e, v)))
        .collect()
}

async fn drop_schema(store: &PgEventStore) {
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", store.schema()))
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_between_consumers_and_effects_apply_once() {
    let Some(bootstrap) = broker() else { return };
    let Some(read_model) = pg_store().await else {
        return;
    };
    let source = InMemoryStore::new();
    fill(&source, 60, 100, 10).await;
    let head = source.head().await.unwrap().0;
    let topic = unique("rebalance");
    create_topic(&bootstrap, &topic, 4).await;
    KafkaRelay::new(source.clone(), &KafkaConfig::new(&bootstrap))
        .unwrap()
        .topics(TopicMapping::single(&topic))
        .catch_up(3)
        .await
        .unwrap();

    let config = KafkaConfig::new(&bootstrap);
    let group = unique("group");
    let consumer = || {
        let projection = PgItemTotals {
            schema: read_model.schema().to_owned(),
        };
        KafkaProjectionRunner::new(&config, &group, [&topic], read_model.clone(), projection)
            .unwrap()
            .batch_size(100)
    };
    let first = consumer();
    let running_first = first.spawn();
    eventually(
        "the first consumer started",
        Duration::from_secs(60),
        || async {
            assert!(!running_first.is_finished(), "the first consumer failed");
            first.stats().handled() >= 500
        },
    )
    .await;
    let second = consumer();
    let running_second = second.spawn();
    eventually(
        "the second consumer took partitions",
        Duration::from_secs(60),
        || async {
            assert!(!running_second.is_finished(), "the second consumer failed");
            second.stats().handled() >= 200
                || first.stats().handled() + second.stats().handled() >= head
        },
    )
    .await;
    running_first.stop().await.unwrap();
    let events = || async {
        pg_totals(&read_model)
            .await
            .values()
            .map(|t| t.1)
            .sum::<i64>() as u64
    };
    eventually("every event applied", Duration::from_secs(120), || async {
        events().await == head
    })
    .await;
    running_second.stop().await.unwrap();
    assert_eq!(pg_totals(&read_model).await, expected_totals(&source).await);
    assert!(first.stats().handled() > 0 && second.stats().handled() > 0);
    assert_eq!(
        first.stats().handled() + second.stats().handled(),
        head,
        "each event handled once"
    );
    drop_schema(&read_model).await;
}
