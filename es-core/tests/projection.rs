//! Integration tests of the projection runner over the in-memory store:
//! catch-up, live following, batches, rebuilds, failure policies, parked
//! events and shutdown.

mod common;

use common::{deposit, open, withdraw};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use common::{Account, AccountCommand, AccountEvent};
use es_core::{
    AppendOptions, BoxError, Checkpoint, CheckpointStore, Error, Event, EventId, EventStore,
    ExpectedVersion, FailurePolicy, InMemoryStore, Metadata, NewEvent, Position, Projection,
    ProjectionRunner, RecordedEvent, Repository, RetryReport, StreamId,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Ten events over two accounts: `a` ends with 67, `b` with 31.
fn script() -> Vec<(&'static str, AccountCommand)> {
    vec![
        ("a", open("ada")),
        ("a", deposit(100)),
        ("b", open("bob")),
        ("a", withdraw(30)),
        ("b", deposit(50)),
        ("a", deposit(5)),
        ("b", withdraw(20)),
        ("a", withdraw(10)),
        ("b", deposit(1)),
        ("a", deposit(2)),
    ]
}

async fn run_script(store: &InMemoryStore) {
    let accounts = Repository::<Account, _>::new(store.clone());
    for (id, command) in script() {
        accounts.execute(id, command).await.unwrap();
    }
}

fn expected_balances() -> BTreeMap<String, u64> {
    BTreeMap::from([("account-a".to_owned(), 67), ("account-b".to_owned(), 31)])
}

fn raw(event_type: &str, schema_version: u32, payload: Value) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: event_type.to_owned(),
        schema_version,
        payload: payload.into(),
        metadata: Metadata::default(),
    }
}

async fn append_raw(store: &InMemoryStore, stream_id: &str, event: NewEvent) -> Position {
    store
        .append(
            &StreamId::new(stream_id),
            ExpectedVersion::Any,
            vec![event],
            &AppendOptions::default(),
        )
        .await
        .unwrap()
        .committed()
        .last_position
}

/// Polls `done` every few milliseconds, at most `tries` times; panics with
/// `what` when it never holds. Bounded by the count and by a timeout.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(Duration::from_secs(3), async {
        for _ in 0..300 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    })
    .await;
    assert!(matches!(polled, Ok(true)), "timed out waiting until {what}");
}

fn positions(range: std::ops::RangeInclusive<u64>) -> Vec<Position> {
    range.map(Position).collect()
}

// ---------------------------------------------------------------------------
// A read model of balances, with a switch to make one position fail
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Model {
    /// Every position handled, in the order handled.
    handled: Vec<Position>,
    balances: BTreeMap<String, u64>,
    owners: BTreeMap<String, String>,
    resets: usize,
}

/// A balance per stream, by hand, with `()` as context. `V` is the
/// projection's version; `fail_at` makes the handler fail at one position
/// (0 for none).
#[derive(Clone, Default)]
struct Ledger<const V: u32 = 1> {
    model: Arc<Mutex<Model>>,
    fail_at: Arc<AtomicU64>,
}

impl<const V: u32> Ledger<V> {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap()
    }

    fn snapshot(&self) -> Model {
        self.model().clone()
    }

    fn fail_at(&self, position: u64) {
        self.fail_at.store(position, Ordering::SeqCst);
    }

    fn fix(&self) {
        self.fail_at(0);
    }

    /// The same read model under another version.
    fn with_version<const W: u32>(&self) -> Ledger<W> {
        Ledger {
            model: Arc::clone(&self.model),
            fail_at: Arc::clone(&self.fail_at),
        }
    }
}

#[async_trait]
impl<const V: u32> Projection for Ledger<V> {
    type Context = ();
    const NAME: &'static str = "ledger";
    const VERSION: u32 = V;

    fn event_types() -> Option<Vec<String>> {
        Some(AccountEvent::stored_types())
    }

    async fn handle(&self, _: &mut (), raw: &RecordedEvent) -> Result<(), BoxError> {
        if self.fail_at.load(Ordering::SeqCst) == raw.position.0 {
            return Err(format!("ledger refuses position {}", raw.position).into());
        }
        let envelope = AccountEvent::decode(raw)?;
        let stream = raw.stream_id.to_string();
        let mut model = self.model();
        model.handled.push(raw.position);
        match envelope.event {
            AccountEvent::Opened(e) => {
                model.owners.insert(stream.clone(), e.owner);
                model.balances.insert(stream, 0);
            }
            AccountEvent::Deposited(e) => *model.balances.entry(stream).or_default() += e.amount,
            AccountEvent::Withdrawn(e) => {
                let balance = model.balances.entry(stream).or_default();
                *balance = balance
                    .checked_sub(e.amount)
                    .ok_or("a withdrawal below zero")?;
            }
        }
        Ok(())
    }

    async fn reset(&self, _: &mut ()) -> Result<(), BoxError> {
        let mut model = self.model();
        let resets = model.resets + 1;
        *model = Model {
            resets,
            ..Model::default()
        };
        Ok(())
    }
}

async fn checkpoint_of(store: &InMemoryStore, name: &str) -> Option<Checkpoint> {
    store.load_checkpoint(name).await.unwrap()
}

fn at(position: u64, version: u32) -> Option<Checkpoint> {
    Some(Checkpoint {
        position: Position(position),
        version,
    })
}

// ---------------------------------------------------------------------------
// Catch-up and filtering
// ---------------------------------------------------------------------------

#[tokio::test]
async fn catch_up_handles_every_event_and_saves_the_checkpoint() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let ledger = Ledger::<1>::default();
    let runner = ProjectionRunner::new(store.clone(), ledger.clone());
    assert_eq!(checkpoint_of(&store, "ledger").await, None);

    let position = runner.catch_up().await.unwrap();
    assert_eq!(position, Position(10));
    let model = ledger.snapshot();
    assert_eq!(model.handled, positions(1..=10));
    assert_eq!(model.balances, expected_balances());
    assert_eq!(model.owners["account-a"], "ada");
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 1));

    let status = runner.status().await.unwrap();
    assert_eq!(status.name, "ledger");
    assert_eq!(status.version, 1);
    assert_eq!(status.checkpoint, at(10, 1));
    assert_eq!(status.head, Position(10));
    assert_eq!(status.parked, 0);

    // A second catch-up has nothing to do; new events are handled once.
    assert_eq!(runner.catch_up().await.unwrap(), Position(10));
    assert_eq!(ledger.model().handled.len(), 10);
    Repository::<Account, _>::new(store.clone())
        .execute("b", deposit(9))
        .await
        .unwrap();
    assert_eq!(runner.catch_up().await.unwrap(), Position(11));
    assert_eq!(ledger.model().handled, positions(1..=11));
    assert_eq!(ledger.model().balances["account-b"], 40);
}

/// Records the stored types it receives; reads only the opening events
/// (current name and alias).
#[derive(Default)]
struct Openings {
    seen: Mutex<Vec<(Position, String)>>,
    owners: Mutex<Vec<String>>,
}

#[async_trait]
impl Projection for Openings {
    type Context = ();
    const NAME: &'static str = "openings";

    fn event_types() -> Option<Vec<String>> {
        let subset: Vec<String> = AccountEvent::stored_types()
            .into_iter()
            .filter(|t| t == "AccountOpened" || t == "AccountCreated")
            .collect();
        assert_eq!(subset.len(), 2);
        Some(subset)
    }

    async fn handle(&self, _: &mut (), raw: &RecordedEvent) -> Result<(), BoxError> {
        self.seen
            .lock()
            .unwrap()
            .push((raw.position, raw.event_type.to_string()));
        match AccountEvent::decode(raw)?.event {
            AccountEvent::Opened(opened) => self.owners.lock().unwrap().push(opened.owner),
            other => return Err(format!("unexpected event {other:?}").into()),
        }
        Ok(())
    }

    async fn reset(&self, _: &mut ()) -> Result<(), BoxError> {
        self.seen.lock().unwrap().clear();
        self.owners.lock().unwrap().clear();
        Ok(())
    }
}

#[tokio::test]
async fn a_projection_receives_only_the_types_it_handles() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    // An opening stored under the old name, an event of another family and
    // an undecodable deposit: none of the latter two may reach the handler.
    let created = append_raw(
        &store,
        "account-c",
        raw("AccountCreated", 1, json!({"owner": "cy"})),
    )
    .await;
    append_raw(
        &store,
        "audit-1",
        raw("AuditLogged", 1, json!({"who": "x"})),
    )
    .await;
    append_raw(&store, "account-c", raw("Deposited", 2, json!({"bad": 1}))).await;
    let head = store.head().await.unwrap();
    assert_eq!(head, Position(13));

    let runner = ProjectionRunner::new(store.clone(), Openings::default());
    assert_eq!(runner.catch_up().await.unwrap(), head);
    let seen = runner.projection().seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (Position(1), "AccountOpened".to_owned()),
            (Position(3), "AccountOpened".to_owned()),
            (created, "AccountCreated".to_owned()),
        ]
    );
    assert_eq!(
        *runner.projection().owners.lock().unwrap(),
        ["ada", "bob", "cy"]
    );
    // The filtered-out events at the end still move the checkpoint.
    assert_eq!(checkpoint_of(&store, "openings").await, at(13, 1));

    // The ledger reads the whole family (and fails on the bad deposit under
    // the default policy), but never sees the other family's event.
    let ledger = Ledger::<1>::default();
    let runner = ProjectionRunner::new(store.clone(), ledger.clone());
    let error = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Projection {
                position: Position(13),
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(ledger.model().handled, positions(1..=11));
}

// ---------------------------------------------------------------------------
// Live following
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spawned_projection_follows_new_events_and_stops_cleanly() {
    let store = InMemoryStore::new();
    let ledger = Ledger::<1>::default();
    let runner = ProjectionRunner::new(store.clone(), ledger.clone());
    let running = runner.spawn();
    // Let the runner reach its idle wait on the empty log.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!running.is_finished());

    run_script(&store).await;
    // Much sooner than the runner's idle wait: the append wakes it.
    wait_until("the ten events are handled", || {
        ledger.model().handled.len() >= 10
    })
    .await;
    assert_eq!(ledger.model().balances, expected_balances());

    // More commands while it runs.
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", withdraw(67)).await.unwrap();
    accounts.execute("c", open("cy")).await.unwrap();
    wait_until("the new events are handled", || {
        ledger.model().handled.len() >= 12
    })
    .await;

    tokio::time::timeout(Duration::from_secs(5), running.stop())
        .await
        .expect("stops in time")
        .unwrap();
    let head = store.head().await.unwrap();
    assert_eq!(head, Position(12));
    assert_eq!(checkpoint_of(&store, "ledger").await, at(12, 1));
    let model = ledger.snapshot();
    assert_eq!(model.handled, positions(1..=12));
    assert_eq!(model.balances["account-a"], 0);
    assert_eq!(model.balances["account-c"], 0);
    assert_eq!(model.owners["account-c"], "cy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spawned_projection_that_fails_reports_the_error_on_stop() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let ledger = Ledger::<1>::default();
    ledger.fail_at(4);
    let running = ProjectionRunner::new(store.clone(), ledger.clone()).spawn();
    wait_until("the runner ends", || running.is_finished()).await;
    let error = running.stop().await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Projection { projection, position: Position(4), .. } if projection == "ledger"
        ),
        "{error}"
    );
    assert_eq!(checkpoint_of(&store, "ledger").await, at(3, 1));
}

// ---------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------

/// Records, for each event, the checkpoint stored while it is handled.
struct BatchProbe {
    store: InMemoryStore,
    seen: Mutex<Vec<(Position, Option<Position>)>>,
}

#[async_trait]
impl Projection for BatchProbe {
    type Context = ();
    const NAME: &'static str = "batch_probe";

    fn event_types() -> Option<Vec<String>> {
        None
    }

    async fn handle(&self, _: &mut (), raw: &RecordedEvent) -> Result<(), BoxError> {
        let checkpoint = self.store.load_checkpoint(Self::NAME).await?;
        self.seen
            .lock()
            .unwrap()
            .push((raw.position, checkpoint.map(|c| c.position)));
        Ok(())
    }

    async fn reset(&self, _: &mut ()) -> Result<(), BoxError> {
        self.seen.lock().unwrap().clear();
        Ok(())
    }
}

#[tokio::test]
async fn batches_handle_every_event_once_in_order() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let probe = BatchProbe {
        store: store.clone(),
        seen: Mutex::new(Vec::new()),
    };
    let runner = ProjectionRunner::new(store.clone(), probe).batch_size(3);
    assert_eq!(runner.catch_up().await.unwrap(), Position(10));
    let seen = runner.projection().seen.lock().unwrap().clone();
    let handled: Vec<Position> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(handled, positions(1..=10));
    // Events 1-3 are handled before any checkpoint, 4-6 after checkpoint 3,
    // 7-9 after 6 and 10 after 9: one checkpoint per batch of three.
    for (position, checkpoint) in &seen {
        let batch_start = (position.0 - 1) / 3 * 3;
        let expected = (batch_start > 0).then_some(Position(batch_start));
        assert_eq!(*checkpoint, expected, "while handling {position}");
    }
    assert_eq!(checkpoint_of(&store, "batch_probe").await, at(10, 1));
}

// ---------------------------------------------------------------------------
// Rebuilds
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_rebuild_replays_the_log_into_the_same_read_model() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let ledger = Ledger::<1>::default();
    let runner = ProjectionRunner::new(store.clone(), ledger.clone()).batch_size(4);
    runner.catch_up().await.unwrap();
    let first = ledger.snapshot();
    assert_eq!(first.balances, expected_balances());

    runner.rebuild().await.unwrap();
    let cleared = ledger.snapshot();
    assert_eq!(cleared.resets, 1);
    assert!(cleared.handled.is_empty() && cleared.balances.is_empty());
    assert_eq!(checkpoint_of(&store, "ledger").await, at(0, 1));

    assert_eq!(runner.catch_up().await.unwrap(), Position(10));
    let second = ledger.snapshot();
    assert_eq!(
        Model {
            resets: 0,
            ..second
        },
        first
    );
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 1));
}

#[tokio::test]
async fn a_new_projection_version_rebuilds_automatically() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let v1 = Ledger::<1>::default();
    ProjectionRunner::new(store.clone(), v1.clone())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 1));
    assert_eq!(v1.model().handled.len(), 10);

    // The same read model, now under version 2.
    let v2: Ledger<2> = v1.with_version();
    let runner = ProjectionRunner::new(store.clone(), v2.clone());
    assert_eq!(runner.catch_up().await.unwrap(), Position(10));
    let model = v2.snapshot();
    assert_eq!(model.resets, 1, "reset before the replay");
    assert_eq!(
        model.handled,
        positions(1..=10),
        "every event replayed once"
    );
    assert_eq!(model.balances, expected_balances());
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 2));
    assert_eq!(runner.status().await.unwrap().version, 2);

    // Version 2 again: no second rebuild.
    assert_eq!(runner.catch_up().await.unwrap(), Position(10));
    assert_eq!(v2.model().resets, 1);
    assert_eq!(v2.model().handled.len(), 10);
}

// ---------------------------------------------------------------------------
// Failure policies
// ---------------------------------------------------------------------------

/// Stop policy: the failure names the event and the projection, the
/// checkpoint stays before it, and a restart after the fix resumes there.
async fn check_stop_policy(batch_size: usize, fail_at: u64) {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let ledger = Ledger::<1>::default();
    ledger.fail_at(fail_at);
    let runner = ProjectionRunner::new(store.clone(), ledger.clone())
        .batch_size(batch_size)
        .failure_policy(FailurePolicy::Stop);

    let error = runner.catch_up().await.unwrap_err();
    let failed = store
        .read_all(Position(fail_at - 1), &es_core::EventFilter::all(), 1)
        .await
        .unwrap()
        .events
        .remove(0);
    match &error {
        Error::Projection {
            projection,
            position,
            stream_id,
            version,
            event_type,
            source,
        } => {
            assert_eq!(projection, "ledger");
            assert_eq!(*position, Position(fail_at));
            assert_eq!(*stream_id, failed.stream_id);
            assert_eq!(*version, failed.version);
            assert_eq!(*event_type, failed.event_type);
            assert!(source.to_string().contains("refuses"), "{source}");
        }
        other => panic!("expected a projection error, got {other}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("ledger") && text.contains(&fail_at.to_string()),
        "{text}"
    );

    let before = fail_at - 1;
    let expected_checkpoint = (before > 0).then_some(Checkpoint {
        position: Position(before),
        version: 1,
    });
    assert_eq!(checkpoint_of(&store, "ledger").await, expected_checkpoint);
    assert_eq!(ledger.model().handled, positions(1..=before));
    assert_eq!(runner.status().await.unwrap().parked, 0);

    // Still broken: it stops at the same event again, handling nothing new.
    let error = runner.catch_up().await.unwrap_err();
    assert!(matches!(error, Error::Projection { position, .. } if position == Position(fail_at)));
    assert_eq!(ledger.model().handled, positions(1..=before));

    ledger.fix();
    assert_eq!(runner.catch_up().await.unwrap(), Position(10));
    let model = ledger.snapshot();
    assert_eq!(
        model.handled,
        positions(1..=10),
        "each event once, in order"
    );
    assert_eq!(model.balances, expected_balances());
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 1));
}

#[tokio::test]
async fn stop_policy_in_the_middle_of_a_batch() {
    check_stop_policy(500, 5).await;
}

#[tokio::test]
async fn stop_policy_at_the_start_of_a_batch() {
    check_stop_policy(3, 7).await;
}

#[tokio::test]
async fn stop_policy_at_the_first_event() {
    check_stop_policy(4, 1).await;
}

#[tokio::test]
async fn park_policy_sets_the_event_aside_and_retry_recovers_it() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let ledger = Ledger::<1>::default();
    ledger.fail_at(4);
    let runner = ProjectionRunner::new(store.clone(), ledger.clone())
        .batch_size(3)
        .failure_policy(FailurePolicy::Park);

    assert_eq!(runner.catch_up().await.unwrap(), Position(10));
    let mut handled = positions(1..=10);
    handled.retain(|p| *p != Position(4));
    assert_eq!(ledger.model().handled, handled, "the projection went on");
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 1));

    let parked = store.parked("ledger").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].projection, "ledger");
    assert_eq!(parked[0].event.position, Position(4));
    assert_eq!(parked[0].event.event_type, "Withdrawn");
    assert!(
        parked[0].error.contains("refuses position 4"),
        "{}",
        parked[0].error
    );
    assert_eq!(runner.status().await.unwrap().parked, 1);
    // Without the withdrawal of 30, `a` is 30 too high.
    assert_eq!(ledger.model().balances["account-a"], 97);

    // Retrying while still broken keeps it parked.
    let report = runner.retry_parked().await.unwrap();
    assert_eq!(
        report,
        RetryReport {
            recovered: 0,
            still_failing: 1
        }
    );
    assert_eq!(store.parked("ledger").await.unwrap().len(), 1);

    ledger.fix();
    let report = runner.retry_parked().await.unwrap();
    assert_eq!(
        report,
        RetryReport {
            recovered: 1,
            still_failing: 0
        }
    );
    assert!(store.parked("ledger").await.unwrap().is_empty());
    assert_eq!(runner.status().await.unwrap().parked, 0);
    let model = ledger.snapshot();
    assert_eq!(model.balances, expected_balances());
    assert_eq!(
        model.handled.iter().filter(|p| **p == Position(4)).count(),
        1
    );
    assert_eq!(model.handled.len(), 10);
    // Nothing left to retry; the checkpoint did not move back.
    assert_eq!(runner.retry_parked().await.unwrap(), RetryReport::default());
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 1));
}

#[tokio::test]
async fn an_event_that_does_not_decode_is_parked() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let bad = append_raw(
        &store,
        "account-a",
        raw("Deposited", 2, json!({"cents": 5})),
    )
    .await;
    // The stream `a` no longer loads, but `b` takes commands.
    let accounts = Repository::<Account, _>::new(store.clone());
    assert!(accounts.load("a").await.is_err());
    accounts.execute("b", deposit(4)).await.unwrap();
    let head = store.head().await.unwrap();

    let ledger = Ledger::<1>::default();
    let runner =
        ProjectionRunner::new(store.clone(), ledger.clone()).failure_policy(FailurePolicy::Park);
    assert_eq!(runner.catch_up().await.unwrap(), head);
    let parked = store.parked("ledger").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.position, bad);
    assert!(
        parked[0].error.contains("malformed payload"),
        "{}",
        parked[0].error
    );
    assert_eq!(ledger.model().balances["account-b"], 35);
    assert!(!ledger.model().handled.contains(&bad));

    // The data is still bad: a retry keeps it parked.
    assert_eq!(
        runner.retry_parked().await.unwrap(),
        RetryReport {
            recovered: 0,
            still_failing: 1
        }
    );
    // A rebuild drops the parked events and replays (and parks it again).
    runner.rebuild().await.unwrap();
    assert!(store.parked("ledger").await.unwrap().is_empty());
    assert_eq!(runner.catch_up().await.unwrap(), head);
    assert_eq!(store.parked("ledger").await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_returns_when_the_shutdown_future_completes() {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let ledger = Ledger::<1>::default();
    let runner = ProjectionRunner::new(store.clone(), ledger.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = {
        let runner = runner.clone();
        tokio::spawn(async move {
            runner
                .run_until(async move {
                    let _ = rx.await;
                })
                .await
        })
    };
    wait_until("the log is caught up", || {
        ledger.model().handled.len() >= 10
    })
    .await;
    // The runner now waits for new events (for up to its idle wait of a
    // few seconds); the shutdown must interrupt that wait.
    tokio::time::sleep(Duration::from_millis(20)).await;
    tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run_until returned in time")
        .expect("the task did not panic");
    result.unwrap();
    assert_eq!(checkpoint_of(&store, "ledger").await, at(10, 1));

    // A shutdown that is already complete: returns at once, Ok.
    tokio::time::timeout(
        Duration::from_secs(2),
        runner.run_until(std::future::ready(())),
    )
    .await
    .expect("returns at once")
    .unwrap();

    // A timer as shutdown, with events arriving meanwhile.
    let follow = runner.run_until(tokio::time::sleep(Duration::from_millis(300)));
    let write = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Repository::<Account, _>::new(store.clone())
            .execute("a", deposit(3))
            .await
            .unwrap();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(3), async {
        tokio::join!(follow, write)
    })
    .await
    .expect("returns in time");
    result.unwrap();
    assert_eq!(ledger.model().handled, positions(1..=11));
    assert_eq!(checkpoint_of(&store, "ledger").await, at(11, 1));
}

// ---------------------------------------------------------------------------
// Batch handlers: runs of one family at once
// ---------------------------------------------------------------------------

#[derive(es_core::Event, Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum NoteEvent {
    Noted { text: String },
}

/// The calls a `Journal` received: the family and the positions given.
type Calls = Vec<(&'static str, Vec<u64>)>;

/// Records each call: the family and the positions it was given.
#[derive(es_core::Projection, Clone, Default)]
#[projection(name = "journal", events(AccountEvent, NoteEvent))]
struct Journal {
    calls: Arc<Mutex<Calls>>,
    fail_at: u64,
}

impl Journal {
    fn calls(&self) -> Calls {
        self.calls.lock().unwrap().clone()
    }

    fn handled(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.calls().into_iter().flat_map(|(_, p)| p).collect();
        all.sort_unstable();
        all
    }
}

#[async_trait]
impl es_core::Handles<AccountEvent> for Journal {
    async fn handle_event(
        &self,
        _: &mut (),
        event: es_core::Envelope<AccountEvent>,
    ) -> Result<(), BoxError> {
        if event.position.0 == self.fail_at {
            return Err("journal refuses it".into());
        }
        self.calls
            .lock()
            .unwrap()
            .push(("one account event", vec![event.position.0]));
        Ok(())
    }

    async fn handle_events(
        &self,
        _: &mut (),
        events: Vec<es_core::Envelope<AccountEvent>>,
    ) -> Result<(), es_core::BatchError> {
        let mut run = Vec::new();
        let mut failed = None;
        for (i, event) in events.iter().enumerate() {
            if event.position.0 == self.fail_at {
                failed = Some(i);
                break;
            }
            run.push(event.position.0);
        }
        self.calls.lock().unwrap().push(("accounts", run));
        match failed {
            Some(i) => Err(es_core::BatchError::at(i, "journal refuses it")),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl es_core::Handles<NoteEvent> for Journal {
    async fn handle_event(
        &self,
        _: &mut (),
        event: es_core::Envelope<NoteEvent>,
    ) -> Result<(), BoxError> {
        self.calls
            .lock()
            .unwrap()
            .push(("note", vec![event.position.0]));
        Ok(())
    }
}

#[async_trait]
impl es_core::ResetProjection for Journal {
    async fn reset_read_model(&self, _: &mut ()) -> Result<(), BoxError> {
        self.calls.lock().unwrap().clear();
        Ok(())
    }
}

/// Ten account events, two notes, one more account event.
async fn journal_log() -> InMemoryStore {
    let store = InMemoryStore::new();
    run_script(&store).await;
    let notes: Vec<NewEvent> = ["one", "two"]
        .into_iter()
        .map(|text| {
            NoteEvent::Noted { text: text.into() }
                .encode(Metadata::default())
                .unwrap()
        })
        .collect();
    store
        .append(
            &StreamId::new("note-1"),
            ExpectedVersion::NoStream,
            notes,
            &AppendOptions::default(),
        )
        .await
        .unwrap();
    Repository::<Account, _>::new(store.clone())
        .execute("a", deposit(1))
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn a_derived_projection_gets_each_run_of_one_family_at_once() {
    let store = journal_log().await;
    let journal = Journal::default();
    let runner = ProjectionRunner::new(store.clone(), journal.clone()).batch_size(5);
    assert_eq!(runner.catch_up().await.unwrap(), Position(13));
    assert_eq!(
        journal.calls(),
        [
            ("accounts", vec![1, 2, 3, 4, 5]),
            ("accounts", vec![6, 7, 8, 9, 10]),
            ("note", vec![11]),
            ("note", vec![12]),
            ("accounts", vec![13]),
        ],
        "account events come in runs; notes, without a batch handler, one by one"
    );
    assert_eq!(checkpoint_of(&store, "journal").await, at(13, 1));
}

#[tokio::test]
async fn a_batch_that_fails_part_way_parks_exactly_the_failing_event() {
    let store = journal_log().await;
    let journal = Journal {
        fail_at: 7,
        ..Journal::default()
    };
    let runner = ProjectionRunner::new(store.clone(), journal.clone())
        .batch_size(5)
        .failure_policy(FailurePolicy::Park);
    assert_eq!(runner.catch_up().await.unwrap(), Position(13));
    let mut expected: Vec<u64> = (1..=13).collect();
    expected.retain(|p| *p != 7);
    assert_eq!(
        journal.handled(),
        expected,
        "every other event exactly once"
    );
    let parked = store.parked("journal").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.position, Position(7));
    assert!(parked[0].error.contains("refuses"), "{}", parked[0].error);

    let stopping = Journal {
        fail_at: 7,
        ..Journal::default()
    };
    let other = InMemoryStore::new();
    run_script(&other).await;
    let runner = ProjectionRunner::new(other.clone(), stopping.clone()).batch_size(5);
    match runner.catch_up().await {
        Err(Error::Projection { position, .. }) => assert_eq!(position, Position(7)),
        other => panic!("expected the projection to stop at 7, got {other:?}"),
    }
    assert_eq!(stopping.handled(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(checkpoint_of(&other, "journal").await, at(6, 1));
}
