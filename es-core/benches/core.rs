//! Benchmarks of the core paths over the in-memory store: executing commands
//! through the repository (with and without the state cache), rehydrating an
//! aggregate (full replay and from a snapshot), and one upcast hop.
//!
//! Run with `cargo bench -p es-core --bench core`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use es_core::{
    AppendOptions, Event, EventId, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent,
    Payload, Position, RecordedEvent, Repository, SnapshotStore, StreamId, Version,
};
use serde_json::json;
use tokio::runtime::Runtime;

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Account, AccountCommand, AccountEvent, Deposited, Opened, SnapshottedAccount};

/// How many aggregates the execute benchmarks spread their commands over.
const AGGREGATES: usize = 1_000;
/// Events each of those aggregates holds before the first command: one
/// `Opened` and nine `Deposited`.
const PREFILL: usize = 10;
/// With the cache, the store is rebuilt after this many round-robin passes,
/// so that the in-memory log does not grow without bound.
const CACHED_PASSES_PER_STORE: u64 = 100;
/// Events of the aggregate the rehydration benchmarks load.
const LONG_STREAM: usize = 10_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

fn ids() -> Vec<String> {
    (0..AGGREGATES).map(|i| format!("bench-{i}")).collect()
}

fn deposit() -> AccountCommand {
    AccountCommand::Deposit { amount: 1 }
}

fn opened(owner: &str) -> AccountEvent {
    AccountEvent::Opened(Opened {
        owner: owner.to_owned(),
    })
}

fn deposited(amount: u64) -> AccountEvent {
    AccountEvent::Deposited(Deposited {
        amount,
        memo: String::new(),
    })
}

/// Encodes events at their current schema version.
fn encode_all(events: impl IntoIterator<Item = AccountEvent>) -> Vec<NewEvent> {
    events
        .into_iter()
        .map(|e| e.encode(Metadata::default()).expect("encodes"))
        .collect()
}

/// A store with `ids.len()` open accounts of [`PREFILL`] events each.
async fn prefilled_store(ids: &[String]) -> InMemoryStore {
    let store = InMemoryStore::new();
    for id in ids {
        let stream = Repository::<Account, InMemoryStore>::stream_id(id);
        let events =
            encode_all(std::iter::once(opened(id)).chain((1..PREFILL as u64).map(deposited)));
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                events,
                &AppendOptions::default(),
            )
            .await
            .expect("prefill appends");
    }
    store
}

/// `Repository::execute`, one `Deposit` per iteration, round-robin over
/// [`AGGREGATES`] accounts.
fn execute(c: &mut Criterion) {
    let rt = runtime();
    let ids = ids();
    let ids = &ids;
    let mut group = c.benchmark_group("execute");
    group.throughput(Throughput::Elements(1));

    // Without the cache every command replays its aggregate from the store.
    // A fresh store per pass keeps every aggregate at exactly PREFILL events
    // when its command runs; building it is not timed.
    group.bench_function(BenchmarkId::new("in_memory", "no_cache"), |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let accounts = Repository::<Account, _>::new(prefilled_store(ids).await);
                let pass = (iters - done).min(AGGREGATES as u64) as usize;
                let start = Instant::now();
                for id in &ids[..pass] {
                    black_box(
                        accounts
                            .execute(id.as_str(), deposit())
                            .await
                            .expect("deposit"),
                    );
                }
                timed += start.elapsed();
                done += pass as u64;
            }
            timed
        });
    });

    // With the cache every command decides on the cached state. The cache is
    // warmed (one untimed command per aggregate) before the timed passes.
    group.bench_function(BenchmarkId::new("in_memory", "cache_2000"), |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let accounts =
                    Repository::<Account, _>::new(prefilled_store(ids).await).with_cache(2000);
                for id in ids {
                    accounts
                        .execute(id.as_str(), deposit())
                        .await
                        .expect("warm");
                }
                let chunk = (iters - done).min(CACHED_PASSES_PER_STORE * AGGREGATES as u64);
                let start = Instant::now();
                for id in ids.iter().cycle().take(chunk as usize) {
                    black_box(
                        accounts
                            .execute(id.as_str(), deposit())
                            .await
                            .expect("deposit"),
                    );
                }
                timed += start.elapsed();
                done += chunk;
            }
            timed
        });
    });
    group.finish();
}

/// `Repository::load` of one aggregate of [`LONG_STREAM`] events.
fn rehydrate(c: &mut Criterion) {
    let rt = runtime();
    let store = InMemoryStore::new();
    let id = "long";
    let stream = Repository::<Account, InMemoryStore>::stream_id(id);
    let stream_v1 = Repository::<Account, InMemoryStore>::stream_id("long-v1");
    rt.block_on(async {
        // All but the last event appended directly; the last one executed by
        // a repository of the snapshotted account, which crosses a multiple
        // of 10 and so saves a snapshot at the stream's last version.
        let events = encode_all(
            std::iter::once(opened(id)).chain((1..LONG_STREAM as u64 - 1).map(deposited)),
        );
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                events,
                &AppendOptions::default(),
            )
            .await
            .expect("append");
        Repository::<SnapshottedAccount, _>::new(store.clone())
            .execute(id, deposit())
            .await
            .expect("last deposit");
        let snapshot = store
            .load_snapshot(&stream)
            .await
            .expect("snapshot readable")
            .expect("a snapshot");
        assert_eq!(snapshot.version, Version(LONG_STREAM as u64));
        assert_eq!(
            store.stream_version(&stream).await.expect("version"),
            Version(LONG_STREAM as u64)
        );

        // The same stream with every deposit stored at schema version 1.
        let mut events = encode_all([opened("long-v1")]);
        events.extend((1..LONG_STREAM as u64).map(v1_deposit));
        store
            .append(
                &stream_v1,
                ExpectedVersion::NoStream,
                events,
                &AppendOptions::default(),
            )
            .await
            .expect("append v1");
    });

    let plain = Repository::<Account, _>::new(store.clone());
    let snapshotted = Repository::<SnapshottedAccount, _>::new(store.clone());
    rt.block_on(async {
        let full = plain.load(id).await.expect("load");
        let from_snapshot = snapshotted.load(id).await.expect("load");
        assert_eq!(full.version, Version(LONG_STREAM as u64));
        assert_eq!(from_snapshot.version, full.version);
        assert_eq!(from_snapshot.state.0, full.state);
        let v1 = plain.load("long-v1").await.expect("load v1");
        assert_eq!(v1.version, full.version);
    });

    let mut group = c.benchmark_group("rehydrate");
    group.throughput(Throughput::Elements(LONG_STREAM as u64));
    group.bench_function("10000_events", |b| {
        b.to_async(&rt).iter(|| plain.load(id));
    });
    group.bench_function("10000_events_v1_upcast", |b| {
        b.to_async(&rt).iter(|| plain.load("long-v1"));
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("snapshot_plus_0_events", |b| {
        b.to_async(&rt).iter(|| snapshotted.load(id));
    });
    group.finish();
}

/// A `Deposited` stored at schema version 1, `{"cents": n}`.
fn v1_deposit(cents: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Deposited".to_owned(),
        schema_version: 1,
        payload: json!({ "cents": cents }).into(),
        metadata: Metadata::default(),
    }
}

fn recorded(schema_version: u32, payload: Payload) -> RecordedEvent {
    RecordedEvent {
        position: Position(1),
        stream_id: StreamId::new("account-upcast"),
        version: Version(1),
        event_id: EventId::new(),
        event_type: "Deposited".into(),
        schema_version,
        payload,
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    }
}

/// One upcast hop of `Deposited` from v1 to v2, per event; the v2 cases are
/// the same work without the hop.
fn upcast(c: &mut Criterion) {
    let schema = AccountEvent::schema();
    let v1 = Payload::from(json!({ "cents": 1234 }));
    let v2 = Payload::from(json!({ "amount": 1234, "memo": "" }));
    let raw_v1 = recorded(1, v1.clone());
    let raw_v2 = recorded(2, v2.clone());
    assert_eq!(
        AccountEvent::decode(&raw_v1).expect("v1 decodes").event,
        AccountEvent::decode(&raw_v2).expect("v2 decodes").event
    );

    let mut group = c.benchmark_group("upcast");
    group.throughput(Throughput::Elements(1));
    group.bench_function("schema_upcast_v1_one_hop", |b| {
        b.iter(|| {
            schema
                .upcast(black_box("Deposited"), black_box(1), black_box(&v1))
                .map(|(_, payload)| payload.into_owned())
        });
    });
    group.bench_function("schema_upcast_v2_no_hop", |b| {
        b.iter(|| {
            schema
                .upcast(black_box("Deposited"), black_box(2), black_box(&v2))
                .map(|(name, payload)| (name.len(), payload.len()))
        });
    });
    group.bench_function("decode_v1", |b| {
        b.iter(|| AccountEvent::decode(black_box(&raw_v1)));
    });
    group.bench_function("decode_v2", |b| {
        b.iter(|| AccountEvent::decode(black_box(&raw_v2)));
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn main() {
    let mut c = config().configure_from_args();
    execute(&mut c);
    rehydrate(&mut c);
    upcast(&mut c);
    c.final_summary();
}
