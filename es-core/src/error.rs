//! The crate's error type.

use std::fmt;

use crate::types::{ExpectedVersion, Position, StreamId, Version};

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from a backend or a user's handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the framework outside the domain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream's version was not the expected one: another writer appended
    /// first. Reload the aggregate and decide again; the
    /// [`Repository`](crate::Repository) does so by itself a bounded number of
    /// times before it returns this error.
    #[error(
        "concurrency conflict on stream `{stream_id}`: expected {expected}, found version {actual}"
    )]
    Conflict {
        /// The stream.
        stream_id: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was refused.
        actual: Version,
    },

    /// A stored event could not be decoded. The stored row is left as it is;
    /// fix the event type (an alias, an upcaster) or park the event.
    #[error(transparent)]
    Decode(#[from] Box<DecodeError>),

    /// An event or a state could not be encoded to JSON.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded (an event type, an aggregate state).
        what: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// An append without events was refused: there is nothing to write.
    #[error("append to stream `{stream_id}` has no events")]
    EmptyAppend {
        /// The stream.
        stream_id: StreamId,
    },

    /// An idempotency key was used before for another stream.
    #[error("idempotency key `{key}` was used for stream `{used_for}`, not `{stream_id}`")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The stream the key was first used with.
        used_for: StreamId,
        /// The stream of this command.
        stream_id: StreamId,
    },

    /// A projection's handler failed on an event. Fix the handler or the data
    /// and start the projection again; it resumes at this event.
    #[error("projection `{projection}` failed at position {position} ({event_type} in `{stream_id}` v{version}): {source}")]
    Projection {
        /// The projection's name.
        projection: String,
        /// The failing event's position.
        position: Position,
        /// The failing event's stream.
        stream_id: StreamId,
        /// The failing event's version.
        version: Version,
        /// The failing event's stored type.
        event_type: String,
        /// The handler's error.
        #[source]
        source: BoxError,
    },

    /// An event schema is inconsistent (a duplicate type, an alias that
    /// collides, a missing upcaster hop).
    #[error("invalid event schema: {0}")]
    Schema(String),

    /// The storage backend failed (connection, I/O, SQL). The operation had
    /// no effect unless the backend says otherwise; it may be retried.
    #[error("store error: {message}")]
    Store {
        /// What the store was doing.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// A backend error with context.
    pub fn store(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Store {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether this is a concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
}

impl From<DecodeError> for Error {
    fn from(value: DecodeError) -> Self {
        Error::Decode(Box::new(value))
    }
}

/// A stored event that could not be decoded, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {event_type} (schema v{schema_version}) at position {position}, stream `{stream_id}` v{version}: {kind}")]
pub struct DecodeError {
    /// The event's stream.
    pub stream_id: StreamId,
    /// The event's version in its stream.
    pub version: Version,
    /// The event's global position.
    pub position: Position,
    /// The stored event type.
    pub event_type: String,
    /// The stored schema version.
    pub schema_version: u32,
    /// What went wrong.
    #[source]
    pub kind: DecodeErrorKind,
}

/// Why a stored event could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// No event type or alias of this event family has this name.
    #[error("unknown event type")]
    UnknownType,
    /// The payload was stored by newer code than this one.
    #[error("schema version {stored} is newer than the current version {current}")]
    NewerVersion {
        /// The stored version.
        stored: u32,
        /// The version the code knows.
        current: u32,
    },
    /// No upcaster is registered for a hop of the chain.
    #[error("no upcaster from schema version {from}")]
    MissingUpcaster {
        /// The version without an upcaster.
        from: u32,
    },
    /// An upcaster refused the payload.
    #[error("upcast from schema version {from} failed: {source}")]
    Upcast {
        /// The version the failing hop started from.
        from: u32,
        /// The upcaster's error.
        #[source]
        source: UpcastError,
    },
    /// The event family's schema has a mistake (see [`Error::Schema`]).
    #[error("invalid event schema: {0}")]
    InvalidSchema(String),
    /// The payload does not have the event's shape.
    #[error("malformed payload: {0}")]
    Payload(#[source] serde_json::Error),
}

/// The error of one upcaster hop.
#[derive(Debug)]
pub struct UpcastError(BoxError);

impl UpcastError {
    /// An upcast error with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self(message.to_string().into())
    }

    /// An upcast error from another error.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self(source.into())
    }
}

impl fmt::Display for UpcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for UpcastError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<serde_json::Error> for UpcastError {
    fn from(value: serde_json::Error) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_error_names_where() {
        let err = DecodeError {
            stream_id: "order-1".into(),
            version: Version(3),
            position: Position(42),
            event_type: "OrderPlaced".into(),
            schema_version: 1,
            kind: DecodeErrorKind::UnknownType,
        };
        let text = err.to_string();
        for part in [
            "OrderPlaced",
            "v1",
            "42",
            "order-1",
            "v3",
            "unknown event type",
        ] {
            assert!(text.contains(part), "{text} lacks {part}");
        }
    }

    #[test]
    fn conflict_is_classified() {
        let err = Error::Conflict {
            stream_id: "s".into(),
            expected: ExpectedVersion::Exact(Version(1)),
            actual: Version(2),
        };
        assert!(err.is_conflict());
        assert!(err
            .to_string()
            .contains("expected version 1, found version 2"));
        assert!(!Error::Schema("x".into()).is_conflict());
    }
}
