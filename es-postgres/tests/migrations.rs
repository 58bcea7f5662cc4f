//! A store can be opened without migrating its schema (for an application
//! role that may not change it), once a deploy step migrated it: it then
//! checks that every migration was applied, unchanged, and says which were
//! not. Migration 3 renumbers the log of an earlier store in the order it
//! had, with the positions that other tables keep.

mod common;

use es_core::{
    AppendOptions, CheckpointStore, EventFilter, EventId, EventStore, ExpectedVersion, LogSlice,
    Metadata, NewEvent, Position, RecordedEvent, StreamId,
};
use es_postgres::{PgEventStore, PgStoreOptions, MIGRATOR};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::time::{Duration, Instant};

fn checked(schema: &str) -> PgStoreOptions {
    PgStoreOptions::new()
        .schema(schema.to_owned())
        .run_migrations(false)
}

/// The error of opening `schema` without migrating it.
async fn refusal(pool: &PgPool, schema: &str) -> String {
    match checked(schema).open(pool.clone()).await {
        Ok(_) => panic!("schema `{schema}` opened while not ready"),
        Err(error) => error.to_string(),
    }
}

async fn execute(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}

/// Records in `table` a migration as applied.
async fn record_applied(
    pool: &PgPool,
    table: &str,
    version: i64,
    description: &str,
    checksum: &[u8],
) {
    sqlx::query(&format!(
        "INSERT INTO {table} (version, description, success, checksum, execution_time)
         VALUES ($1, $2, true, $3, 0)"
    ))
    .bind(version)
    .bind(description)
    .bind(checksum)
    .execute(pool)
    .await
    .expect("record a migration");
}

#[tokio::test]
async fn a_store_that_does_not_migrate_checks_its_schema() {
    let Some(pool) = common::server(4).await else {
        return;
    };
    let schema = common::unique_schema();
    let table = format!("\"{schema}\"._sqlx_migrations");

    let error = refusal(&pool, &schema).await;
    assert!(error.contains("never migrated"), "{error}");
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(created, 0, "a check created the schema");

    let options = PgStoreOptions::new().schema(schema.clone());
    options.migrate(&pool).await.expect("migrate");
    options
        .migrate(&pool)
        .await
        .expect("migrate again: nothing to do");
    let store = checked(&schema).open(pool.clone()).await.expect("open");
    round_trip(&store, Position::START).await;

    // A migration changed after it was applied.
    let first = MIGRATOR.iter().next().expect("a migration");
    execute(
        &pool,
        &format!(
            "UPDATE {table} SET checksum = '\\x00' WHERE version = {}",
            first.version
        ),
    )
    .await;
    let error = refusal(&pool, &schema).await;
    assert!(
        error.contains(&format!("migration {} (", first.version))
            && error.contains("changed after it was applied"),
        "{error}"
    );
    sqlx::query(&format!(
        "UPDATE {table} SET checksum = $1 WHERE version = $2"
    ))
    .bind(&*first.checksum)
    .bind(first.version)
    .execute(&pool)
    .await
    .unwrap();

    // A migration not applied.
    let last = MIGRATOR.iter().last().expect("a migration");
    execute(
        &pool,
        &format!("DELETE FROM {table} WHERE version = {}", last.version),
    )
    .await;
    let error = refusal(&pool, &schema).await;
    assert!(
        error.contains(&format!("{} ({})", last.version, last.description))
            && error.contains("not applied: migration"),
        "{error}"
    );
    record_applied(
        &pool,
        &table,
        last.version,
        &last.description,
        &last.checksum,
    )
    .await;
    checked(&schema)
        .open(pool.clone())
        .await
        .expect("open again once the record is back");

    // A migration of a later version of the store.
    record_applied(&pool, &table, 99_999_999, "later", &[0]).await;
    let error = refusal(&pool, &schema).await;
    assert!(
        error.contains("migration 99999999") && error.contains("does not know of"),
        "{error}"
    );

    pool.close().await;
    common::drop_schema(&schema).await;
}

#[tokio::test]
async fn a_role_that_may_only_write_rows_opens_a_migrated_store() {
    let Some(admin) = common::server(2).await else {
        return;
    };
    let schema = common::unique_schema();
    let role = format!("{schema}_app");
    PgStoreOptions::new()
        .schema(schema.clone())
        .migrate(&admin)
        .await
        .expect("migrate as the owner");
    for grant in [
        format!("CREATE ROLE \"{role}\" LOGIN"),
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\""),
    ] {
        execute(&admin, &grant).await;
    }
    let app = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            common::url()
                .parse::<PgConnectOptions>()
                .expect("the test server's url")
                .username(&role),
        )
        .await
        .expect("connect as the application role");
    // Without rights to the tables, not even the check can read them.
    let unreadable = checked(&schema)
        .open(app.clone())
        .await
        .err()
        .map(|e| e.to_string());
    // Rights to the rows are enough (the store uses no sequence).
    execute(
        &admin,
        &format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\""
        ),
    )
    .await;
    // Migrating needs rights the role does not have.
    let migrating = PgStoreOptions::new()
        .schema(schema.clone())
        .open(app.clone())
        .await
        .err()
        .map(|e| e.to_string());
    let opened = checked(&schema).open(app.clone()).await;
    if let Ok(store) = &opened {
        round_trip(store, Position::START).await;
        store.close().await;
    }
    app.close().await;
    common::drop_schema(&schema).await;
    execute(&admin, &format!("DROP OWNED BY \"{role}\"")).await;
    execute(&admin, &format!("DROP ROLE \"{role}\"")).await;
    let unreadable = unreadable.expect("the check read tables it may not read");
    assert!(
        unreadable.contains(&format!(
            "cannot read the migrations applied to schema `{schema}`"
        )),
        "{unreadable}"
    );
    let migrating = migrating.expect("the role migrated the schema");
    assert!(migrating.contains("cannot create schema"), "{migrating}");
    opened.expect("open as the application role");
}

/// Creates `schema` with the migrations before `version` applied, as a
/// store of an earlier version left it.
async fn migrated_before(pool: &PgPool, schema: &str, version: i64) {
    let earlier = Migrator {
        migrations: MIGRATOR
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    };
    let mut conn = pool.acquire().await.expect("a connection");
    conn.close_on_drop();
    for sql in [
        format!("CREATE SCHEMA \"{schema}\""),
        format!("SET search_path TO \"{schema}\""),
    ] {
        sqlx::query(&sql).execute(&mut *conn).await.expect(&sql);
    }
    earlier
        .run_direct(&mut *conn)
        .await
        .expect("the earlier migrations");
}

/// A pool to the test server and a fresh schema as stores before migration
/// 3 left it; `None` when the server is missing outside CI.
async fn before_renumbering(max_connections: u32) -> Option<(PgPool, String)> {
    let pool = common::server(max_connections).await?;
    let schema = common::unique_schema();
    migrated_before(&pool, &schema, 3).await;
    Some((pool, schema))
}

/// Inserts an event the way stores before migration 3 did (the position
/// from a sequence, the transaction id from the column's default) and
/// answers its position.
async fn insert_before_3(
    conn: &mut PgConnection,
    schema: &str,
    stream: &str,
    version: i64,
    note: &str,
) -> i64 {
    sqlx::query_scalar(&format!(
        "INSERT INTO \"{schema}\".events
             (stream_id, version, event_id, event_type, schema_version, payload, metadata, recorded_at)
         VALUES ($1, $2, gen_random_uuid(), 'Noted', 1, json_build_object('note', $3::text), '{{}}', now())
         RETURNING position"
    ))
    .bind(stream)
    .bind(version)
    .bind(note)
    .fetch_one(conn)
    .await
    .expect("insert an event the earlier way")
}

fn note(event: &RecordedEvent) -> String {
    let payload = event.payload.to_value().expect("a JSON payload");
    payload["note"].as_str().expect("a note").to_owned()
}

/// Every message of an error and its sources.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text = format!("{text}: {next}");
        source = next.source();
    }
    text
}

#[tokio::test]
async fn positions_of_an_earlier_store_are_renumbered_in_their_log_order() {
    let Some((pool, schema)) = before_renumbering(4).await else {
        return;
    };

    // Two transactions that commit out of position order: `a` writes
    // position 1, `b` writes 2 and commits, `a` writes 3 and commits. The
    // log's order was (transaction id, position): a1, a2, b1, then c1.
    let mut a = PgConnection::connect(&common::url()).await.unwrap();
    let mut b = PgConnection::connect(&common::url()).await.unwrap();
    execute_on(&mut a, "BEGIN").await;
    let a1 = insert_before_3(&mut a, &schema, "a", 1, "a1").await;
    execute_on(&mut b, "BEGIN").await;
    let b1 = insert_before_3(&mut b, &schema, "b", 1, "b1").await;
    execute_on(&mut b, "COMMIT").await;
    let a2 = insert_before_3(&mut a, &schema, "a", 2, "a2").await;
    execute_on(&mut a, "COMMIT").await;
    let c1 = insert_before_3(&mut a, &schema, "c", 1, "c1").await;
    assert_eq!((a1, b1, a2, c1), (1, 2, 3, 4));
    let s = format!("\"{schema}\"");
    for sql in [
        // After a2; before the first event; after b1; after a position
        // that no event has (it stood after the nearest event before it).
        format!(
            "INSERT INTO {s}.checkpoints (projection, position, version)
             VALUES ('after_a2', 3, 1), ('start', 0, 1), ('after_b1', 2, 1), ('beyond', 9, 1)"
        ),
        format!(
            "INSERT INTO {s}.parked_events (projection, position, stream_id, version, event_id,
                 event_type, schema_version, payload, metadata, recorded_at, error, parked_at)
             SELECT 'after_a2', position, stream_id, version, event_id, event_type,
                    schema_version, payload, metadata, recorded_at, 'failed', now()
             FROM {s}.events WHERE position = 3"
        ),
        format!(
            "INSERT INTO {s}.idempotency_keys
                 (key, stream_id, first_version, last_version, first_position, last_position)
             VALUES ('place-c', 'c', 1, 1, 4, 4)"
        ),
    ] {
        execute(&pool, &sql).await;
    }

    let store = PgStoreOptions::new()
        .schema(schema.clone())
        .open(pool.clone())
        .await
        .expect("open, which renumbers the log");
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1
         ORDER BY table_name",
    )
    .bind(&schema)
    .fetch_all(&pool)
    .await
    .expect("list the tables");
    assert_eq!(
        left,
        [
            "_sqlx_migrations",
            "checkpoints",
            "events",
            "idempotency_keys",
            "inbox",
            "parked_events",
            "snapshots"
        ],
        "the migration leaves no table of its own"
    );
    let log = read_readable(&store, Position::START, 4).await;
    let notes: Vec<String> = log.events.iter().map(note).collect();
    assert_eq!(notes, ["a1", "a2", "b1", "c1"], "the log keeps its order");
    let position = |n: &str| log.events[notes.iter().position(|x| x == n).unwrap()].position;
    assert!(log.events.windows(2).all(|w| w[0].position < w[1].position));
    // One transaction's events share its range, numbered from its start.
    assert_eq!(position("a1").0 >> 20, position("a2").0 >> 20);
    assert_eq!(position("a1").0 & 0xF_FFFF, 0);
    assert_eq!(position("a2").0, position("a1").0 + 1);
    assert_eq!(position("b1").0 & 0xF_FFFF, 0);

    let checkpoint = |name: &'static str| {
        let store = store.clone();
        async move {
            store
                .load_checkpoint(name)
                .await
                .expect("load a checkpoint")
                .expect("a checkpoint")
                .position
        }
    };
    assert_eq!(checkpoint("after_a2").await, position("a2"));
    assert_eq!(checkpoint("start").await, Position::START);
    assert_eq!(checkpoint("after_b1").await, position("b1"));
    assert_eq!(checkpoint("beyond").await, position("c1"));
    let after_a2 = read_readable(&store, position("a2"), 2).await;
    let rest: Vec<String> = after_a2.events.iter().map(note).collect();
    assert_eq!(rest, ["b1", "c1"], "a checkpoint goes on where it stood");

    let parked = store.parked("after_a2").await.expect("parked events");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.position, position("a2"));
    assert_eq!(note(&parked[0].event), "a2");
    let key = store
        .find_idempotency_key("place-c")
        .await
        .expect("look up the key")
        .expect("the key");
    assert_eq!(
        (key.first_position, key.last_position),
        (position("c1"), position("c1"))
    );

    // Appends after the migration come after every renumbered event.
    round_trip(&store, position("c1")).await;
    store.close().await;
    pool.close().await;
    common::drop_schema(&schema).await;
}

/// Appends one event and reads it back: the only event of the log after
/// `after`.
async fn round_trip(store: &PgEventStore, after: Position) {
    let stream = StreamId::new("d");
    let committed = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_id: EventId::new(),
                event_type: "Noted".to_owned(),
                schema_version: 1,
                payload: serde_json::json!({ "note": "d1" }).into(),
                metadata: Metadata::default(),
            }],
            &AppendOptions::default(),
        )
        .await
        .expect("append")
        .committed()
        .clone();
    assert!(committed.first_position > after);
    let log = read_readable(store, after, 1).await;
    let notes: Vec<String> = log.events.iter().map(note).collect();
    assert_eq!(notes, ["d1"]);
    assert_eq!(log.events[0].stream_id, stream);
}

/// The log after `after` once at least `n` events are readable (or after
/// two minutes): a long transaction of a test beside this one (the insert
/// of 2^20 + 1 events below) holds every reader back until it ends, longer
/// than a read's own short wait.
async fn read_readable(store: &PgEventStore, after: Position, n: usize) -> LogSlice {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = store
            .read_all(after, &EventFilter::all(), 100)
            .await
            .expect("read the log");
        if log.events.len() >= n || Instant::now() >= deadline {
            return log;
        }
        store
            .wait_for_events(log.next, Duration::from_secs(1))
            .await
            .expect("wait for events");
    }
}

async fn execute_on(conn: &mut PgConnection, sql: &str) {
    sqlx::query(sql).execute(conn).await.expect(sql);
}

#[tokio::test]
async fn renumbering_refuses_a_transaction_larger_than_a_range_and_changes_nothing() {
    let Some((pool, schema)) = before_renumbering(2).await else {
        return;
    };
    let s = format!("\"{schema}\"");
    // One transaction of 2^20 + 1 events.
    execute(
        &pool,
        &format!(
            "INSERT INTO {s}.events
                 (stream_id, version, event_id, event_type, schema_version, payload, metadata, recorded_at)
             SELECT 'bulk', g, gen_random_uuid(), 'Noted', 1, '{{}}', '{{}}', now()
             FROM generate_series(1, 1048577) AS g"
        ),
    )
    .await;
    let error = PgStoreOptions::new()
        .schema(schema.clone())
        .migrate(&pool)
        .await
        .expect_err("a transaction too large to renumber");
    let error = chain(&error);
    assert!(
        error.contains("cannot renumber the event log")
            && error.contains("one transaction appended 1048577 events"),
        "{error}"
    );
    let (count, first, last): (i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), min(position), max(position) FROM {s}.events"
    ))
    .fetch_one(&pool)
    .await
    .expect("count the events");
    assert_eq!((count, first, last), (1_048_577, 1, 1_048_577));
    let applied: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {s}._sqlx_migrations WHERE version >= 3"
    ))
    .fetch_one(&pool)
    .await
    .expect("read the applied migrations");
    assert_eq!(applied, 0, "the migration is not recorded");
    pool.close().await;
    common::drop_schema(&schema).await;
}
