-- The event store's schema. Tables carry the `es_` prefix so that read models
-- can live in the same file under their own names.

-- The global log. `position` is the rowid: the store appends through one
-- writer at a time (`BEGIN IMMEDIATE`), so positions grow by one in commit
-- order and the log has no gaps. AUTOINCREMENT keeps a position from ever
-- being reused.
CREATE TABLE es_events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    event_id       BLOB    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    -- JSON text.
    payload        TEXT    NOT NULL,
    -- JSON text of the metadata without `recorded_at`, which has its column.
    metadata       TEXT    NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    recorded_at    INTEGER NOT NULL,
    UNIQUE (stream_id, version)
);

-- Stored events are never changed: a mistake is corrected by a new event.
CREATE TRIGGER es_events_no_update BEFORE UPDATE ON es_events
BEGIN
    SELECT RAISE(ABORT, 'es_events is append-only: stored events are never updated');
END;

CREATE TRIGGER es_events_no_delete BEFORE DELETE ON es_events
BEGIN
    SELECT RAISE(ABORT, 'es_events is append-only: stored events are never deleted');
END;

-- What the append with an idempotency key wrote.
CREATE TABLE es_idempotency_keys (
    key            TEXT    PRIMARY KEY NOT NULL,
    stream_id      TEXT    NOT NULL,
    first_version  INTEGER NOT NULL,
    last_version   INTEGER NOT NULL,
    first_position INTEGER NOT NULL,
    last_position  INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL
);

-- The latest snapshot of each stream.
CREATE TABLE es_snapshots (
    stream_id     TEXT    PRIMARY KEY NOT NULL,
    version       INTEGER NOT NULL,
    state_version INTEGER NOT NULL,
    -- JSON text.
    state         TEXT    NOT NULL,
    taken_at      INTEGER NOT NULL
);

-- Where each projection stands in the global log.
CREATE TABLE es_checkpoints (
    projection TEXT    PRIMARY KEY NOT NULL,
    position   INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Events a projection could not handle, with a copy of the stored event.
CREATE TABLE es_parked_events (
    projection     TEXT    NOT NULL,
    position       INTEGER NOT NULL,
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_id       BLOB    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    recorded_at    INTEGER NOT NULL,
    error          TEXT    NOT NULL,
    parked_at      INTEGER NOT NULL,
    PRIMARY KEY (projection, position)
);
