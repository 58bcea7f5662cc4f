-- The event store's tables. The store runs this migration with `search_path`
-- set to its schema, so every name below lands in that schema.

-- The global log. `position` is unique and grows with each insert; the log's
-- order is (`transaction_id`, `position`): readers only read below the oldest
-- transaction still running, so a transaction that commits late can never be
-- skipped (see the crate docs).
CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       text NOT NULL,
    version         bigint NOT NULL CHECK (version > 0),
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    payload         json NOT NULL,
    metadata        json NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);

CREATE INDEX events_log_order ON events (transaction_id, position);

-- What each append with an idempotency key wrote.
CREATE TABLE idempotency_keys (
    key             text PRIMARY KEY,
    stream_id       text NOT NULL,
    first_version   bigint NOT NULL,
    last_version    bigint NOT NULL,
    first_position  bigint NOT NULL,
    last_position   bigint NOT NULL
);

-- The latest snapshot of each stream.
CREATE TABLE snapshots (
    stream_id       text PRIMARY KEY,
    version         bigint NOT NULL,
    state_version   integer NOT NULL,
    state           json NOT NULL,
    taken_at        timestamptz NOT NULL
);

-- Where each projection stands in the global log.
CREATE TABLE checkpoints (
    projection      text PRIMARY KEY,
    position        bigint NOT NULL,
    version         integer NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Events a projection could not handle, with a copy of the event.
CREATE TABLE parked_events (
    projection      text NOT NULL,
    position        bigint NOT NULL,
    stream_id       text NOT NULL,
    version         bigint NOT NULL,
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    schema_version  integer NOT NULL,
    payload         json NOT NULL,
    metadata        json NOT NULL,
    recorded_at     timestamptz NOT NULL,
    error           text NOT NULL,
    parked_at       timestamptz NOT NULL,
    PRIMARY KEY (projection, position)
);
