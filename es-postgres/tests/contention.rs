//! Contention: eight writers execute commands on one aggregate through the
//! es-core repository. Without retries the losers get typed conflicts; with
//! retries every command lands exactly once, and the stream's versions are
//! contiguous from 1 with no duplicate. Two transactions claiming the same
//! stream in the inbox take turns: the second sees what the first committed.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::domain::{Add, Counter, CounterEvent};
use es_core::{Event, EventStore, ExecuteError, Inbox, Repository, StreamId, Version};
use es_postgres::PgStoreOptions;
use tokio::sync::Barrier;

const WRITERS: u32 = 8;
const COMMANDS: u32 = 25;

#[test]
fn losers_get_conflicts_and_retries_converge() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 20, |store| async move {
            // Without retries: each loser of a race sees a typed conflict.
            let strict = Repository::<Counter, _>::new(store.clone()).with_retries(0);
            let barrier = Arc::new(Barrier::new(WRITERS as usize));
            let mut tasks = Vec::new();
            for by in 0..WRITERS {
                let repo = strict.clone();
                let barrier = Arc::clone(&barrier);
                tasks.push(tokio::spawn(async move {
                    let (mut won, mut lost) = (0u32, 0u32);
                    for n in 0..COMMANDS {
                        barrier.wait().await;
                        match repo.execute("strict", Add { by, n, amount: 1 }).await {
                            Ok(_) => won += 1,
                            Err(e) if e.is_conflict() => {
                                let ExecuteError::Failed(es_core::Error::Conflict {
                                    expected,
                                    actual,
                                    ..
                                }) = &e
                                else {
                                    panic!("a conflict is es_core::Error::Conflict: {e:?}");
                                };
                                assert_ne!(
                                    *expected,
                                    es_core::ExpectedVersion::Exact(*actual),
                                    "a conflict reports another actual version"
                                );
                                lost += 1;
                            }
                            Err(e) => panic!("writer {by}: {e}"),
                        }
                    }
                    (won, lost)
                }));
            }
            let (mut won, mut lost) = (0, 0);
            for task in tasks {
                let (w, l) = task.await.expect("writer");
                won += w;
                lost += l;
            }
            eprintln!("without retries: {won} commands won, {lost} lost with a conflict");
            assert_eq!(won + lost, WRITERS * COMMANDS);
            assert!(lost > 0, "eight writers racing on one stream must conflict");
            let strict_stream =
                Repository::<Counter, es_postgres::PgEventStore>::stream_id("strict");
            let events = store
                .read_stream(&strict_stream, Version(1), 10_000)
                .await
                .expect("read");
            assert_eq!(
                events.len() as u32,
                won,
                "every winner wrote exactly one event"
            );
            let versions: Vec<u64> = events.iter().map(|e| e.version.0).collect();
            assert_eq!(versions, (1..=u64::from(won)).collect::<Vec<_>>());

            // With retries: every command lands exactly once.
            let patient = Repository::<Counter, _>::new(store.clone()).with_retries(1_000);
            let barrier = Arc::new(Barrier::new(WRITERS as usize));
            let mut tasks = Vec::new();
            for by in 0..WRITERS {
                let repo = patient.clone();
                let barrier = Arc::clone(&barrier);
                tasks.push(tokio::spawn(async move {
                    let mut versions = Vec::new();
                    for n in 0..COMMANDS {
                        barrier.wait().await;
                        let done = repo
                            .execute(
                                "hot",
                                Add {
                                    by,
                                    n,
                                    amount: u64::from(by) + 1,
                                },
                            )
                            .await
                            .unwrap_or_else(|e| panic!("writer {by} command {n}: {e}"));
                        versions.push(done.version.0);
                    }
                    versions
                }));
            }
            let mut reported = Vec::new();
            for task in tasks {
                reported.extend(task.await.expect("writer"));
            }
            reported.sort_unstable();
            let total = u64::from(WRITERS * COMMANDS);
            assert_eq!(
                reported,
                (1..=total).collect::<Vec<_>>(),
                "each command got its own version"
            );
            let hot = Repository::<Counter, es_postgres::PgEventStore>::stream_id("hot");
            let events = store
                .read_stream(&hot, Version(1), 10_000)
                .await
                .expect("read");
            let versions: Vec<u64> = events.iter().map(|e| e.version.0).collect();
            assert_eq!(
                versions,
                (1..=total).collect::<Vec<_>>(),
                "contiguous from 1"
            );
            let commands: BTreeSet<(u32, u32)> = events
                .iter()
                .map(|e| {
                    let CounterEvent::Added { by, n, .. } =
                        CounterEvent::decode(e).expect("decode").event;
                    (by, n)
                })
                .collect();
            assert_eq!(commands.len() as u64, total, "no command applied twice");
            let state = patient.load("hot").await.expect("load").state;
            let expected: u64 = (0..WRITERS)
                .map(|by| u64::from(by + 1) * u64::from(COMMANDS))
                .sum();
            assert_eq!(state.total, expected);
            assert_eq!(state.adds, total);
        })
        .await;
    });
}

/// Claims `version` of `order-1` for `summary` in a transaction of its own,
/// on a task, and commits.
fn claim_on_a_task(
    store: &es_postgres::PgEventStore,
    version: u64,
) -> tokio::task::JoinHandle<bool> {
    let store = store.clone();
    tokio::spawn(async move {
        let mut tx = store.begin().await.expect("begin");
        let claimed = store
            .claim(
                &mut tx,
                "summary",
                &StreamId::new("order-1"),
                Version(version),
            )
            .await
            .expect("claim");
        tx.into_inner().commit().await.expect("commit");
        claimed
    })
}

#[test]
fn concurrent_claims_of_one_stream_take_turns() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let stream = StreamId::new("order-1");
            // A new row: the second insert waits for the first transaction,
            // then finds its committed claim.
            let mut first = store.begin().await.expect("begin");
            assert!(store
                .claim(&mut first, "summary", &stream, Version(1))
                .await
                .expect("claim"));
            let second = claim_on_a_task(&store, 1);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !second.is_finished(),
                "the second claim waits for the first"
            );
            first.into_inner().commit().await.expect("commit");
            assert!(
                !second.await.expect("second claim"),
                "a version is claimed once"
            );

            // An existing row: the second claim waits on the row lock; the
            // first rolls back, so the second claims.
            let mut first = store.begin().await.expect("begin");
            assert!(store
                .claim(&mut first, "summary", &stream, Version(2))
                .await
                .expect("claim"));
            let second = claim_on_a_task(&store, 2);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !second.is_finished(),
                "the second claim waits for the first"
            );
            first.into_inner().rollback().await.expect("rollback");
            assert!(
                second.await.expect("second claim"),
                "the rolled back claim is gone"
            );

            let mut tx = store.begin().await.expect("begin");
            assert!(!store
                .claim(&mut tx, "summary", &stream, Version(2))
                .await
                .expect("claim"));
        })
        .await;
    });
}
