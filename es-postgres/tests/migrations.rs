//! A store can be opened without migrating its schema (for an application
//! role that may not change it), once a deploy step migrated it: it then
//! checks that every migration was applied, unchanged, and says which were
//! not.

mod common;

use es_core::{
    AppendOptions, EventFilter, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Position,
    StreamId,
};
use es_postgres::{PgEventStore, PgStoreOptions, MIGRATOR};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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

/// Appends one event and reads it back from the log.
async fn round_trip(store: &PgEventStore) {
    let stream = StreamId::new("order-1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_id: EventId::new(),
                event_type: "Placed".to_owned(),
                schema_version: 1,
                payload: serde_json::json!({ "total": 5 }).into(),
                metadata: Metadata::default(),
            }],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    let log = store
        .read_all(Position::START, &EventFilter::all(), 10)
        .await
        .expect("read the log");
    assert_eq!(log.events.len(), 1);
    assert_eq!(log.events[0].stream_id, stream);
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
    round_trip(&store).await;

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
    for grant in [
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\""
        ),
        format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{role}\""),
    ] {
        execute(&admin, &grant).await;
    }
    // Migrating needs rights the role does not have.
    let migrating = PgStoreOptions::new()
        .schema(schema.clone())
        .open(app.clone())
        .await
        .err()
        .map(|e| e.to_string());
    let opened = checked(&schema).open(app.clone()).await;
    if let Ok(store) = &opened {
        round_trip(store).await;
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
