//! Gap safety of the global log: eight writers append 100,000 events in
//! total, many in transactions held open for random short times, while a
//! subscriber follows the global log; the subscriber must receive every
//! event exactly once, and each stream's events in version order. Three
//! rounds, each in a fresh schema; then a round whose subscriber starts when
//! four fifths of the events are written and catches up with reads large
//! enough that the store reads each in two parts at once, sending the events
//! on as it reads them. Every kind of append numbers
//! its events in the range of its own, committed, transaction (the log's
//! order).
//!
//! The ignored test `without_protection_the_test_catches_a_skip` runs the
//! same workload with the gap protection switched off (plain position order)
//! and shows that the check catches the skipped events; run it with
//! `cargo test -p es-postgres --test gap_safety -- --ignored`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::{
    AppendOptions, BoxError, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Position,
    Projection, RecordedEvent, StreamId,
};
use es_postgres::{PgEventStore, PgStoreOptions, PgTx};
use serde_json::json;

const WRITERS: usize = 8;
const TOTAL: usize = 100_000;
const STREAMS_PER_WRITER: usize = 16;
const _: () = assert!(TOTAL % WRITERS == 0, "writers share the events evenly");

/// A small deterministic random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Holds the append's transaction open for a random short time after the
/// insert, for events marked `hold` (an inline projection runs inside the
/// append's transaction).
struct HoldOpen;

#[async_trait]
impl Projection for HoldOpen {
    type Context = PgTx;
    const NAME: &'static str = "hold_open";

    fn event_types() -> Option<Vec<String>> {
        Some(vec!["Held".to_owned()])
    }

    async fn handle(&self, _tx: &mut PgTx, event: &RecordedEvent) -> Result<(), BoxError> {
        let micros = event.payload.to_value().unwrap()["hold_us"]
            .as_u64()
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_micros(micros)).await;
        Ok(())
    }

    async fn reset(&self, _tx: &mut PgTx) -> Result<(), BoxError> {
        Ok(())
    }
}

fn event(writer: usize, seq: usize, hold_us: Option<u64>) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: if hold_us.is_some() { "Held" } else { "Quick" }.to_owned(),
        schema_version: 1,
        payload: json!({ "writer": writer, "seq": seq, "hold_us": hold_us }).into(),
        metadata: Metadata::default(),
    }
}

/// Appends `count` events from one writer, in batches of 1 to 8 events over
/// its own streams; about a third of the appends keep their transaction
/// open for up to 4 ms after the insert.
async fn writer(store: PgEventStore, writer: usize, count: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut seq = 0;
    while seq < count {
        let size = (1 + rng.below(8) as usize).min(count - seq);
        let hold = (rng.below(3) == 0).then(|| rng.below(4_000));
        let events: Vec<NewEvent> = (0..size)
            .map(|i| event(writer, seq + i, hold.filter(|_| i == 0)))
            .collect();
        let stream = StreamId::new(format!(
            "w{writer}-{}",
            rng.below(STREAMS_PER_WRITER as u64)
        ));
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                events,
                &AppendOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("writer {writer} append at seq {seq}: {e}"));
        seq += size;
    }
}

/// How the subscriber reads.
#[derive(Clone, Copy)]
struct Reading {
    /// The most events per read.
    limit: usize,
    /// How many events must be in the log before it starts.
    starts_at: usize,
    /// Whether each read sends its events on in slices as it reads them
    /// (`read_all_into`, as the log reader reads), rather than returning
    /// them all at its end (`read_all`).
    sent_on: bool,
}

/// Pages of 1,000 from the start: the subscriber keeps up.
const FOLLOWING: Reading = Reading {
    limit: 1_000,
    starts_at: 0,
    sent_on: false,
};

/// What the subscriber saw.
#[derive(Debug, Default)]
struct Report {
    received: usize,
    /// How many reads gave as many events as they asked for.
    whole_reads: usize,
    duplicates: usize,
    missing: usize,
    out_of_version_order: usize,
    elapsed: Duration,
}

/// Runs the writers and a subscriber that follows the global log from the
/// start until the writers are done and the log has no more events.
async fn follow_while_writing(store: PgEventStore, seed: u64, reading: Reading) -> Report {
    let started = Instant::now();
    let writing = store.with_inline(HoldOpen);
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = writing.clone();
        let done = Arc::clone(&done);
        let count = TOTAL / WRITERS;
        tasks.push(tokio::spawn(async move {
            writer(
                store,
                w,
                count,
                seed.wrapping_mul(31).wrapping_add(w as u64),
            )
            .await;
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }

    let mut seen: HashMap<(u64, u64), u32> = HashMap::with_capacity(TOTAL);
    let mut versions: HashMap<StreamId, u64> = HashMap::new();
    let mut report = Report::default();
    let mut after = Position::START;
    let deadline = Instant::now() + Duration::from_secs(600);
    if reading.starts_at > 0 {
        let count = format!("SELECT count(*) FROM \"{}\".events", store.schema());
        while Instant::now() < deadline {
            let n: i64 = sqlx::query_scalar(&count)
                .fetch_one(store.pool())
                .await
                .expect("count the events");
            if usize::try_from(n).expect("a count") >= reading.starts_at {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut idle_after_done = 0;
    let mut finished = false;
    while Instant::now() < deadline && !finished {
        let slice = common::read_log(&store, after, reading.limit, reading.sent_on).await;
        if slice.events.is_empty() {
            if done.load(Ordering::SeqCst) == WRITERS {
                // Writers are done: every transaction has ended, so the
                // next reads see everything that was committed.
                idle_after_done += 1;
                if idle_after_done >= 3 {
                    finished = true;
                }
            }
            store
                .wait_for_events(after, Duration::from_millis(200))
                .await
                .expect("wait for events");
            continue;
        }
        idle_after_done = 0;
        after = slice.next;
        if slice.events.len() == reading.limit {
            report.whole_reads += 1;
        }
        for e in slice.events {
            report.received += 1;
            let payload = e.payload.to_value().expect("JSON payload");
            let writer = payload["writer"].as_u64().expect("writer");
            let seq = payload["seq"].as_u64().expect("seq");
            let count = seen.entry((writer, seq)).or_insert(0);
            *count += 1;
            if *count > 1 {
                report.duplicates += 1;
            }
            let last = versions.entry(e.stream_id.clone()).or_insert(0);
            if e.version.0 != *last + 1 {
                report.out_of_version_order += 1;
            }
            *last = (*last).max(e.version.0);
        }
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    report.missing = TOTAL - seen.len();
    report.elapsed = started.elapsed();
    report
}

#[test]
fn subscriber_receives_every_event_exactly_once_three_times() {
    es_core::testkit::block_on(async {
        for round in 0..3u64 {
            common::with_store(PgStoreOptions::new(), 20, move |store| async move {
                let report =
                    follow_while_writing(store.clone(), 0x9E37_79B9 + round, FOLLOWING).await;
                eprintln!("gap safety round {}: {report:?}", round + 1);
                assert_eq!(
                    report.missing,
                    0,
                    "round {}: events skipped: {report:?}",
                    round + 1
                );
                assert_eq!(report.duplicates, 0, "round {}: {report:?}", round + 1);
                assert_eq!(report.received, TOTAL, "round {}: {report:?}", round + 1);
                assert_eq!(
                    report.out_of_version_order,
                    0,
                    "round {}: a stream's events must arrive in version order: {report:?}",
                    round + 1
                );
                assert_eq!(
                    store.head().await.expect("head"),
                    last_position(&store).await,
                    "the head is the last event of the log"
                );
            })
            .await;
        }
    });
}

#[test]
fn a_late_subscriber_catching_up_in_two_parts_read_at_once_receives_every_event_once() {
    // Reads of 30,000, sent on as they go, from when 80,000 events are in
    // the log: the first read, in one part, measures the log's density; the
    // store reads the next ones in two parts at once, the second starting
    // where that density places the middle of the read.
    let reading = Reading {
        limit: 30_000,
        starts_at: TOTAL / 5 * 4,
        sent_on: true,
    };
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 20, move |store| async move {
            let report = follow_while_writing(store, 0x5EED_CAFE, reading).await;
            eprintln!("catching up in two parts: {report:?}");
            assert_eq!(report.missing, 0, "events skipped: {report:?}");
            assert_eq!(report.duplicates, 0, "{report:?}");
            assert_eq!(report.received, TOTAL, "{report:?}");
            assert_eq!(report.out_of_version_order, 0, "{report:?}");
            // At least 60,000 events are there to read: the first read and
            // a split read after it are whole.
            assert!(
                report.whole_reads >= 2,
                "a split read must have come back whole: {report:?}"
            );
        })
        .await;
    });
}

/// The position of the last event in log order, read directly.
async fn last_position(store: &PgEventStore) -> Position {
    let sql = format!("SELECT max(position) FROM \"{}\".events", store.schema());
    let p: i64 = sqlx::query_scalar(&sql)
        .fetch_one(store.pool())
        .await
        .expect("last position");
    Position(u64::try_from(p).expect("positive position"))
}

#[test]
#[ignore = "demonstration: with the gap protection off, the same check catches skipped events"]
fn without_protection_the_test_catches_a_skip() {
    es_core::testkit::block_on(async {
        let options = PgStoreOptions::new().without_gap_protection_for_tests();
        common::with_store(options, 20, |store| async move {
            let report = follow_while_writing(store, 0xDEAD_BEEF, FOLLOWING).await;
            eprintln!("without gap protection: {report:?}");
            assert!(
                report.missing > 0,
                "expected the unprotected reader to skip events: {report:?}"
            );
        })
        .await;
    });
}

#[test]
fn every_kind_of_append_numbers_its_events_in_its_own_committed_transaction() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let typed = |kind: &str, n: usize| NewEvent {
                event_id: EventId::new(),
                event_type: kind.to_owned(),
                schema_version: 1,
                payload: json!({ "n": n }).into(),
                metadata: Metadata::correlated("stamp"),
            };
            // One event; several sharing type and metadata; several of
            // different types; several under an idempotency key: each takes
            // a path of its own through the append statements.
            let appends: [(&str, Vec<NewEvent>, Option<&str>); 4] = [
                ("one-1", vec![typed("A", 0)], None),
                ("uniform-1", (0..3).map(|n| typed("A", n)).collect(), None),
                (
                    "mixed-1",
                    vec![typed("A", 0), typed("B", 1), typed("C", 2)],
                    None,
                ),
                (
                    "keyed-1",
                    (0..3).map(|n| typed("A", n)).collect(),
                    Some("k-1"),
                ),
            ];
            for (stream, events, key) in appends {
                let options = AppendOptions {
                    idempotency_key: key.map(str::to_owned),
                };
                store
                    .append(
                        &StreamId::new(stream),
                        ExpectedVersion::NoStream,
                        events,
                        &options,
                    )
                    .await
                    .expect("append");
            }
            // A position is the appending transaction's id times 2^20 plus
            // the event's index in the append.
            let stamps: Vec<(String, i64, String, String, i64, i64, i64)> =
                sqlx::query_as(&format!(
                    "SELECT stream_id, count(DISTINCT position >> 20),
                            min(position >> 20)::text,
                            min(pg_xact_status((position >> 20)::text::xid8)),
                            min(position & 1048575), max(position) - min(position) + 1,
                            count(*)
                     FROM \"{}\".events GROUP BY stream_id ORDER BY min(position)",
                    store.schema()
                ))
                .fetch_all(store.pool())
                .await
                .expect("read the transaction ids");
            let streams: Vec<&str> = stamps.iter().map(|s| s.0.as_str()).collect();
            assert_eq!(streams, ["one-1", "uniform-1", "mixed-1", "keyed-1"]);
            let mut previous = 0u64;
            for (stream, distinct, xid, status, first_index, span, count) in &stamps {
                assert_eq!(*distinct, 1, "{stream}: one transaction per append");
                assert_eq!(status, "committed", "{stream}: the appending transaction");
                assert_eq!(*first_index, 0, "{stream}: the append's first event");
                assert_eq!(span, count, "{stream}: one position after another");
                let xid: u64 = xid.parse().expect("a transaction id");
                assert!(
                    xid > previous,
                    "{stream}: later appends, later transactions"
                );
                previous = xid;
            }
        })
        .await;
    });
}
