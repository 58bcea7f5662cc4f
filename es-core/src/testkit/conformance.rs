//! The store conformance suite: the behaviour every backend must have.
//!
//! Each case is an async function taking a fresh, empty store. Run them all
//! with [`store_conformance_tests!`](crate::store_conformance_tests), which
//! writes one `#[test]` per case. A failing case panics with what it found.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{DecodeErrorKind, Error};
use crate::event::{Event, EventSchema};
use crate::store::{CheckpointStore, EventStore, Replay, SnapshotStore};
use crate::types::{
    AppendOptions, AppendOutcome, Checkpoint, Committed, EventFilter, EventId, ExpectedVersion,
    Metadata, NewEvent, ParkedEvent, Position, RecordedEvent, ReplayedEvent, Snapshot, StreamId,
    Version,
};
use crate::Payload;

/// What a store must implement to run the suite.
pub trait ConformanceStore: EventStore + SnapshotStore + CheckpointStore + Clone + 'static {}

impl<S> ConformanceStore for S where
    S: EventStore + SnapshotStore + CheckpointStore + Clone + 'static
{
}

/// What a factory of [`store_conformance_tests!`](crate::store_conformance_tests)
/// returns: a store, or a store and a guard that the case keeps until it
/// ends (one that drops the case's test database when dropped, say), so
/// that the store need not carry the guard itself.
///
/// ```
/// use es_core::testkit::conformance::Fixture;
///
/// struct DropsTheDatabase;
/// let (store, _guard) = (es_core::InMemoryStore::new(), DropsTheDatabase).split();
/// let (_same, ()) = store.split();
/// ```
pub trait Fixture {
    /// The store the case runs against.
    type Store: ConformanceStore;
    /// What the case keeps until it ends.
    type Guard;
    /// The store and the guard.
    fn split(self) -> (Self::Store, Self::Guard);
}

impl<S: ConformanceStore> Fixture for S {
    type Store = S;
    type Guard = ();
    fn split(self) -> (S, ()) {
        (self, ())
    }
}

impl<S: ConformanceStore, G> Fixture for (S, G) {
    type Store = S;
    type Guard = G;
    fn split(self) -> (S, G) {
        self
    }
}

/// A new event of type `event_type` with payload `payload`.
pub fn new_event(event_type: &str, payload: Value) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload: payload.into(),
        metadata: Metadata::default(),
    }
}

/// The field `key` of a stored event's payload.
fn field(event: &RecordedEvent, key: &str) -> Value {
    let mut payload = event.payload.to_value().expect("a stored payload is JSON");
    payload[key].take()
}

fn numbered(event_type: &str, n: usize) -> NewEvent {
    new_event(event_type, json!({ "n": n }))
}

fn none() -> AppendOptions {
    AppendOptions::default()
}

async fn append<S: ConformanceStore>(
    store: &S,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Committed {
    match store.append(stream, expected, events, &none()).await {
        Ok(AppendOutcome::Appended(c)) => c,
        other => panic!("append to `{stream}` with {expected} should succeed, got {other:?}"),
    }
}

async fn read_all_events<S: ConformanceStore>(
    store: &S,
    filter: &EventFilter,
) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    for _ in 0..100_000 {
        let slice = store.read_all(after, filter, 1000).await.expect("read_all");
        if slice.events.is_empty() && slice.next == after {
            return all;
        }
        after = slice.next;
        all.extend(slice.events);
    }
    panic!("read_all did not reach the end of the log");
}

/// Appends and reads back: every field is stored as given; versions count
/// from 1; an unknown stream reads as empty.
pub async fn append_and_read<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("account-1");
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Version::INITIAL
    );
    assert!(store
        .read_stream(&stream, Version(1), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.head().await.unwrap(), Position::START);

    let meta = Metadata::correlated("req-1")
        .caused_by("cmd-1")
        .with("traceparent", "00-abc-def-01");
    let mut first = new_event(
        "Opened",
        json!({"owner": "ada", "tags": [1, 2.5, null, true]}),
    );
    first.metadata = meta.clone();
    first.schema_version = 3;
    let second = new_event("Deposited", json!({"amount": 10}));
    let ids = [first.event_id, second.event_id];
    let committed = append(
        &store,
        &stream,
        ExpectedVersion::NoStream,
        vec![first, second],
    )
    .await;
    assert_eq!(committed.first_version, Version(1));
    assert_eq!(committed.last_version, Version(2));
    assert_eq!(committed.stream_id, stream);
    assert!(committed.first_position < committed.last_position);

    let events = store.read_stream(&stream, Version(1), 100).await.unwrap();
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!(e.stream_id, stream);
    assert_eq!(e.version, Version(1));
    assert_eq!(e.event_id, ids[0]);
    assert_eq!(e.event_type, "Opened");
    assert_eq!(e.schema_version, 3);
    assert_eq!(
        e.payload,
        json!({"owner": "ada", "tags": [1, 2.5, null, true]})
    );
    assert_eq!(e.position, committed.first_position);
    assert_eq!(e.metadata.correlation_id, meta.correlation_id);
    assert_eq!(e.metadata.causation_id, meta.causation_id);
    assert_eq!(e.metadata.extra, meta.extra);
    assert_eq!(e.metadata.recorded_at, Some(e.recorded_at));
    let age = chrono::Utc::now() - e.recorded_at;
    assert!(
        age.num_seconds().abs() < 300,
        "recorded_at is {}",
        e.recorded_at
    );
    assert_eq!(events[1].version, Version(2));
    assert_eq!(events[1].event_id, ids[1]);
    assert_eq!(events[1].position, committed.last_position);

    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(2));
    assert_eq!(store.head().await.unwrap(), committed.last_position);
    let tail = store.read_stream(&stream, Version(2), 100).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].version, Version(2));
    let limited = store.read_stream(&stream, Version(1), 1).await.unwrap();
    assert_eq!(limited.len(), 1);
    assert!(store
        .read_stream(&stream, Version(3), 10)
        .await
        .unwrap()
        .is_empty());
    let other = StreamId::new("account-2");
    assert!(store
        .read_stream(&other, Version(1), 10)
        .await
        .unwrap()
        .is_empty());
}

/// An append without events is refused and writes nothing.
pub async fn empty_append_is_refused<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("s-1");
    let result = store
        .append(&stream, ExpectedVersion::Any, Vec::new(), &none())
        .await;
    assert!(
        matches!(result, Err(Error::EmptyAppend { .. })),
        "{result:?}"
    );
    assert_eq!(store.head().await.unwrap(), Position::START);
}

/// Expected versions: `NoStream`, `Exact` and `Any`, with typed conflicts
/// that report the actual version, and nothing written by a refused append.
pub async fn expected_version_conflicts<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("order-1");
    append(
        &store,
        &stream,
        ExpectedVersion::Exact(Version::INITIAL),
        vec![numbered("A", 1)],
    )
    .await;
    let again = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![numbered("A", 2)],
            &none(),
        )
        .await;
    match again {
        Err(Error::Conflict {
            stream_id,
            expected,
            actual,
        }) => {
            assert_eq!(stream_id, stream);
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(actual, Version(1));
        }
        other => panic!("NoStream on an existing stream must conflict, got {other:?}"),
    }
    let stale = store
        .append(
            &stream,
            ExpectedVersion::Exact(Version(5)),
            vec![numbered("A", 3), numbered("A", 4)],
            &none(),
        )
        .await;
    assert!(
        matches!(
            &stale,
            Err(Error::Conflict {
                actual: Version(1),
                ..
            })
        ),
        "{stale:?}"
    );
    append(
        &store,
        &stream,
        ExpectedVersion::Exact(Version(1)),
        vec![numbered("A", 5)],
    )
    .await;
    append(
        &store,
        &stream,
        ExpectedVersion::Any,
        vec![numbered("A", 6)],
    )
    .await;
    let events = store.read_stream(&stream, Version(1), 100).await.unwrap();
    let ns: Vec<u64> = events
        .iter()
        .map(|e| field(e, "n").as_u64().unwrap())
        .collect();
    assert_eq!(ns, [1, 5, 6], "refused appends must write nothing");
    let versions: Vec<u64> = events.iter().map(|e| e.version.0).collect();
    assert_eq!(versions, [1, 2, 3]);
    // Behind and ahead of the stream, with one event, several of one kind
    // and several of different kinds (a store may write each its own way).
    for expected in [1, 2, 4, 9] {
        let batches = [
            vec![numbered("A", 7)],
            vec![numbered("A", 7), numbered("A", 8)],
            vec![numbered("A", 7), numbered("B", 8)],
        ];
        for events in batches {
            let count = events.len();
            let refused = store
                .append(
                    &stream,
                    ExpectedVersion::Exact(Version(expected)),
                    events,
                    &none(),
                )
                .await;
            assert!(
                matches!(
                    &refused,
                    Err(Error::Conflict {
                        actual: Version(3),
                        ..
                    })
                ),
                "expected v{expected} with {count} events on a stream at v3: {refused:?}"
            );
        }
    }
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Version(3),
        "refused appends must write nothing"
    );
}

/// Eight writers append to one stream at the same expected versions:
/// exactly one wins each version, the others get conflicts, and the stream
/// is contiguous with no duplicate.
pub async fn concurrent_appends_one_winner<S: ConformanceStore>(store: S) {
    const WRITERS: usize = 8;
    const ROUNDS: u64 = 25;
    let stream = StreamId::new("hot-1");
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let stream = stream.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait().await;
                let event = new_event("Tick", json!({"writer": writer, "round": round}));
                match store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(Version(round)),
                        vec![event],
                        &none(),
                    )
                    .await
                {
                    Ok(AppendOutcome::Appended(c)) => wins.push(c.last_version.0),
                    Err(Error::Conflict { .. }) => {}
                    other => panic!("writer {writer} round {round}: {other:?}"),
                }
                barrier.wait().await;
            }
            wins
        }));
    }
    let mut all_wins = Vec::new();
    for task in tasks {
        all_wins.extend(task.await.expect("writer task"));
    }
    all_wins.sort_unstable();
    let expected: Vec<u64> = (1..=ROUNDS).collect();
    assert_eq!(all_wins, expected, "exactly one winner per version");
    let events = store.read_stream(&stream, Version(1), 1000).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.version.0).collect();
    assert_eq!(versions, expected);
    for (event, round) in events.iter().zip(0..) {
        assert_eq!(field(event, "round"), json!(round));
    }
}

/// The global log: every event once, in append order for sequential
/// appends, versions in order within a stream, type filters, paging, and a
/// `next` cursor that moves past events the filter dropped.
pub async fn global_order_and_filters<S: ConformanceStore>(store: S) {
    let streams: Vec<StreamId> = (0..5).map(|i| StreamId::new(format!("s-{i}"))).collect();
    let mut appended = Vec::new();
    for round in 0..20 {
        for (i, stream) in streams.iter().enumerate() {
            let kind = if (round + i) % 3 == 0 {
                "Rare"
            } else {
                "Common"
            };
            let c = append(
                &store,
                stream,
                ExpectedVersion::Any,
                vec![numbered(kind, round)],
            )
            .await;
            appended.push((c.first_position, stream.clone(), kind));
        }
    }
    let all = read_all_events(&store, &EventFilter::all()).await;
    assert_eq!(all.len(), 100);
    for (event, (position, stream, kind)) in all.iter().zip(&appended) {
        assert_eq!(&event.position, position);
        assert_eq!(&event.stream_id, stream);
        assert_eq!(event.event_type, *kind);
    }
    for pair in all.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "sequential appends keep their order"
        );
    }
    let mut last_version: HashMap<&StreamId, u64> = HashMap::new();
    for event in &all {
        let last = last_version.entry(&event.stream_id).or_insert(0);
        assert_eq!(
            event.version.0,
            *last + 1,
            "versions of a stream arrive in order"
        );
        *last = event.version.0;
    }

    let rare = read_all_events(&store, &EventFilter::types(["Rare"])).await;
    let expected_rare: Vec<Position> = appended
        .iter()
        .filter(|(_, _, k)| *k == "Rare")
        .map(|(p, _, _)| *p)
        .collect();
    assert_eq!(
        rare.iter().map(|e| e.position).collect::<Vec<_>>(),
        expected_rare
    );
    let both = read_all_events(&store, &EventFilter::types(["Rare", "Common"])).await;
    assert_eq!(both.len(), 100);

    // Paging: small pages concatenate to the whole log.
    let mut paged = Vec::new();
    let mut after = Position::START;
    for _ in 0..200 {
        let slice = store.read_all(after, &EventFilter::all(), 7).await.unwrap();
        assert!(slice.events.len() <= 7);
        if slice.events.is_empty() {
            break;
        }
        after = slice.next;
        paged.extend(slice.events.into_iter().map(|e| e.position));
    }
    assert_eq!(paged, all.iter().map(|e| e.position).collect::<Vec<_>>());

    // A filter that matches nothing still moves the cursor to the end.
    let head = store.head().await.unwrap();
    let nothing = store
        .read_all(Position::START, &EventFilter::types(["Missing"]), 1000)
        .await
        .unwrap();
    assert!(nothing.events.is_empty());
    assert_eq!(
        nothing.next, head,
        "the cursor passes the events it examined"
    );
    let at_end = store.read_all(head, &EventFilter::all(), 10).await.unwrap();
    assert!(at_end.events.is_empty());
    assert_eq!(at_end.next, head);
}

/// Reads sent on as they go ([`EventStore::read_all_into`]) hand over
/// what [`EventStore::read_all`] returns: the same events in the same
/// order, in at least one slice, each slice ending where a read after it
/// starts, the last where the read ends.
pub async fn reads_sent_on_in_slices<S: ConformanceStore>(store: S) {
    // Enough events that a store that sends slices as it reads sends
    // several.
    for batch in 0..26 {
        let stream = StreamId::new(format!("sliced-{}", batch % 4));
        let events = (0..100)
            .map(|i| numbered(if i % 10 == 3 { "Rare" } else { "Common" }, i))
            .collect();
        append(&store, &stream, ExpectedVersion::Any, events).await;
    }
    let head = store.head().await.unwrap();
    let middle = read_all_events(&store, &EventFilter::all()).await[1_234].position;
    for filter in [EventFilter::all(), EventFilter::types(["Rare"])] {
        for after in [Position::START, middle, head] {
            for limit in [0, 1, 7, 1_000, 5_000] {
                let read = store.read_all(after, &filter, limit).await.unwrap();
                let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
                let end = store
                    .read_all_into(after, &filter, limit, &sender)
                    .await
                    .unwrap();
                drop(sender);
                let mut slices = Vec::new();
                while let Some(slice) = receiver.recv().await {
                    slices.push(slice);
                }
                let case = format!("{filter:?} after {after}, limit {limit}");
                assert!(!slices.is_empty(), "{case}: at least one slice");
                let mut sent = Vec::new();
                let mut from = after;
                for slice in &slices {
                    for event in &slice.events {
                        assert!(event.position > from, "{case}: slices in log order");
                        from = event.position;
                    }
                    assert!(slice.next >= from, "{case}: a slice ends after its events");
                    from = slice.next;
                    sent.extend(slice.events.iter().map(|e| e.position));
                }
                let expected: Vec<Position> = read.events.iter().map(|e| e.position).collect();
                assert_eq!(sent, expected, "{case}: the events read_all reads");
                assert_eq!(end.events, sent.len(), "{case}");
                assert_eq!(
                    end.next, read.next,
                    "{case}: the read ends where read_all's does"
                );
                assert_eq!(slices.last().map(|s| s.next), Some(end.next), "{case}");
            }
        }
    }
}

/// Waiting for events: returns at once when events are already there,
/// wakes on an append, and gives up after the timeout.
pub async fn wait_for_new_events<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("w-1");
    let idle = Instant::now();
    let woke = store
        .wait_for_events(Position::START, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(!woke, "no events: the wait times out");
    assert!(idle.elapsed() >= Duration::from_millis(100));

    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let woke = store
                .wait_for_events(Position::START, Duration::from_secs(30))
                .await
                .unwrap();
            (woke, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    append(
        &store,
        &stream,
        ExpectedVersion::Any,
        vec![numbered("A", 1)],
    )
    .await;
    let (woke, waited) = waiter.await.unwrap();
    assert!(woke, "an append wakes the waiter");
    assert!(waited < Duration::from_secs(10), "woken after {waited:?}");

    let head = store.head().await.unwrap();
    let start = Instant::now();
    assert!(store
        .wait_for_events(Position::START, Duration::from_secs(30))
        .await
        .unwrap());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "events already there"
    );
    assert!(!store
        .wait_for_events(head, Duration::from_millis(50))
        .await
        .unwrap());
}

/// Idempotency keys: a repeated key appends nothing and reports the first
/// append; a key on another stream is refused; a refused append does not
/// consume its key.
pub async fn idempotency_keys<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("order-7");
    let keyed = AppendOptions {
        idempotency_key: Some("pay-7".into()),
    };
    assert_eq!(store.find_idempotency_key("pay-7").await.unwrap(), None);
    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![numbered("Paid", 1), numbered("Paid", 2)],
            &keyed,
        )
        .await
        .unwrap();
    let AppendOutcome::Appended(first) = first else {
        panic!("first use of a key appends: {first:?}");
    };
    let again = store
        .append(
            &stream,
            ExpectedVersion::Exact(Version(2)),
            vec![numbered("Paid", 3)],
            &keyed,
        )
        .await
        .unwrap();
    assert_eq!(again, AppendOutcome::Duplicate(first.clone()));
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(2));
    assert_eq!(
        store.find_idempotency_key("pay-7").await.unwrap(),
        Some(first)
    );

    let elsewhere = store
        .append(
            &StreamId::new("order-8"),
            ExpectedVersion::Any,
            vec![numbered("Paid", 4)],
            &keyed,
        )
        .await;
    assert!(
        matches!(&elsewhere, Err(Error::IdempotencyKeyReused { key, .. }) if key == "pay-7"),
        "{elsewhere:?}"
    );

    let other_key = AppendOptions {
        idempotency_key: Some("ship-7".into()),
    };
    let refused = store
        .append(
            &stream,
            ExpectedVersion::Exact(Version(9)),
            vec![numbered("Shipped", 5)],
            &other_key,
        )
        .await;
    assert!(matches!(refused, Err(Error::Conflict { .. })));
    assert_eq!(store.find_idempotency_key("ship-7").await.unwrap(), None);
    let retried = store
        .append(
            &stream,
            ExpectedVersion::Exact(Version(2)),
            vec![numbered("Shipped", 5)],
            &other_key,
        )
        .await
        .unwrap();
    assert!(matches!(retried, AppendOutcome::Appended(_)));
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(3));
}

/// Snapshots: none at first, the latest replaces older ones, one per stream.
pub async fn snapshots<S: ConformanceStore>(store: S) {
    let a = StreamId::new("account-a");
    let b = StreamId::new("account-b");
    assert_eq!(store.load_snapshot(&a).await.unwrap(), None);
    let snapshot = |stream: &StreamId, version: u64, state: Value| Snapshot {
        stream_id: stream.clone(),
        version: Version(version),
        state_version: 2,
        state,
        taken_at: chrono::Utc::now(),
    };
    store
        .save_snapshot(snapshot(&a, 10, json!({"balance": 10})))
        .await
        .unwrap();
    store
        .save_snapshot(snapshot(&b, 5, json!({"balance": "ü"})))
        .await
        .unwrap();
    store
        .save_snapshot(snapshot(&a, 20, json!({"balance": 20})))
        .await
        .unwrap();
    let latest = store
        .load_snapshot(&a)
        .await
        .unwrap()
        .expect("snapshot of a");
    assert_eq!(latest.version, Version(20));
    assert_eq!(latest.state_version, 2);
    assert_eq!(latest.state, json!({"balance": 20}));
    assert_eq!(latest.stream_id, a);
    let other = store
        .load_snapshot(&b)
        .await
        .unwrap()
        .expect("snapshot of b");
    assert_eq!(other.state, json!({"balance": "ü"}));
}

/// What a [`Replay`] of the suite was given: the snapshot's version handed
/// to `start` (`None` for no snapshot, `Some(None)` when `start` was not
/// called) and the versions of the events, with the choice it made.
struct Recorder {
    use_snapshot: bool,
    started: Option<Option<Version>>,
    versions: Vec<u64>,
}

impl Recorder {
    fn new(use_snapshot: bool) -> Self {
        Self {
            use_snapshot,
            started: None,
            versions: Vec::new(),
        }
    }
}

impl Replay for Recorder {
    fn start(&mut self, snapshot: crate::Result<Option<Snapshot>>) -> Version {
        assert!(self.started.is_none(), "start is called once, first");
        assert!(self.versions.is_empty(), "start comes before the events");
        let snapshot = snapshot.expect("the snapshot loads");
        self.started = Some(snapshot.as_ref().map(|s| s.version));
        match snapshot {
            Some(s) if self.use_snapshot => {
                assert_eq!(s.state, json!({"at": s.version.0}));
                let age = chrono::Utc::now() - s.taken_at;
                assert!(
                    age.num_seconds().abs() < 60,
                    "the snapshot's time comes back: {}",
                    s.taken_at
                );
                s.version.next()
            }
            _ => Version(1),
        }
    }

    fn event(&mut self, event: ReplayedEvent<'_>) -> crate::Result<()> {
        let payload = Payload::from_json(event.payload).expect("a replayed payload is JSON");
        assert_eq!(payload, json!({ "n": event.version.0 - 1 }));
        self.versions.push(event.version.0);
        Ok(())
    }
}

/// A load from a snapshot: the snapshot first, then the events after the
/// version the replay chose (after the snapshot, or all of them when it
/// ignores the snapshot); without a snapshot, every event.
pub async fn replay_from_snapshot<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("snapshotted-1");
    let events: Vec<NewEvent> = (0..8).map(|n| numbered("Counted", n)).collect();
    append(&store, &stream, ExpectedVersion::NoStream, events).await;
    let replay = async |use_snapshot: bool| {
        let mut recorder = Recorder::new(use_snapshot);
        store
            .replay_from_snapshot(&stream, &mut recorder)
            .await
            .expect("replay from snapshot");
        (recorder.started, recorder.versions)
    };
    assert_eq!(
        replay(true).await,
        (Some(None), (1..=8).collect()),
        "no snapshot: every event"
    );
    let at = |version: u64| Snapshot {
        stream_id: stream.clone(),
        version: Version(version),
        state_version: 1,
        state: json!({ "at": version }),
        taken_at: chrono::Utc::now(),
    };
    store.save_snapshot(at(5)).await.unwrap();
    assert_eq!(
        replay(true).await,
        (Some(Some(Version(5))), vec![6, 7, 8]),
        "the events after the snapshot"
    );
    assert_eq!(
        replay(false).await,
        (Some(Some(Version(5))), (1..=8).collect()),
        "a snapshot the replay ignores: every event"
    );
    store.save_snapshot(at(8)).await.unwrap();
    assert_eq!(replay(true).await, (Some(Some(Version(8))), vec![]));
    let mut empty = Recorder::new(true);
    store
        .replay_from_snapshot(&StreamId::new("snapshotted-none"), &mut empty)
        .await
        .unwrap();
    assert_eq!((empty.started, empty.versions), (Some(None), vec![]));
}

/// Checkpoints and parked events.
pub async fn checkpoints_and_parking<S: ConformanceStore>(store: S) {
    assert_eq!(store.load_checkpoint("summary").await.unwrap(), None);
    let at = |p, v| Checkpoint {
        position: Position(p),
        version: v,
    };
    store.save_checkpoint("summary", at(10, 1)).await.unwrap();
    store.save_checkpoint("totals", at(3, 2)).await.unwrap();
    store.save_checkpoint("summary", at(25, 1)).await.unwrap();
    assert_eq!(
        store.load_checkpoint("summary").await.unwrap(),
        Some(at(25, 1))
    );
    assert_eq!(
        store.load_checkpoint("totals").await.unwrap(),
        Some(at(3, 2))
    );

    let stream = StreamId::new("p-1");
    append(
        &store,
        &stream,
        ExpectedVersion::Any,
        vec![numbered("A", 1), numbered("A", 2)],
    )
    .await;
    let events = store.read_stream(&stream, Version(1), 10).await.unwrap();
    let park = |event: &RecordedEvent, error: &str| ParkedEvent {
        projection: "summary".into(),
        event: event.clone(),
        error: error.into(),
        parked_at: chrono::Utc::now(),
    };
    assert!(store.parked("summary").await.unwrap().is_empty());
    store.park(park(&events[1], "boom")).await.unwrap();
    store.park(park(&events[0], "bang")).await.unwrap();
    store.park(park(&events[1], "boom again")).await.unwrap();
    let parked = store.parked("summary").await.unwrap();
    assert_eq!(parked.len(), 2, "parking the same event again replaces it");
    assert_eq!(parked[0].event, events[0]);
    assert_eq!(parked[1].event, events[1]);
    assert_eq!(parked[1].error, "boom again");
    assert!(store.parked("totals").await.unwrap().is_empty());
    assert!(store.unpark("summary", events[0].position).await.unwrap());
    assert!(!store.unpark("summary", events[0].position).await.unwrap());
    assert_eq!(store.parked("summary").await.unwrap().len(), 1);
}

/// One append of 10,000 events is atomic and reads back whole and in order.
pub async fn large_batches<S: ConformanceStore>(store: S) {
    const N: usize = 10_000;
    let stream = StreamId::new("big-1");
    append(
        &store,
        &stream,
        ExpectedVersion::Any,
        vec![numbered("Warmup", 0)],
    )
    .await;
    let batch: Vec<NewEvent> = (1..=N).map(|n| numbered("Item", n)).collect();
    let committed = append(&store, &stream, ExpectedVersion::Exact(Version(1)), batch).await;
    assert_eq!(committed.first_version, Version(2));
    assert_eq!(committed.last_version, Version(N as u64 + 1));
    assert_eq!(committed.len(), N as u64);

    let mut read = Vec::new();
    let mut from = Version(2);
    for _ in 0..100 {
        let page = store.read_stream(&stream, from, 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        from = page.last().map(|e| e.version.next()).unwrap_or(from);
        read.extend(page);
    }
    assert_eq!(read.len(), N);
    for (event, n) in read.iter().zip(1..) {
        assert_eq!(field(event, "n"), json!(n));
        assert_eq!(event.version, Version(n as u64 + 1));
    }
    assert_eq!(
        read.first().map(|e| e.position),
        Some(committed.first_position)
    );
    assert_eq!(
        read.last().map(|e| e.position),
        Some(committed.last_position)
    );
    let log = read_all_events(&store, &EventFilter::types(["Item"])).await;
    assert_eq!(log.len(), N);

    // A batch refused for its version writes none of its events.
    let refused: Vec<NewEvent> = (0..N).map(|n| numbered("Refused", n)).collect();
    let result = store
        .append(
            &stream,
            ExpectedVersion::Exact(Version(1)),
            refused,
            &none(),
        )
        .await;
    assert!(matches!(result, Err(Error::Conflict { .. })));
    assert!(read_all_events(&store, &EventFilter::types(["Refused"]))
        .await
        .is_empty());
}

/// Visiting or replaying a stream sees what reading it returns, in version
/// order, across more events than one page; a visitor's error ends the
/// visit and is returned.
pub async fn visit_stream_in_order<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("visited-1");
    let other = StreamId::new("visited-2");
    let events: Vec<NewEvent> = (0..2_500).map(|n| numbered("Visited", n)).collect();
    append(&store, &stream, ExpectedVersion::NoStream, events).await;
    append(
        &store,
        &other,
        ExpectedVersion::NoStream,
        vec![numbered("Other", 0)],
    )
    .await;
    let stored = store
        .read_stream(&stream, Version(1), 10_000)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2_500);
    for from in [Version(1), Version(1_200), Version(2_500), Version(2_501)] {
        let mut seen = Vec::new();
        store
            .visit_stream(&stream, from, &mut |event| {
                seen.push(event.clone());
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(seen, stored[(from.0 as usize - 1)..], "visited from {from}");
    }
    for from in [Version(1), Version(2_500), Version(2_501)] {
        let mut replayed = Vec::new();
        store
            .replay_stream(&stream, from, &mut |e| {
                replayed.push((
                    e.position,
                    e.version,
                    e.event_type.to_owned(),
                    e.schema_version,
                    Payload::from_json(e.payload).expect("a replayed payload is JSON"),
                ));
                Ok(())
            })
            .await
            .unwrap();
        let expected: Vec<_> = stored[(from.0 as usize - 1)..]
            .iter()
            .map(|e| {
                let e = e.clone();
                (
                    e.position,
                    e.version,
                    e.event_type.to_string(),
                    e.schema_version,
                    e.payload,
                )
            })
            .collect();
        assert_eq!(replayed, expected, "replayed from {from}");
    }
    let mut replays = 0;
    let stopped = store
        .replay_stream(&stream, Version(1), &mut |_| {
            replays += 1;
            Err(Error::Schema("stop replaying".into()))
        })
        .await;
    assert!(matches!(stopped, Err(Error::Schema(_))), "{stopped:?}");
    assert_eq!(replays, 1, "a replay ends at the visitor's error");
    let mut missing = 0;
    store
        .visit_stream(&StreamId::new("visited-none"), Version(1), &mut |_| {
            missing += 1;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(missing, 0, "a stream without events has nothing to visit");
    let mut visited = 0;
    let stopped = store
        .visit_stream(&stream, Version(1), &mut |event| {
            visited += 1;
            if event.version == Version(10) {
                return Err(Error::Schema("stop here".into()));
            }
            Ok(())
        })
        .await;
    assert!(
        matches!(&stopped, Err(Error::Schema(m)) if m == "stop here"),
        "{stopped:?}"
    );
    assert_eq!(visited, 10, "the visit ends at the visitor's error");
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Version(2_500),
        "the store works after a visit that stopped early"
    );
    let again = store
        .read_stream(&stream, Version(2_499), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 2);
}

/// Unicode in every text field and payloads of 1 MiB round-trip unchanged.
pub async fn unicode_and_large_payloads<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("订单-ñ-🚀");
    let text = "Grüße, 世界! 🎉 שלום \"quoted\" \\back\\slash\n\ttab \u{1F600} \u{200B}";
    let mut event = new_event("Ünïcödé-Événement", json!({ "text": text, text: [text] }));
    event.metadata = Metadata::correlated(text).with(text, text);
    let big = "x€".repeat(1024 * 1024 / 4);
    let big_event = new_event("Big", json!({ "blob": big }));
    append(
        &store,
        &stream,
        ExpectedVersion::NoStream,
        vec![event.clone(), big_event],
    )
    .await;
    let events = store.read_stream(&stream, Version(1), 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].stream_id, stream);
    assert_eq!(events[0].event_type, event.event_type);
    assert_eq!(events[0].payload, event.payload);
    assert_eq!(events[0].metadata.correlation_id.as_deref(), Some(text));
    assert_eq!(events[0].metadata.get(text), Some(text));
    assert!(big.len() >= 1024 * 1024 - 4);
    assert_eq!(field(&events[1], "blob").as_str(), Some(big.as_str()));
    let filtered = read_all_events(&store, &EventFilter::types([event.event_type.as_str()])).await;
    assert_eq!(filtered.len(), 1);
}

/// An event family the suite decodes stored rows with.
#[derive(Debug, PartialEq)]
struct Probe {
    n: u64,
}

impl Event for Probe {
    fn event_type(&self) -> &'static str {
        "Probe"
    }

    fn to_payload(&self) -> serde_json::Result<Payload> {
        Payload::encode(&json!({ "n": self.n }))
    }

    fn from_payload(_event_type: &str, payload: &Payload) -> serde_json::Result<Self> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Shape {
            n: u64,
        }
        let Shape { n } = payload.decode()?;
        Ok(Probe { n })
    }

    fn schema() -> &'static EventSchema {
        static SCHEMA: std::sync::OnceLock<EventSchema> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| {
            EventSchema::builder("Probe")
                .event("Probe", 2)
                .alias("OldProbe")
                .build()
        })
    }
}

/// Stored rows that do not decode come back unchanged, and decoding them
/// fails with a typed error that says where they are.
pub async fn undecodable_rows<S: ConformanceStore>(store: S) {
    let stream = StreamId::new("probe-1");
    let mut newer = new_event("Probe", json!({"n": 1}));
    newer.schema_version = 9;
    let mut good = new_event("OldProbe", json!({"n": 4}));
    good.schema_version = 2;
    let rows = vec![
        new_event("Unheard", json!({"n": 1})),
        {
            let mut e = new_event("Probe", json!({"n": "not a number", "extra": []}));
            e.schema_version = 2;
            e
        },
        newer,
        new_event("Probe", json!({"n": 1})),
        good,
    ];
    append(&store, &stream, ExpectedVersion::NoStream, rows).await;
    let events = store.read_stream(&stream, Version(1), 10).await.unwrap();
    assert_eq!(events.len(), 5, "the store keeps rows it cannot decode");
    let kinds: Vec<Result<Probe, DecodeErrorKind>> = events
        .iter()
        .map(|raw| {
            Probe::decode(raw).map(|e| e.event).map_err(|err| {
                assert_eq!(err.stream_id, raw.stream_id);
                assert_eq!(err.version, raw.version);
                assert_eq!(err.position, raw.position);
                assert_eq!(err.event_type, raw.event_type);
                assert_eq!(err.schema_version, raw.schema_version);
                err.kind
            })
        })
        .collect();
    assert!(
        matches!(kinds[0], Err(DecodeErrorKind::UnknownType)),
        "{:?}",
        kinds[0]
    );
    assert!(
        matches!(kinds[1], Err(DecodeErrorKind::Payload(_))),
        "{:?}",
        kinds[1]
    );
    assert!(
        matches!(
            kinds[2],
            Err(DecodeErrorKind::NewerVersion {
                stored: 9,
                current: 2
            })
        ),
        "{:?}",
        kinds[2]
    );
    assert!(
        matches!(kinds[3], Err(DecodeErrorKind::MissingUpcaster { from: 1 })),
        "{:?}",
        kinds[3]
    );
    assert_eq!(kinds[4].as_ref().ok(), Some(&Probe { n: 4 }));
}

/// Many streams appended concurrently: the global log holds every event
/// exactly once with unique positions.
pub async fn concurrent_streams_complete_log<S: ConformanceStore>(store: S) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_TASK {
                let stream = StreamId::new(format!("c-{task}-{}", n % 5));
                append(
                    &store,
                    &stream,
                    ExpectedVersion::Any,
                    vec![new_event("C", json!({"t": task, "n": n}))],
                )
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender");
    }
    let all = read_all_events(&store, &EventFilter::all()).await;
    assert_eq!(all.len(), TASKS * PER_TASK);
    let positions: BTreeSet<Position> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions.len(), all.len(), "positions are unique");
    let seen: BTreeSet<(u64, u64)> = all
        .iter()
        .map(|e| {
            (
                field(e, "t").as_u64().unwrap(),
                field(e, "n").as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen.len(), TASKS * PER_TASK, "every event exactly once");
    let mut per_stream: BTreeMap<&StreamId, Vec<u64>> = BTreeMap::new();
    for e in &all {
        per_stream
            .entry(&e.stream_id)
            .or_default()
            .push(e.version.0);
    }
    for (stream, versions) in per_stream {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, expected, "stream {stream} in version order");
    }
}

/// Writes one `#[test]` per conformance case, each with a fresh store from
/// `$factory` (an expression returning a future of the store, or of the
/// store and a guard kept until the case ends: a
/// [`Fixture`](crate::testkit::conformance::Fixture)) on a multi-threaded
/// tokio runtime.
///
/// ```
/// es_core::store_conformance_tests!(async { es_core::InMemoryStore::new() });
/// ```
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            append_and_read,
            empty_append_is_refused,
            expected_version_conflicts,
            concurrent_appends_one_winner,
            global_order_and_filters,
            reads_sent_on_in_slices,
            wait_for_new_events,
            idempotency_keys,
            snapshots,
            replay_from_snapshot,
            checkpoints_and_parking,
            large_batches,
            visit_stream_in_order,
            unicode_and_large_payloads,
            undecodable_rows,
            concurrent_streams_complete_log,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testkit::block_on(async {
                    let (store, _guard) =
                        $crate::testkit::conformance::Fixture::split($factory.await);
                    $crate::testkit::conformance::$case(store).await;
                });
            }
        )*
    };
}

/// What an [`Inbox`](crate::Inbox) must do, in the context `C` the store
/// provides: claims are per consumer and stream, a version at or below the
/// highest claimed one is refused, a claim is kept only when its context
/// commits, and a reset forgets one consumer's claims. Not part of
/// [`store_conformance_tests!`](crate::store_conformance_tests) because it
/// names the context type; call it from a test of the backend.
pub async fn inbox_claims<C, S>(store: S)
where
    C: Send,
    S: crate::Inbox<C>,
{
    let order = StreamId::new("order-1");
    let other = StreamId::new("order-2");
    let mut context = store.begin().await.unwrap();
    for (consumer, stream, version, new) in [
        ("summary", &order, 1, true),
        ("summary", &order, 1, false),
        ("summary", &order, 3, true),
        ("summary", &order, 2, false),
        ("summary", &other, 1, true),
        ("totals", &order, 1, true),
        ("summary", &order, 4, true),
    ] {
        let claimed = store
            .claim(&mut context, consumer, stream, Version(version))
            .await
            .unwrap();
        assert_eq!(
            claimed, new,
            "claim of {stream} v{version} by {consumer} should be {new}"
        );
    }
    store.commit(context, "summary", None).await.unwrap();

    let mut context = store.begin().await.unwrap();
    assert!(!store
        .claim(&mut context, "summary", &order, Version(4))
        .await
        .unwrap());
    assert!(store
        .claim(&mut context, "summary", &order, Version(5))
        .await
        .unwrap());
    if store.is_transactional() {
        drop(context);
        let mut context = store.begin().await.unwrap();
        assert!(
            store
                .claim(&mut context, "summary", &order, Version(5))
                .await
                .unwrap(),
            "a claim in a context that never committed must be forgotten"
        );
        store.commit(context, "summary", None).await.unwrap();
    } else {
        store.commit(context, "summary", None).await.unwrap();
    }

    let mut context = store.begin().await.unwrap();
    store.reset_claims(&mut context, "summary").await.unwrap();
    store.commit(context, "summary", None).await.unwrap();
    let mut context = store.begin().await.unwrap();
    assert!(store
        .claim(&mut context, "summary", &order, Version(1))
        .await
        .unwrap());
    assert!(
        !store
            .claim(&mut context, "totals", &order, Version(1))
            .await
            .unwrap(),
        "a reset forgets only its consumer's claims"
    );
    store.commit(context, "summary", None).await.unwrap();
}
