//! Integration tests of the repository over the in-memory store: loading and
//! executing, metadata, snapshots, retries on conflicts, concurrency,
//! idempotency keys, the state cache and the decoding of stored events.

mod common;

use common::{deposit, deposited, open, withdraw};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use common::{
    Account, AccountCommand, AccountError, AccountEvent, Opened, SnapshottedAccount, Withdrawn,
};
use es_core::{
    Aggregate, AppendOptions, AppendOutcome, Committed, DecodeError, DecodeErrorKind, Error, Event,
    EventFilter, EventId, EventSchema, EventStore, ExecuteError, ExecuteOptions, ExpectedVersion,
    InMemoryStore, Loaded, LogReader, LogSlice, Metadata, NewEvent, Payload, Position,
    RecordedEvent, Repository, Snapshot, SnapshotStore, StreamId, Version,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn stream(id: &str) -> StreamId {
    Repository::<Account, InMemoryStore>::stream_id(id)
}

/// A stored event written without going through the domain.
fn raw(event_type: &str, schema_version: u32, payload: Value) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: event_type.to_owned(),
        schema_version,
        payload: payload.into(),
        metadata: Metadata::default(),
    }
}

/// Appends one raw event at the end of a stream.
async fn append_raw(store: &impl EventStore, stream_id: &StreamId, event: NewEvent) -> Committed {
    store
        .append(
            stream_id,
            ExpectedVersion::Any,
            vec![event],
            &AppendOptions::default(),
        )
        .await
        .expect("raw append")
        .committed()
        .clone()
}

/// Every event of a stream, as stored.
async fn read_all_of(store: &impl EventStore, stream_id: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(stream_id, Version(1), 100_000)
        .await
        .expect("read stream")
}

/// The state obtained by applying the first `upto` events of a stream to the
/// default state, decoding each of them.
async fn fold(store: &impl EventStore, stream_id: &StreamId, upto: u64) -> Account {
    let limit = usize::try_from(upto).expect("small");
    let mut state = Account::default();
    for raw in store
        .read_stream(stream_id, Version(1), limit)
        .await
        .expect("read stream")
    {
        state.apply(&AccountEvent::decode(&raw).expect("decodes").event);
    }
    state
}

/// The decode error of a load that must fail to decode.
fn decode_error<T: std::fmt::Debug>(result: es_core::Result<T>) -> Box<DecodeError> {
    match result {
        Err(Error::Decode(error)) => error,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// An in-memory store with knobs: foreign events injected before appends,
/// failing snapshots, and counters.
#[derive(Clone, Default)]
struct TestStore {
    inner: InMemoryStore,
    knobs: Arc<Knobs>,
}

#[derive(Default)]
struct Knobs {
    /// Before each append call, the next of these (if any) is appended to the
    /// same stream first, as another writer would.
    foreign: Mutex<VecDeque<AccountEvent>>,
    /// Whether `save_snapshot` fails.
    fail_snapshots: AtomicBool,
    /// Whether `append` yields to the scheduler before appending, to widen
    /// the window between a load and its append.
    yield_before_append: AtomicBool,
    /// When set, the next append call, once written, reports on the first
    /// channel and waits for the second before it returns.
    hold_next_append: Mutex<Option<Hold>>,
    /// When set, the next read of the log after this position fails, as a
    /// dropped connection would.
    fail_read_all_after: Mutex<Option<Position>>,
    snapshot_attempts: AtomicUsize,
    append_calls: AtomicUsize,
    conflicts: AtomicUsize,
}

struct Hold {
    appended: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

impl TestStore {
    fn inject(&self, events: impl IntoIterator<Item = AccountEvent>) {
        self.knobs.foreign.lock().expect("lock").extend(events);
    }

    /// Holds the next append after it is written; returns the channels that
    /// tell when it is written and let it return.
    fn hold_next_append(
        &self,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (appended, appended_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release) = tokio::sync::oneshot::channel();
        *self.knobs.hold_next_append.lock().expect("lock") = Some(Hold { appended, release });
        (appended_rx, release_tx)
    }

    fn append_calls(&self) -> usize {
        self.knobs.append_calls.load(Ordering::SeqCst)
    }

    fn conflicts(&self) -> usize {
        self.knobs.conflicts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventStore for TestStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> es_core::Result<AppendOutcome> {
        self.knobs.append_calls.fetch_add(1, Ordering::SeqCst);
        let hold = self.knobs.hold_next_append.lock().expect("lock").take();
        if self.knobs.yield_before_append.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let foreign = self.knobs.foreign.lock().expect("lock").pop_front();
        if let Some(event) = foreign {
            let new = event.encode(Metadata::correlated("foreign-writer"))?;
            self.inner
                .append(
                    stream_id,
                    ExpectedVersion::Any,
                    vec![new],
                    &AppendOptions::default(),
                )
                .await?;
        }
        let outcome = self
            .inner
            .append(stream_id, expected, events, options)
            .await;
        if matches!(&outcome, Err(error) if error.is_conflict()) {
            self.knobs.conflicts.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(Hold { appended, release }) = hold {
            let _ = appended.send(());
            let _ = release.await;
        }
        outcome
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        limit: usize,
    ) -> es_core::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream_id, from, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> es_core::Result<Version> {
        self.inner.stream_version(stream_id).await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> es_core::Result<LogSlice> {
        let fail = {
            let mut fail_after = self.knobs.fail_read_all_after.lock().expect("lock");
            *fail_after == Some(after) && fail_after.take().is_some()
        };
        if fail {
            return Err(Error::store(
                format!("cannot read the log after {after}"),
                std::io::Error::other("connection reset"),
            ));
        }
        self.inner.read_all(after, filter, limit).await
    }

    async fn head(&self) -> es_core::Result<Position> {
        self.inner.head().await
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> es_core::Result<bool> {
        self.inner.wait_for_events(after, timeout).await
    }

    async fn find_idempotency_key(&self, key: &str) -> es_core::Result<Option<Committed>> {
        self.inner.find_idempotency_key(key).await
    }
}

#[async_trait]
impl SnapshotStore for TestStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> es_core::Result<()> {
        self.knobs.snapshot_attempts.fetch_add(1, Ordering::SeqCst);
        if self.knobs.fail_snapshots.load(Ordering::SeqCst) {
            return Err(Error::store(
                "snapshot table unavailable",
                std::io::Error::other("disk full"),
            ));
        }
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> es_core::Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream_id).await
    }

    async fn replay_from_snapshot(
        &self,
        stream_id: &StreamId,
        replay: &mut dyn es_core::Replay,
    ) -> es_core::Result<()> {
        self.inner.replay_from_snapshot(stream_id, replay).await
    }
}

// ---------------------------------------------------------------------------
// Load and execute
// ---------------------------------------------------------------------------

#[tokio::test]
async fn loading_an_unknown_aggregate_gives_the_initial_state() {
    let accounts = Repository::<Account, _>::new(InMemoryStore::new());
    let loaded = accounts.load("nobody").await.unwrap();
    assert_eq!(
        loaded,
        Loaded {
            stream_id: StreamId::new("account-nobody"),
            version: Version::INITIAL,
            state: Account::default(),
        }
    );
}

#[tokio::test]
async fn execute_appends_events_and_load_replays_them() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());

    let opened = accounts.execute("a", open("ada")).await.unwrap();
    assert_eq!(opened.stream_id, stream("a"));
    assert_eq!(
        opened.events,
        [AccountEvent::Opened(Opened {
            owner: "ada".into()
        })]
    );
    assert_eq!(opened.version, Version(1));
    assert!(!opened.duplicate);
    let committed = opened.committed.unwrap();
    assert_eq!(committed.first_version, Version(1));
    assert_eq!(committed.last_version, Version(1));
    assert_eq!(committed.first_position, Position(1));

    // Another stream interleaves in the global log.
    accounts.execute("b", open("bob")).await.unwrap();

    let deposit_100 = accounts.execute("a", deposit(100)).await.unwrap();
    assert_eq!(deposit_100.events, [deposited(100)]);
    assert_eq!(deposit_100.version, Version(2));
    let committed = deposit_100.committed.unwrap();
    assert_eq!(committed.first_version, Version(2));
    assert_eq!(committed.first_position, Position(3));
    assert_eq!(committed.last_position, Position(3));

    let withdrawal = accounts.execute("a", withdraw(30)).await.unwrap();
    assert_eq!(
        withdrawal.events,
        [AccountEvent::Withdrawn(Withdrawn { amount: 30 })]
    );
    assert_eq!(withdrawal.version, Version(3));

    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.version, Version(3));
    assert_eq!(
        loaded.state,
        Account {
            owner: Some("ada".into()),
            balance: 70,
            transactions: 3,
        }
    );
    assert_eq!(
        accounts.load("b").await.unwrap().state.owner.as_deref(),
        Some("bob")
    );

    // A refused command appends nothing.
    let refused = accounts.execute("a", withdraw(500)).await;
    assert!(
        matches!(
            refused,
            Err(ExecuteError::Rejected(AccountError::InsufficientFunds {
                balance: 70,
                asked: 500
            }))
        ),
        "{refused:?}"
    );
    assert!(!refused.unwrap_err().is_conflict());
    let refused = accounts.execute("nobody", deposit(5)).await;
    assert!(matches!(
        refused,
        Err(ExecuteError::Rejected(AccountError::NotOpen))
    ));
    assert_eq!(
        store.stream_version(&stream("a")).await.unwrap(),
        Version(3)
    );
    assert_eq!(
        store.stream_version(&stream("nobody")).await.unwrap(),
        Version::INITIAL
    );
    assert_eq!(store.head().await.unwrap(), Position(4));
}

#[tokio::test]
async fn execute_with_metadata_stores_correlation_and_recorded_at() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();

    let before = Utc::now();
    let metadata = Metadata::correlated("req-1")
        .caused_by("cmd-9")
        .with("tenant", "acme");
    accounts
        .execute_with("a", deposit(10), metadata)
        .await
        .unwrap();
    let after = Utc::now();

    let events = read_all_of(&store, &stream("a")).await;
    assert_eq!(events.len(), 2);
    let stored = &events[1];
    assert_eq!(stored.event_type, "Deposited");
    assert_eq!(stored.metadata.correlation_id.as_deref(), Some("req-1"));
    assert_eq!(stored.metadata.causation_id.as_deref(), Some("cmd-9"));
    assert_eq!(stored.metadata.get("tenant"), Some("acme"));
    let recorded_at = stored.metadata.recorded_at.expect("recorded_at is set");
    assert_eq!(recorded_at, stored.recorded_at);
    assert!(
        before <= recorded_at && recorded_at <= after,
        "{recorded_at}"
    );
    // A command without metadata still gets a recorded_at, and no correlation.
    assert!(events[0].metadata.recorded_at.is_some());
    assert_eq!(events[0].metadata.correlation_id, None);

    // A recorded_at given by the caller is kept.
    let fixed = Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap();
    let metadata = Metadata {
        recorded_at: Some(fixed),
        ..Metadata::correlated("req-2")
    };
    accounts
        .execute_with("a", deposit(1), ExecuteOptions::from(metadata))
        .await
        .unwrap();
    let events = read_all_of(&store, &stream("a")).await;
    assert_eq!(events[2].recorded_at, fixed);
    assert_eq!(events[2].metadata.correlation_id.as_deref(), Some("req-2"));
}

// ---------------------------------------------------------------------------
// Snapshots: equivalence with a full replay
// ---------------------------------------------------------------------------

fn command_strategy() -> impl Strategy<Value = AccountCommand> {
    prop_oneof![(0u64..50).prop_map(deposit), (0u64..80).prop_map(withdraw),]
}

/// Runs the same commands on a plain and a snapshotting repository (two
/// stores), then restores a snapshot saved by hand at version `cut` and
/// compares every way of loading with a full replay.
async fn check_snapshot_equivalence(
    commands: Vec<AccountCommand>,
    cut: Index,
) -> Result<(), TestCaseError> {
    let plain_store = InMemoryStore::new();
    let snap_store = InMemoryStore::new();
    let plain = Repository::<Account, _>::new(plain_store.clone());
    let snapped = Repository::<SnapshottedAccount, _>::new(snap_store.clone());
    plain.execute("p", open("ada")).await.unwrap();
    snapped.execute("p", open("ada")).await.unwrap();

    for command in commands {
        let a = plain.execute("p", command.clone()).await;
        let b = snapped.execute("p", command).await;
        match (a, b) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.events, &b.events);
                prop_assert_eq!(a.version, b.version);
            }
            (Err(ExecuteError::Rejected(a)), Err(ExecuteError::Rejected(b))) => {
                prop_assert_eq!(a, b);
            }
            (a, b) => {
                return Err(TestCaseError::fail(format!(
                    "outcomes differ: {a:?} vs {b:?}"
                )))
            }
        }
        // The snapshotting repository decides from snapshot + tail: its
        // state must be the replayed one after every command.
        let full = plain.load("p").await.unwrap();
        let restored = snapped.load("p").await.unwrap();
        prop_assert_eq!(&restored.state.0, &full.state);
        prop_assert_eq!(restored.version, full.version);
    }

    let full = plain.load("p").await.unwrap();
    let version = full.version.0;
    // Automatic snapshots: at the last multiple of 10 reached.
    let snapshot = snap_store.load_snapshot(&stream("p")).await.unwrap();
    if version >= 10 {
        let snapshot = snapshot.expect("a snapshot after 10 events");
        prop_assert_eq!(snapshot.version, Version(version / 10 * 10));
        prop_assert_eq!(snapshot.state_version, SnapshottedAccount::STATE_VERSION);
        let at_snapshot = fold(&snap_store, &stream("p"), snapshot.version.0).await;
        prop_assert_eq!(
            snapshot.state,
            serde_json::to_value(SnapshottedAccount(at_snapshot)).unwrap()
        );
    } else {
        prop_assert!(snapshot.is_none());
    }

    // A snapshot saved by hand at any version, then the tail.
    let cut = cut.index(usize::try_from(version).unwrap() + 1) as u64;
    let at_cut = fold(&plain_store, &stream("p"), cut).await;
    plain_store
        .save_snapshot(Snapshot {
            stream_id: stream("p"),
            version: Version(cut),
            state_version: SnapshottedAccount::STATE_VERSION,
            state: serde_json::to_value(SnapshottedAccount(at_cut)).unwrap(),
            taken_at: Utc::now(),
        })
        .await
        .unwrap();
    let restored = Repository::<SnapshottedAccount, _>::new(plain_store.clone())
        .load("p")
        .await
        .unwrap();
    prop_assert_eq!(restored.version, full.version);
    prop_assert_eq!(restored.state.0, full.state);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snapshot_plus_tail_equals_full_replay(
        commands in prop::collection::vec(command_strategy(), 0..40),
        cut in any::<Index>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check_snapshot_equivalence(commands, cut))?;
    }
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Tally {
    deposited: u64,
    withdrawn: u64,
    deposits: u64,
    withdrawals: u64,
    rejected: u64,
    conflicts: u64,
}

/// Eight tasks withdraw (and now and then deposit) on one account at the
/// same time; checks that no update is lost and the balance never went
/// below zero.
async fn run_concurrent_withdrawals(accounts: Repository<Account, TestStore>) {
    const TASKS: u64 = 8;
    const OPS: u64 = 12;
    const INITIAL: u64 = 300;

    accounts
        .store()
        .knobs
        .yield_before_append
        .store(true, Ordering::SeqCst);
    accounts.execute("shared", open("ada")).await.unwrap();
    accounts.execute("shared", deposit(INITIAL)).await.unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS as usize));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let accounts = accounts.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut tally = Tally::default();
            for op in 0..OPS {
                let is_deposit = op % 4 == 3;
                let amount = if is_deposit { 5 } else { 10 + task + op % 3 };
                let command = if is_deposit {
                    deposit(amount)
                } else {
                    withdraw(amount)
                };
                match accounts.execute("shared", command).await {
                    Ok(executed) => {
                        assert_eq!(executed.events.len(), 1);
                        let written = executed.committed.expect("committed").last_position;
                        let head = accounts.store().head().await.unwrap();
                        assert!(head >= written, "head {head} behind written {written}");
                        assert!(!executed.duplicate);
                        if is_deposit {
                            tally.deposits += 1;
                            tally.deposited += amount;
                        } else {
                            tally.withdrawals += 1;
                            tally.withdrawn += amount;
                        }
                    }
                    Err(ExecuteError::Rejected(AccountError::InsufficientFunds {
                        balance,
                        asked,
                    })) => {
                        assert!(!is_deposit);
                        assert!(asked > balance, "refused {asked} with balance {balance}");
                        tally.rejected += 1;
                    }
                    Err(error) if error.is_conflict() => tally.conflicts += 1,
                    Err(error) => panic!("unexpected error: {error}"),
                }
                tokio::task::yield_now().await;
            }
            tally
        }));
    }

    let mut total = Tally::default();
    for task in tasks {
        let tally = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("task finished in time")
            .expect("task did not panic");
        total.deposited += tally.deposited;
        total.withdrawn += tally.withdrawn;
        total.deposits += tally.deposits;
        total.withdrawals += tally.withdrawals;
        total.rejected += tally.rejected;
        total.conflicts += tally.conflicts;
    }
    let succeeded = total.deposits + total.withdrawals;
    assert_eq!(
        succeeded + total.rejected + total.conflicts,
        TASKS * OPS,
        "{total:?}"
    );
    assert!(total.withdrawals > 0, "{total:?}");
    // More is asked than was ever deposited: some withdrawals must fail.
    assert!(total.rejected + total.conflicts > 0, "{total:?}");

    let loaded = accounts.load("shared").await.unwrap();
    assert_eq!(
        loaded.state.balance,
        INITIAL + total.deposited - total.withdrawn,
        "{total:?}"
    );
    assert_eq!(loaded.version, Version(2 + succeeded), "{total:?}");
    assert_eq!(loaded.state.transactions, 2 + succeeded);

    // Replay every stored event in order: versions are dense and the
    // balance never goes below zero.
    let events = read_all_of(accounts.store(), &stream("shared")).await;
    assert_eq!(events.len() as u64, 2 + succeeded);
    let mut balance: u64 = 0;
    let (mut deposits, mut withdrawals) = (0, 0);
    for (i, raw) in events.iter().enumerate() {
        assert_eq!(raw.version, Version(i as u64 + 1));
        match AccountEvent::decode(raw).unwrap().event {
            AccountEvent::Opened(_) => assert_eq!(i, 0),
            AccountEvent::Deposited(d) => {
                deposits += 1;
                balance += d.amount;
            }
            AccountEvent::Withdrawn(w) => {
                withdrawals += 1;
                balance = balance.checked_sub(w.amount).unwrap_or_else(|| {
                    panic!(
                        "overdraft at version {}: {balance} - {}",
                        raw.version, w.amount
                    )
                });
            }
        }
    }
    assert_eq!(deposits, 1 + total.deposits);
    assert_eq!(withdrawals, total.withdrawals);
    assert_eq!(balance, loaded.state.balance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_withdrawals_lose_no_update_and_never_overdraw() {
    run_concurrent_withdrawals(Repository::new(TestStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_withdrawals_with_a_shared_cache_lose_no_update() {
    run_concurrent_withdrawals(Repository::new(TestStore::default()).with_cache(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_withdrawals_without_retries_fail_only_with_typed_conflicts() {
    run_concurrent_withdrawals(Repository::new(TestStore::default()).with_retries(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_appends_never_move_the_head_backwards() {
    const TASKS: usize = 8;
    for round in 0..20 {
        let store = InMemoryStore::new();
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let stream_id = StreamId::for_aggregate("writer", task);
                let mut lagging = Vec::new();
                for _ in 0..2000 {
                    let written = append_raw(&store, &stream_id, raw("Tick", 1, json!({})))
                        .await
                        .last_position;
                    // The append has returned: the head includes it.
                    let head = store.head().await.unwrap();
                    if head < written {
                        lagging.push((written, head));
                    }
                }
                lagging
            }));
        }
        for task in tasks {
            let lagging = task.await.unwrap();
            assert!(
                lagging.is_empty(),
                "round {round}: head behind appends: {lagging:?}"
            );
        }
        assert_eq!(store.head().await.unwrap(), Position((TASKS * 2000) as u64));
    }
}

// ---------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------

#[tokio::test]
async fn without_retries_a_concurrent_writer_yields_a_typed_conflict() {
    let store = TestStore::default();
    let accounts = Repository::<Account, _>::new(store.clone()).with_retries(0);
    accounts.execute("a", open("ada")).await.unwrap();

    store.inject([deposited(1)]);
    let calls = store.append_calls();
    let result = accounts.execute("a", deposit(10)).await;
    let error = result.unwrap_err();
    assert!(error.is_conflict(), "{error:?}");
    match &error {
        ExecuteError::Failed(Error::Conflict {
            stream_id,
            expected,
            actual,
        }) => {
            assert_eq!(stream_id, &stream("a"));
            assert_eq!(*expected, ExpectedVersion::Exact(Version(1)));
            assert_eq!(*actual, Version(2));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.append_calls() - calls, 1, "no retry");
    // Only the foreign event was appended.
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.version, Version(2));
    assert_eq!(loaded.state.balance, 1);
}

#[tokio::test]
async fn with_default_retries_the_same_interleaving_converges() {
    let store = TestStore::default();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();

    store.inject([deposited(1)]);
    let calls = store.append_calls();
    let executed = accounts.execute("a", deposit(10)).await.unwrap();
    assert_eq!(store.append_calls() - calls, 2, "one retry");
    assert_eq!(store.conflicts(), 1);
    assert_eq!(executed.version, Version(3));
    assert_eq!(executed.events, [deposited(10)]);
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.version, Version(3));
    assert_eq!(loaded.state.balance, 11);
}

#[tokio::test]
async fn retries_are_bounded_and_decide_again() {
    let store = TestStore::default();
    let accounts = Repository::<Account, _>::new(store.clone()).with_retries(2);
    accounts.execute("a", open("ada")).await.unwrap();

    // Two conflicts: the third attempt succeeds.
    store.inject([deposited(1), deposited(1)]);
    accounts.execute("a", deposit(10)).await.unwrap();
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 12);

    // Three conflicts: the retries run out.
    store.inject([deposited(1), deposited(1), deposited(1)]);
    let calls = store.append_calls();
    let error = accounts.execute("a", deposit(10)).await.unwrap_err();
    assert!(error.is_conflict(), "{error:?}");
    assert_eq!(store.append_calls() - calls, 3);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 15);

    // The command is decided again on the new state: a concurrent
    // withdrawal makes the retry refuse it.
    store.inject([AccountEvent::Withdrawn(Withdrawn { amount: 10 })]);
    let refused = accounts.execute("a", withdraw(10)).await;
    assert!(
        matches!(
            refused,
            Err(ExecuteError::Rejected(AccountError::InsufficientFunds {
                balance: 5,
                asked: 10
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 5);
}

// ---------------------------------------------------------------------------
// Idempotency keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_idempotency_key_returns_the_first_outcome_and_appends_nothing() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();
    accounts.execute("a", deposit(100)).await.unwrap();

    let options = ExecuteOptions::from(Metadata::correlated("req-1")).idempotency_key("pay-1");
    let first = accounts
        .execute_with("a", withdraw(100), options.clone())
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(
        first.events,
        [AccountEvent::Withdrawn(Withdrawn { amount: 100 })]
    );
    let head = store.head().await.unwrap();
    accounts.execute("a", deposit(7)).await.unwrap();

    // The balance is now 7: the same withdrawal would be refused, but the
    // key returns the first outcome.
    let again = accounts
        .execute_with("a", withdraw(100), options.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.events, first.events);
    assert_eq!(again.committed, first.committed);
    assert_eq!(again.version, first.version);
    assert_eq!(again.stream_id, first.stream_id);
    // Even another command with the same key.
    let other = accounts
        .execute_with("a", deposit(1), options.clone())
        .await
        .unwrap();
    assert!(other.duplicate);
    assert_eq!(other.committed, first.committed);

    assert_eq!(store.head().await.unwrap(), Position(head.0 + 1));
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.state.balance, 7);
    assert_eq!(loaded.version, Version(4));
    assert_eq!(
        store.find_idempotency_key("pay-1").await.unwrap(),
        first.committed
    );

    // The same key on another stream is refused.
    accounts.execute("b", open("bob")).await.unwrap();
    let reused = accounts.execute_with("b", deposit(5), options).await;
    match reused {
        Err(ExecuteError::Failed(Error::IdempotencyKeyReused {
            key,
            used_for,
            stream_id,
        })) => {
            assert_eq!(key, "pay-1");
            assert_eq!(used_for, stream("a"));
            assert_eq!(stream_id, stream("b"));
        }
        other => panic!("expected IdempotencyKeyReused, got {other:?}"),
    }
    assert_eq!(accounts.load("b").await.unwrap().state.balance, 0);
}

#[tokio::test]
async fn a_refused_command_does_not_use_up_its_idempotency_key() {
    let accounts = Repository::<Account, _>::new(InMemoryStore::new());
    let options = ExecuteOptions::default().idempotency_key("first-deposit");
    let refused = accounts
        .execute_with("a", deposit(5), options.clone())
        .await;
    assert!(matches!(
        refused,
        Err(ExecuteError::Rejected(AccountError::NotOpen))
    ));
    accounts.execute("a", open("ada")).await.unwrap();
    let executed = accounts
        .execute_with("a", deposit(5), options)
        .await
        .unwrap();
    assert!(!executed.duplicate);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 5);
}

#[tokio::test]
async fn an_idempotency_key_survives_a_conflict_retry() {
    let store = TestStore::default();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();
    store.inject([deposited(1)]);
    let options = ExecuteOptions::default().idempotency_key("k");
    let first = accounts
        .execute_with("a", deposit(10), options.clone())
        .await
        .unwrap();
    assert_eq!(store.conflicts(), 1);
    let again = accounts
        .execute_with("a", deposit(10), options)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.committed, first.committed);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 11);
}

// ---------------------------------------------------------------------------
// State cache
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_cached_repository_gives_the_same_results() {
    let cached = Repository::<Account, _>::new(InMemoryStore::new()).with_cache(2);
    let plain = Repository::<Account, _>::new(InMemoryStore::new());
    let mut script = Vec::new();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        script.push((*id, open(id)));
        script.push((*id, deposit(10 * (i as u64 + 1))));
    }
    // Round-robin over three accounts with a cache of two: evictions happen.
    for round in 0..6u64 {
        for id in ["a", "b", "c"] {
            script.push((id, withdraw(round * 3 + 1)));
            script.push((id, deposit(round)));
        }
    }
    script.push(("a", open("again")));
    for (id, command) in script {
        let a = cached.execute(id, command.clone()).await;
        let b = plain.execute(id, command.clone()).await;
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.events, b.events, "{id} {command:?}");
                assert_eq!(a.version, b.version, "{id} {command:?}");
            }
            (Err(ExecuteError::Rejected(a)), Err(ExecuteError::Rejected(b))) => {
                assert_eq!(a, b, "{id} {command:?}");
            }
            (a, b) => panic!("outcomes differ for {id} {command:?}: {a:?} vs {b:?}"),
        }
    }
    for id in ["a", "b", "c"] {
        assert_eq!(
            cached.load(id).await.unwrap(),
            plain.load(id).await.unwrap()
        );
    }
}

#[tokio::test]
async fn a_foreign_append_makes_the_cache_stale_and_the_retry_recovers() {
    let store = TestStore::default();
    let accounts = Repository::<Account, _>::new(store.clone()).with_cache(8);
    accounts.execute("a", open("ada")).await.unwrap();
    accounts.execute("a", deposit(100)).await.unwrap();

    // Another process withdraws 60 directly in the store.
    let foreign = AccountEvent::Withdrawn(Withdrawn { amount: 60 })
        .encode(Metadata::default())
        .unwrap();
    store
        .inner
        .append(
            &stream("a"),
            ExpectedVersion::Exact(Version(2)),
            vec![foreign],
            &AppendOptions::default(),
        )
        .await
        .unwrap();

    // `load` replays the tail after the cached state.
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 40);

    // The cached state (version 2) is used to decide, the append conflicts,
    // the entry is dropped and the retry decides on the stored state.
    let calls = store.append_calls();
    let executed = accounts.execute("a", withdraw(30)).await.unwrap();
    assert_eq!(store.append_calls() - calls, 2);
    assert_eq!(store.conflicts(), 1);
    assert_eq!(executed.version, Version(4));
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.state.balance, 10);
    assert_eq!(loaded.version, Version(4));

    // The cache was refreshed: the next command needs a single append.
    let calls = store.append_calls();
    accounts.execute("a", deposit(5)).await.unwrap();
    assert_eq!(store.append_calls() - calls, 1);

    // A stale cache that would accept a command the stored state refuses:
    // the retry refuses it.
    let foreign = AccountEvent::Withdrawn(Withdrawn { amount: 14 })
        .encode(Metadata::default())
        .unwrap();
    append_raw(&store.inner, &stream("a"), foreign).await;
    let refused = accounts.execute("a", withdraw(10)).await;
    assert!(
        matches!(
            refused,
            Err(ExecuteError::Rejected(AccountError::InsufficientFunds {
                balance: 1,
                asked: 10
            }))
        ),
        "{refused:?}"
    );
    assert_eq!(store.conflicts(), 2);
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_command_does_not_put_an_older_state_in_the_cache() {
    let store = TestStore::default();
    let accounts = Repository::<Account, _>::new(store.clone()).with_cache(8);
    accounts.execute("a", open("ada")).await.unwrap();

    // A deposits 10: written as version 2, but slow to return.
    let (appended, release) = store.hold_next_append();
    let slow = {
        let accounts = accounts.clone();
        tokio::spawn(async move { accounts.execute("a", deposit(10)).await })
    };
    tokio::time::timeout(Duration::from_secs(5), appended)
        .await
        .expect("A appended in time")
        .unwrap();

    // Meanwhile B deposits 100 through the same repository: a conflict with
    // A's event, a retry, version 3 with 110 cached.
    let fast = accounts.execute("a", deposit(100)).await.unwrap();
    assert_eq!(fast.version, Version(3));

    // A returns and caches its state of version 2.
    release.send(()).unwrap();
    let slow = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("A returned in time")
        .unwrap()
        .unwrap();
    assert_eq!(slow.version, Version(2));

    // Every write came through this repository, so its cache must allow
    // what the stored state allows.
    let withdrawal = accounts.execute("a", withdraw(50)).await;
    assert!(withdrawal.is_ok(), "{withdrawal:?}");
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.state.balance, 60);
    assert_eq!(loaded.version, Version(4));
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

#[tokio::test]
async fn snapshots_are_saved_at_multiples_of_ten() {
    let store = InMemoryStore::new();
    let accounts = Repository::<SnapshottedAccount, _>::new(store.clone());
    accounts.execute("s", open("ada")).await.unwrap();
    for _ in 2..10 {
        accounts.execute("s", deposit(1)).await.unwrap();
    }
    assert_eq!(
        store.stream_version(&stream("s")).await.unwrap(),
        Version(9)
    );
    assert!(store.load_snapshot(&stream("s")).await.unwrap().is_none());

    accounts.execute("s", deposit(1)).await.unwrap();
    let snapshot = store.load_snapshot(&stream("s")).await.unwrap().unwrap();
    assert_eq!(snapshot.stream_id, stream("s"));
    assert_eq!(snapshot.version, Version(10));
    assert_eq!(snapshot.state_version, 2);
    let expected = SnapshottedAccount(Account {
        owner: Some("ada".into()),
        balance: 9,
        transactions: 10,
    });
    assert_eq!(snapshot.state, serde_json::to_value(&expected).unwrap());

    for _ in 11..20 {
        accounts.execute("s", deposit(1)).await.unwrap();
    }
    let snapshot = store.load_snapshot(&stream("s")).await.unwrap().unwrap();
    assert_eq!(snapshot.version, Version(10));
    accounts.execute("s", deposit(1)).await.unwrap();
    let snapshot = store.load_snapshot(&stream("s")).await.unwrap().unwrap();
    assert_eq!(snapshot.version, Version(20));
    assert_eq!(accounts.snapshot_failures(), 0);
    // A rejected command takes no snapshot.
    assert!(accounts.execute("s", open("bob")).await.is_err());
    assert_eq!(
        store
            .load_snapshot(&stream("s"))
            .await
            .unwrap()
            .unwrap()
            .version,
        Version(20)
    );
}

/// An account with 12 events (balance 11) and a snapshot at version 10.
async fn snapshotted_account(store: &InMemoryStore) {
    let accounts = Repository::<SnapshottedAccount, _>::new(store.clone());
    accounts.execute("s", open("ada")).await.unwrap();
    for _ in 0..11 {
        accounts.execute("s", deposit(1)).await.unwrap();
    }
    let snapshot = store.load_snapshot(&stream("s")).await.unwrap().unwrap();
    assert_eq!(snapshot.version, Version(10));
}

fn forged_snapshot(state_version: u32, state: Value) -> Snapshot {
    Snapshot {
        stream_id: stream("s"),
        version: Version(10),
        state_version,
        state,
        taken_at: Utc::now(),
    }
}

#[tokio::test]
async fn load_starts_from_the_snapshot_and_applies_the_tail() {
    let store = InMemoryStore::new();
    snapshotted_account(&store).await;
    let accounts = Repository::<SnapshottedAccount, _>::new(store.clone());
    let loaded = accounts.load("s").await.unwrap();
    assert_eq!(loaded.version, Version(12));
    assert_eq!(loaded.state.0.balance, 11);

    // A forged state at version 10 shows that the snapshot is used and only
    // the two later events are applied.
    let forged = SnapshottedAccount(Account {
        owner: Some("forged".into()),
        balance: 1000,
        transactions: 10,
    });
    store
        .save_snapshot(forged_snapshot(2, serde_json::to_value(&forged).unwrap()))
        .await
        .unwrap();
    let loaded = accounts.load("s").await.unwrap();
    assert_eq!(loaded.version, Version(12));
    assert_eq!(loaded.state.0.balance, 1002);
    assert_eq!(loaded.state.0.owner.as_deref(), Some("forged"));
    // An aggregate without a snapshot policy never reads snapshots.
    let plain = Repository::<Account, _>::new(store.clone());
    assert_eq!(plain.load("s").await.unwrap().state.balance, 11);
}

#[tokio::test]
async fn a_snapshot_of_another_state_version_is_ignored() {
    let store = InMemoryStore::new();
    snapshotted_account(&store).await;
    let forged = SnapshottedAccount(Account {
        owner: Some("forged".into()),
        balance: 1000,
        transactions: 10,
    });
    for state_version in [1, 3] {
        store
            .save_snapshot(forged_snapshot(
                state_version,
                serde_json::to_value(&forged).unwrap(),
            ))
            .await
            .unwrap();
        let accounts = Repository::<SnapshottedAccount, _>::new(store.clone());
        let loaded = accounts.load("s").await.unwrap();
        assert_eq!(loaded.version, Version(12));
        assert_eq!(loaded.state.0.balance, 11, "state version {state_version}");
        assert_eq!(loaded.state.0.owner.as_deref(), Some("ada"));
    }
}

#[tokio::test]
async fn a_snapshot_that_no_longer_deserializes_falls_back_to_full_replay() {
    let store = InMemoryStore::new();
    snapshotted_account(&store).await;
    let accounts = Repository::<SnapshottedAccount, _>::new(store.clone());
    for bogus in [
        json!("not an account"),
        json!({"balance": "eleven"}),
        json!({"owner": 7, "balance": 1, "transactions": 1}),
    ] {
        store
            .save_snapshot(forged_snapshot(2, bogus.clone()))
            .await
            .unwrap();
        let loaded = accounts.load("s").await.unwrap();
        let full = Repository::<Account, _>::new(store.clone())
            .load("s")
            .await
            .unwrap();
        assert_eq!(loaded.state.0, full.state, "{bogus}");
        assert_eq!(loaded.version, full.version);
    }
    // Commands work too.
    let executed = accounts.execute("s", withdraw(11)).await.unwrap();
    assert_eq!(executed.version, Version(13));
    assert_eq!(accounts.load("s").await.unwrap().state.0.balance, 0);
}

#[tokio::test]
async fn a_failing_snapshot_store_does_not_fail_commands() {
    let store = TestStore::default();
    store.knobs.fail_snapshots.store(true, Ordering::SeqCst);
    let accounts = Repository::<SnapshottedAccount, _>::new(store.clone());
    let clone = accounts.clone();
    accounts.execute("s", open("ada")).await.unwrap();
    for _ in 0..24 {
        accounts.execute("s", deposit(2)).await.unwrap();
    }
    assert_eq!(store.knobs.snapshot_attempts.load(Ordering::SeqCst), 2);
    assert_eq!(accounts.snapshot_failures(), 2);
    assert_eq!(clone.snapshot_failures(), 2, "clones share the counter");
    assert!(store.load_snapshot(&stream("s")).await.unwrap().is_none());
    let loaded = accounts.load("s").await.unwrap();
    assert_eq!(loaded.version, Version(25));
    assert_eq!(loaded.state.0.balance, 48);

    // Once the store works again, the next multiple of ten is saved.
    store.knobs.fail_snapshots.store(false, Ordering::SeqCst);
    for _ in 0..5 {
        accounts.execute("s", deposit(2)).await.unwrap();
    }
    assert_eq!(accounts.snapshot_failures(), 2);
    let snapshot = store.load_snapshot(&stream("s")).await.unwrap().unwrap();
    assert_eq!(snapshot.version, Version(30));
}

// ---------------------------------------------------------------------------
// Decoding stored events
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_event_type_fails_the_load_with_its_location() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();
    accounts.execute("b", open("bob")).await.unwrap();
    let committed = append_raw(
        &store,
        &stream("a"),
        raw("AccountFrozen", 4, json!({"reason": "audit"})),
    )
    .await;
    assert_eq!(committed.first_position, Position(3));

    let error = decode_error(accounts.load("a").await);
    assert_eq!(error.stream_id, stream("a"));
    assert_eq!(error.version, Version(2));
    assert_eq!(error.position, Position(3));
    assert_eq!(error.event_type, "AccountFrozen");
    assert_eq!(error.schema_version, 4);
    assert!(
        matches!(error.kind, DecodeErrorKind::UnknownType),
        "{:?}",
        error.kind
    );
    let text = error.to_string();
    assert!(
        text.contains("AccountFrozen") && text.contains("account-a"),
        "{text}"
    );

    // Commands on that aggregate fail the same way; others are unaffected.
    let failed = accounts.execute("a", deposit(1)).await;
    assert!(
        matches!(failed, Err(ExecuteError::Failed(Error::Decode(_)))),
        "{failed:?}"
    );
    accounts.execute("b", deposit(1)).await.unwrap();
}

#[tokio::test]
async fn a_malformed_payload_is_a_payload_error() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();
    append_raw(
        &store,
        &stream("a"),
        raw("Withdrawn", 1, json!({"amount": "lots"})),
    )
    .await;
    let error = decode_error(accounts.load("a").await);
    assert_eq!(error.version, Version(2));
    assert_eq!(error.event_type, "Withdrawn");
    assert_eq!(error.schema_version, 1);
    assert!(
        matches!(error.kind, DecodeErrorKind::Payload(_)),
        "{:?}",
        error.kind
    );

    // A v1 shape stored under the current version is malformed too.
    accounts.execute("b", open("bob")).await.unwrap();
    append_raw(
        &store,
        &stream("b"),
        raw("Deposited", 2, json!({"cents": 5})),
    )
    .await;
    let error = decode_error(accounts.load("b").await);
    assert_eq!(error.event_type, "Deposited");
    assert_eq!(error.schema_version, 2);
    assert!(matches!(error.kind, DecodeErrorKind::Payload(_)));
}

#[tokio::test]
async fn a_stored_v1_deposit_is_upcast() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();
    append_raw(
        &store,
        &stream("a"),
        raw("Deposited", 1, json!({"cents": 5})),
    )
    .await;
    let loaded = accounts.load("a").await.unwrap();
    assert_eq!(loaded.version, Version(2));
    assert_eq!(loaded.state.balance, 5);

    let events = read_all_of(&store, &stream("a")).await;
    let envelope = AccountEvent::decode(&events[1]).unwrap();
    assert_eq!(envelope.event, deposited(5));
    assert_eq!(envelope.event_type, "Deposited");
    assert_eq!(envelope.stored_schema_version, 1);

    // The upcast state decides new commands.
    accounts.execute("a", withdraw(5)).await.unwrap();
    assert_eq!(accounts.load("a").await.unwrap().state.balance, 0);

    // A v1 payload without `cents` makes the typed upcaster fail.
    append_raw(
        &store,
        &stream("a"),
        raw("Deposited", 1, json!({"amount": 5})),
    )
    .await;
    let error = decode_error(accounts.load("a").await);
    assert_eq!(error.version, Version(4));
    assert!(
        matches!(error.kind, DecodeErrorKind::Upcast { from: 1, .. }),
        "{:?}",
        error.kind
    );
}

#[tokio::test]
async fn a_stored_alias_is_resolved() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    append_raw(
        &store,
        &stream("old"),
        raw("AccountCreated", 1, json!({"owner": "ada"})),
    )
    .await;
    let loaded = accounts.load("old").await.unwrap();
    assert_eq!(loaded.state.owner.as_deref(), Some("ada"));
    assert_eq!(loaded.version, Version(1));
    let envelope = AccountEvent::decode(&read_all_of(&store, &stream("old")).await[0]).unwrap();
    assert_eq!(envelope.event_type, "AccountOpened");

    // The aggregate is open: it takes deposits and refuses a second opening.
    accounts.execute("old", deposit(3)).await.unwrap();
    assert!(matches!(
        accounts.execute("old", open("bob")).await,
        Err(ExecuteError::Rejected(AccountError::AlreadyOpen))
    ));
    assert_eq!(accounts.load("old").await.unwrap().state.balance, 3);
}

#[tokio::test]
async fn a_payload_from_newer_code_is_refused() {
    let store = InMemoryStore::new();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();
    append_raw(
        &store,
        &stream("a"),
        raw(
            "Deposited",
            3,
            json!({"amount": 5, "memo": "", "currency": "EUR"}),
        ),
    )
    .await;
    let error = decode_error(accounts.load("a").await);
    assert_eq!(error.schema_version, 3);
    assert!(
        matches!(
            error.kind,
            DecodeErrorKind::NewerVersion {
                stored: 3,
                current: 2
            }
        ),
        "{:?}",
        error.kind
    );
}

#[test]
fn a_failing_json_upcaster_is_an_upcast_error() {
    let schema = EventSchema::builder("StrictAccountEvent")
        .event("Deposited", 2)
        .upcast_json(1, common::strict_cents)
        .build();
    schema.check().unwrap();

    let without_cents = Payload::from(json!({"amount": 5}));
    match schema.upcast("Deposited", 1, &without_cents) {
        Err(DecodeErrorKind::Upcast { from, source }) => {
            assert_eq!(from, 1);
            assert!(source.to_string().contains("cents"), "{source}");
        }
        other => panic!("expected an upcast error, got {other:?}"),
    }
    let refused = schema.decode_payload::<AccountEvent>(
        "Deposited",
        1,
        &Payload::from(json!({"cents": "x"})),
    );
    assert!(matches!(
        refused,
        Err(DecodeErrorKind::Upcast { from: 1, .. })
    ));

    let stored = Payload::from(json!({"cents": 7}));
    let (name, upcast) = schema.upcast("Deposited", 1, &stored).unwrap();
    assert_eq!(name, "Deposited");
    assert_eq!(*upcast, json!({"amount": 7, "memo": ""}));
    let event = schema
        .decode_payload::<AccountEvent>("Deposited", 1, &stored)
        .unwrap();
    assert_eq!(event, deposited(7));
}

#[tokio::test]
async fn a_log_reader_surfaces_a_failed_read_ahead_and_reads_the_page_again() {
    let store = TestStore::default();
    let accounts = Repository::<Account, _>::new(store.clone());
    accounts.execute("a", open("ada")).await.unwrap();
    for amount in 1..=4 {
        accounts.execute("a", deposit(amount)).await.unwrap();
    }
    *store.knobs.fail_read_all_after.lock().unwrap() = Some(Position(2));
    // One page per read, so that the second page is read ahead.
    let mut reader =
        LogReader::new(Arc::new(store), Position::START, EventFilter::all(), 2).read_size(2);
    let first = reader.next_page().await.unwrap();
    assert_eq!(first.next, Position(2));
    // The page after 2 was read ahead, and that read failed.
    let error = reader
        .next_page()
        .await
        .expect_err("the failed read surfaces");
    assert!(matches!(error, Error::Store { .. }), "{error:?}");
    assert_eq!(reader.position(), Position(2), "the reader did not move");
    let mut seen: Vec<u64> = first.events.iter().map(|e| e.position.0).collect();
    loop {
        let page = reader.next_page().await.unwrap();
        if page.events.is_empty() {
            break;
        }
        seen.extend(page.events.iter().map(|e| e.position.0));
    }
    assert_eq!(seen, [1, 2, 3, 4, 5], "nothing lost, nothing twice");
}
