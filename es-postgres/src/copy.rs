//! Reading a page of the global log as a binary `COPY`.
//!
//! A page read as rows costs the client, per event, the driver's handling
//! of a row and of each of its columns; the same statement run as
//! `COPY (…) TO STDOUT (FORMAT binary)` sends the same values in
//! PostgreSQL's binary form as one stream of bytes, which this module
//! parses itself: a header, then per row a field count and each field's
//! length (-1 for null) and bytes, then -1 for the end. The columns are
//! those of the log's page statement: the event's nine, in which the
//! header row (no position) carries `tail` (as the version) and its flags
//! (as the schema version): `pending`, and for the first part of a split
//! read whether the part covers all it reads up to.

use chrono::{DateTime, Utc};
use es_core::{Error, RecordedEvent, Result};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::row::{
    binary_timestamp, db_error_in, event_location, EventParts, EventReader, EMPTY_METADATA,
    NULL_SCHEMA_VERSION,
};
use crate::sink::Sink;
use crate::sql::{COVERED, PENDING};

/// The start of a binary `COPY`: its signature, then 32-bit flags and the
/// length of a header extension.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The columns of a page: the event's nine.
const COLUMNS: usize = 9;

/// One row's fields, `None` for null.
type Fields<'a> = [Option<&'a [u8]>; COLUMNS];

/// What a page's header row says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    /// The last event below the page's bound (when a filter asks for it).
    pub(crate) tail: Option<i64>,
    /// Whether committed events wait for an older transaction.
    pub(crate) pending: bool,
    /// For the first part of a split read: whether the position it reads
    /// up to is below its bound.
    pub(crate) covered: bool,
}

/// Runs the page statement `sql` (a binary `COPY`) and parses its rows as
/// they arrive: events into `sink` (which sends them on as they come, if it
/// is to), and the header row, which it answers. `context` says what was being read, for
/// errors.
///
/// A connection left in the middle of a `COPY` cannot serve another
/// statement, so one whose `COPY` did not run to its end (an error, or the
/// read dropped before it finished) is closed instead of going back to the
/// pool.
pub(crate) async fn read_page(
    pool: &PgPool,
    sql: &str,
    context: &(dyn Fn() -> String + Sync),
    sink: &mut Sink<'_>,
) -> Result<Header> {
    let mut conn = CopyConnection {
        conn: pool.acquire().await.map_err(db_error_in(context))?,
        finished: false,
    };
    let mut stream = conn
        .conn
        .copy_out_raw(sql)
        .await
        .map_err(db_error_in(context))?;
    let mut page = Page::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(db_error_in(context))?;
        page.feed(&chunk, &mut sink.events)
            .map_err(|message| malformed(context, &message))?;
        sink.pass_on();
    }
    drop(stream);
    conn.finished = true;
    page.finish()
        .map_err(|message| malformed(context, &message))
}

/// A pooled connection that runs a `COPY`: closed when dropped before the
/// `COPY` ended.
struct CopyConnection {
    conn: PoolConnection<Postgres>,
    finished: bool,
}

impl Drop for CopyConnection {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

fn malformed(context: &dyn Fn() -> String, message: &str) -> Error {
    Error::Store {
        message: format!("{}: {message}", context()),
        source: None,
    }
}

/// Where the parse of a page's bytes is.
#[derive(Default)]
struct Page {
    /// The bytes of a row begun but not yet whole.
    partial: Vec<u8>,
    started: bool,
    ended: bool,
    /// The header row, once read.
    header: Option<Header>,
    reader: EventReader,
    /// The last recorded time read, as sent and decoded: the events of one
    /// append share it.
    last_time: Option<([u8; 8], DateTime<Utc>)>,
}

impl Page {
    /// Parses the whole rows of `chunk` (after what was left of the chunks
    /// before) and keeps the rest for the next.
    fn feed(
        &mut self,
        chunk: &[u8],
        events: &mut Vec<RecordedEvent>,
    ) -> std::result::Result<(), String> {
        if self.partial.is_empty() {
            let used = self.parse(chunk, events)?;
            self.partial.extend_from_slice(&chunk[used..]);
        } else {
            let mut bytes = std::mem::take(&mut self.partial);
            bytes.extend_from_slice(chunk);
            let used = self.parse(&bytes, events)?;
            bytes.drain(..used);
            self.partial = bytes;
        }
        Ok(())
    }

    /// The header row, once every byte was read.
    fn finish(self) -> std::result::Result<Header, String> {
        if !self.ended || !self.partial.is_empty() {
            return Err("the page's data ended in the middle of a row".to_owned());
        }
        self.header
            .ok_or_else(|| "the page has no header row".to_owned())
    }

    /// Parses the whole rows at the start of `data`; answers how many bytes
    /// they took.
    fn parse(
        &mut self,
        data: &[u8],
        events: &mut Vec<RecordedEvent>,
    ) -> std::result::Result<usize, String> {
        let mut at = 0;
        if !self.started {
            let Some(header) = header_len(data)? else {
                return Ok(0);
            };
            self.started = true;
            at = header;
        }
        while at < data.len() {
            if self.ended {
                return Err("the page has data after its end".to_owned());
            }
            let Some((fields, len)) = row(&data[at..])? else {
                break;
            };
            at += len;
            match fields {
                None => self.ended = true,
                Some(fields) => self.take(&fields, events)?,
            }
        }
        Ok(at)
    }

    /// An event's recorded time: the last one read again when the bytes are
    /// the same.
    fn recorded_at(&mut self, field: Option<&[u8]>) -> std::result::Result<DateTime<Utc>, String> {
        let bytes = required(field, "recorded_at")?;
        match &self.last_time {
            Some((last, time)) if last.as_slice() == bytes => Ok(*time),
            _ => {
                let time = binary_timestamp(bytes).map_err(|error| error.to_string())?;
                // `binary_timestamp` checked that it has 8 bytes.
                self.last_time = <[u8; 8]>::try_from(bytes).ok().map(|raw| (raw, time));
                Ok(time)
            }
        }
    }

    /// Takes one row: the header (no position) or an event.
    fn take(
        &mut self,
        fields: &Fields<'_>,
        events: &mut Vec<RecordedEvent>,
    ) -> std::result::Result<(), String> {
        let Some(position) = fields[0] else {
            if self.header.is_some() {
                return Err("the page has two header rows".to_owned());
            }
            let tail = fields[2].map(|bytes| int8(bytes, "tail")).transpose()?;
            let flags = match fields[5].map(<[u8; 4]>::try_from) {
                Some(Ok(flags)) => i32::from_be_bytes(flags),
                _ => return Err("the header row's flags are not a 4-byte integer".to_owned()),
            };
            self.header = Some(Header {
                tail,
                pending: flags & PENDING != 0,
                covered: flags & COVERED != 0,
            });
            return Ok(());
        };
        let position = int8(position, "position")?;
        let stream_id = self
            .reader
            .stream_ids
            .get_utf8(required(fields[1], "stream_id")?)
            .map_err(|error| {
                format!("the `stream_id` of the event at position {position} is not UTF-8: {error}")
            })?;
        let version = int8(required(fields[2], "version")?, "version")?;
        let at = |column: &str, why: String| {
            format!(
                "cannot read the {column} of {}: {why}",
                event_location(stream_id.as_str(), version, position)
            )
        };
        let event_type = required(fields[4], "event_type")
            .and_then(|bytes| {
                self.reader
                    .event_types
                    .get_utf8(bytes)
                    .map_err(|error| error.to_string())
            })
            .map_err(|why| at("event type", why))?;
        let parts = EventParts {
            position,
            version,
            event_id: uuid(fields[3]).map_err(|why| at("event id", why))?,
            event_type,
            schema_version: schema_version(fields[5]).map_err(|why| at("schema version", why))?,
            payload: text(fields[6], "payload").map_err(|why| at("payload", why))?,
            metadata: metadata(fields[7]).map_err(|why| at("metadata", why))?,
            recorded_at: self
                .recorded_at(fields[8])
                .map_err(|why| at("recorded time", why))?,
            stream_id,
        };
        let event = self
            .reader
            .assemble(parts)
            .map_err(|error| error.to_string())?;
        events.push(event);
        Ok(())
    }
}

/// The length of the `COPY` header at the start of `data`, `None` while it
/// is not all there.
fn header_len(data: &[u8]) -> std::result::Result<Option<usize>, String> {
    let fixed = SIGNATURE.len() + 8;
    if data.len() < fixed {
        return Ok(None);
    }
    if !data.starts_with(SIGNATURE) {
        return Err("the page is not in PostgreSQL's binary COPY format".to_owned());
    }
    let extension = u32::from_be_bytes([data[15], data[16], data[17], data[18]]);
    let len = fixed + extension as usize;
    Ok((data.len() >= len).then_some(len))
}

/// The row at the start of `data` (`None` for the end mark) and its length
/// in bytes; `None` while the row is not all there.
type Parsed<'a> = Option<(Option<Fields<'a>>, usize)>;

/// Parses the row at the start of `data`.
fn row(data: &[u8]) -> std::result::Result<Parsed<'_>, String> {
    let Some(count) = data.get(..2) else {
        return Ok(None);
    };
    let count = i16::from_be_bytes([count[0], count[1]]);
    if count == -1 {
        return Ok(Some((None, 2)));
    }
    if usize::try_from(count) != Ok(COLUMNS) {
        return Err(format!("a row has {count} columns, not {COLUMNS}"));
    }
    let mut fields: Fields<'_> = [None; COLUMNS];
    let mut at = 2;
    for field in &mut fields {
        let Some(len) = data.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len == -1 {
            continue;
        }
        let len = usize::try_from(len).map_err(|_| format!("a field has length {len}"))?;
        let Some(bytes) = data.get(at..at + len) else {
            return Ok(None);
        };
        *field = Some(bytes);
        at += len;
    }
    Ok(Some((Some(fields), at)))
}

fn required<'a>(field: Option<&'a [u8]>, column: &str) -> std::result::Result<&'a [u8], String> {
    field.ok_or_else(|| format!("the event's `{column}` is null"))
}

fn int8(bytes: &[u8], column: &str) -> std::result::Result<i64, String> {
    <[u8; 8]>::try_from(bytes)
        .map(i64::from_be_bytes)
        .map_err(|_| format!("`{column}` has {} bytes, not 8", bytes.len()))
}

/// The schema version: null is the one sent as null (see `event_columns`).
fn schema_version(field: Option<&[u8]>) -> std::result::Result<i32, String> {
    let Some(bytes) = field else {
        return Ok(NULL_SCHEMA_VERSION);
    };
    <[u8; 4]>::try_from(bytes)
        .map(i32::from_be_bytes)
        .map_err(|_| format!("it has {} bytes, not 4", bytes.len()))
}

fn uuid(field: Option<&[u8]>) -> std::result::Result<Uuid, String> {
    let bytes = required(field, "event_id")?;
    Uuid::from_slice(bytes).map_err(|error| error.to_string())
}

fn text<'a>(field: Option<&'a [u8]>, column: &str) -> std::result::Result<&'a str, String> {
    std::str::from_utf8(required(field, column)?).map_err(|error| error.to_string())
}

/// The metadata column's text: null (no metadata) and the empty object
/// without a check.
fn metadata(field: Option<&[u8]>) -> std::result::Result<&str, String> {
    match field {
        None => Ok(EMPTY_METADATA),
        Some(bytes) if bytes == EMPTY_METADATA.as_bytes() => Ok(EMPTY_METADATA),
        field => text(field, "metadata"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary `COPY` of `rows`, each a row's fields (`None` for null).
    fn copy_bytes(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for row in rows {
            out.extend_from_slice(&i16::try_from(row.len()).unwrap().to_be_bytes());
            for field in row {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&i32::try_from(bytes.len()).unwrap().to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn header_row(tail: Option<i64>, flags: i32) -> Vec<Option<Vec<u8>>> {
        let mut row = vec![None; 9];
        row[2] = tail.map(|t| t.to_be_bytes().to_vec());
        row[5] = Some(flags.to_be_bytes().to_vec());
        row
    }

    fn event_row(position: i64, version: i64, payload: &str) -> Vec<Option<Vec<u8>>> {
        vec![
            Some(position.to_be_bytes().to_vec()),
            Some(b"s-1".to_vec()),
            Some(version.to_be_bytes().to_vec()),
            Some(Uuid::from_u128(7).as_bytes().to_vec()),
            Some(b"Added".to_vec()),
            Some(2i32.to_be_bytes().to_vec()),
            Some(payload.as_bytes().to_vec()),
            Some(b"{}".to_vec()),
            // 2000-01-01 00:00:01 UTC.
            Some(1_000_000i64.to_be_bytes().to_vec()),
        ]
    }

    /// Feeds `bytes` in chunks of `size` and finishes.
    fn parse_in_chunks(
        bytes: &[u8],
        size: usize,
    ) -> std::result::Result<(Vec<RecordedEvent>, Header), String> {
        let mut page = Page::default();
        let mut events = Vec::new();
        for chunk in bytes.chunks(size) {
            page.feed(chunk, &mut events)?;
        }
        Ok((events, page.finish()?))
    }

    #[test]
    fn reads_the_header_and_the_events_whatever_the_chunks() {
        let bytes = copy_bytes(&[
            header_row(Some(40), PENDING),
            event_row(10, 1, r#"{"n":1}"#),
            event_row(11, 2, r#"{"n":"ü"}"#),
        ]);
        for size in [1, 2, 3, 7, 19, 64, bytes.len()] {
            let (events, header) = parse_in_chunks(&bytes, size).unwrap();
            let pending = Header {
                tail: Some(40),
                pending: true,
                covered: false,
            };
            assert_eq!(header, pending, "chunks of {size}");
            assert_eq!(events.len(), 2);
            assert_eq!(events[0].position.0, 10);
            assert_eq!(events[1].version.0, 2);
            assert_eq!(events[1].stream_id.as_str(), "s-1");
            assert_eq!(events[1].event_type, "Added");
            assert_eq!(events[1].schema_version, 2);
            assert_eq!(events[1].payload.as_str(), r#"{"n":"ü"}"#);
            assert_eq!(events[0].event_id.0, Uuid::from_u128(7));
            assert_eq!(events[0].recorded_at.timestamp(), 946_684_801);
            assert_eq!(events[0].metadata.recorded_at, Some(events[0].recorded_at));
        }
        let (events, header) = parse_in_chunks(&copy_bytes(&[header_row(None, 0)]), 5).unwrap();
        assert!(events.is_empty());
        assert_eq!(header, Header::default());
        let (_, header) = parse_in_chunks(&copy_bytes(&[header_row(None, COVERED)]), 5).unwrap();
        assert!(header.covered && !header.pending);
    }

    #[test]
    fn null_is_schema_version_1_and_no_metadata() {
        let mut plain = event_row(10, 1, "{}");
        plain[5] = None;
        plain[7] = None;
        let mut correlated = event_row(11, 2, "{}");
        correlated[7] = Some(br#"{"correlation_id":"c1"}"#.to_vec());
        let bytes = copy_bytes(&[header_row(None, 0), plain, correlated]);
        let (events, _) = parse_in_chunks(&bytes, 16).unwrap();
        assert_eq!(events[0].schema_version, 1);
        assert_eq!(events[0].metadata.correlation_id, None);
        assert!(events[0].metadata.extra.is_empty());
        assert_eq!(events[1].schema_version, 2);
        assert_eq!(events[1].metadata.correlation_id.as_deref(), Some("c1"));
    }

    #[test]
    fn each_event_has_its_own_time_when_times_repeat_and_change() {
        let seconds = [1, 1, 2, 1, 3, 3];
        let mut rows = vec![header_row(None, 0)];
        for (i, second) in seconds.iter().enumerate() {
            let mut row = event_row(10 + i as i64, 1 + i as i64, "{}");
            row[8] = Some((second * 1_000_000i64).to_be_bytes().to_vec());
            rows.push(row);
        }
        let (events, _) = parse_in_chunks(&copy_bytes(&rows), 64).unwrap();
        let read: Vec<i64> = events
            .iter()
            .map(|e| e.recorded_at.timestamp() - 946_684_800)
            .collect();
        assert_eq!(read, seconds);
        assert!(events
            .iter()
            .all(|e| e.metadata.recorded_at == Some(e.recorded_at)));
    }

    #[test]
    fn malformed_pages_are_errors_that_say_where() {
        let fail = |bytes: &[u8]| parse_in_chunks(bytes, 4).unwrap_err();
        let good = copy_bytes(&[header_row(Some(1), 0), event_row(10, 3, "{}")]);

        assert!(fail(&good[..good.len() - 5]).contains("in the middle of a row"));
        assert!(fail(b"PGCOPY\n\xff\r\n\x01 and more bytes").contains("binary COPY format"));
        assert!(fail(&copy_bytes(&[event_row(10, 3, "{}")])).contains("no header row"));
        assert!(
            fail(&copy_bytes(&[header_row(None, 0), header_row(None, 0)]))
                .contains("two header rows")
        );
        for pending in [None, Some(vec![1])] {
            let mut header = header_row(None, PENDING);
            header[5] = pending;
            let error = fail(&copy_bytes(&[header, event_row(10, 3, "{}")]));
            assert!(error.contains("flags are not a 4-byte integer"), "{error}");
        }
        let mut short = event_row(10, 3, "{}");
        short.pop();
        assert!(fail(&copy_bytes(&[short])).contains("8 columns, not 9"));

        let mut bad_uuid = event_row(10, 3, "{}");
        bad_uuid[3] = Some(vec![1, 2, 3]);
        let error = fail(&copy_bytes(&[header_row(None, 0), bad_uuid]));
        assert!(
            error.contains("event id of stream `s-1` v3 at position 10"),
            "{error}"
        );
        let mut bad_text = event_row(10, 3, "{}");
        bad_text[6] = Some(vec![0xff, 0xfe]);
        let error = fail(&copy_bytes(&[header_row(None, 0), bad_text]));
        assert!(error.contains("payload of stream `s-1` v3"), "{error}");
        // Text that is not UTF-8 in the other text columns, after a good
        // row (whose stream id and type the parser then reuses).
        for (column, what) in [(1, "stream_id"), (4, "event type"), (7, "metadata")] {
            let mut bad = event_row(11, 4, "{}");
            bad[column] = Some(b"Add\xffed".to_vec());
            let error = fail(&copy_bytes(&[
                header_row(None, 0),
                event_row(10, 3, "{}"),
                bad,
            ]));
            assert!(
                error.contains(what) && error.contains("utf-8") && error.contains("position 11"),
                "{error}"
            );
        }
        let mut infinite = event_row(10, 3, "{}");
        infinite[8] = Some(i64::MAX.to_be_bytes().to_vec());
        let error = fail(&copy_bytes(&[header_row(None, 0), infinite]));
        assert!(
            error.contains("recorded time") && error.contains("infinity"),
            "{error}"
        );

        let mut after_end = good.clone();
        after_end.extend_from_slice(&[0, 0]);
        assert!(fail(&after_end).contains("data after its end"));
    }
}
