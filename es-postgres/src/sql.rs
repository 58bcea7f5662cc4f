//! The store's SQL, rendered once per store for its schema.
//!
//! The schema name is the only part of any statement that is not a fixed
//! string or a bind parameter; it is validated by [`validate_schema`] before
//! it is put into SQL, and quoted as an identifier as well.

use es_core::{Error, Result};

use crate::row::NULL_SCHEMA_VERSION;

/// The longest schema name accepted: it is also part of the notification
/// channel's name, which PostgreSQL limits to 63 bytes.
pub(crate) const MAX_SCHEMA_LEN: usize = 48;

/// Checks that `schema` is a plain lower-case SQL identifier: a letter or
/// `_`, then letters, digits or `_`, at most [`MAX_SCHEMA_LEN`] bytes, and
/// not one of PostgreSQL's own schema names.
pub(crate) fn validate_schema(schema: &str) -> Result<()> {
    let invalid = |why: &str| Error::Store {
        message: format!("invalid schema name `{schema}`: {why}"),
        source: None,
    };
    let mut chars = schema.chars();
    match chars.next() {
        None => return Err(invalid("it is empty")),
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        Some(_) => return Err(invalid("it must start with a lower-case letter or `_`")),
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(invalid(
            "only lower-case ASCII letters, digits and `_` are allowed",
        ));
    }
    if schema.len() > MAX_SCHEMA_LEN {
        return Err(invalid(&format!(
            "it is longer than {MAX_SCHEMA_LEN} bytes"
        )));
    }
    if schema.starts_with("pg_") || schema == "information_schema" {
        return Err(invalid("the name is reserved by PostgreSQL"));
    }
    Ok(())
}

/// The columns of a stored event, in the order [`crate::row`] reads them.
/// The payload and metadata are read as their text: a `json` value goes over
/// the wire as its text (unlike `jsonb`, whose binary form has a version
/// byte), so the payload is kept as it comes and the common `{}` metadata
/// needs no parsing.
///
/// The schema version goes out as null when it is 1, and the metadata is
/// null when the event has none (as stored since migration 0004): the
/// server sends each non-null value through a send function that takes a
/// 1 KB buffer from the row's memory context, whose first block holds
/// seven; the common event is then seven values, and a row's eighth value
/// (and the block allocated and freed for it on every row) is saved.
/// Readers read null as [`NULL_SCHEMA_VERSION`] and as no metadata.
fn event_columns() -> String {
    format!(
        "position, stream_id, version, event_id, event_type, \
         NULLIF(schema_version, {NULL_SCHEMA_VERSION}) AS schema_version, payload, metadata, \
         recorded_at"
    )
}

/// The statements of one store.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) schema: String,
    pub(crate) channel: String,
    pub(crate) create_schema: String,
    pub(crate) set_search_path: String,
    pub(crate) append: String,
    pub(crate) append_exact: PlainAppends,
    pub(crate) append_any: PlainAppends,
    pub(crate) read_stream: String,
    pub(crate) replay_stream: String,
    pub(crate) stream_version: String,
    pub(crate) read_all_filtered: String,
    pub(crate) read_all_filtered_unprotected: String,
    /// A page of the whole log, with and without gap protection, as a
    /// binary `COPY`, with
    /// [`AFTER`] and [`LIMIT`] where the numbers go (see
    /// [`Statements::copy_page`]).
    copy_page: [String; 2],
    /// [`Statements::copy_part`]'s statement.
    copy_part: String,
    pub(crate) head: String,
    pub(crate) head_unprotected: String,
    pub(crate) probe: String,
    pub(crate) probe_unprotected: String,
    pub(crate) find_key: String,
    pub(crate) notify: String,
    pub(crate) save_snapshot: String,
    pub(crate) load_snapshot: String,
    pub(crate) replay_from_snapshot: String,
    pub(crate) load_checkpoint: String,
    pub(crate) save_checkpoint: String,
    pub(crate) park: String,
    pub(crate) parked: String,
    pub(crate) unpark: String,
    pub(crate) claim: String,
    pub(crate) reset_claims: String,
    pub(crate) lease_key: String,
}

/// Where a page's `COPY` has the position it reads after; a `COPY` takes no
/// bind parameters, so [`Statements::copy_page`] puts the number there.
const AFTER: &str = "\u{1}after\u{1}";

/// Where a page's `COPY` has its size.
const LIMIT: &str = "\u{1}limit\u{1}";

/// Where the first part of a split read has the position it reads up to.
const UPTO: &str = "\u{1}upto\u{1}";

/// The bit of a page header's flags (in its `schema_version` column) that
/// says committed events wait for an older transaction (`pending`).
pub(crate) const PENDING: i32 = 1;

/// The bit of a part's header flags that says the position it reads up to
/// is below its bound: every event up to there is then in the part, or
/// past its size.
pub(crate) const COVERED: i32 = 2;

/// How many low bits of a position hold the event's index in its append;
/// the bits above hold the appending transaction's id (see the crate docs).
const INDEX_BITS: u32 = 20;

/// How many positions each transaction has.
const RANGE: i64 = 1 << INDEX_BITS;

/// The most events one append can write: one position per event within its
/// transaction's range.
pub(crate) const MAX_APPEND: usize = 1 << INDEX_BITS;

/// The first position of the appending transaction's range. A
/// multiplication, not a shift, so that a transaction id too large for the
/// product (2^43 and above) fails the statement instead of wrapping around.
fn transaction_base() -> String {
    format!("pg_current_xact_id()::text::int8 * {RANGE}")
}

/// `LIMIT` by the parameter `param`, read in a sub-select that the planner
/// cannot see into. Not knowing the page's size, it plans for a small share
/// of the rows that match, so a page always comes off the index in the
/// read's order, from where the read starts to the page's end. Seeing a page
/// larger than the rows it expects to match (below the log's bound, which it
/// cannot see either, or in a stream that grew since the table's statistics
/// were taken), it would read and sort every matching row instead: a cost
/// that grows with the log or the stream, not with the page.
fn limit_by(param: &str) -> String {
    format!("LIMIT (SELECT {param}::int8)")
}

/// What the events of a plain append follow.
#[derive(Clone, Copy)]
enum Follows {
    /// The expected version, `$2` (0 for no stream).
    Expected,
    /// The stream's current version, whatever it is.
    Current,
}

/// The statements of the common append (no idempotency key, no inline
/// projection): the insert alone, with `$1` the stream and `$2` the
/// expected version. Each answers the first version written and the
/// positions of the first and last event, null (or no row) when nothing was
/// written (the expected version did not match).
///
/// Whether the expected version holds is checked by the insert itself where
/// it can be: the unique `(stream_id, version)` key refuses a version
/// already taken (a stream ahead of the expected version, or one that exists
/// when none should); only a stream behind it needs a look, whether the
/// expected version exists. With any version the events follow the
/// stream's current one. Either way a statement holds only the sub-selects
/// it runs: each costs the server its set-up on every execution.
#[derive(Debug)]
pub(crate) struct PlainAppends {
    /// One event, with scalar parameters instead of arrays and the row of
    /// the event written: cheaper, for one event, than collecting what was
    /// written.
    pub(crate) one: String,
    /// Several events, each column an array.
    pub(crate) many: String,
    /// Several events that share their type, schema version, metadata and
    /// time (a bulk append of one kind of event): those are sent once, as
    /// scalars, and the metadata is read once; only ids and payloads go as
    /// arrays.
    pub(crate) uniform: String,
}

impl PlainAppends {
    fn new(s: &str, insert: &str, follows: Follows) -> Self {
        let (version, check) = match follows {
            Follows::Expected => (
                "$2::int8".to_owned(),
                format!(
                    "WHERE $2::int8 = 0 OR EXISTS
                         (SELECT 1 FROM {s}.events WHERE stream_id = $1 AND version = $2::int8)"
                ),
            ),
            Follows::Current => (
                format!("(SELECT COALESCE(MAX(version), 0) FROM {s}.events WHERE stream_id = $1)"),
                String::new(),
            ),
        };
        // Event `n` (from 1) is at `base + n - 1`; with several events the
        // base is computed once (an InitPlan).
        let base = transaction_base();
        // One statement draws its positions in insertion order, which is
        // version order: the least and greatest are the first and last
        // event's (cheaper than collecting them in order).
        let written = |select: String| {
            format!(
                "WITH written AS ({insert} {select} RETURNING position, version)
                 SELECT min(version) AS first_version, min(position) AS first_position,
                        max(position) AS last_position
                 FROM written"
            )
        };
        Self {
            one: format!(
                "{insert}
                 SELECT {base}, $1, {version} + 1, $3, $4, $5, $6::json, $7::json, $8
                 {check}
                 RETURNING version AS first_version, position AS first_position,
                           position AS last_position"
            ),
            many: written(format!(
                "SELECT (SELECT {base}) + e.n - 1, $1, {version} + e.n, e.event_id, e.event_type,
                        e.schema_version, e.payload::json, e.metadata::json, e.recorded_at
                 FROM unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::timestamptz[])
                          WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, recorded_at, n)
                 {check}
                 ORDER BY e.n"
            )),
            uniform: written(format!(
                "SELECT (SELECT {base}) + e.n - 1, $1, {version} + e.n, e.event_id, $5, $6,
                        e.payload::json, (SELECT $7::json), $8
                 FROM unnest($3::uuid[], $4::text[]) WITH ORDINALITY AS e(event_id, payload, n)
                 {check}
                 ORDER BY e.n"
            )),
        }
    }
}

impl Statements {
    /// A page of the whole log (no filter) after `after`, of at most `limit`
    /// events, as a binary `COPY`: the page statement (that of
    /// [`read_all_filtered`](Self::read_all_filtered) without the filter),
    /// whose rows go out as one stream of bytes that the store parses itself
    /// ([`crate::copy`]), at a fraction of what decoding rows costs. The
    /// numbers are written into the statement (a `COPY` has no bind
    /// parameters): two integers, nothing else from outside.
    pub(crate) fn copy_page(&self, protected: bool, after: i64, limit: i64) -> String {
        let template = &self.copy_page[usize::from(!protected)];
        template
            .replace(AFTER, &after.to_string())
            .replace(LIMIT, &limit.to_string())
    }

    /// The first part of a split read, as a binary `COPY`: at most `limit`
    /// events after `after` and up to `upto`, below the bound; its header's
    /// flags say [`PENDING`] and whether `upto` is below the bound
    /// ([`COVERED`]).
    pub(crate) fn copy_part(&self, after: i64, upto: i64, limit: i64) -> String {
        self.copy_part
            .replace(AFTER, &after.to_string())
            .replace(UPTO, &upto.to_string())
            .replace(LIMIT, &limit.to_string())
    }

    /// Renders every statement for a schema that passed [`validate_schema`].
    pub(crate) fn new(schema: &str) -> Result<Self> {
        validate_schema(schema)?;
        let s = format!("\"{schema}\"");
        let cols = event_columns();
        // The gap-safety bound: the first position of the oldest
        // transaction still running; every transaction below it has ended.
        // Computed once per statement (an InitPlan).
        let bound =
            format!("(SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 * {RANGE})");
        // The append with an idempotency key reads the stream's current
        // version and the first position of the appending transaction's
        // range once, in one sub-select (`current`). Event `n` (from 1) of
        // an append is at `base + n - 1`.
        let current = format!(
            "SELECT COALESCE(MAX(version), 0) AS version, {base} AS base
             FROM {s}.events WHERE stream_id = $1",
            base = transaction_base()
        );
        let insert = format!(
            "INSERT INTO {s}.events
                (position, stream_id, version, event_id, event_type, schema_version,
                 payload, metadata, recorded_at)"
        );
        let append = format!(
            "WITH prior AS (
                SELECT stream_id, first_version, last_version, first_position, last_position
                FROM {s}.idempotency_keys WHERE $2::text IS NOT NULL AND key = $2
            ),
            current AS ({current}),
            inserted AS (
                {insert}
                SELECT current.base + e.n - 1, $1, current.version + e.n, e.event_id, e.event_type,
                       e.schema_version, e.payload::json, e.metadata::json, e.recorded_at
                FROM current,
                     unnest($4::uuid[], $5::text[], $6::int4[], $7::text[], $8::text[], $9::timestamptz[])
                         WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, metadata, recorded_at, n)
                WHERE ($3::int8 < 0 OR current.version = $3::int8) AND NOT EXISTS (SELECT 1 FROM prior)
                ORDER BY e.n
                RETURNING position, version
            ),
            written AS (
                SELECT count(*) AS n, min(version) AS first_version, max(version) AS last_version,
                       array_agg(position ORDER BY version) AS positions
                FROM inserted
            ),
            remembered AS (
                INSERT INTO {s}.idempotency_keys
                    (key, stream_id, first_version, last_version, first_position, last_position)
                SELECT $2, $1, w.first_version, w.last_version, w.positions[1], w.positions[w.n]
                FROM written w WHERE $2::text IS NOT NULL AND w.n > 0
            )
            SELECT c.version AS current_version, w.n AS written, w.positions,
                   p.stream_id AS prior_stream_id, p.first_version AS prior_first_version,
                   p.last_version AS prior_last_version, p.first_position AS prior_first_position,
                   p.last_position AS prior_last_position
            FROM current c CROSS JOIN written w LEFT JOIN prior p ON true"
        );
        let exact = PlainAppends::new(&s, &insert, Follows::Expected);
        let any = PlainAppends::new(&s, &insert, Follows::Current);
        // Every read of the log answers, in one statement (so with one
        // snapshot), a header row and then the page's events. The header
        // has no event (a null position) and carries two values in columns
        // that an event fills with its own: in `version`, `tail`, the last
        // event below the bound, so that the cursor moves past events a
        // filter dropped (null without a filter: a page that is not full
        // then ends at that event itself, and the look for it is saved);
        // in `schema_version`, `pending` (1 or 0), whether committed events
        // after the cursor wait for an older transaction to end (the reader
        // then waits briefly for it, so a short transaction elsewhere does
        // not hide a writer's own append). The header's values are computed
        // once (InitPlans) and sent once; the events come straight off the
        // primary key (the log's order) with their own columns and no
        // others (two more null columns on every event cost the server 6 %
        // more per row).
        let page = |tail: &str, pending: &str, events: String| {
            format!(
                "SELECT NULL::int8 AS position, NULL::text AS stream_id, ({tail}) AS version,
                        NULL::uuid AS event_id, NULL::text AS event_type,
                        ({pending})::int4 AS schema_version, NULL::json AS payload,
                        NULL::json AS metadata, NULL::timestamptz AS recorded_at
                 UNION ALL
                 ({events})"
            )
        };
        // `after` and `limit` are what the statement reads them from: bind
        // parameters, or the literal numbers of a `COPY` (see
        // [`Statements::copy_page`]).
        let tail = |after: &str| {
            format!(
                "SELECT max(t.position) FROM {s}.events t WHERE t.position > {after} AND t.position < {bound}"
            )
        };
        // Rows at or above the bound all come after the cursor (its event
        // was below an earlier, lower bound).
        let pending = format!(
            "((SELECT p.position FROM {s}.events p WHERE p.position >= {bound}
               ORDER BY p.position LIMIT 1) IS NOT NULL)"
        );
        let protected = |filter: &str, after: &str, limit: &str| {
            page(
                &if filter.is_empty() {
                    "SELECT NULL::int8".to_owned()
                } else {
                    tail(after)
                },
                &pending,
                format!(
                    "SELECT {cols} FROM {s}.events
                     WHERE position > {after} AND position < {bound} {filter}
                     ORDER BY position {}",
                    limit_by(limit)
                ),
            )
        };
        let read_all_filtered = protected("AND event_type = ANY($3)", "$1", "$2");
        // Without gap protection (only for the test that shows why it is
        // needed): no bound, so a late commit lands behind the reader.
        let unprotected = |filter: &str, after: &str, limit: &str| {
            page(
                &if filter.is_empty() {
                    "SELECT NULL::int8".to_owned()
                } else {
                    format!("SELECT max(position) FROM {s}.events")
                },
                "false",
                format!(
                    "SELECT {cols} FROM {s}.events
                     WHERE position > {after} {filter} ORDER BY position {}",
                    limit_by(limit)
                ),
            )
        };
        let read_all_filtered_unprotected = unprotected("AND event_type = ANY($3)", "$1", "$2");
        let copy = |select: String| format!("COPY ({select}) TO STDOUT (FORMAT binary)");
        let copy_page = [
            copy(protected("", AFTER, LIMIT)),
            copy(unprotected("", AFTER, LIMIT)),
        ];
        let copy_part = copy(page(
            "SELECT NULL::int8",
            &format!("{pending}::int4 * {PENDING} + ({UPTO} < {bound})::int4 * {COVERED}"),
            format!(
                "SELECT {cols} FROM {s}.events
                 WHERE position > {AFTER} AND position <= {UPTO} AND position < {bound}
                 ORDER BY position {}",
                limit_by(LIMIT)
            ),
        ));
        let head = format!(
            "SELECT (SELECT max(position) FROM {s}.events WHERE position < {bound}) AS head,
                    {pending} AS pending"
        );
        let head_unprotected =
            format!("SELECT max(position) AS head, false AS pending FROM {s}.events");
        // `ORDER BY … LIMIT 1` rather than `EXISTS`: the planner then walks
        // the primary key from the cursor instead of scanning the table.
        let probe = format!(
            "SELECT (SELECT position FROM {s}.events WHERE position > $1 AND position < {bound}
                     ORDER BY position LIMIT 1) IS NOT NULL AS visible,
                    (SELECT position FROM {s}.events WHERE position > $1
                     ORDER BY position LIMIT 1) IS NOT NULL AS pending"
        );
        let probe_unprotected = format!(
            "SELECT EXISTS (SELECT 1 FROM {s}.events WHERE position > $1) AS visible, false AS pending"
        );
        let channel = format!("{schema}_events");
        Ok(Self {
            create_schema: format!("CREATE SCHEMA IF NOT EXISTS {s}"),
            set_search_path: format!("SET search_path TO {s}"),
            append,
            append_exact: exact,
            append_any: any,
            replay_stream: format!(
                "SELECT position, version, event_type, schema_version, payload
                 FROM {s}.events WHERE stream_id = $1 AND version >= $2"
            ),
            // The snapshot's row first (no position), then the events after
            // it: the branches of a `UNION ALL` come in order, and the reader
            // checks that the snapshot row comes first. The replays leave
            // out `ORDER BY` and put events in version order themselves
            // (`InVersionOrder`: no sort on the server).
            replay_from_snapshot: format!(
                "SELECT NULL::bigint AS position, version, NULL::text AS event_type,
                        state_version AS schema_version, state AS payload, taken_at
                 FROM {s}.snapshots WHERE stream_id = $1
                 UNION ALL
                 (SELECT position, version, event_type, schema_version, payload, NULL::timestamptz
                  FROM {s}.events
                  WHERE stream_id = $1
                    AND version > COALESCE((SELECT version FROM {s}.snapshots WHERE stream_id = $1), 0))"
            ),
            read_stream: format!(
                "SELECT {cols} FROM {s}.events WHERE stream_id = $1 AND version >= $2
                 ORDER BY version {}",
                limit_by("$3")
            ),
            stream_version: format!(
                "SELECT COALESCE(MAX(version), 0) AS version FROM {s}.events WHERE stream_id = $1"
            ),
            read_all_filtered,
            read_all_filtered_unprotected,
            copy_page,
            copy_part,
            head,
            head_unprotected,
            probe,
            probe_unprotected,
            find_key: format!(
                "SELECT stream_id, first_version, last_version, first_position, last_position
                 FROM {s}.idempotency_keys WHERE key = $1"
            ),
            // A notification needs no durability: committing it without
            // waiting for the WAL flush keeps it off the appends' path.
            notify: format!(
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify('{channel}', '')"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots (stream_id, version, state_version, state, taken_at)
                 VALUES ($1, $2, $3, $4::json, $5)
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,
                     state_version = excluded.state_version, state = excluded.state,
                     taken_at = excluded.taken_at
                 WHERE snapshots.version <= excluded.version
                    OR snapshots.state_version <> excluded.state_version"
            ),
            load_snapshot: format!(
                "SELECT version, state_version AS schema_version, state AS payload, taken_at
                 FROM {s}.snapshots WHERE stream_id = $1"
            ),
            load_checkpoint: format!(
                "SELECT position, version FROM {s}.checkpoints WHERE projection = $1"
            ),
            save_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (projection, position, version) VALUES ($1, $2, $3)
                 ON CONFLICT (projection) DO UPDATE SET position = excluded.position,
                     version = excluded.version, updated_at = now()"
            ),
            park: format!(
                "INSERT INTO {s}.parked_events (projection, position, stream_id, version, event_id,
                     event_type, schema_version, payload, metadata, recorded_at, error, parked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json, $9::json, $10, $11, $12)
                 ON CONFLICT (projection, position) DO UPDATE SET stream_id = excluded.stream_id,
                     version = excluded.version, event_id = excluded.event_id,
                     event_type = excluded.event_type, schema_version = excluded.schema_version,
                     payload = excluded.payload, metadata = excluded.metadata,
                     recorded_at = excluded.recorded_at, error = excluded.error,
                     parked_at = excluded.parked_at"
            ),
            parked: format!(
                "SELECT {cols}, error, parked_at FROM {s}.parked_events WHERE projection = $1
                 ORDER BY position"
            ),
            unpark: format!("DELETE FROM {s}.parked_events WHERE projection = $1 AND position = $2"),
            // A returned row means the version was recorded. The upsert's row
            // lock makes a concurrent claim of the same stream wait for this
            // transaction, then compare with what it committed.
            claim: format!(
                "INSERT INTO {s}.inbox (consumer, stream_id, version) VALUES ($1, $2, $3)
                 ON CONFLICT (consumer, stream_id) DO UPDATE SET version = excluded.version
                 WHERE inbox.version < excluded.version
                 RETURNING 1"
            ),
            reset_claims: format!("DELETE FROM {s}.inbox WHERE consumer = $1"),
            lease_key: format!("{schema}.projection."),
            channel,
            schema: schema.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["es", "orders_2", "_private", "a"] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(MAX_SCHEMA_LEN + 1);
        for bad in [
            "",
            "Es",
            "1abc",
            "es-events",
            "es events",
            "es\"; DROP TABLE x; --",
            "é",
            "pg_catalog",
            "information_schema",
            too_long.as_str(),
        ] {
            let err = validate_schema(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid schema name"), "{err}");
        }
        assert!(validate_schema(&"a".repeat(MAX_SCHEMA_LEN)).is_ok());
    }

    #[test]
    fn statements_name_the_schema_quoted() {
        let sql = Statements::new("shop").unwrap();
        assert!(sql.append.contains("INSERT INTO \"shop\".events"));
        let page = sql.copy_page(true, 5, 10);
        assert!(page.contains("pg_snapshot_xmin(pg_current_snapshot())"));
        assert!(page.contains("ORDER BY position"));
        assert!(page.contains("position > 5") && page.contains("(SELECT 10::int8)"));
        assert!(!sql.copy_page(false, 5, 10).contains("pg_snapshot_xmin"));
        assert_eq!(sql.channel, "shop_events");
        assert!(sql.notify.contains("pg_notify('shop_events'"));
        assert!(sql.claim.contains("INSERT INTO \"shop\".inbox"));
        assert!(sql.reset_claims.contains("DELETE FROM \"shop\".inbox"));
        assert!(Statements::new("Shop").is_err());
    }
}
