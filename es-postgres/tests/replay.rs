//! Replays read a stream's rows in the order the table holds them (no sort
//! on the server) and hand them on in version order, whatever that order is.

mod common;

use es_core::{
    AppendOptions, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Replay, ReplayedEvent,
    Result, Snapshot, SnapshotStore, StreamId, Version,
};
use es_postgres::{PgEventStore, PgStoreOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::Executor;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Numbered".to_owned(),
        schema_version: 1,
        payload: serde_json::json!({ "n": n }).into(),
        metadata: Metadata::default(),
    }
}

/// Appends events 1..=`count` to `stream`, one append each.
async fn append(store: &PgEventStore, stream: &StreamId, count: u64) {
    for n in 1..=count {
        store
            .append(
                stream,
                ExpectedVersion::Exact(Version(n - 1)),
                vec![event(n)],
                &AppendOptions::default(),
            )
            .await
            .expect("append");
    }
}

/// Rewrites the rows of these versions: each gets a new tuple after the
/// others in the table (and a new index entry: its key changes and changes
/// back), so a scan of the table meets it last.
async fn move_to_the_end(store: &PgEventStore, stream: &StreamId, versions: &[i64]) {
    for version in versions {
        for (shift, at) in [(1_000_000, *version), (-1_000_000, version + 1_000_000)] {
            let moved = sqlx::query(&format!(
                "UPDATE \"{}\".events SET version = version + $3 WHERE stream_id = $1 AND version = $2",
                store.schema()
            ))
            .bind(stream.as_str())
            .bind(at)
            .bind(shift)
            .execute(store.pool())
            .await
            .expect("rewrite a row");
            assert_eq!(moved.rows_affected(), 1);
        }
    }
}

/// A second handle on `store`'s schema whose connections plan no index
/// scans: a stream's rows then come as the table holds them (a bitmap or
/// sequential scan), as they do for a long stream in a large table.
async fn scanning(store: &PgEventStore) -> PgEventStore {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET enable_indexscan = off").await?;
                Ok(())
            })
        })
        .connect(&common::url())
        .await
        .expect("connect");
    PgStoreOptions::new()
        .schema(store.schema())
        .open(pool)
        .await
        .expect("open the schema again")
}

/// The versions of the stream in the order a statement without `ORDER BY`
/// gets them.
async fn table_order(store: &PgEventStore, stream: &StreamId) -> Vec<i64> {
    sqlx::query_scalar(&format!(
        "SELECT version FROM \"{}\".events WHERE stream_id = $1",
        store.schema()
    ))
    .bind(stream.as_str())
    .fetch_all(store.pool())
    .await
    .expect("read the table's order")
}

/// What a replay handed on: (version, the payload's `n`).
async fn replayed(store: &PgEventStore, stream: &StreamId, from: Version) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    store
        .replay_stream(stream, from, &mut |event| {
            seen.push(numbered(&event));
            Ok(())
        })
        .await
        .expect("replay");
    seen
}

fn numbered(event: &ReplayedEvent<'_>) -> (u64, u64) {
    let payload: serde_json::Value = serde_json::from_str(event.payload).expect("payload");
    (event.version.0, payload["n"].as_u64().expect("n"))
}

/// A [`Replay`] that replays from the snapshot it is given, or from the
/// version it is told to.
struct Collect {
    from: Option<Version>,
    snapshot: Option<Version>,
    events: Vec<(u64, u64)>,
}

impl Replay for Collect {
    fn start(&mut self, snapshot: Result<Option<Snapshot>>) -> Version {
        self.snapshot = snapshot.expect("snapshot").map(|s| s.version);
        self.from
            .unwrap_or_else(|| self.snapshot.unwrap_or(Version(0)).next())
    }

    fn event(&mut self, event: ReplayedEvent<'_>) -> Result<()> {
        self.events.push(numbered(&event));
        Ok(())
    }
}

async fn from_snapshot(store: &PgEventStore, stream: &StreamId, from: Option<Version>) -> Collect {
    let mut collect = Collect {
        from,
        snapshot: None,
        events: Vec::new(),
    };
    store
        .replay_from_snapshot(stream, &mut collect)
        .await
        .expect("replay from the snapshot");
    collect
}

fn expected(versions: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
    versions.map(|v| (v, v)).collect()
}

#[test]
fn replays_hand_on_events_in_version_order_whatever_order_the_table_holds_them_in() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let stream = StreamId::new("shuffled-1");
            let other = StreamId::new("other-1");
            append(&store, &stream, 8).await;
            append(&store, &other, 3).await;
            move_to_the_end(&store, &stream, &[1, 4, 2]).await;
            let store = scanning(&store).await;
            assert_eq!(
                table_order(&store, &stream).await,
                [3, 5, 6, 7, 8, 1, 4, 2],
                "the table holds the stream out of order"
            );

            assert_eq!(replayed(&store, &stream, Version(1)).await, expected(1..=8));
            assert_eq!(replayed(&store, &stream, Version(3)).await, expected(3..=8));
            assert_eq!(replayed(&store, &stream, Version(0)).await, expected(1..=8));
            assert_eq!(replayed(&store, &other, Version(1)).await, expected(1..=3));

            // No snapshot, then one at version 3: the events after it.
            let loaded = from_snapshot(&store, &stream, None).await;
            assert_eq!((loaded.snapshot, loaded.events), (None, expected(1..=8)));
            store
                .save_snapshot(Snapshot {
                    stream_id: stream.clone(),
                    version: Version(3),
                    state_version: 1,
                    state: serde_json::json!({}),
                    taken_at: chrono::Utc::now(),
                })
                .await
                .expect("save a snapshot");
            let loaded = from_snapshot(&store, &stream, None).await;
            assert_eq!(
                (loaded.snapshot, loaded.events),
                (Some(Version(3)), expected(4..=8))
            );
            // The snapshot ignored: from version 1 again.
            let loaded = from_snapshot(&store, &stream, Some(Version(1))).await;
            assert_eq!(loaded.events, expected(1..=8));
        })
        .await;
    });
}

#[test]
fn a_version_missing_from_the_stream_still_leaves_the_rest_in_order() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let stream = StreamId::new("holed-1");
            append(&store, &stream, 6).await;
            move_to_the_end(&store, &stream, &[5, 4]).await;
            let store = scanning(&store).await;
            // Appends never leave a hole; a row removed by hand does.
            sqlx::query(&format!(
                "DELETE FROM \"{}\".events WHERE stream_id = $1 AND version = 2",
                store.schema()
            ))
            .bind(stream.as_str())
            .execute(store.pool())
            .await
            .expect("remove a row");
            assert_eq!(table_order(&store, &stream).await, [1, 3, 6, 5, 4]);
            let versions: Vec<u64> = replayed(&store, &stream, Version(1))
                .await
                .into_iter()
                .map(|(version, _)| version)
                .collect();
            assert_eq!(versions, [1, 3, 4, 5, 6]);
        })
        .await;
    });
}
