//! A read costs its page, not the log or the stream: however large the page
//! is against what the planner expects, the server walks the index in the
//! read's order from where the read starts and stops at the page's end,
//! instead of collecting and sorting every event after the start.

mod common;

use common::counted;

use es_core::{
    AppendOptions, EventFilter, EventStore, ExpectedVersion, Position, StreamId, Version,
};
use es_postgres::{PgEventStore, PgStoreOptions};

const STREAMS: usize = 20;
const PER_STREAM: usize = 1_000;

/// Entries the server has read from the index `index` so far. Runs on the
/// store's one connection, so that the backend's own counts are flushed
/// first (`pg_stat_force_next_flush`, PostgreSQL 15 and later).
async fn index_entries_read(store: &PgEventStore, index: &str) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .expect("flush the statistics");
    sqlx::query_scalar(
        "SELECT idx_tup_read FROM pg_stat_user_indexes
         WHERE schemaname = $1 AND indexrelname = $2",
    )
    .bind(store.schema())
    .bind(index)
    .fetch_one(store.pool())
    .await
    .expect("read the index statistics")
}

/// Reads one page of `limit` events of the log from the start and answers
/// how many index entries that took.
async fn entries_for_a_page(store: &PgEventStore, filter: &EventFilter, limit: usize) -> i64 {
    let before = index_entries_read(store, "events_pkey").await;
    let page = store
        .read_all(Position::START, filter, limit)
        .await
        .expect("read a page");
    assert_eq!(page.events.len(), limit);
    index_entries_read(store, "events_pkey").await - before
}

/// Appends `STREAMS` streams of `PER_STREAM` events, then has the table's
/// statistics taken, as they are in production: the planner knows its size.
async fn fill(store: &PgEventStore) {
    for s in 0..STREAMS {
        store
            .append(
                &StreamId::new(format!("counter-{s}")),
                ExpectedVersion::NoStream,
                counted(PER_STREAM),
                &AppendOptions::default(),
            )
            .await
            .expect("append");
    }
    sqlx::query(&format!("ANALYZE \"{}\".events", store.schema()))
        .execute(store.pool())
        .await
        .expect("analyze");
}

#[tokio::test]
async fn a_large_page_reads_the_index_up_to_its_end_only() {
    // One connection: the reads and the statistics share a backend, and
    // each statement is planned afresh for its parameters there.
    common::with_store(PgStoreOptions::new(), 1, |store| async move {
        fill(&store).await;
        // A quarter of the log in one page: far more than the planner
        // expects to match a cursor it cannot see; then most of the log,
        // which the store reads in two parts (the second starting where the
        // density of the reads before places the middle of the page).
        for limit in [STREAMS * PER_STREAM / 4, 16_384] {
            for filter in [EventFilter::all(), EventFilter::types(["Counted"])] {
                let read = entries_for_a_page(&store, &filter, limit).await;
                // At least the page itself (else the counts were not flushed).
                assert!(
                    (limit as i64..2 * limit as i64).contains(&read),
                    "a page of {limit} read {read} entries of the log-order index ({filter:?})"
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_large_page_of_a_stream_reads_the_index_up_to_its_end_only() {
    common::with_store(PgStoreOptions::new(), 1, |store| async move {
        fill(&store).await;
        // The stream grows twentyfold after the statistics were taken: the
        // planner still expects a thousand events in it.
        let stream = StreamId::new("counter-0");
        for _ in 0..STREAMS - 1 {
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    counted(PER_STREAM),
                    &AppendOptions::default(),
                )
                .await
                .expect("append");
        }
        let limit = STREAMS * PER_STREAM / 4;
        let before = index_entries_read(&store, "events_stream_version").await;
        let page = store
            .read_stream(&stream, Version(1), limit)
            .await
            .expect("read a page of the stream");
        assert_eq!(page.len(), limit);
        assert!(page.iter().zip(1..).all(|(e, v)| e.version == Version(v)));
        let read = index_entries_read(&store, "events_stream_version").await - before;
        assert!(
            (limit as i64..2 * limit as i64).contains(&read),
            "a page of {limit} read {read} entries of the stream index"
        );
    })
    .await;
}
