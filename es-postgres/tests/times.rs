//! Recorded times read back exactly, whatever time PostgreSQL stores; a time
//! that no `DateTime` holds is a store error that says where it is, never a
//! panic, and other streams still read.

mod common;

use chrono::{DateTime, NaiveDate, Utc};
use es_core::{
    AppendOptions, EventFilter, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Position,
    RecordedEvent, Snapshot, SnapshotStore, StreamId, Version,
};
use es_postgres::{PgEventStore, PgStoreOptions};

async fn append(store: &PgEventStore, stream: &StreamId, count: usize) {
    let events = (0..count)
        .map(|n| NewEvent {
            event_id: EventId::new(),
            event_type: "Timed".to_owned(),
            schema_version: 1,
            payload: serde_json::json!({ "n": n }).into(),
            metadata: Metadata::default(),
        })
        .collect();
    store
        .append(
            stream,
            ExpectedVersion::NoStream,
            events,
            &AppendOptions::default(),
        )
        .await
        .expect("append");
}

/// Sets the recorded time of one event with SQL; answers its position.
async fn set_time(store: &PgEventStore, stream: &StreamId, version: i64, time: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "UPDATE \"{}\".events SET recorded_at = $3::timestamptz
         WHERE stream_id = $1 AND version = $2 RETURNING position",
        store.schema()
    ))
    .bind(stream.as_str())
    .bind(version)
    .bind(time)
    .fetch_one(store.pool())
    .await
    .expect("set a recorded time")
}

fn utc(year: i32, month: u32, day: u32, hms: (u32, u32, u32), micro: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|date| date.and_hms_micro_opt(hms.0, hms.1, hms.2, micro))
        .expect("a valid time")
        .and_utc()
}

async fn whole_log(store: &PgEventStore) -> es_core::Result<Vec<RecordedEvent>> {
    Ok(store
        .read_all(Position::START, &EventFilter::all(), 100)
        .await?
        .events)
}

#[test]
fn recorded_times_read_back_exactly_on_both_sides_of_every_epoch() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let stream = StreamId::new("timed-1");
            let cases = [
                ("4713-01-01 00:00:00+00 BC", utc(-4712, 1, 1, (0, 0, 0), 0)),
                (
                    "1969-07-20 20:17:40.123456+00",
                    utc(1969, 7, 20, (20, 17, 40), 123_456),
                ),
                ("1970-01-01 00:00:00+00", utc(1970, 1, 1, (0, 0, 0), 0)),
                (
                    "1999-12-31 23:59:59.999999+00",
                    utc(1999, 12, 31, (23, 59, 59), 999_999),
                ),
                ("2000-01-01 00:00:00+00", utc(2000, 1, 1, (0, 0, 0), 0)),
                (
                    "2024-02-29 12:34:56.000001+02",
                    utc(2024, 2, 29, (10, 34, 56), 1),
                ),
                (
                    "9999-12-31 23:59:59.999999+00",
                    utc(9999, 12, 31, (23, 59, 59), 999_999),
                ),
            ];
            append(&store, &stream, cases.len()).await;
            for (version, (time, _)) in (1..).zip(&cases) {
                set_time(&store, &stream, version, time).await;
            }
            let expected: Vec<DateTime<Utc>> = cases.iter().map(|(_, at)| *at).collect();
            let read = store
                .read_stream(&stream, Version(1), 100)
                .await
                .expect("read the stream");
            let logged = whole_log(&store).await.expect("read the log");
            for events in [read, logged] {
                let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();
                assert_eq!(times, expected);
                for event in &events {
                    assert_eq!(event.metadata.recorded_at, Some(event.recorded_at));
                }
            }
        })
        .await;
    });
}

#[test]
fn a_time_no_date_time_holds_is_an_error_with_where_it_is() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let good = StreamId::new("good-1");
            let bad = StreamId::new("bad-1");
            append(&store, &good, 2).await;
            append(&store, &bad, 3).await;
            for (time, says) in [
                ("infinity", "the time is infinity"),
                ("-infinity", "the time is -infinity"),
                (
                    "294276-12-31 23:59:59+00",
                    "is beyond what a `DateTime` holds",
                ),
            ] {
                let position = set_time(&store, &bad, 2, time).await;
                let place = format!("stream `bad-1` v2 at position {position}");
                for error in [
                    store
                        .read_stream(&bad, Version(1), 100)
                        .await
                        .expect_err("the stream does not read"),
                    whole_log(&store).await.expect_err("the log does not read"),
                ] {
                    let text = format!("{error}: {:?}", std::error::Error::source(&error));
                    assert!(
                        text.contains(&format!("cannot read the recorded time of {place}"))
                            && text.contains(says),
                        "{time}: {text}"
                    );
                }
                let good_events = store
                    .read_stream(&good, Version(1), 100)
                    .await
                    .expect("another stream still reads");
                assert_eq!(good_events.len(), 2);
            }
        })
        .await;
    });
}

#[test]
fn a_snapshot_taken_at_a_time_no_date_time_holds_is_an_error() {
    es_core::testkit::block_on(async {
        common::with_store(PgStoreOptions::new(), 4, |store| async move {
            let stream = StreamId::new("snapped-1");
            append(&store, &stream, 2).await;
            store
                .save_snapshot(Snapshot {
                    stream_id: stream.clone(),
                    version: Version(2),
                    state_version: 1,
                    state: serde_json::json!({"n": 2}),
                    taken_at: Utc::now(),
                })
                .await
                .expect("save a snapshot");
            sqlx::query(&format!(
                "UPDATE \"{}\".snapshots SET taken_at = 'infinity'",
                store.schema()
            ))
            .execute(store.pool())
            .await
            .expect("set the time");
            let error = store
                .load_snapshot(&stream)
                .await
                .expect_err("the snapshot does not load");
            let text = format!("{error}: {:?}", std::error::Error::source(&error));
            assert!(
                text.contains("cannot read the snapshot of `snapped-1`")
                    && text.contains("the time is infinity"),
                "{text}"
            );
        })
        .await;
    });
}
