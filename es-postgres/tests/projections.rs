//! Transactional projections over PostgreSQL: a read model in the store's
//! database, written in the projection's transaction together with its
//! checkpoint (catch-up mode) or in the append's own transaction (inline
//! mode); failures, parked events, rebuilds, corrupted rows and leases.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::domain::{Add, Counter, CounterEvent};
use es_core::{
    BoxError, CheckpointStore, Envelope, Error, EventStore, FailurePolicy, Handles, Position,
    ProjectionRunner, Repository, ResetProjection, Version,
};
use es_postgres::{PgEventStore, PgStoreOptions, PgTx};

/// Writer id whose commands the tally refuses while `refuse` is set.
const UNLUCKY: u32 = 13;

/// A read model of counters: per stream the number of events and their
/// total, and per event position how many times it was applied.
#[derive(es_core::Projection)]
#[projection(name = "tally", events(CounterEvent), context = PgTx)]
struct Tally {
    schema: String,
    refuse: Arc<AtomicBool>,
    refuse_reset: Arc<AtomicBool>,
}

impl Tally {
    fn new(schema: &str) -> Self {
        Self {
            schema: schema.to_owned(),
            refuse: Arc::new(AtomicBool::new(true)),
            refuse_reset: Arc::new(AtomicBool::new(false)),
        }
    }

    fn sharing(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            refuse: Arc::clone(&self.refuse),
            refuse_reset: Arc::clone(&self.refuse_reset),
        }
    }
}

#[async_trait]
impl Handles<CounterEvent> for Tally {
    async fn handle_event(
        &self,
        tx: &mut PgTx,
        event: Envelope<CounterEvent>,
    ) -> Result<(), BoxError> {
        let CounterEvent::Added { by, amount, .. } = event.event;
        if by == UNLUCKY && self.refuse.load(Ordering::SeqCst) {
            return Err(format!("writer {UNLUCKY} is refused").into());
        }
        let s = &self.schema;
        sqlx::query(&format!(
            "INSERT INTO \"{s}\".tally (stream_id, events, total) VALUES ($1, 1, $2)
             ON CONFLICT (stream_id) DO UPDATE
             SET events = tally.events + 1, total = tally.total + excluded.total"
        ))
        .bind(event.stream_id.as_str())
        .bind(i64::try_from(amount)?)
        .execute(tx.conn())
        .await?;
        sqlx::query(&format!(
            "INSERT INTO \"{s}\".applied (position, times) VALUES ($1, 1)
             ON CONFLICT (position) DO UPDATE SET times = applied.times + 1"
        ))
        .bind(i64::try_from(event.position.0)?)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ResetProjection for Tally {
    async fn reset_read_model(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        let s = &self.schema;
        sqlx::query(&format!("DELETE FROM \"{s}\".tally"))
            .execute(tx.conn())
            .await?;
        if self.refuse_reset.load(Ordering::SeqCst) {
            return Err("reset refused".into());
        }
        sqlx::query(&format!("DELETE FROM \"{s}\".applied"))
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

async fn create_read_model(store: &PgEventStore) {
    let s = store.schema();
    for ddl in [
        format!("CREATE TABLE \"{s}\".tally (stream_id text PRIMARY KEY, events bigint NOT NULL, total bigint NOT NULL)"),
        format!("CREATE TABLE \"{s}\".applied (position bigint PRIMARY KEY, times int NOT NULL)"),
    ] {
        sqlx::query(&ddl).execute(store.pool()).await.expect("create read model");
    }
}

/// The read model: stream → (events, total).
async fn tally(store: &PgEventStore) -> BTreeMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT stream_id, events, total FROM \"{}\".tally",
        store.schema()
    ))
    .fetch_all(store.pool())
    .await
    .expect("read tally");
    rows.into_iter().map(|(s, e, t)| (s, (e, t))).collect()
}

/// What the read model must be: computed from the events table directly.
async fn expected_tally(
    store: &PgEventStore,
    except_by: Option<u32>,
) -> BTreeMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT stream_id, count(*), sum((payload->>'amount')::bigint)::bigint
         FROM \"{}\".events WHERE ($1::int IS NULL OR (payload->>'by')::int <> $1)
         GROUP BY stream_id",
        store.schema()
    ))
    .bind(except_by.map(|b| b as i32))
    .fetch_all(store.pool())
    .await
    .expect("expected tally");
    rows.into_iter().map(|(s, e, t)| (s, (e, t))).collect()
}

/// Positions applied more than once.
async fn applied_twice(store: &PgEventStore) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".applied WHERE times > 1",
        store.schema()
    ))
    .fetch_one(store.pool())
    .await
    .expect("applied")
}

async fn run_commands(store: &PgEventStore, writers: u32, per_writer: u32) {
    let repo = Repository::<Counter, _>::new(store.clone());
    for n in 0..per_writer {
        for by in 0..writers {
            repo.execute(
                format!("c{}", by % 5),
                Add {
                    by,
                    n,
                    amount: u64::from(by) + 1,
                },
            )
            .await
            .expect("command");
        }
    }
}

fn test<F, Fut>(body: F)
where
    F: FnOnce(PgEventStore) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    es_core::testkit::block_on(async move {
        let _serial = common::serial().await;
        common::with_store(PgStoreOptions::new(), 10, |store| async move {
            create_read_model(&store).await;
            body(store).await;
        })
        .await;
    });
}

#[test]
fn catch_up_commits_the_read_model_with_its_checkpoint() {
    test(|store| async move {
        run_commands(&store, 10, 5).await;
        let tally_projection = Tally::new(store.schema());
        let runner = ProjectionRunner::new(store.clone(), tally_projection).batch_size(7);
        let position = runner.catch_up().await.expect("catch up");
        assert_eq!(position, store.head().await.unwrap());
        assert_eq!(tally(&store).await, expected_tally(&store, None).await);
        assert_eq!(applied_twice(&store).await, 0);
        let checkpoint = store
            .load_checkpoint("tally")
            .await
            .unwrap()
            .expect("checkpoint");
        assert_eq!(checkpoint.position, position);

        // Live: new events are followed and committed with the checkpoint.
        let running = runner.spawn();
        run_commands(&store, 3, 2).await;
        let head = store.head().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while store
            .load_checkpoint("tally")
            .await
            .unwrap()
            .map(|c| c.position)
            != Some(head)
        {
            assert!(
                Instant::now() < deadline,
                "the runner did not follow the log"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.stop().await.expect("stop");
        assert_eq!(tally(&store).await, expected_tally(&store, None).await);
    });
}

#[test]
fn a_failure_commits_nothing_of_its_event_and_parked_events_are_kept_and_retried() {
    test(|store| async move {
        run_commands(&store, 15, 2).await; // writers 0..15: includes the unlucky one
        let projection = Tally::new(store.schema());
        let refuse = Arc::clone(&projection.refuse);
        let runner = ProjectionRunner::new(store.clone(), projection.sharing()).batch_size(100);
        let error = runner
            .catch_up()
            .await
            .expect_err("the unlucky event stops it");
        let Error::Projection {
            position,
            stream_id,
            version,
            ..
        } = &error
        else {
            panic!("a handler failure is Error::Projection: {error:?}");
        };
        let failing = store.read_stream(stream_id, *version, 1).await.unwrap();
        assert_eq!(
            failing[0].position, *position,
            "the error names the failing event"
        );
        let checkpoint = store
            .load_checkpoint("tally")
            .await
            .unwrap()
            .expect("checkpoint");
        let before: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{}\".applied",
            store.schema()
        ))
        .fetch_one(store.pool())
        .await
        .unwrap();
        let in_log: Vec<Position> = read_log(&store).await;
        let index = in_log.iter().position(|p| p == position).expect("in log");
        assert_eq!(
            before as usize, index,
            "exactly the events before the failing one"
        );
        assert_eq!(
            checkpoint.position,
            in_log[index - 1],
            "checkpoint just before it"
        );

        // Park policy: the event is set aside in the table and the rest goes on.
        let parking = ProjectionRunner::new(store.clone(), projection.sharing())
            .failure_policy(FailurePolicy::Park);
        parking.catch_up().await.expect("parks and goes on");
        let parked = store.parked("tally").await.unwrap();
        assert_eq!(parked.len(), 2, "both commands of the unlucky writer");
        assert!(parked.iter().all(|p| p.error.contains("refused")));
        assert_eq!(
            tally(&store).await,
            expected_tally(&store, Some(UNLUCKY)).await
        );
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{}\".parked_events WHERE projection = 'tally'",
            store.schema()
        ))
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(rows, 2, "parked events live in their table");

        // Retrying after the fix handles them and removes them.
        refuse.store(false, Ordering::SeqCst);
        let report = parking.retry_parked().await.expect("retry");
        assert_eq!(report.recovered, 2);
        assert!(store.parked("tally").await.unwrap().is_empty());
        assert_eq!(tally(&store).await, expected_tally(&store, None).await);
        assert_eq!(applied_twice(&store).await, 0);
    });
}

async fn read_log(store: &PgEventStore) -> Vec<Position> {
    let mut all = Vec::new();
    let mut after = Position::START;
    for _ in 0..10_000 {
        let slice = store
            .read_all(after, &es_core::EventFilter::all(), 500)
            .await
            .unwrap();
        if slice.events.is_empty() {
            break;
        }
        after = slice.next;
        all.extend(slice.events.iter().map(|e| e.position));
    }
    all
}

#[test]
fn rebuild_resets_the_read_model_and_the_checkpoint_in_one_transaction() {
    test(|store| async move {
        run_commands(&store, 6, 3).await;
        let projection = Tally::new(store.schema());
        let refuse_reset = Arc::clone(&projection.refuse_reset);
        let runner = ProjectionRunner::new(store.clone(), projection);
        runner.catch_up().await.expect("catch up");
        let full = tally(&store).await;
        let checkpoint = store.load_checkpoint("tally").await.unwrap();

        // A reset that fails half-way undoes its deletes and keeps the checkpoint.
        refuse_reset.store(true, Ordering::SeqCst);
        runner.rebuild().await.expect_err("reset refused");
        assert_eq!(tally(&store).await, full, "the read model is untouched");
        assert_eq!(store.load_checkpoint("tally").await.unwrap(), checkpoint);

        refuse_reset.store(false, Ordering::SeqCst);
        runner.rebuild().await.expect("rebuild");
        assert!(tally(&store).await.is_empty());
        assert_eq!(
            store
                .load_checkpoint("tally")
                .await
                .unwrap()
                .map(|c| c.position),
            Some(Position::START)
        );
        runner.catch_up().await.expect("replay");
        assert_eq!(
            tally(&store).await,
            full,
            "a rebuild gives the same read model"
        );
        assert_eq!(applied_twice(&store).await, 0);
    });
}

#[test]
fn inline_projection_reads_its_writes_and_a_failure_writes_nothing() {
    test(|store| async move {
        let projection = Tally::new(store.schema());
        let inline = store.with_inline(projection.sharing());
        assert_eq!(inline.inline_projections(), ["tally"]);
        let repo = Repository::<Counter, _>::new(inline.clone());
        for n in 0..20 {
            repo.execute(
                "c1",
                Add {
                    by: 1,
                    n,
                    amount: 2,
                },
            )
            .await
            .expect("command");
            // Read-your-writes: the read model already has the event.
            let now = tally(&store).await;
            assert_eq!(
                now.get("counter-c1"),
                Some(&(i64::from(n) + 1, 2 * (i64::from(n) + 1)))
            );
        }
        // A handler error fails the command; neither the event nor the
        // read model change is written.
        let refused = repo
            .execute(
                "c1",
                Add {
                    by: UNLUCKY,
                    n: 0,
                    amount: 5,
                },
            )
            .await;
        assert!(
            matches!(
                &refused,
                Err(es_core::ExecuteError::Failed(Error::Projection { .. }))
            ),
            "{refused:?}"
        );
        let stream = Repository::<Counter, PgEventStore>::stream_id("c1");
        assert_eq!(store.stream_version(&stream).await.unwrap(), Version(20));
        assert_eq!(tally(&store).await, expected_tally(&store, None).await);

        // The same projection type in catch-up mode, after a rebuild, gives
        // the same read model.
        let runner = ProjectionRunner::new(store.clone(), projection.sharing());
        runner.rebuild().await.expect("rebuild");
        runner.catch_up().await.expect("catch up");
        assert_eq!(tally(&store).await, expected_tally(&store, None).await);
        assert_eq!(applied_twice(&store).await, 0);
    });
}

#[test]
fn a_corrupted_row_is_a_decode_error_with_where_it_is() {
    test(|store| async move {
        run_commands(&store, 5, 3).await; // streams counter-c0..c4, versions 1..3
        let bad = Repository::<Counter, PgEventStore>::stream_id("c2");
        let position: i64 = sqlx::query_scalar(&format!(
            "UPDATE \"{}\".events SET payload = '{{\"by\": \"nobody\"}}'
             WHERE stream_id = $1 AND version = 2 RETURNING position",
            store.schema()
        ))
        .bind(bad.as_str())
        .fetch_one(store.pool())
        .await
        .expect("corrupt a row");
        let repo = Repository::<Counter, _>::new(store.clone());
        let error = repo
            .load("c2")
            .await
            .expect_err("the corrupted row does not decode");
        let Error::Decode(decode) = &error else {
            panic!("expected a decode error: {error:?}");
        };
        assert_eq!(decode.stream_id, bad);
        assert_eq!(decode.version, Version(2));
        assert_eq!(decode.position, Position(position as u64));
        let text = error.to_string();
        assert!(
            text.contains("counter-c2") && text.contains(&position.to_string()),
            "{text}"
        );
        assert_eq!(
            repo.load("c1")
                .await
                .expect("other streams load")
                .state
                .adds,
            3
        );

        // The projection stops at it, or parks it.
        let projection = Tally::new(store.schema());
        projection.refuse.store(false, Ordering::SeqCst);
        let stop = ProjectionRunner::new(store.clone(), projection.sharing());
        let error = stop.catch_up().await.expect_err("stops");
        assert!(
            matches!(&error, Error::Projection { position: p, .. } if p.0 == position as u64),
            "{error:?}"
        );
        let park = ProjectionRunner::new(store.clone(), projection.sharing())
            .failure_policy(FailurePolicy::Park);
        park.catch_up().await.expect("parks");
        let parked = store.parked("tally").await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].event.position.0, position as u64);
    });
}

#[test]
fn one_runner_holds_the_lease_and_another_takes_over_when_its_connection_dies() {
    test(|store| async move {
        // Two "processes": two stores (two pools) on the same schema.
        let other = PgStoreOptions::new()
            .schema(store.schema())
            .max_connections(5)
            .connect(&common::url())
            .await
            .expect("second store");
        let active: Arc<std::sync::Mutex<Vec<(usize, i32)>>> = Arc::default();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut runners = Vec::new();
        for (id, s) in [(0usize, store.clone()), (1, other.clone())] {
            let active = Arc::clone(&active);
            let schema = store.schema().to_owned();
            let mut stop = stop_rx.clone();
            runners.push(tokio::spawn(async move {
                let shared = Tally::new(&schema);
                shared.refuse.store(false, Ordering::SeqCst);
                s.run_leased(
                    move |leased| {
                        let pid = leased.lease_backend_pid().expect("leased");
                        active.lock().unwrap().push((id, pid));
                        ProjectionRunner::new(leased, shared.sharing()).batch_size(5)
                    },
                    Duration::from_millis(100),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )
                .await
            }));
        }
        let writer = {
            let store = store.clone();
            tokio::spawn(async move { run_commands(&store, 8, 40).await })
        };
        // Wait for a runner to be active and to have made progress.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (first, pid) = loop {
            let holder = active.lock().unwrap().first().copied();
            if let Some((id, pid)) = holder {
                if let Ok(Some(_)) = store.load_checkpoint("tally").await {
                    break (id, pid);
                }
            }
            assert!(Instant::now() < deadline, "no runner became active");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            active.lock().unwrap().len(),
            1,
            "exactly one runner is active"
        );
        // Kill the active runner's lease connection.
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(store.pool())
            .await
            .expect("terminate");
        assert!(killed);
        // The other one takes over within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if active.lock().unwrap().iter().any(|&(id, _)| id != first) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the other runner did not take over: {:?}",
                active.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.await.expect("writer");
        let head = store.head().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let checkpoint = store.load_checkpoint("tally").await.unwrap();
            if checkpoint.map(|c| c.position) == Some(head) {
                break;
            }
            let holders = active.lock().unwrap().clone();
            let finished: Vec<bool> = runners
                .iter()
                .map(tokio::task::JoinHandle::is_finished)
                .collect();
            assert!(
                Instant::now() < deadline,
                "the projection did not reach the head {head}: {checkpoint:?}, holders {holders:?}, finished {finished:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send_replace(true);
        for runner in runners {
            runner.await.expect("runner task").expect("runner");
        }
        eprintln!(
            "lease holders in order (runner, backend): {:?}",
            active.lock().unwrap()
        );
        assert_eq!(applied_twice(&store).await, 0, "no event applied twice");
        let live = tally(&store).await;
        assert_eq!(live, expected_tally(&store, None).await);
        // And it equals a rebuild from scratch.
        let rebuilt = Tally::new(store.schema());
        rebuilt.refuse.store(false, Ordering::SeqCst);
        let runner = ProjectionRunner::new(store.clone(), rebuilt);
        runner.rebuild().await.expect("rebuild");
        runner.catch_up().await.expect("replay");
        assert_eq!(tally(&store).await, live);
        other.pool().close().await;
    });
}

#[test]
fn a_negative_stored_schema_version_is_a_store_error_and_loses_nothing() {
    test(|store| async move {
        run_commands(&store, 3, 2).await; // streams counter-c0..c2, versions 1..2
        let bad = Repository::<Counter, PgEventStore>::stream_id("c1");
        sqlx::query(&format!(
            "UPDATE \"{}\".events SET schema_version = -1 WHERE stream_id = $1 AND version = 2",
            store.schema()
        ))
        .bind(bad.as_str())
        .execute(store.pool())
        .await
        .expect("corrupt a row");
        let repo = Repository::<Counter, _>::new(store.clone());
        let error = repo.load("c1").await.expect_err("the row does not load");
        assert!(
            matches!(&error, Error::Store { message, .. } if message.contains("schema version -1")),
            "{error:?}"
        );
        let error = store
            .read_stream(&bad, Version(1), 10)
            .await
            .expect_err("nor does the stream read");
        assert!(matches!(error, Error::Store { .. }), "{error:?}");
        assert_eq!(
            repo.load("c0")
                .await
                .expect("other streams load")
                .state
                .adds,
            2
        );
        // The row is still there, as it was written but for the corruption.
        assert_eq!(store.stream_version(&bad).await.unwrap(), Version(2));
    });
}
