//! The vocabulary of the store: identifiers, versions, positions, metadata and
//! the shapes of events on their way in and out of a store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Payload;

/// The identifier of one stream: the events of one aggregate instance.
///
/// A stream id is the aggregate's name and the instance id joined by a dash,
/// for example `order-7f3c`. Build it with [`StreamId::for_aggregate`] from
/// domain code, or with [`StreamId::new`] from a full string.
///
/// ```
/// use es_core::StreamId;
///
/// let id = StreamId::for_aggregate("order", "7f3c");
/// assert_eq!(id.as_str(), "order-7f3c");
/// assert_eq!(id.to_string(), "order-7f3c");
/// ```
///
/// Cloning a stream id is cheap: the text is shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// A stream id from its full text.
    pub fn new(id: impl Into<String>) -> Self {
        Self(Arc::from(id.into()))
    }

    /// The stream id of one instance of an aggregate: `{aggregate}-{id}`.
    pub fn for_aggregate(aggregate: &str, id: impl fmt::Display) -> Self {
        use fmt::Write as _;
        let mut text = String::with_capacity(aggregate.len() + 37);
        text.push_str(aggregate);
        text.push('-');
        // Writing into a String cannot fail.
        let _ = write!(text, "{id}");
        Self(Arc::from(text))
    }
}

/// The conversions and traits of a name held as shared text
/// (`Arc<str>`): [`StreamId`] and [`EventType`].
macro_rules! shared_text {
    ($name:ident) => {
        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map($name::from)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(Arc::from(value))
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(Arc::from(value))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == &*other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == &*other.0
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                **self == *other.0
            }
        }
    };
}

shared_text!(StreamId);
shared_text!(EventType);

/// The stored name of an event type, as a store hands it out in a
/// [`RecordedEvent`] and a decoder in an [`Envelope`].
///
/// It reads as a `str` (it dereferences to one and compares with one).
/// Cloning it is cheap: the text is shared, so the events of one read that
/// have the same type share one name instead of one allocation each
/// ([`EventTypeReuse`]).
///
/// ```
/// use es_core::EventType;
///
/// let name = EventType::from("OrderPlaced");
/// assert_eq!(name, "OrderPlaced");
/// assert!(name.starts_with("Order"));
/// assert_eq!(name.to_string(), "OrderPlaced");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(Arc<str>);

impl std::ops::Deref for EventType {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for EventType {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&String> for EventType {
    fn from(value: &String) -> Self {
        Self::from(value.as_str())
    }
}

/// Hands out stream ids for the rows of one read, reusing the last one while
/// the rows name the same stream.
///
/// A store's reader meets events of one stream together (a page of a
/// stream, one aggregate's burst in the global log): those events then share
/// one [`StreamId`] instead of one allocation each.
///
/// ```
/// use es_core::StreamIdReuse;
///
/// let mut ids = StreamIdReuse::default();
/// let a = ids.get("order-1");
/// let b = ids.get("order-1");
/// assert!(std::ptr::eq(a.as_str(), b.as_str()));
/// assert_eq!(ids.get("order-2").as_str(), "order-2");
/// ```
#[derive(Debug, Default)]
pub struct StreamIdReuse {
    last: Option<StreamId>,
}

impl StreamIdReuse {
    /// The stream id of `text`: the previous one if it has the same text.
    pub fn get(&mut self, text: &str) -> StreamId {
        match &self.last {
            Some(last) if last.as_str() == text => last.clone(),
            _ => self.last.insert(StreamId::from(text)).clone(),
        }
    }

    /// The stream id of UTF-8 `bytes`, as [`get`](Self::get); bytes equal to
    /// the previous id's are not checked again.
    ///
    /// ```
    /// use es_core::StreamIdReuse;
    ///
    /// let mut ids = StreamIdReuse::default();
    /// assert_eq!(ids.get_utf8(b"order-1")?.as_str(), "order-1");
    /// assert!(ids.get_utf8(b"order-\xff").is_err());
    /// # Ok::<(), std::str::Utf8Error>(())
    /// ```
    pub fn get_utf8(&mut self, bytes: &[u8]) -> Result<StreamId, std::str::Utf8Error> {
        match &self.last {
            Some(last) if last.as_str().as_bytes() == bytes => Ok(last.clone()),
            _ => Ok(self.get(std::str::from_utf8(bytes)?)),
        }
    }
}

/// Hands out event type names for the rows of one read, reusing the names
/// of the last few types met.
///
/// A read meets few event types, many times each: the events of one type
/// then share one [`EventType`] instead of one allocation each.
///
/// ```
/// use es_core::EventTypeReuse;
///
/// let mut types = EventTypeReuse::default();
/// let a = types.get("Added");
/// types.get("Removed");
/// let b = types.get("Added");
/// assert!(std::ptr::eq(a.as_str(), b.as_str()));
/// ```
#[derive(Debug, Default)]
pub struct EventTypeReuse {
    /// The names met most recently, at most [`Self::KEPT`]; the next new
    /// one replaces the one at `next`.
    kept: Vec<EventType>,
    next: usize,
}

impl EventTypeReuse {
    /// How many names are kept: more than most event families have, few
    /// enough that looking through them costs less than an allocation.
    const KEPT: usize = 16;

    /// The name `text`: a kept one if it has the same text.
    pub fn get(&mut self, text: &str) -> EventType {
        self.kept_one(text.as_bytes())
            .unwrap_or_else(|| self.keep(EventType::from(text)))
    }

    /// The name in UTF-8 `bytes`, as [`get`](Self::get); bytes equal to a
    /// kept name's are not checked again.
    ///
    /// ```
    /// use es_core::EventTypeReuse;
    ///
    /// let mut types = EventTypeReuse::default();
    /// assert_eq!(types.get_utf8(b"Added")?, "Added");
    /// assert!(types.get_utf8(b"Add\xffed").is_err());
    /// # Ok::<(), std::str::Utf8Error>(())
    /// ```
    pub fn get_utf8(&mut self, bytes: &[u8]) -> Result<EventType, std::str::Utf8Error> {
        match self.kept_one(bytes) {
            Some(kept) => Ok(kept),
            None => Ok(self.keep(EventType::from(std::str::from_utf8(bytes)?))),
        }
    }

    fn kept_one(&self, bytes: &[u8]) -> Option<EventType> {
        self.kept
            .iter()
            .find(|kept| kept.as_bytes() == bytes)
            .cloned()
    }

    /// Keeps a name met for the first time (in place of the oldest kept
    /// one when [`Self::KEPT`] are kept).
    fn keep(&mut self, name: EventType) -> EventType {
        if self.kept.len() < Self::KEPT {
            self.kept.push(name.clone());
        } else {
            self.kept[self.next] = name.clone();
            self.next = (self.next + 1) % Self::KEPT;
        }
        name
    }
}

/// An event's 1-based index in its stream; the optimistic-concurrency token.
///
/// `Version::INITIAL` (0) is the version of a stream that has no events yet.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version of a stream without events.
    pub const INITIAL: Version = Version(0);

    /// The version after this one.
    #[must_use]
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }

    /// The version as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An event's place in the store's global log.
///
/// Positions are unique, above 0, and grow along the log; `Position::START`
/// (0) stands before the first event. A reader of the global log remembers
/// the position of the last event it handled and asks for the events after
/// it. They need not be contiguous: the in-memory and SQLite stores number
/// events 1, 2, 3, …, while PostgreSQL's positions carry the appending
/// transaction's id and leave wide gaps. So a difference of two positions
/// is not a count of events.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event of the log.
    pub const START: Position = Position(0);

    /// The position as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The unique id of one event: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub Uuid);

impl EventId {
    /// A new, time-ordered event id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What a caller says about a stream's version when appending to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version
    /// (`Exact(Version::INITIAL)` is the same as [`ExpectedVersion::NoStream`]).
    Exact(Version),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn matches(self, actual: Version) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == Version::INITIAL,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Data carried with every event besides its payload.
///
/// Correlation and causation ids tie events to the request and the message
/// that caused them; `extra` holds free key/values (a W3C `traceparent`, a
/// user id, …). The store fills `recorded_at` when it is not set.
///
/// ```
/// use es_core::Metadata;
///
/// let meta = Metadata::correlated("req-42").with("tenant", "acme");
/// assert_eq!(meta.correlation_id.as_deref(), Some("req-42"));
/// assert_eq!(meta.get("tenant"), Some("acme"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id of the request or conversation this event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the message (command or event) that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// When the event was recorded. Set by the repository or the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<DateTime<Utc>>,
    /// Free key/values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata with a correlation id.
    pub fn correlated(correlation_id: impl fmt::Display) -> Self {
        Self {
            correlation_id: Some(correlation_id.to_string()),
            ..Self::default()
        }
    }

    /// This metadata with a causation id.
    #[must_use]
    pub fn caused_by(mut self, causation_id: impl fmt::Display) -> Self {
        self.causation_id = Some(causation_id.to_string());
        self
    }

    /// This metadata with one more free key/value.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// A free key/value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra.get(key).map(String::as_str)
    }
}

/// An encoded event on its way into a store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// The event's id.
    pub event_id: EventId,
    /// The stored name of the event type.
    pub event_type: String,
    /// The version of the payload's shape.
    pub schema_version: u32,
    /// The JSON payload.
    pub payload: Payload,
    /// Correlation, causation, time and free key/values.
    pub metadata: Metadata,
}

/// An event as a store holds it: the raw row, not yet decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// The event's place in the global log.
    pub position: Position,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its 1-based index in the stream.
    pub version: Version,
    /// Its unique id.
    pub event_id: EventId,
    /// The stored name of the event type (may be an alias of the current name).
    pub event_type: EventType,
    /// The version of the stored payload's shape.
    pub schema_version: u32,
    /// The stored JSON payload.
    pub payload: Payload,
    /// Its metadata; `recorded_at` is always set.
    pub metadata: Metadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

/// What replaying an aggregate needs of a stored event: where it is, its
/// type and its payload, borrowed from the store's row
/// ([`EventStore::replay_stream`](crate::EventStore::replay_stream)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayedEvent<'a> {
    /// The event's place in the global log.
    pub position: Position,
    /// Its 1-based index in the stream.
    pub version: Version,
    /// The stored name of the event type (may be an alias).
    pub event_type: &'a str,
    /// The version of the stored payload's shape.
    pub schema_version: u32,
    /// The stored JSON payload's text.
    pub payload: &'a str,
}

impl<'a> ReplayedEvent<'a> {
    /// The replayed part of a stored event.
    pub fn of(event: &'a RecordedEvent) -> Self {
        Self {
            position: event.position,
            version: event.version,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: event.payload.as_str(),
        }
    }
}

/// A decoded event with everything known about it: what handlers and
/// projections receive.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope<E> {
    /// The event's place in the global log.
    pub position: Position,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its 1-based index in the stream.
    pub version: Version,
    /// Its unique id.
    pub event_id: EventId,
    /// The current name of its type (after alias resolution).
    pub event_type: EventType,
    /// The schema version it was stored with (before upcasting).
    pub stored_schema_version: u32,
    /// Its metadata.
    pub metadata: Metadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The decoded event, upcast to the current schema.
    pub event: E,
}

/// Options of one append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// An idempotency key: a second append with the same key appends nothing
    /// and reports the first append instead.
    pub idempotency_key: Option<String>,
}

/// Where an append landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The stream appended to.
    pub stream_id: StreamId,
    /// The version of the first appended event.
    pub first_version: Version,
    /// The version of the last appended event: the stream's version after the append.
    pub last_version: Version,
    /// The global position of the first appended event.
    pub first_position: Position,
    /// The global position of the last appended event.
    pub last_position: Position,
}

impl Committed {
    /// How many events the append wrote.
    pub fn len(&self) -> u64 {
        self.last_version.0 + 1 - self.first_version.0
    }

    /// Always false: a committed append holds at least one event.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The result of [`EventStore::append`](crate::EventStore::append).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events were written.
    Appended(Committed),
    /// The idempotency key was used before; nothing was written and this is
    /// what the first append with the key wrote.
    Duplicate(Committed),
}

impl AppendOutcome {
    /// Where the events are, whether written now or by the first append.
    pub fn committed(&self) -> &Committed {
        match self {
            AppendOutcome::Appended(c) | AppendOutcome::Duplicate(c) => c,
        }
    }
}

/// Which events a reader of the global log wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these stored event type names; `None` for all.
    pub event_types: Option<Vec<String>>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events whose stored type is one of `types`.
    pub fn types<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            event_types: Some(types.into_iter().map(Into::into).collect()),
        }
    }

    /// Whether an event of this stored type passes the filter.
    pub fn matches(&self, event_type: &str) -> bool {
        match &self.event_types {
            None => true,
            Some(types) => types.iter().any(|t| t == event_type),
        }
    }
}

/// A saved aggregate state.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The stream the state was built from.
    pub stream_id: StreamId,
    /// The stream version the state includes.
    pub version: Version,
    /// The version of the aggregate state's shape; a snapshot whose state
    /// version differs from the code's is ignored.
    pub state_version: u32,
    /// The serialized state.
    pub state: Value,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// Where a projection stands in the global log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The position of the last event the projection has handled
    /// ([`Position::START`] before the first).
    pub position: Position,
    /// The projection version that wrote the checkpoint.
    pub version: u32,
}

/// An event a projection could not handle, set aside so the projection could
/// go on.
#[derive(Clone, Debug, PartialEq)]
pub struct ParkedEvent {
    /// The projection that parked it.
    pub projection: String,
    /// The event, as stored.
    pub event: RecordedEvent,
    /// Why it failed.
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_names_are_reused_and_stay_right_past_the_kept_ones() {
        let mut types = EventTypeReuse::default();
        let names: Vec<String> = (0..40).map(|i| format!("Type{i}")).collect();
        for round in 0..3 {
            for name in &names {
                assert_eq!(types.get(name), name.as_str(), "round {round}");
            }
        }
        assert_eq!(types.kept.len(), EventTypeReuse::KEPT);
        let a = types.get("Added");
        let b = types.get("Added");
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
    }

    #[test]
    fn event_types_read_as_text() {
        let name = EventType::from("Added");
        let text = String::from("Added");
        assert_eq!(name, "Added");
        assert_eq!("Added", name);
        assert_eq!(name, *"Added");
        assert_eq!(*"Added", name);
        assert_eq!(name, text);
        assert_eq!(text, name);
        assert_ne!(name, "Removed");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"Added\"");
        let back: EventType = serde_json::from_str("\"Added\"").unwrap();
        assert_eq!(back, name);
        assert_eq!(name.len(), 5);
    }

    #[test]
    fn expected_version_matches() {
        assert!(ExpectedVersion::Any.matches(Version(7)));
        assert!(ExpectedVersion::NoStream.matches(Version::INITIAL));
        assert!(!ExpectedVersion::NoStream.matches(Version(1)));
        assert!(ExpectedVersion::Exact(Version(3)).matches(Version(3)));
        assert!(!ExpectedVersion::Exact(Version(3)).matches(Version(4)));
        assert!(ExpectedVersion::Exact(Version::INITIAL).matches(Version::INITIAL));
    }

    #[test]
    fn metadata_serializes_compactly() {
        let empty = serde_json::to_value(Metadata::default()).unwrap();
        assert_eq!(empty, serde_json::json!({}));
        let meta = Metadata::correlated("c").caused_by("e").with("k", "v");
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"correlation_id": "c", "causation_id": "e", "extra": {"k": "v"}})
        );
        let back: Metadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, meta);
    }

    #[test]
    fn event_ids_are_v7_and_ordered() {
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
    }

    #[test]
    fn filter_matches() {
        assert!(EventFilter::all().matches("X"));
        let f = EventFilter::types(["A", "B"]);
        assert!(f.matches("A"));
        assert!(!f.matches("C"));
    }

    #[test]
    fn committed_len() {
        let c = Committed {
            stream_id: "s".into(),
            first_version: Version(3),
            last_version: Version(5),
            first_position: Position(10),
            last_position: Position(12),
        };
        assert_eq!(c.len(), 3);
        assert_eq!(StreamId::for_aggregate("order", 7).as_str(), "order-7");
    }
}
