//! Mapping between es-core's types and the store's rows and columns.

use chrono::{DateTime, Utc};
use es_core::{
    Committed, Error, EventId, EventType, EventTypeReuse, Metadata, NewEvent, Payload, Position,
    RecordedEvent, Result, StreamId, StreamIdReuse, Version,
};
use sqlx::postgres::{PgArguments, PgRow, PgValueFormat};
use sqlx::query::Query;
use sqlx::Postgres;
use sqlx::{ColumnIndex, Row, ValueRef};
use uuid::Uuid;

/// A stored number (`bigint`) as a version or position.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::Store {
        message: format!("stored {what} {value} is negative"),
        source: None,
    })
}

/// A version or position as a stored number (`bigint`).
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Store {
        message: format!("{what} {value} does not fit a PostgreSQL bigint"),
        source: None,
    })
}

/// A stored schema version (`integer`).
pub(crate) fn stored_schema_version(value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::Store {
        message: format!("stored schema version {value} is negative"),
        source: None,
    })
}

/// A schema version as a stored `integer`.
pub(crate) fn to_i32(value: u32, what: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::Store {
        message: format!("{what} {value} does not fit a PostgreSQL integer"),
        source: None,
    })
}

/// The metadata column: everything but `recorded_at`, which has its own
/// column; `None` (stored as null) when that is nothing.
pub(crate) fn metadata_json(metadata: &Metadata) -> Result<Option<String>> {
    if same_stored_metadata(metadata, &Metadata::default()) {
        return Ok(None);
    }
    let stored = Metadata {
        recorded_at: None,
        ..metadata.clone()
    };
    serde_json::to_string(&stored)
        .map(Some)
        .map_err(|source| Error::Encode {
            what: "event metadata".into(),
            source,
        })
}

/// The metadata of an event that has none, as JSON.
pub(crate) const EMPTY_METADATA: &str = "{}";

/// The schema version that the log's reads send as null (see
/// `event_columns`).
pub(crate) const NULL_SCHEMA_VERSION: i32 = 1;

/// Whether two metadata store the same (`recorded_at` has its own column).
fn same_stored_metadata(a: &Metadata, b: &Metadata) -> bool {
    a.correlation_id == b.correlation_id && a.causation_id == b.causation_id && a.extra == b.extra
}

/// The columns of a batch of new events, one array per column, as the
/// append statement binds them.
#[derive(Debug, Default)]
pub(crate) struct EventColumns<'a> {
    pub(crate) event_ids: Vec<Uuid>,
    pub(crate) event_types: Vec<&'a str>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) payloads: Vec<&'a str>,
    pub(crate) metadata: Vec<Option<String>>,
    pub(crate) recorded_at: Vec<DateTime<Utc>>,
}

impl<'a> EventColumns<'a> {
    /// Binds the values of the only event, in the order of the six column
    /// arrays, to the query `query` builds; `None` (and no query built) when
    /// there is not exactly one event.
    pub(crate) fn bind_one_to<'q>(
        &'q self,
        query: impl FnOnce() -> Query<'q, Postgres, PgArguments>,
    ) -> Option<Query<'q, Postgres, PgArguments>> {
        match (
            &self.event_ids[..],
            &self.event_types[..],
            &self.schema_versions[..],
            &self.payloads[..],
            &self.metadata[..],
            &self.recorded_at[..],
        ) {
            ([event_id], [event_type], [schema_version], [payload], [metadata], [recorded_at]) => {
                Some(
                    query()
                        .bind(event_id)
                        .bind(*event_type)
                        .bind(schema_version)
                        .bind(*payload)
                        .bind(metadata.as_deref())
                        .bind(recorded_at),
                )
            }
            _ => None,
        }
    }

    /// Binds the ids and payloads as arrays, then the type, schema version,
    /// metadata and time that every event shares, to the query `query`
    /// builds; `None` (and no query built) when they differ.
    pub(crate) fn bind_uniform_to<'q>(
        &'q self,
        query: impl FnOnce() -> Query<'q, Postgres, PgArguments>,
    ) -> Option<Query<'q, Postgres, PgArguments>> {
        fn shared<T: PartialEq>(values: &[T]) -> Option<&T> {
            let first = values.first()?;
            values.iter().all(|v| v == first).then_some(first)
        }
        let event_type = *shared(&self.event_types)?;
        let schema_version = shared(&self.schema_versions)?;
        let metadata = shared(&self.metadata)?.as_deref();
        let recorded_at = shared(&self.recorded_at)?;
        Some(
            query()
                .bind(&self.event_ids)
                .bind(&self.payloads)
                .bind(event_type)
                .bind(schema_version)
                .bind(metadata)
                .bind(recorded_at),
        )
    }

    /// Binds the six column arrays, in the order the append statements
    /// number them.
    pub(crate) fn bind_to<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.schema_versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(&self.recorded_at)
    }

    /// Encodes new events; an event without `recorded_at` gets `now`.
    pub(crate) fn encode(events: &'a [NewEvent], now: DateTime<Utc>) -> Result<Self> {
        let mut columns = Self {
            event_ids: Vec::with_capacity(events.len()),
            event_types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
            recorded_at: Vec::with_capacity(events.len()),
        };
        // The events of one command share their metadata: encode it once.
        let mut last_metadata: Option<(&Metadata, Option<String>)> = None;
        for event in events {
            let metadata = match &last_metadata {
                Some((previous, json)) if same_stored_metadata(previous, &event.metadata) => {
                    json.clone()
                }
                _ => {
                    let json = metadata_json(&event.metadata)?;
                    last_metadata = Some((&event.metadata, json.clone()));
                    json
                }
            };
            columns.metadata.push(metadata);
            columns.event_ids.push(event.event_id.0);
            columns.event_types.push(&event.event_type);
            columns
                .schema_versions
                .push(to_i32(event.schema_version, "schema version")?);
            columns.payloads.push(event.payload.as_str());
            columns
                .recorded_at
                .push(event.metadata.recorded_at.unwrap_or(now));
        }
        Ok(columns)
    }
}

/// Builds the stored form of events just appended, from what was sent and
/// the positions the store returned (for inline projections).
pub(crate) fn recorded(
    stream_id: &StreamId,
    first_version: Version,
    events: Vec<NewEvent>,
    positions: &[i64],
    recorded_at: &[DateTime<Utc>],
) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let position = positions.get(i).copied().ok_or_else(|| Error::Store {
            message: format!("append to `{stream_id}` returned too few positions"),
            source: None,
        })?;
        // The stored time has microseconds; give handlers what readers get.
        let at = recorded_at
            .get(i)
            .copied()
            .map_or_else(Utc::now, truncate_to_micros);
        let mut metadata = event.metadata;
        metadata.recorded_at = Some(at);
        out.push(RecordedEvent {
            position: Position(to_u64(position, "position")?),
            stream_id: stream_id.clone(),
            version: Version(first_version.0 + i as u64),
            event_id: event.event_id,
            event_type: event.event_type.into(),
            schema_version: event.schema_version,
            payload: event.payload,
            metadata,
            recorded_at: at,
        });
    }
    Ok(out)
}

/// A time as PostgreSQL stores it (microseconds).
pub(crate) fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    let micros = at.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(at)
}

/// Wraps a driver error with what the store was doing.
pub(crate) fn db_error(message: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let message = message.into();
    move |source| Error::store(message, source)
}

/// Wraps a driver error with what the store was doing, said by `context`
/// only when there is an error (for the paths taken once per row).
pub(crate) fn db_error_in(context: impl FnOnce() -> String) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::store(context(), source)
}

/// Whether a row's column `index` is null (read without decoding it: the
/// statements that mix events with another row tell it by a null position).
pub(crate) fn is_null(row: &PgRow, index: usize) -> std::result::Result<bool, sqlx::Error> {
    Ok(row.try_get_raw(index)?.is_null())
}

/// PostgreSQL's epoch (2000-01-01 00:00:00 UTC) in microseconds since 1970.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Reads the `timestamptz` of column `index` (a number or a name). A binary
/// value (what prepared statements answer) is read directly: the
/// microseconds since PostgreSQL's epoch, a fraction of what the general
/// decoder costs per row, and a time that `DateTime` cannot hold
/// (`infinity`, or years past 262,142) is a decode error rather than the
/// general decoder's overflow panic. A text value goes to the general
/// decoder.
pub(crate) fn timestamp<I: ColumnIndex<PgRow> + Copy>(
    row: &PgRow,
    index: I,
) -> std::result::Result<DateTime<Utc>, sqlx::Error> {
    let value = row.try_get_raw(index)?;
    if value.format() != PgValueFormat::Binary {
        return row.try_get_unchecked(index);
    }
    let bytes = value.as_bytes().map_err(sqlx::Error::Decode)?;
    binary_timestamp(bytes)
}

/// A `timestamptz` in PostgreSQL's binary form: the microseconds since its
/// epoch, 8 bytes, big-endian.
pub(crate) fn binary_timestamp(bytes: &[u8]) -> std::result::Result<DateTime<Utc>, sqlx::Error> {
    let micros = <[u8; 8]>::try_from(bytes)
        .map(i64::from_be_bytes)
        .map_err(|_| decode_error(format!("a timestamptz has 8 bytes, not {}", bytes.len())))?;
    micros
        .checked_add(POSTGRES_EPOCH_MICROS)
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| {
            decode_error(match micros {
                i64::MAX => "the time is infinity, which no `DateTime` holds".to_owned(),
                i64::MIN => "the time is -infinity, which no `DateTime` holds".to_owned(),
                _ => format!(
                    "the time {micros} µs after 2000-01-01 is beyond what a `DateTime` holds"
                ),
            })
        })
}

/// A value the store cannot decode, said by `message`.
fn decode_error(message: String) -> sqlx::Error {
    sqlx::Error::Decode(message.into())
}

/// Reads a stored event from a row whose first columns are those of
/// `event_columns`, in that order (read by index: this is the hot path of
/// every read).
pub(crate) fn event_from_row(row: &PgRow) -> Result<RecordedEvent> {
    EventReader::default().read(row)
}

/// Reads the events of one result: consecutive events of one stream (a
/// stream's page, an aggregate's burst in the log) share one stream id, and
/// events of one type one name.
#[derive(Default)]
pub(crate) struct EventReader {
    pub(crate) stream_ids: StreamIdReuse,
    pub(crate) event_types: EventTypeReuse,
}

impl EventReader {
    /// Reads a stored event from a row whose first columns are those of
    /// `event_columns` (see [`event_from_row`]). The columns' types are the
    /// migration's, so the per-value type check is skipped; a value of
    /// another type would still fail to decode (lengths and UTF-8 are
    /// checked), never be misread silently.
    pub(crate) fn read(&mut self, row: &PgRow) -> Result<RecordedEvent> {
        let position: i64 = row
            .try_get_unchecked(0)
            .map_err(|source| Error::store("cannot read event column `position`", source))?;
        self.read_at(row, position)
    }

    /// Reads a stored event, as [`read`](Self::read) does, from a row whose
    /// position (its first column) the caller has read already.
    pub(crate) fn read_at(&mut self, row: &PgRow, position: i64) -> Result<RecordedEvent> {
        let get_err = |column: &'static str| {
            move |source: sqlx::Error| {
                Error::store(format!("cannot read event column `{column}`"), source)
            }
        };
        let stream_id: &str = row.try_get_unchecked(1).map_err(get_err("stream_id"))?;
        let version: i64 = row.try_get_unchecked(2).map_err(get_err("version"))?;
        let err_at = |column: &'static str| {
            move |source: sqlx::Error| {
                Error::store(
                    format!(
                        "cannot read the {column} of {}",
                        event_location(stream_id, version, position)
                    ),
                    source,
                )
            }
        };
        let event_type: &str = row.try_get_unchecked(4).map_err(err_at("event type"))?;
        let parts = EventParts {
            position,
            stream_id: self.stream_ids.get(stream_id),
            version,
            event_id: row.try_get_unchecked(3).map_err(err_at("event id"))?,
            event_type: self.event_types.get(event_type),
            schema_version: row
                .try_get_unchecked::<Option<i32>, _>(5)
                .map_err(err_at("schema version"))?
                .unwrap_or(NULL_SCHEMA_VERSION),
            payload: row.try_get_unchecked(6).map_err(err_at("payload"))?,
            metadata: row
                .try_get_unchecked::<Option<&str>, _>(7)
                .map_err(err_at("metadata"))?
                .unwrap_or(EMPTY_METADATA),
            recorded_at: timestamp(row, 8).map_err(err_at("recorded time"))?,
        };
        self.assemble(parts)
    }

    /// Builds a stored event from its decoded columns (read from a row or
    /// from the bytes of a `COPY`).
    pub(crate) fn assemble(&self, parts: EventParts<'_>) -> Result<RecordedEvent> {
        let recorded_at = parts.recorded_at;
        let mut metadata = if parts.metadata == EMPTY_METADATA {
            Metadata::default()
        } else {
            serde_json::from_str::<Metadata>(parts.metadata).map_err(|source| {
                Error::store(
                    format!(
                        "cannot read the metadata of {}",
                        event_location(parts.stream_id.as_str(), parts.version, parts.position)
                    ),
                    source,
                )
            })?
        };
        metadata.recorded_at = Some(recorded_at);
        Ok(RecordedEvent {
            position: Position(to_u64(parts.position, "position")?),
            version: Version(to_u64(parts.version, "version")?),
            stream_id: parts.stream_id,
            event_id: EventId(parts.event_id),
            event_type: parts.event_type,
            schema_version: stored_schema_version(parts.schema_version)?,
            // The column's type is `json`: the server checked it.
            payload: Payload::from_trusted_json(parts.payload),
            metadata,
            recorded_at,
        })
    }
}

/// The columns of a stored event (those of `event_columns`), decoded; the
/// texts borrowed from the row or the bytes they came in, the stream id and
/// type name from the [`EventReader`]'s reused ones.
pub(crate) struct EventParts<'a> {
    pub(crate) position: i64,
    pub(crate) stream_id: StreamId,
    pub(crate) version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: EventType,
    pub(crate) schema_version: i32,
    pub(crate) payload: &'a str,
    pub(crate) metadata: &'a str,
    pub(crate) recorded_at: DateTime<Utc>,
}

/// Where a stored event is, for error messages.
pub(crate) fn event_location(stream_id: &str, version: i64, position: i64) -> String {
    format!("stream `{stream_id}` v{version} at position {position}")
}

/// Reads an idempotency key's record from columns with a prefix.
pub(crate) fn committed_from_row(row: &PgRow, prefix: &str) -> Result<Option<Committed>> {
    let col = |name: &str| format!("{prefix}{name}");
    let get = |name: &str| -> Result<Option<i64>> {
        row.try_get::<Option<i64>, _>(col(name).as_str())
            .map_err(|source| Error::store(format!("cannot read column `{}`", col(name)), source))
    };
    let stream_id: Option<String> = row
        .try_get(col("stream_id").as_str())
        .map_err(|source| Error::store("cannot read an idempotency key", source))?;
    let Some(stream_id) = stream_id else {
        return Ok(None);
    };
    let number = |name: &str| -> Result<u64> {
        let value = get(name)?.ok_or_else(|| Error::Store {
            message: format!("idempotency key column `{name}` is null"),
            source: None,
        })?;
        to_u64(value, name)
    };
    Ok(Some(Committed {
        stream_id: StreamId::new(stream_id),
        first_version: Version(number("first_version")?),
        last_version: Version(number("last_version")?),
        first_position: Position(number("first_position")?),
        last_position: Position(number("last_position")?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::Value;

    #[test]
    fn metadata_column_leaves_out_recorded_at() {
        let mut meta = Metadata::correlated("c1").with("k", "v");
        meta.recorded_at = Some(Utc::now());
        let json: Value = serde_json::from_str(&metadata_json(&meta).unwrap().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"correlation_id": "c1", "extra": {"k": "v"}})
        );
    }

    #[test]
    fn encodes_columns_in_order_and_fills_the_time() {
        let now = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
        let earlier = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
        let mut first = NewEvent {
            event_id: EventId::new(),
            event_type: "A".into(),
            schema_version: 2,
            payload: serde_json::json!({"x": "ü"}).into(),
            metadata: Metadata::default(),
        };
        first.metadata.recorded_at = Some(earlier);
        let second = NewEvent {
            event_type: "B".into(),
            schema_version: 1,
            ..first.clone()
        };
        let second = NewEvent {
            metadata: Metadata::default(),
            ..second
        };
        let events = [first.clone(), second];
        let cols = EventColumns::encode(&events, now).unwrap();
        assert_eq!(cols.event_types, ["A", "B"]);
        assert_eq!(cols.schema_versions, [2, 1]);
        assert_eq!(cols.payloads[0], r#"{"x":"ü"}"#);
        assert_eq!(cols.recorded_at, [earlier, now]);
        assert_eq!(cols.event_ids[0], first.event_id.0);
        assert_eq!(
            cols.metadata,
            [None, None],
            "no metadata but recorded_at: nothing stored (null)"
        );
        let correlated = NewEvent {
            metadata: Metadata::correlated("c9"),
            ..first.clone()
        };
        let events = [first, correlated.clone(), correlated];
        let cols = EventColumns::encode(&events, now).unwrap();
        assert_eq!(
            cols.metadata,
            [
                None,
                Some(r#"{"correlation_id":"c9"}"#.to_owned()),
                Some(r#"{"correlation_id":"c9"}"#.to_owned())
            ]
        );
    }

    #[test]
    fn recorded_events_get_positions_versions_and_micros() {
        let at = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
        let event = NewEvent {
            event_id: EventId::new(),
            event_type: "A".into(),
            schema_version: 1,
            payload: serde_json::json!(1).into(),
            metadata: Metadata::default(),
        };
        let stream = StreamId::new("s-1");
        let out = recorded(
            &stream,
            Version(4),
            vec![event.clone(), event],
            &[10, 12],
            &[at, at],
        )
        .unwrap();
        assert_eq!(out[0].position, Position(10));
        assert_eq!(out[1].position, Position(12));
        assert_eq!(out[1].version, Version(5));
        assert_eq!(out[0].recorded_at.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(out[0].metadata.recorded_at, Some(out[0].recorded_at));
        assert!(recorded(&stream, Version(1), out_events(), &[], &[]).is_err());
    }

    fn out_events() -> Vec<NewEvent> {
        vec![NewEvent {
            event_id: EventId::new(),
            event_type: "A".into(),
            schema_version: 1,
            payload: Value::Null.into(),
            metadata: Metadata::default(),
        }]
    }

    #[test]
    fn numbers_convert_with_context() {
        assert_eq!(to_u64(5, "version").unwrap(), 5);
        assert!(to_u64(-1, "version")
            .unwrap_err()
            .to_string()
            .contains("version -1"));
        assert!(to_i64(u64::MAX, "position").is_err());
        assert!(to_i32(u32::MAX, "schema version").is_err());
    }
}
