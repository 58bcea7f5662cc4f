-- Positions become the log's order. An event's position is its appending
-- transaction's id times 2^20, plus its index in that transaction's append
-- (0 for the first event):
--
--     position = transaction id * 1048576 + index
--
-- The log was read in (`transaction_id`, `position`) order through a third
-- index; now the position alone is that order, the primary key is the log's
-- index, and the `transaction_id` column and its index go. Readers still
-- read only below the oldest transaction running (`pg_snapshot_xmin`,
-- multiplied the same way), so the log stays gap-safe. Like 0001, this runs
-- with `search_path` set to the store's schema.
--
-- Existing events are renumbered in the log order they had, and the
-- positions that other tables keep (checkpoints, parked events, what
-- idempotency keys wrote) are mapped in the same transaction. Positions
-- already handed out elsewhere (in messages published to a broker, say)
-- keep their old numbers there.

DO $$
DECLARE
    largest bigint;
BEGIN
    SELECT max(n) INTO largest
    FROM (SELECT count(*) AS n FROM events GROUP BY transaction_id) AS per_transaction;
    IF largest > 1048576 THEN
        RAISE EXCEPTION 'cannot renumber the event log: one transaction appended % events, '
                        'more than the 1048576 that a position can number', largest;
    END IF;
END
$$;

-- The old and new position of every event. A table of the schema, dropped
-- at the end (a temporary one would need the TEMPORARY privilege, which a
-- hardened database may not grant the role that migrates).
CREATE TABLE renumbered AS
SELECT position AS old,
       transaction_id::text::int8 * 1048576
           + row_number() OVER (PARTITION BY transaction_id ORDER BY position) - 1 AS new
FROM events;
CREATE UNIQUE INDEX ON renumbered (old);
ANALYZE renumbered;

ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ALTER COLUMN position DROP IDENTITY;
UPDATE events e SET position = r.new FROM renumbered r WHERE e.position = r.old;
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (position);
DROP INDEX events_log_order;
ALTER TABLE events DROP COLUMN transaction_id;

-- A stored position stands for the event at it, or else for the nearest
-- event before it (a reader's cursor "after p" meant after that event); 0
-- stays before the first event. A function of the schema, dropped at the
-- end like the table.
CREATE FUNCTION renumbered_position(p bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT r.new FROM renumbered r WHERE r.old <= p
                     ORDER BY r.old DESC LIMIT 1), 0)
$$;

UPDATE checkpoints SET position = renumbered_position(position) WHERE position > 0;

UPDATE idempotency_keys
SET first_position = renumbered_position(first_position),
    last_position = renumbered_position(last_position);

ALTER TABLE parked_events DROP CONSTRAINT parked_events_pkey;
UPDATE parked_events SET position = renumbered_position(position);
ALTER TABLE parked_events ADD CONSTRAINT parked_events_pkey PRIMARY KEY (projection, position);

DROP FUNCTION renumbered_position(bigint);
DROP TABLE renumbered;
