//! The message format: what the relay writes and the consumer reads.
//!
//! The key is the stream id; the value is the event's JSON payload at the
//! schema version named in its headers; the headers carry everything else.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use es_core::{EventId, Metadata, Payload, Position, RecordedEvent, StreamId, Version};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message;
use serde_json::Value;

/// Header names, for consumers written in other languages.
pub mod names {
    /// The event's id (UUID v7 text).
    pub const EVENT_ID: &str = "es-event-id";
    /// The event's type name (its current name after upcasting).
    pub const EVENT_TYPE: &str = "es-event-type";
    /// The schema version of the payload in the message.
    pub const SCHEMA_VERSION: &str = "es-schema-version";
    /// The stream id (also the message key).
    pub const STREAM_ID: &str = "es-stream-id";
    /// The event's version in its stream (1-based).
    pub const STREAM_VERSION: &str = "es-stream-version";
    /// The event's position in the source store's global log.
    pub const POSITION: &str = "es-position";
    /// When the source store recorded the event (RFC 3339, UTC).
    pub const RECORDED_AT: &str = "es-recorded-at";
    /// The correlation id, when the event has one.
    pub const CORRELATION_ID: &str = "es-correlation-id";
    /// The causation id, when the event has one.
    pub const CAUSATION_ID: &str = "es-causation-id";
    /// The W3C trace context, when the event's metadata carries one.
    pub const TRACEPARENT: &str = "traceparent";
    /// The payload's media type: always [`JSON`](super::JSON).
    pub const CONTENT_TYPE: &str = "content-type";
    /// The prefix of the other metadata key/values: `es-meta-<key>`.
    pub const META_PREFIX: &str = "es-meta-";
}

/// The payload's content type.
pub const JSON: &str = "application/json";

/// The metadata key of a W3C trace context.
const TRACEPARENT_KEY: &str = "traceparent";

/// The headers of an event whose payload is at `schema_version` under the
/// name `event_type`.
pub(crate) fn encode(event: &RecordedEvent, event_type: &str, schema_version: u32) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(10 + event.metadata.extra.len());
    let mut put = |key: &str, value: &str| {
        headers =
            std::mem::replace(&mut headers, OwnedHeaders::new_with_capacity(0)).insert(Header {
                key,
                value: Some(value),
            });
    };
    put(names::EVENT_ID, &event.event_id.to_string());
    put(names::EVENT_TYPE, event_type);
    put(names::SCHEMA_VERSION, &schema_version.to_string());
    put(names::STREAM_ID, event.stream_id.as_str());
    put(names::STREAM_VERSION, &event.version.0.to_string());
    put(names::POSITION, &event.position.0.to_string());
    put(
        names::RECORDED_AT,
        &event
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    );
    put(names::CONTENT_TYPE, JSON);
    if let Some(id) = &event.metadata.correlation_id {
        put(names::CORRELATION_ID, id);
    }
    if let Some(id) = &event.metadata.causation_id {
        put(names::CAUSATION_ID, id);
    }
    for (key, value) in &event.metadata.extra {
        if key == TRACEPARENT_KEY {
            put(names::TRACEPARENT, value);
        } else {
            put(&format!("{}{key}", names::META_PREFIX), value);
        }
    }
    headers
}

/// Where a message came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageOrigin {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
}

impl std::fmt::Display for MessageOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// Why a message is not an event the consumer can hand to a projection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// A required header is missing.
    #[error("message {origin} has no `{header}` header")]
    MissingHeader {
        /// The message.
        origin: MessageOrigin,
        /// The header's name.
        header: &'static str,
    },
    /// A header's value does not parse.
    #[error("message {origin}: header `{header}` has an invalid value `{value}`")]
    InvalidHeader {
        /// The message.
        origin: MessageOrigin,
        /// The header's name.
        header: &'static str,
        /// Its value, lossily as text.
        value: String,
    },
    /// The message has no value.
    #[error("message {origin} has no payload")]
    MissingPayload {
        /// The message.
        origin: MessageOrigin,
    },
    /// The value is not JSON.
    #[error("message {origin}: the payload is not JSON: {reason}")]
    InvalidPayload {
        /// The message.
        origin: MessageOrigin,
        /// The parser's error.
        reason: String,
    },
    /// The event type is not one the projection reads.
    #[error("message {origin}: event type `{event_type}` is not one the projection reads")]
    UnknownType {
        /// The message.
        origin: MessageOrigin,
        /// The type named in its headers.
        event_type: String,
    },
}

/// A message taken off the consumer, owned, with what could be read of it.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) origin: MessageOrigin,
    /// The event; for a message that is not a well-formed event, the best
    /// copy of it that parses (what would be parked).
    pub(crate) event: RecordedEvent,
    /// Why the message is not a well-formed event.
    pub(crate) problem: Option<MessageError>,
}

impl Incoming {
    pub(crate) fn read(message: &BorrowedMessage<'_>) -> Self {
        let origin = MessageOrigin {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let mut fields = Fields::default();
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                let Some(value) = header.value else { continue };
                fields.set(header.key, String::from_utf8_lossy(value));
            }
        }
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let payload = message.payload();
        let timestamp = message
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis);
        let (event, problem) = fields.into_event(&origin, key, payload, timestamp);
        Incoming {
            origin,
            event,
            problem,
        }
    }
}

/// Header values by their place in [`KNOWN`], and the other metadata.
#[derive(Default)]
struct Fields<'m> {
    known: [Option<Cow<'m, str>>; KNOWN.len()],
    extra: BTreeMap<String, String>,
}

const KNOWN: [&str; 10] = [
    names::EVENT_ID,
    names::EVENT_TYPE,
    names::SCHEMA_VERSION,
    names::STREAM_ID,
    names::STREAM_VERSION,
    names::POSITION,
    names::RECORDED_AT,
    names::CORRELATION_ID,
    names::CAUSATION_ID,
    names::CONTENT_TYPE,
];

impl<'m> Fields<'m> {
    /// Keeps a header's value; the known ones borrowed from the message.
    fn set(&mut self, key: &str, value: Cow<'m, str>) {
        if let Some(i) = KNOWN.iter().position(|n| *n == key) {
            self.known[i] = Some(value);
        } else if key == names::TRACEPARENT {
            self.extra
                .insert(TRACEPARENT_KEY.to_owned(), value.into_owned());
        } else if let Some(meta) = key.strip_prefix(names::META_PREFIX) {
            self.extra.insert(meta.to_owned(), value.into_owned());
        }
    }

    /// Builds the event; on a problem, still builds the best copy for parking.
    fn into_event(
        mut self,
        origin: &MessageOrigin,
        key: Option<String>,
        payload: Option<&[u8]>,
        timestamp: Option<DateTime<Utc>>,
    ) -> (RecordedEvent, Option<MessageError>) {
        let mut problem: Option<MessageError> = None;
        let mut note = |error: MessageError| {
            problem.get_or_insert(error);
        };
        let mut text = |name: &'static str, required: bool, note: &mut dyn FnMut(MessageError)| {
            let value = KNOWN
                .iter()
                .position(|n| *n == name)
                .and_then(|i| self.known[i].take());
            if value.is_none() && required {
                note(MessageError::MissingHeader {
                    origin: origin.clone(),
                    header: name,
                });
            }
            value
        };
        fn parse<T: std::str::FromStr>(
            origin: &MessageOrigin,
            header: &'static str,
            value: Option<Cow<'_, str>>,
            note: &mut dyn FnMut(MessageError),
        ) -> Option<T> {
            let value = value?;
            match value.parse() {
                Ok(parsed) => Some(parsed),
                Err(_) => {
                    note(MessageError::InvalidHeader {
                        origin: origin.clone(),
                        header,
                        value: value.into_owned(),
                    });
                    None
                }
            }
        }
        let event_type = text(names::EVENT_TYPE, true, &mut note)
            .map(Cow::into_owned)
            .unwrap_or_default();
        let schema_version = text(names::SCHEMA_VERSION, true, &mut note);
        let schema_version: u32 =
            parse(origin, names::SCHEMA_VERSION, schema_version, &mut note).unwrap_or(0);
        let version = text(names::STREAM_VERSION, true, &mut note);
        let version: u64 = parse(origin, names::STREAM_VERSION, version, &mut note).unwrap_or(0);
        let event_id = text(names::EVENT_ID, true, &mut note);
        let event_id: uuid::Uuid =
            parse(origin, names::EVENT_ID, event_id, &mut note).unwrap_or_default();
        let header_stream = text(names::STREAM_ID, false, &mut note).map(Cow::into_owned);
        let stream_id = match key.or(header_stream) {
            Some(stream) => stream,
            None => {
                note(MessageError::MissingHeader {
                    origin: origin.clone(),
                    header: names::STREAM_ID,
                });
                String::new()
            }
        };
        let position = text(names::POSITION, false, &mut note);
        let position: u64 = parse(origin, names::POSITION, position, &mut note).unwrap_or(0);
        let recorded_at = text(names::RECORDED_AT, false, &mut note);
        let recorded_at = parse::<DateTime<chrono::FixedOffset>>(
            origin,
            names::RECORDED_AT,
            recorded_at,
            &mut note,
        )
        .map(|t| t.with_timezone(&Utc))
        .or(timestamp)
        .unwrap_or_else(Utc::now);
        let payload = match payload {
            None => {
                note(MessageError::MissingPayload {
                    origin: origin.clone(),
                });
                Payload::from(Value::Null)
            }
            Some(bytes) => {
                let parsed = std::str::from_utf8(bytes)
                    .map_err(|error| error.to_string())
                    .and_then(|text| Payload::from_json(text).map_err(|error| error.to_string()));
                parsed.unwrap_or_else(|reason| {
                    note(MessageError::InvalidPayload {
                        origin: origin.clone(),
                        reason,
                    });
                    Payload::from(Value::String(String::from_utf8_lossy(bytes).into_owned()))
                })
            }
        };
        let metadata = Metadata {
            correlation_id: text(names::CORRELATION_ID, false, &mut note).map(Cow::into_owned),
            causation_id: text(names::CAUSATION_ID, false, &mut note).map(Cow::into_owned),
            recorded_at: Some(recorded_at),
            extra: self.extra,
        };
        let event = RecordedEvent {
            position: Position(position),
            stream_id: StreamId::new(stream_id),
            version: Version(version),
            event_id: EventId(event_id),
            event_type: event_type.into(),
            schema_version,
            payload,
            metadata,
            recorded_at,
        };
        (event, problem)
    }
}
