//! What the `events` table holds for an event's metadata and schema version,
//! and that every read gives them back: an event without metadata stores
//! null (an event stored as `{}` before migration 0004 reads the same), and
//! schema version 1, which the log's reads send as null, reads as 1 beside
//! other versions, through the log's binary `COPY` page, the filtered page,
//! a stream's read and the parked events.

mod common;

use chrono::Utc;
use es_core::{
    AppendOptions, CheckpointStore, EventFilter, EventId, EventStore, ExpectedVersion, Metadata,
    NewEvent, ParkedEvent, Position, RecordedEvent, StreamId, Version,
};
use es_postgres::{PgEventStore, PgStoreOptions};

fn event(event_type: &str, schema_version: u32, metadata: Metadata) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: event_type.to_owned(),
        schema_version,
        payload: serde_json::json!({ "v": schema_version }).into(),
        metadata,
    }
}

/// The metadata and schema version of each event, as every read must give
/// them: (correlation id, extra key `k`, schema version), in version order.
type Seen = Vec<(Option<String>, Option<String>, u32)>;

fn seen(events: &[RecordedEvent]) -> Seen {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.metadata.recorded_at, Some(e.recorded_at));
            (
                e.metadata.correlation_id.clone(),
                e.metadata.extra.get("k").cloned(),
                e.schema_version,
            )
        })
        .collect()
}

#[tokio::test]
async fn metadata_and_schema_versions_read_back_through_every_read() {
    common::with_store(PgStoreOptions::new(), 4, |store: PgEventStore| async move {
        let stream = StreamId::new("columns-1");
        let none = Metadata::default;
        // One append of several events that differ (column arrays), one of
        // events that share everything but id and payload, one of a single
        // event: the three ways an append binds its events.
        let appends = [
            vec![
                event("A", 1, none()),
                event("B", 2, Metadata::correlated("c1")),
                event("A", 1, Metadata::default().with("k", "v")),
                event("B", 3, none()),
            ],
            vec![event("A", 1, none()), event("A", 1, none())],
            vec![event("B", 2, Metadata::correlated("c2").with("k", "w"))],
        ];
        let mut version = 0;
        for events in appends {
            let n = events.len() as u64;
            store
                .append(
                    &stream,
                    ExpectedVersion::Exact(Version(version)),
                    events,
                    &AppendOptions::default(),
                )
                .await
                .expect("append");
            version += n;
        }
        let s = |v: &str| Some(v.to_owned());
        let expected: Seen = vec![
            (None, None, 1),
            (s("c1"), None, 2),
            (None, s("v"), 1),
            (None, None, 3),
            (None, None, 1),
            (None, None, 1),
            (s("c2"), s("w"), 2),
        ];

        // What the table holds: null for no metadata, the schema version as
        // given.
        let stored: Vec<(Option<String>, i32)> = sqlx::query_as(&format!(
            "SELECT metadata::text, schema_version FROM \"{}\".events ORDER BY version",
            store.schema()
        ))
        .fetch_all(store.pool())
        .await
        .unwrap();
        let nulls: Vec<bool> = stored.iter().map(|(m, _)| m.is_none()).collect();
        assert_eq!(
            nulls,
            [true, false, false, true, true, true, false],
            "{stored:?}"
        );
        assert_eq!(
            stored.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [1, 2, 1, 3, 1, 1, 2]
        );

        // An event stored before migration 0004 holds `{}`.
        sqlx::query(&format!(
            "UPDATE \"{}\".events SET metadata = '{{}}' WHERE stream_id = $1 AND version = 5",
            store.schema()
        ))
        .bind(stream.as_str())
        .execute(store.pool())
        .await
        .unwrap();

        let stream_read = store
            .read_stream(&stream, Version(1), 100)
            .await
            .expect("read the stream");
        assert_eq!(seen(&stream_read), expected, "the stream's read");
        let log = store
            .read_all(Position::START, &EventFilter::all(), 100)
            .await
            .expect("read the log");
        assert_eq!(seen(&log.events), expected, "the log's page");
        let filtered = store
            .read_all(Position::START, &EventFilter::types(["A", "B"]), 100)
            .await
            .expect("read the log, filtered");
        assert_eq!(seen(&filtered.events), expected, "the filtered page");
        let only_b = store
            .read_all(Position::START, &EventFilter::types(["B"]), 100)
            .await
            .expect("read the log, filtered");
        assert_eq!(
            seen(&only_b.events),
            [&expected[1], &expected[3], &expected[6]].map(Clone::clone),
            "a filter that leaves some out"
        );

        // Parked events keep both, with or without metadata.
        for event in &log.events {
            store
                .park(ParkedEvent {
                    projection: "p".to_owned(),
                    event: event.clone(),
                    error: "failed".to_owned(),
                    parked_at: Utc::now(),
                })
                .await
                .expect("park");
        }
        let parked: Vec<RecordedEvent> = store
            .parked("p")
            .await
            .expect("parked")
            .into_iter()
            .map(|p| p.event)
            .collect();
        assert_eq!(seen(&parked), expected, "the parked events");
        assert_eq!(parked, log.events);
    })
    .await;
}
