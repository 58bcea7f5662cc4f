//! Mapping between es-core's types and the rows of the store's tables.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use es_core::{
    Checkpoint, Committed, EventId, EventTypeReuse, Metadata, NewEvent, ParkedEvent, Payload,
    Position, RecordedEvent, Snapshot, StreamId, StreamIdReuse, Version,
};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use crate::error::Error;

/// The most events one `INSERT` statement writes.
pub(crate) const MAX_CHUNK: usize = 256;

/// An event encoded for its row, before it has a stream, version or position.
#[derive(Debug)]
pub(crate) struct EncodedEvent {
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: i64,
    pub(crate) payload: Payload,
    pub(crate) metadata: String,
    pub(crate) recorded_at: i64,
}

/// Encodes a new event. An event without `recorded_at` is stamped with
/// `now`, read once per append.
pub(crate) fn encode_event(
    new: NewEvent,
    now: &mut Option<DateTime<Utc>>,
) -> es_core::Result<EncodedEvent> {
    let NewEvent {
        event_id,
        event_type,
        schema_version,
        payload,
        mut metadata,
    } = new;
    let recorded_at = metadata
        .recorded_at
        .take()
        .unwrap_or_else(|| *now.get_or_insert_with(Utc::now));
    let metadata = serde_json::to_string(&metadata).map_err(|source| es_core::Error::Encode {
        what: format!("metadata of {event_type}"),
        source,
    })?;
    Ok(EncodedEvent {
        event_id: event_id.0,
        event_type,
        schema_version: i64::from(schema_version),
        payload,
        metadata,
        recorded_at: to_micros(recorded_at),
    })
}

/// The sizes of the `INSERT` statements that write `n` events: chunks of
/// [`MAX_CHUNK`], then the rest as powers of two, so that a handful of
/// distinct statements (each prepared once and cached) serve every batch.
pub(crate) fn chunk_sizes(n: usize) -> impl Iterator<Item = usize> {
    let full = n / MAX_CHUNK;
    let rest = n % MAX_CHUNK;
    std::iter::repeat_n(MAX_CHUNK, full).chain(
        (0..=MAX_CHUNK.trailing_zeros())
            .rev()
            .map(|bit| 1usize << bit)
            .filter(move |size| rest & size != 0),
    )
}

/// The `INSERT` of `rows` events (a power of two up to [`MAX_CHUNK`]),
/// eight parameters per row in the order of its column list.
///
/// Parameters are anonymous (`?`): SQLite looks up the name of a numbered
/// parameter (`?7`) by a linear scan, which makes binding a large
/// statement's numbered parameters quadratic.
pub(crate) fn insert_sql(rows: usize) -> &'static str {
    const SIZES: usize = MAX_CHUNK.trailing_zeros() as usize + 1;
    static SQL: [OnceLock<String>; SIZES] = [const { OnceLock::new() }; SIZES];
    let slot = (rows.max(1).trailing_zeros() as usize).min(SIZES - 1);
    SQL[slot].get_or_init(|| {
        let rows = 1usize << slot;
        let mut sql = String::from(
            "INSERT INTO es_events (stream_id, version, event_id, event_type, schema_version, \
             payload, metadata, recorded_at) VALUES ",
        );
        sql.push_str(&vec!["(?,?,?,?,?,?,?,?)"; rows].join(","));
        sql
    })
}

/// A query of the events of `FROM <source>` (`es_events` with a `WHERE`
/// clause, or a subquery of whole `es_events` rows in position order) that
/// returns all of them in one row of
/// [`PACKED_VALUES`] values: `count(*)`, then per column the values of
/// every event, numbers joined by commas and texts end to end with their
/// byte lengths beside them. [`Unpacker`] reads it back.
///
/// sqlx's SQLite driver hands each row from its worker thread to the task
/// and copies each value on the way: several microseconds a row on a small
/// machine, more than SQLite needs to read it. One row per page makes
/// reading the log several times faster. (A page larger than SQLite's
/// largest text, 1 GB, is read row by row instead: see [`rows_sql`].)
pub(crate) fn packed_sql(source: &str) -> String {
    format!(
        "SELECT count(*), group_concat(position), group_concat(version), \
         group_concat(schema_version), group_concat(recorded_at), \
         group_concat(hex(event_id), ''), \
         group_concat(octet_length(stream_id)), group_concat(stream_id, ''), \
         group_concat(octet_length(event_type)), group_concat(event_type, ''), \
         group_concat(octet_length(payload)), group_concat(payload, ''), \
         group_concat(octet_length(metadata)), group_concat(metadata, '') \
         FROM {source}"
    )
}

/// How many values a packed row has.
pub(crate) const PACKED_VALUES: usize = 14;

/// The same query, one event per row in position order, for [`decode_event_row`].
pub(crate) fn rows_sql(source: &str) -> String {
    format!(
        "SELECT position, stream_id, version, event_id, event_type, schema_version, payload, \
         metadata, recorded_at FROM {source} ORDER BY position"
    )
}

/// Reads the events of a packed row (see [`packed_sql`]).
///
/// A stored row with a NULL column (written by hand) drops out of some
/// columns' lists: the lists then disagree with the count, and the row is
/// reported as corrupt rather than misread.
#[derive(Debug)]
pub(crate) struct Unpacker<'r> {
    /// `count(*)`.
    pub(crate) count: i64,
    /// The other columns, in the order of [`packed_sql`]; `None` when empty.
    pub(crate) columns: [Option<&'r str>; PACKED_VALUES - 1],
}

impl Unpacker<'_> {
    /// The events, in position order.
    pub(crate) fn events(&self) -> Result<Vec<RecordedEvent>, Error> {
        let count = usize::try_from(self.count)
            .map_err(|_| Error::Corrupt(format!("negative count {}", self.count)))?;
        let mut events = Vec::with_capacity(count);
        if count == 0 {
            return Ok(events);
        }
        let malformed = |what: &str| {
            Error::Corrupt(format!(
                "{count} stored events read back with a malformed {what}: a row has a NULL column"
            ))
        };
        let [positions, versions, schema_versions, recorded_ats, event_ids, stream_id_lengths, stream_ids, event_type_lengths, event_types, payload_lengths, payloads, metadata_lengths, metadatas] =
            self.columns.map(Option::unwrap_or_default);
        let mut positions = Numbers::new(positions);
        let mut versions = Numbers::new(versions);
        let mut schema_versions = Numbers::new(schema_versions);
        let mut recorded_ats = Numbers::new(recorded_ats);
        let mut stream_ids = Texts::new(stream_id_lengths, stream_ids);
        let mut event_types = Texts::new(event_type_lengths, event_types);
        let mut payloads = Texts::new(payload_lengths, payloads);
        let mut metadatas = Texts::new(metadata_lengths, metadatas);
        if event_ids.len() != count * 32 || !event_ids.is_ascii() {
            return Err(malformed("event_id"));
        }
        // Events of one stream come together (a page of one stream, or a
        // burst of one aggregate's events in the log): they share one id.
        // Events of one type share one name.
        let mut stream_ids_reused = StreamIdReuse::default();
        let mut event_types_reused = EventTypeReuse::default();
        for index in 0..count {
            let position = Position(to_u64(
                positions.next().ok_or_else(|| malformed("position"))?,
                "position",
            )?);
            let corrupt = |what: &str, detail: &dyn std::fmt::Display| {
                Error::Corrupt(format!("event at position {position}: {what}: {detail}"))
            };
            let version = versions.next().ok_or_else(|| malformed("version"))?;
            let schema_version = schema_versions
                .next()
                .ok_or_else(|| malformed("schema_version"))?;
            let recorded_at = recorded_ats
                .next()
                .ok_or_else(|| malformed("recorded_at"))?;
            let event_id = &event_ids[index * 32..index * 32 + 32];
            let stream_id = stream_ids.next().ok_or_else(|| malformed("stream_id"))?;
            let event_type = event_types.next().ok_or_else(|| malformed("event_type"))?;
            let payload = payloads.next().ok_or_else(|| malformed("payload"))?;
            let metadata = metadatas.next().ok_or_else(|| malformed("metadata"))?;
            let payload =
                Payload::from_json(payload).map_err(|e| corrupt("payload is not JSON", &e))?;
            let mut metadata: Metadata = if metadata == "{}" {
                Metadata::default()
            } else {
                serde_json::from_str(metadata)
                    .map_err(|e| corrupt("metadata is not readable", &e))?
            };
            let recorded_at = from_micros(recorded_at)?;
            metadata.recorded_at = Some(recorded_at);
            let stream_id = stream_ids_reused.get(stream_id);
            events.push(RecordedEvent {
                position,
                stream_id,
                version: Version(to_u64(version, "version")?),
                event_id: EventId(
                    Uuid::try_parse(event_id).map_err(|e| corrupt("event_id is not a UUID", &e))?,
                ),
                event_type: event_types_reused.get(event_type),
                schema_version: u32::try_from(schema_version)
                    .map_err(|e| corrupt("schema_version out of range", &e))?,
                payload,
                metadata,
                recorded_at,
            });
        }
        let leftover = positions.next().is_some()
            || versions.next().is_some()
            || schema_versions.next().is_some()
            || recorded_ats.next().is_some()
            || stream_ids.next().is_some()
            || event_types.next().is_some()
            || payloads.next().is_some()
            || metadatas.next().is_some();
        if leftover {
            return Err(malformed("column"));
        }
        // Rows reach an aggregate in the order of the query it wraps; keep
        // the promise of log order even if SQLite ever feeds them otherwise.
        if !events.windows(2).all(|w| w[0].position < w[1].position) {
            events.sort_by_key(|e| e.position);
        }
        Ok(events)
    }
}

/// The numbers of a comma-separated list; stops at the first that is not one.
struct Numbers<'a>(std::str::Split<'a, char>, bool);

impl<'a> Numbers<'a> {
    fn new(list: &'a str) -> Self {
        Self(list.split(','), list.is_empty())
    }

    fn next(&mut self) -> Option<i64> {
        if self.1 {
            return None;
        }
        self.0.next()?.parse().ok()
    }
}

/// Texts laid end to end, cut by a comma-separated list of byte lengths.
struct Texts<'a> {
    lengths: Numbers<'a>,
    texts: &'a str,
}

impl<'a> Texts<'a> {
    fn new(lengths: &'a str, texts: &'a str) -> Self {
        Self {
            lengths: Numbers::new(lengths),
            texts,
        }
    }

    fn next(&mut self) -> Option<&'a str> {
        let length = usize::try_from(self.lengths.next()?).ok()?;
        let text = self.texts.get(..length)?;
        self.texts = &self.texts[length..];
        Some(text)
    }
}

/// The most events the single-statement append writes (larger batches
/// take a transaction of several statements); bounds the number of
/// distinct statements the writer keeps prepared (its cache holds 200).
pub(crate) const MAX_CHECKED: usize = 128;

/// The `INSERT` of `rows` events (at most [`MAX_CHECKED`]) that writes them
/// only if the stream is at the expected version: eight parameters per row,
/// then the stream id and the expected version. The check is a subquery
/// that SQLite evaluates once, before any row is written (a statement that
/// reads its own target table is materialized first), and the statement is
/// atomic: it writes all rows or none.
pub(crate) fn insert_checked_sql(rows: usize) -> &'static str {
    static SQL: [OnceLock<String>; MAX_CHECKED] = [const { OnceLock::new() }; MAX_CHECKED];
    let slot = rows.clamp(1, MAX_CHECKED) - 1;
    SQL[slot].get_or_init(|| {
        let rows = slot + 1;
        format!(
            "INSERT INTO es_events (stream_id, version, event_id, event_type, schema_version, \
             payload, metadata, recorded_at) \
             SELECT column1, column2, column3, column4, column5, column6, column7, column8 \
             FROM (VALUES {}) \
             WHERE (SELECT coalesce(max(version), 0) FROM es_events WHERE stream_id = ?) = ? \
             ORDER BY column2",
            vec!["(?,?,?,?,?,?,?,?)"; rows].join(",")
        )
    })
}

/// Decodes an event row selected by [`rows_sql`].
pub(crate) fn decode_event_row(row: &SqliteRow) -> Result<RecordedEvent, Error> {
    decode_event_at(row, 0)
}

/// Decodes the columns of an event (`position` to `recorded_at`, in table
/// order) starting at column `at`.
fn decode_event_at(row: &SqliteRow, at: usize) -> Result<RecordedEvent, Error> {
    let position: i64 = get(row, at, "position")?;
    let position = Position(to_u64(position, "position")?);
    let corrupt = |what: &str, detail: &dyn std::fmt::Display| {
        Error::Corrupt(format!("event at position {position}: {what}: {detail}"))
    };
    let stream_id: String = get(row, at + 1, "stream_id")?;
    let version: i64 = get(row, at + 2, "version")?;
    let event_id: Uuid = get(row, at + 3, "event_id")?;
    let event_type: &str = get(row, at + 4, "event_type")?;
    let schema_version: i64 = get(row, at + 5, "schema_version")?;
    let payload: &str = get(row, at + 6, "payload")?;
    let metadata: &str = get(row, at + 7, "metadata")?;
    let recorded_at: i64 = get(row, at + 8, "recorded_at")?;
    let payload = Payload::from_json(payload).map_err(|e| corrupt("payload is not JSON", &e))?;
    let mut metadata: Metadata =
        serde_json::from_str(metadata).map_err(|e| corrupt("metadata is not readable", &e))?;
    let recorded_at = from_micros(recorded_at)?;
    metadata.recorded_at = Some(recorded_at);
    Ok(RecordedEvent {
        position,
        stream_id: StreamId::new(stream_id),
        version: Version(to_u64(version, "version")?),
        event_id: EventId(event_id),
        event_type: event_type.into(),
        schema_version: u32::try_from(schema_version)
            .map_err(|e| corrupt("schema_version out of range", &e))?,
        payload,
        metadata,
        recorded_at,
    })
}

/// The columns of a parked event: `projection`, the event, `error`, `parked_at`.
pub(crate) const PARKED_COLUMNS: &str = "projection, position, stream_id, version, event_id, \
     event_type, schema_version, payload, metadata, recorded_at, error, parked_at";

/// Decodes a row selected with [`PARKED_COLUMNS`].
pub(crate) fn decode_parked(row: &SqliteRow) -> Result<ParkedEvent, Error> {
    let projection: String = get(row, 0, "projection")?;
    let event = decode_event_at(row, 1)?;
    let error: String = get(row, 10, "error")?;
    let parked_at: i64 = get(row, 11, "parked_at")?;
    Ok(ParkedEvent {
        projection,
        event,
        error,
        parked_at: from_micros(parked_at)?,
    })
}

/// Decodes a row of `stream_id, first_version, last_version, first_position, last_position`.
pub(crate) fn decode_committed(row: &SqliteRow) -> Result<Committed, Error> {
    let stream_id: String = get(row, 0, "stream_id")?;
    let first_version: i64 = get(row, 1, "first_version")?;
    let last_version: i64 = get(row, 2, "last_version")?;
    let first_position: i64 = get(row, 3, "first_position")?;
    let last_position: i64 = get(row, 4, "last_position")?;
    Ok(Committed {
        stream_id: StreamId::new(stream_id),
        first_version: Version(to_u64(first_version, "first_version")?),
        last_version: Version(to_u64(last_version, "last_version")?),
        first_position: Position(to_u64(first_position, "first_position")?),
        last_position: Position(to_u64(last_position, "last_position")?),
    })
}

/// Decodes a row of `stream_id, version, state_version, state, taken_at`.
pub(crate) fn decode_snapshot(row: &SqliteRow) -> Result<Snapshot, Error> {
    let stream_id: String = get(row, 0, "stream_id")?;
    let version: i64 = get(row, 1, "version")?;
    let state_version: i64 = get(row, 2, "state_version")?;
    let state: &str = get(row, 3, "state")?;
    let taken_at: i64 = get(row, 4, "taken_at")?;
    let corrupt = |detail: String| Error::Corrupt(format!("snapshot of `{stream_id}`: {detail}"));
    Ok(Snapshot {
        version: Version(to_u64(version, "snapshot version")?),
        state_version: u32::try_from(state_version)
            .map_err(|e| corrupt(format!("state_version out of range: {e}")))?,
        state: serde_json::from_str(state)
            .map_err(|e| corrupt(format!("state is not JSON: {e}")))?,
        taken_at: from_micros(taken_at)?,
        stream_id: StreamId::new(stream_id),
    })
}

/// Decodes a row of `position, version`.
pub(crate) fn decode_checkpoint(row: &SqliteRow) -> Result<Checkpoint, Error> {
    let position: i64 = get(row, 0, "position")?;
    let version: i64 = get(row, 1, "version")?;
    Ok(Checkpoint {
        position: Position(to_u64(position, "checkpoint position")?),
        version: u32::try_from(version)
            .map_err(|e| Error::Corrupt(format!("checkpoint version out of range: {e}")))?,
    })
}

fn get<'r, T>(row: &'r SqliteRow, index: usize, column: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(index)
        .map_err(|source| Error::sqlite(format!("cannot read column `{column}`"), source))
}

/// Microseconds since the Unix epoch: the store's time column format. Every
/// time chrono represents fits; precision finer than a microsecond is dropped.
pub(crate) fn to_micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// The time of a stored microsecond count.
pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| Error::Corrupt(format!("time {micros} µs is out of range")))
}

/// A stored integer that must not be negative.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("{what} is negative: {value}")))
}

/// A number as SQLite's integer; numbers past `i64::MAX` cannot be stored.
pub(crate) fn to_i64(value: u64, what: &str) -> es_core::Result<i64> {
    i64::try_from(value).map_err(|_| es_core::Error::Store {
        message: format!("{what} {value} is larger than SQLite's largest integer"),
        source: None,
    })
}

/// A limit as SQLite's integer (a larger limit means no limit).
pub(crate) fn limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunks_cover_every_batch_with_few_statements() {
        for n in 0..2_000 {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}");
            assert!(sizes.iter().all(|s| s.is_power_of_two() && *s <= MAX_CHUNK));
        }
        assert_eq!(chunk_sizes(100).collect::<Vec<_>>(), [64, 32, 4]);
        assert_eq!(chunk_sizes(1).collect::<Vec<_>>(), [1]);
        assert_eq!(chunk_sizes(600).collect::<Vec<_>>(), [256, 256, 64, 16, 8]);
    }

    #[test]
    fn insert_statements_have_eight_parameters_per_row() {
        assert_eq!(
            insert_sql(1),
            "INSERT INTO es_events (stream_id, version, event_id, event_type, schema_version, \
             payload, metadata, recorded_at) VALUES (?,?,?,?,?,?,?,?)"
        );
        assert!(insert_sql(2).ends_with("VALUES (?,?,?,?,?,?,?,?),(?,?,?,?,?,?,?,?)"));
        for rows in chunk_sizes(2 * MAX_CHUNK - 1) {
            assert_eq!(insert_sql(rows).matches('?').count(), rows * 8);
        }
    }

    fn packed<'a>(count: i64, columns: [&'a str; PACKED_VALUES - 1]) -> Unpacker<'a> {
        Unpacker {
            count,
            columns: columns.map(|c| (!c.is_empty()).then_some(c)),
        }
    }

    #[test]
    fn packed_events_unpack_in_order() {
        let a = "0190f5a1b2c37d4e8f90a1b2c3d4e5f6";
        let b = "0190F5A1B2C37D4E8F90A1B2C3D4E5F7";
        let ids = format!("{a}{b}");
        let unpacker = packed(
            2,
            [
                "8,7",
                "2,1",
                "1,3",
                "1700000000000001,1700000000000000",
                &ids,
                "6,3",
                "ü-k-1s-2",
                "1,6",
                "AÖrder",
                "11,8",
                "{\"n\":\"€\"}[1,null]",
                "2,12",
                "{}{\"extra\":{}}",
            ],
        );
        let events = unpacker.events().unwrap();
        assert_eq!(events.len(), 2);
        // Stored order was 8 then 7: the log order is restored.
        let (first, second) = (&events[0], &events[1]);
        assert_eq!(first.position, Position(7));
        assert_eq!(first.stream_id.as_str(), "s-2");
        assert_eq!(first.version, Version(1));
        assert_eq!(first.event_type, "Örder");
        assert_eq!(first.schema_version, 3);
        assert_eq!(first.payload, serde_json::json!([1, null]));
        assert_eq!(first.event_id.0, Uuid::try_parse(b).unwrap());
        assert_eq!(first.metadata.recorded_at, Some(first.recorded_at));
        assert_eq!(second.position, Position(8));
        assert_eq!(second.stream_id.as_str(), "ü-k-1");
        assert_eq!(second.event_type, "A");
        assert_eq!(second.payload, serde_json::json!({"n": "€"}));
        assert_eq!(to_micros(second.recorded_at), 1_700_000_000_000_001);
    }

    #[test]
    fn an_empty_page_unpacks_to_nothing() {
        assert!(packed(0, [""; PACKED_VALUES - 1])
            .events()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn packed_rows_with_a_missing_value_are_corrupt() {
        let id = "0190f5a1b2c37d4e8f90a1b2c3d4e5f6";
        let good = [
            "1", "1", "1", "0", id, "1", "s", "1", "A", "2", "{}", "2", "{}",
        ];
        assert_eq!(packed(1, good).events().unwrap().len(), 1);
        // A NULL payload drops out of the payload lists.
        let mut null_payload = good;
        null_payload[9] = "";
        null_payload[10] = "";
        assert!(matches!(
            packed(1, null_payload).events(),
            Err(Error::Corrupt(_))
        ));
        // A count that disagrees with the lists.
        assert!(matches!(packed(2, good).events(), Err(Error::Corrupt(_))));
        // A length that runs past the texts.
        let mut long = good;
        long[5] = "9";
        assert!(matches!(packed(1, long).events(), Err(Error::Corrupt(_))));
        // A payload that is not JSON.
        let mut bad_json = good;
        bad_json[10] = "{]";
        let error = packed(1, bad_json).events().unwrap_err();
        assert!(error.to_string().contains("position 1"), "{error}");
    }

    #[test]
    fn encoding_moves_recorded_at_to_its_column() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let mut metadata = Metadata::correlated("c").with("k", "v");
        metadata.recorded_at = Some(at);
        let new = NewEvent {
            event_id: EventId::new(),
            event_type: "Placed".into(),
            schema_version: 2,
            payload: json!({"total": 5}).into(),
            metadata,
        };
        let mut now = None;
        let encoded = encode_event(new, &mut now).unwrap();
        assert!(now.is_none(), "the clock is read only when needed");
        assert_eq!(encoded.recorded_at, 1_700_000_000_123_456);
        assert_eq!(encoded.schema_version, 2);
        assert_eq!(encoded.payload.as_str(), r#"{"total":5}"#);
        let stored: serde_json::Value = serde_json::from_str(&encoded.metadata).unwrap();
        assert_eq!(
            stored,
            json!({"correlation_id": "c", "extra": {"k": "v"}}),
            "recorded_at lives in its own column"
        );
    }

    #[test]
    fn events_without_time_share_one_reading_of_the_clock() {
        let new = || NewEvent {
            event_id: EventId::new(),
            event_type: "A".into(),
            schema_version: 1,
            payload: json!(null).into(),
            metadata: Metadata::default(),
        };
        let mut now = None;
        let a = encode_event(new(), &mut now).unwrap();
        let b = encode_event(new(), &mut now).unwrap();
        assert_eq!(a.recorded_at, b.recorded_at);
        assert_eq!(a.metadata, "{}");
    }

    #[test]
    fn times_round_trip_at_microsecond_precision() {
        let at = DateTime::from_timestamp_micros(-5_000_001).unwrap();
        assert_eq!(from_micros(to_micros(at)).unwrap(), at);
        let far = DateTime::<Utc>::MAX_UTC;
        assert!(from_micros(to_micros(far)).is_ok());
        assert!(matches!(from_micros(i64::MAX), Err(Error::Corrupt(_))));
    }

    #[test]
    fn integers_out_of_range_are_errors() {
        assert!(to_i64(u64::MAX, "version").is_err());
        assert_eq!(to_i64(7, "version").unwrap(), 7);
        assert!(matches!(to_u64(-1, "position"), Err(Error::Corrupt(_))));
        assert_eq!(limit(usize::MAX), i64::MAX);
    }
}
