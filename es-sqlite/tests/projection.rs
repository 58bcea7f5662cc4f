//! Transactional projections: a projection with `type Context = SqliteTx`
//! writes a row per event into a read-model table of the store's file. Its
//! rows and its checkpoint commit together: a handler failure or a batch cut
//! short mid-way leaves both at the last committed batch, parked events
//! commit with the checkpoint that passes them, and a rebuild resets the
//! read model and the checkpoint in one transaction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use es_core::{
    BoxError, CheckpointStore, Envelope, Event, EventStore, ExpectedVersion, FailurePolicy,
    Handles, Metadata, Position, Projection, ProjectionRunner, ResetProjection, StreamId, Version,
};
use es_sqlite::{SqliteEventStore, SqliteTx};
use serde::{Deserialize, Serialize};

/// The events the read model is built from.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum OrderEvent {
    /// An order was placed.
    Placed {
        /// Its total.
        total: u64,
    },
    /// It was shipped.
    Shipped,
}

/// Switches that make the projection fail, to simulate faults.
#[derive(Debug, Default)]
struct Faults {
    /// The handler writes its row, then fails, at this position (0: never).
    fail_at: AtomicU64,
    /// The handler writes its row, then waits forever, at this position.
    hang_at: AtomicU64,
    /// Set when the handler reached `hang_at`.
    hanging: tokio::sync::Notify,
    /// `reset` deletes the rows, then fails.
    fail_reset: AtomicBool,
}

/// One row per event in `order_rows`, in the store's own file.
#[derive(es_core::Projection)]
#[projection(name = "order_rows", events(OrderEvent), context = SqliteTx)]
struct OrderRows {
    faults: Arc<Faults>,
}

#[async_trait]
impl Handles<OrderEvent> for OrderRows {
    async fn handle_event(
        &self,
        tx: &mut SqliteTx,
        event: Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        let total = match event.event {
            OrderEvent::Placed { total } => Some(total),
            OrderEvent::Shipped => None,
        };
        sqlx::query(
            "INSERT INTO order_rows (position, stream_id, version, kind, total) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(event.position.0 as i64)
        .bind(event.stream_id.as_str())
        .bind(event.version.0 as i64)
        .bind(event.event_type.as_str())
        .bind(total.map(|t| t as i64))
        .execute(tx.conn())
        .await?;
        if self.faults.fail_at.load(Ordering::SeqCst) == event.position.0 {
            return Err(format!("refused event {}", event.position).into());
        }
        if self.faults.hang_at.load(Ordering::SeqCst) == event.position.0 {
            self.faults.hanging.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[async_trait]
impl ResetProjection for OrderRows {
    async fn reset_read_model(&self, tx: &mut SqliteTx) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM order_rows")
            .execute(tx.conn())
            .await?;
        if self.faults.fail_reset.load(Ordering::SeqCst) {
            return Err("reset refused after deleting the rows".into());
        }
        Ok(())
    }
}

/// The same read model at version 2: the runner rebuilds it.
#[derive(es_core::Projection)]
#[projection(name = "order_rows", version = 2, events(OrderEvent), context = SqliteTx)]
struct OrderRowsV2(OrderRows);

#[async_trait]
impl Handles<OrderEvent> for OrderRowsV2 {
    async fn handle_event(
        &self,
        tx: &mut SqliteTx,
        event: Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        self.0.handle_event(tx, event).await
    }
}

#[async_trait]
impl ResetProjection for OrderRowsV2 {
    async fn reset_read_model(&self, tx: &mut SqliteTx) -> Result<(), BoxError> {
        self.0.reset_read_model(tx).await
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

const ORDERS: u64 = 15;

/// A store with the read model's table and 30 events: each order placed,
/// then shipped, in that order of the log.
async fn store_with_orders() -> SqliteEventStore {
    let store = SqliteEventStore::open_temporary().await.unwrap();
    let mut tx = store.transaction().await.unwrap();
    sqlx::query(
        "CREATE TABLE order_rows (position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, \
         version INTEGER NOT NULL, kind TEXT NOT NULL, total INTEGER)",
    )
    .execute(tx.conn())
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for order in 0..ORDERS {
        let stream = StreamId::for_aggregate("order", order);
        let events = [
            OrderEvent::Placed { total: order * 10 },
            OrderEvent::Shipped,
        ]
        .iter()
        .map(|e| e.encode(Metadata::default()).unwrap())
        .collect();
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                events,
                &Default::default(),
            )
            .await
            .unwrap();
    }
    store
}

/// The positions in the read model, in order.
async fn rows(store: &SqliteEventStore) -> Vec<u64> {
    let mut reader = store.reader().await.unwrap();
    let positions: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM order_rows ORDER BY position")
            .fetch_all(reader.conn())
            .await
            .unwrap();
    positions.into_iter().map(|p| p as u64).collect()
}

async fn checkpoint(store: &SqliteEventStore) -> Option<(u64, u32)> {
    store
        .load_checkpoint("order_rows")
        .await
        .unwrap()
        .map(|c| (c.position.0, c.version))
}

fn projection() -> (OrderRows, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    (
        OrderRows {
            faults: Arc::clone(&faults),
        },
        faults,
    )
}

#[test]
fn a_failing_event_leaves_rows_and_checkpoint_at_the_event_before() {
    runtime().block_on(async {
        let store = store_with_orders().await;
        let (projection, faults) = projection();
        faults.fail_at.store(17, Ordering::SeqCst);
        let runner = ProjectionRunner::new(store.clone(), projection).batch_size(10);
        let error = runner.catch_up().await.unwrap_err();
        match &error {
            es_core::Error::Projection { position, .. } => assert_eq!(*position, Position(17)),
            other => panic!("expected a projection error, got {other:?}"),
        }
        // The handler wrote row 17 before failing: it was rolled back with
        // the batch; events 11..=16 of that batch were committed again.
        assert_eq!(rows(&store).await, (1..=16).collect::<Vec<_>>());
        assert_eq!(checkpoint(&store).await, Some((16, 1)));

        faults.fail_at.store(0, Ordering::SeqCst);
        assert_eq!(runner.catch_up().await.unwrap(), Position(2 * ORDERS));
        assert_eq!(rows(&store).await, (1..=2 * ORDERS).collect::<Vec<_>>());
        assert_eq!(checkpoint(&store).await, Some((2 * ORDERS, 1)));
    });
}

#[test]
fn a_batch_cut_short_leaves_no_trace() {
    runtime().block_on(async {
        let store = store_with_orders().await;
        let (projection, faults) = projection();
        faults.hang_at.store(25, Ordering::SeqCst);
        let runner = ProjectionRunner::new(store.clone(), projection).batch_size(10);
        let running = {
            let runner = runner.clone();
            tokio::spawn(async move { runner.catch_up().await })
        };
        tokio::time::timeout(Duration::from_secs(30), faults.hanging.notified())
            .await
            .expect("the handler reaches event 25");
        // The process dies mid-batch: its transaction is never committed.
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert_eq!(rows(&store).await, (1..=20).collect::<Vec<_>>());
        assert_eq!(checkpoint(&store).await, Some((20, 1)));

        // The writer is free again: appends and the projection go on.
        let stream = StreamId::for_aggregate("order", "late");
        let late = OrderEvent::Placed { total: 5 }
            .encode(Metadata::default())
            .unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![late],
                &Default::default(),
            )
            .await
            .unwrap();
        faults.hang_at.store(0, Ordering::SeqCst);
        let head = runner.catch_up().await.unwrap();
        assert_eq!(head, Position(2 * ORDERS + 1));
        assert_eq!(rows(&store).await, (1..=2 * ORDERS + 1).collect::<Vec<_>>());
        assert_eq!(checkpoint(&store).await, Some((2 * ORDERS + 1, 1)));
    });
}

#[test]
fn parked_events_commit_with_the_checkpoint_and_can_be_retried() {
    runtime().block_on(async {
        let store = store_with_orders().await;
        let (projection, faults) = projection();
        faults.fail_at.store(5, Ordering::SeqCst);
        let runner = ProjectionRunner::new(store.clone(), projection)
            .batch_size(8)
            .failure_policy(FailurePolicy::Park);
        assert_eq!(runner.catch_up().await.unwrap(), Position(2 * ORDERS));
        let expected: Vec<u64> = (1..=2 * ORDERS).filter(|p| *p != 5).collect();
        assert_eq!(rows(&store).await, expected);
        assert_eq!(checkpoint(&store).await, Some((2 * ORDERS, 1)));
        let parked = store.parked("order_rows").await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].event.position, Position(5));
        assert_eq!(
            parked[0].event.stream_id,
            StreamId::for_aggregate("order", 2)
        );
        assert!(
            parked[0].error.contains("refused event 5"),
            "{}",
            parked[0].error
        );

        faults.fail_at.store(0, Ordering::SeqCst);
        let report = runner.retry_parked().await.unwrap();
        assert_eq!((report.recovered, report.still_failing), (1, 0));
        assert_eq!(rows(&store).await, (1..=2 * ORDERS).collect::<Vec<_>>());
        assert!(store.parked("order_rows").await.unwrap().is_empty());
    });
}

#[test]
fn rebuild_resets_rows_and_checkpoint_in_one_transaction() {
    runtime().block_on(async {
        let store = store_with_orders().await;
        let (projection, faults) = projection();
        let runner = ProjectionRunner::new(store.clone(), projection);
        runner.catch_up().await.unwrap();
        let all: Vec<u64> = (1..=2 * ORDERS).collect();
        assert_eq!(rows(&store).await, all);

        // A reset that fails after deleting the rows changes nothing.
        faults.fail_reset.store(true, Ordering::SeqCst);
        assert!(runner.rebuild().await.is_err());
        assert_eq!(rows(&store).await, all);
        assert_eq!(checkpoint(&store).await, Some((2 * ORDERS, 1)));

        faults.fail_reset.store(false, Ordering::SeqCst);
        runner.rebuild().await.unwrap();
        assert!(rows(&store).await.is_empty());
        assert_eq!(checkpoint(&store).await, Some((0, 1)));
        runner.catch_up().await.unwrap();
        assert_eq!(rows(&store).await, all);

        // A new version of the projection rebuilds by itself.
        let (projection, _) = self::projection();
        let v2 = ProjectionRunner::new(store.clone(), OrderRowsV2(projection));
        assert_eq!(v2.catch_up().await.unwrap(), Position(2 * ORDERS));
        assert_eq!(rows(&store).await, all);
        assert_eq!(checkpoint(&store).await, Some((2 * ORDERS, 2)));
    });
}

/// A read model in memory: the `()` context every store provides.
#[derive(Default)]
struct Counter(AtomicU64);

#[async_trait]
impl Projection for Counter {
    type Context = ();
    const NAME: &'static str = "counter";

    fn event_types() -> Option<Vec<String>> {
        Some(OrderEvent::stored_types())
    }

    async fn handle(&self, _: &mut (), _: &es_core::RecordedEvent) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn reset(&self, _: &mut ()) -> Result<(), BoxError> {
        self.0.store(0, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_projection_without_a_transaction_follows_the_log_live() {
    runtime().block_on(async {
        let store = store_with_orders().await;
        let runner = ProjectionRunner::new(store.clone(), Counter::default());
        let running = runner.spawn();
        let stream = StreamId::for_aggregate("order", "live");
        let event = OrderEvent::Shipped.encode(Metadata::default()).unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::Exact(Version(0)),
                vec![event],
                &Default::default(),
            )
            .await
            .unwrap();
        let expected = 2 * ORDERS + 1;
        for _ in 0..500 {
            if runner.projection().0.load(Ordering::SeqCst) == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running.stop().await.unwrap();
        assert_eq!(runner.projection().0.load(Ordering::SeqCst), expected);
        assert_eq!(
            store
                .load_checkpoint("counter")
                .await
                .unwrap()
                .map(|c| c.position),
            Some(Position(expected))
        );
    });
}

/// The same rows, written by a batch handler that gives up on the whole
/// batch when one event fails (after writing the rows before it).
#[derive(es_core::Projection)]
#[projection(name = "order_rows", events(OrderEvent), context = SqliteTx)]
struct OrderRowsBatched {
    rows: OrderRows,
    batches: Arc<AtomicU64>,
}

#[async_trait]
impl Handles<OrderEvent> for OrderRowsBatched {
    async fn handle_event(
        &self,
        tx: &mut SqliteTx,
        event: Envelope<OrderEvent>,
    ) -> Result<(), BoxError> {
        self.rows.handle_event(tx, event).await
    }

    async fn handle_events(
        &self,
        tx: &mut SqliteTx,
        events: Vec<Envelope<OrderEvent>>,
    ) -> Result<(), es_core::BatchError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        for event in events {
            self.rows
                .handle_event(tx, event)
                .await
                .map_err(|source| es_core::BatchError::at(0, source))?;
        }
        Ok(())
    }
}

#[async_trait]
impl ResetProjection for OrderRowsBatched {
    async fn reset_read_model(&self, tx: &mut SqliteTx) -> Result<(), BoxError> {
        self.rows.reset_read_model(tx).await
    }
}

#[test]
fn a_failed_batch_is_undone_and_handled_again_event_by_event() {
    runtime().block_on(async {
        let store = store_with_orders().await;
        let (rows_projection, faults) = projection();
        faults.fail_at.store(17, Ordering::SeqCst);
        let batches = Arc::new(AtomicU64::new(0));
        let projection = OrderRowsBatched {
            rows: rows_projection,
            batches: Arc::clone(&batches),
        };
        let runner = ProjectionRunner::new(store.clone(), projection)
            .batch_size(10)
            .failure_policy(FailurePolicy::Park);
        assert_eq!(runner.catch_up().await.unwrap(), Position(2 * ORDERS));
        // Batches 1..=10, 11..=20 (fails at 17), 18..=27, 28..=30.
        assert_eq!(batches.load(Ordering::SeqCst), 4);
        let expected: Vec<u64> = (1..=2 * ORDERS).filter(|p| *p != 17).collect();
        assert_eq!(
            rows(&store).await,
            expected,
            "the failed batch's rows were undone, each other event written once"
        );
        assert_eq!(checkpoint(&store).await, Some((2 * ORDERS, 1)));
        let parked = store.parked("order_rows").await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].event.position, Position(17));
    });
}
