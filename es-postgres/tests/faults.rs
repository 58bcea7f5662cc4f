//! Faults: the backend of an append is terminated (`pg_terminate_backend`)
//! in the middle of the append. The error surfaces, nothing of the batch is
//! written, and the store goes on working with new connections. The pool
//! the store builds replaces connections that the server dropped while they
//! sat idle.

mod common;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::testkit::conformance::new_event;
use es_core::{
    AppendOptions, BoxError, EventFilter, EventStore, ExpectedVersion, NewEvent, Position,
    Projection, RecordedEvent, StreamId, Version,
};
use es_postgres::{PgEventStore, PgStoreOptions, PgTx};
use serde_json::json;

/// Records the append transaction's backend and then stalls, so that the
/// test can kill the backend while the events are inserted but not committed.
struct Stall {
    backend: Arc<Mutex<Option<i32>>>,
}

#[async_trait]
impl Projection for Stall {
    type Context = PgTx;
    const NAME: &'static str = "stall";

    fn event_types() -> Option<Vec<String>> {
        Some(vec!["Stall".to_owned()])
    }

    async fn handle(&self, tx: &mut PgTx, _event: &RecordedEvent) -> Result<(), BoxError> {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(tx.conn())
            .await?;
        *self.backend.lock().map_err(|e| e.to_string())? = Some(pid);
        // Stay in the transaction until the backend is killed (bounded).
        sqlx::query("SELECT pg_sleep(20)")
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    async fn reset(&self, _tx: &mut PgTx) -> Result<(), BoxError> {
        Ok(())
    }
}

fn batch(kind: &str, n: usize, bytes: usize) -> Vec<NewEvent> {
    let filler = "x".repeat(bytes);
    (0..n)
        .map(|i| new_event(kind, json!({ "i": i, "filler": filler })))
        .collect()
}

async fn terminate(store: &PgEventStore, pid: i32) -> bool {
    sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .expect("pg_terminate_backend")
}

async fn assert_nothing_written(store: &PgEventStore, stream: &StreamId, kind: &str) {
    assert_eq!(
        store.stream_version(stream).await.unwrap(),
        Version::INITIAL,
        "nothing half-written in `{stream}`"
    );
    let slice = store
        .read_all(Position::START, &EventFilter::types([kind]), 100_000)
        .await
        .unwrap();
    assert!(slice.events.is_empty(), "no `{kind}` event in the log");
}

#[test]
fn a_killed_append_transaction_surfaces_and_writes_nothing() {
    es_core::testkit::block_on(async {
        let _serial = common::serial().await;
        common::with_store(PgStoreOptions::new(), 10, |store| async move {
            let backend = Arc::new(Mutex::new(None));
            let stalling = store.with_inline(Stall {
                backend: Arc::clone(&backend),
            });
            let stream = StreamId::new("fault-1");
            let mut events = batch("Filler", 99, 10);
            events.push(new_event("Stall", json!({})));
            let append = {
                let stream = stream.clone();
                tokio::spawn(async move {
                    stalling
                        .append(
                            &stream,
                            ExpectedVersion::NoStream,
                            events,
                            &AppendOptions::default(),
                        )
                        .await
                })
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let pid = loop {
                if let Some(pid) = *backend.lock().unwrap() {
                    break pid;
                }
                assert!(
                    Instant::now() < deadline,
                    "the append never reached its handler"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert!(terminate(&store, pid).await);
            let result = append.await.expect("append task");
            let error = result.expect_err("the killed append fails");
            eprintln!("killed append: {error}");
            // The kill reaches the handler's query (a projection error) or
            // the commit (a store error), whichever runs then.
            assert!(
                matches!(
                    error,
                    es_core::Error::Store { .. } | es_core::Error::Projection { .. }
                ),
                "{error:?}"
            );
            assert!(
                format!("{error:?}").contains("terminating connection"),
                "{error:?}"
            );
            assert_nothing_written(&store, &stream, "Filler").await;

            // The pool replaces the dead connection: the store still works.
            let ok = store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    batch("After", 3, 10),
                    &AppendOptions::default(),
                )
                .await
                .expect("append after the fault");
            assert_eq!(ok.committed().last_version, Version(3));
        })
        .await;
    });
}

#[test]
fn a_killed_append_statement_surfaces_and_writes_nothing() {
    es_core::testkit::block_on(async {
        let _serial = common::serial().await;
        common::with_store(PgStoreOptions::new(), 10, |store| async move {
            // A large single-statement append: kill its backend while the
            // statement runs. The append may win the race; try a few times.
            let mut caught = 0;
            for attempt in 0..5 {
                if caught >= 2 {
                    break;
                }
                let stream = StreamId::new(format!("big-{attempt}"));
                let kind = format!("Big{attempt}");
                let append = {
                    let store = store.clone();
                    let stream = stream.clone();
                    let events = batch(&kind, 20_000, 2_000);
                    tokio::spawn(async move {
                        store
                            .append(
                                &stream,
                                ExpectedVersion::NoStream,
                                events,
                                &AppendOptions::default(),
                            )
                            .await
                    })
                };
                let marker = format!(
                    "%\"{}\".events%WITH ORDINALITY AS e(event_id%",
                    store.schema()
                );
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut killed = false;
                while !append.is_finished() && Instant::now() < deadline {
                    let pids: Vec<i32> = sqlx::query_scalar(
                        "SELECT pid FROM pg_stat_activity
                         WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                    )
                    .bind(&marker)
                    .fetch_all(store.pool())
                    .await
                    .unwrap();
                    if let Some(&pid) = pids.first() {
                        killed = terminate(&store, pid).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let result = append.await.expect("append task");
                match result {
                    Err(error) => {
                        assert!(killed, "the append failed without being killed: {error}");
                        assert!(matches!(error, es_core::Error::Store { .. }), "{error:?}");
                        assert_nothing_written(&store, &stream, &kind).await;
                        caught += 1;
                    }
                    Ok(done) => {
                        // Too late: the statement had committed.
                        assert_eq!(done.committed().last_version, Version(20_000));
                    }
                }
            }
            eprintln!("append statements killed mid-flight: {caught}");
            assert!(caught > 0, "no append was caught mid-flight");
        })
        .await;
    });
}

#[test]
fn a_closed_store_refuses_work_and_other_processes_still_hear_of_its_appends() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            // Another process's store on the same schema, waiting for events.
            let other = PgStoreOptions::new()
                .schema(store.schema())
                .connect(&common::url())
                .await
                .expect("open a second store");
            let head = other.head().await.unwrap();
            let waiting = {
                let other = other.clone();
                tokio::spawn(
                    async move { other.wait_for_events(head, Duration::from_secs(20)).await },
                )
            };
            let stream = StreamId::new("closing-1");
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    batch("Last", 2, 10),
                    &AppendOptions::default(),
                )
                .await
                .unwrap();
            let clone = store.clone();
            store.close().await;
            assert!(waiting.await.unwrap().unwrap(), "the other store woke up");

            for handle in [&store, &clone] {
                let error = handle
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        batch("Late", 1, 10),
                        &AppendOptions::default(),
                    )
                    .await
                    .expect_err("a closed store appends nothing");
                assert!(matches!(error, es_core::Error::Store { .. }), "{error:?}");
                assert!(handle.stream_version(&stream).await.is_err());
            }
            assert_eq!(other.stream_version(&stream).await.unwrap(), Version(2));
            other.close().await;
        })
        .await;
    });
}

/// Waits (bounded) until the server has no backend `pid` any more.
async fn wait_gone(store: &PgEventStore, pid: i32) {
    for _ in 0..200 {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(store.pool())
                .await
                .expect("look for the backend");
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("backend {pid} is still there 2 s after it was terminated");
}

#[test]
fn the_stores_own_pool_replaces_connections_the_server_dropped_while_they_sat_idle() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let own = PgStoreOptions::new()
                .schema(store.schema())
                .max_connections(2)
                .connect(&common::url())
                .await
                .expect("open a store on a pool of its own");
            // A connection used within the last second is not checked again
            // before it is handed out (sqlx checked it when it came back).
            assert!(!own.pool().options().get_test_before_acquire());

            // Both connections open, their backends known, back in the pool.
            let mut held = vec![
                own.pool().acquire().await.expect("a connection"),
                own.pool().acquire().await.expect("a second connection"),
            ];
            let mut pids = Vec::new();
            for connection in &mut held {
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut **connection)
                    .await
                    .expect("the backend's pid");
                pids.push(pid);
            }
            drop(held);
            for _ in 0..200 {
                if own.pool().num_idle() == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(own.pool().num_idle(), 2, "both connections are idle");

            // The server drops both while they sit idle.
            for pid in &pids {
                assert!(terminate(&store, *pid).await);
                wait_gone(&store, *pid).await;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;

            // Every call still works, on new backends.
            let stream = StreamId::new("idle-1");
            own.append(
                &stream,
                ExpectedVersion::NoStream,
                batch("Idle", 3, 10),
                &AppendOptions::default(),
            )
            .await
            .expect("an append after the server dropped the idle connections");
            assert_eq!(own.stream_version(&stream).await.unwrap(), Version(3));
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(own.pool())
                .await
                .expect("a live connection");
            assert!(!pids.contains(&pid), "a new backend");
        })
        .await;
    });
}

/// A read of the log dropped before it ends (a reader cancelled, a read
/// ahead aborted) leaves no connection of the pool in the middle of it:
/// with a pool of one connection, every call after it works.
#[test]
fn a_read_of_the_log_dropped_midway_leaves_the_pool_usable() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 1, |store| async move {
            let stream = StreamId::new("big-1");
            for part in 0..4u64 {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(Version(part * 5_000)),
                        batch("Big", 5_000, 200),
                        &AppendOptions::default(),
                    )
                    .await
                    .expect("append");
            }
            let all = EventFilter::all();
            let mut dropped = 0;
            for polls in 1..=8 {
                // Polled a few times, a little apart (the read goes on
                // between polls as far as the data already there lets it),
                // then dropped: the later ones in the middle of the page.
                let mut read = Box::pin(store.read_all(Position::START, &all, 20_000));
                let mut whole = false;
                for _ in 0..polls {
                    let polled = read.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                    if let Poll::Ready(page) = polled {
                        assert_eq!(page.expect("a whole read").events.len(), 20_000);
                        whole = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                drop(read);
                if !whole {
                    dropped += 1;
                }
                let page = store
                    .read_all(Position::START, &all, 10)
                    .await
                    .unwrap_or_else(|e| panic!("a read after one of {polls} polls: {e}"));
                assert_eq!(page.events.len(), 10);
                let events = store
                    .read_stream(&stream, Version(19_998), 10)
                    .await
                    .unwrap_or_else(|e| panic!("a stream read after one of {polls} polls: {e}"));
                assert_eq!(events.len(), 3);
            }
            assert!(dropped > 0, "some reads were dropped before they ended");
        })
        .await;
    });
}
