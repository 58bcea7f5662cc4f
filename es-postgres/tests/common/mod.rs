//! Helpers shared by the PostgreSQL tests: a fresh schema per test on the
//! local server (127.0.0.1:5432, user `postgres`, database `test`), dropped
//! when the test ends.
//!
//! When the server cannot be reached, tests fail with the reason when
//! `CI=true`, and are skipped with the reason printed otherwise.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod domain;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Once};
use std::time::Duration;

use es_postgres::{PgEventStore, PgStoreOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The local test server, or `ES_TEST_PG_URL` (which must also point at
/// 127.0.0.1).
pub fn url() -> String {
    std::env::var("ES_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// For a test whose prerequisite is missing: fails with `reason` when
/// `CI=true`, prints it as a skip otherwise (and the test returns).
pub fn skip_or_fail(reason: &str) {
    assert!(!in_ci(), "required when CI=true: {reason}");
    eprintln!("SKIPPED: {reason}");
}

/// A pool to the local server, or `None` (with the reason printed) when it
/// is missing outside CI. In CI a missing server fails the test.
pub async fn server(max_connections: u32) -> Option<PgPool> {
    match connect(max_connections).await {
        Ok(pool) => Some(pool),
        Err(error) if in_ci() => {
            panic!(
                "PostgreSQL is required at {} when CI=true, and it is unreachable: {error}",
                url()
            )
        }
        Err(error) => {
            eprintln!(
                "SKIPPED: PostgreSQL is unreachable at {} ({error}); start it to run this test",
                url()
            );
            None
        }
    }
}

/// A pool to the test server. One plain connection first, so that a
/// missing server fails at once instead of after the pool's retries.
async fn connect(max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgConnection::connect(&url()).await?.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url())
        .await?;
    clean_stale_schemas(&pool).await;
    Ok(pool)
}

/// A unique schema name: `es_t<pid>_<n>`.
pub fn unique_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "es_t{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops, once per process, test schemas left by processes that are gone
/// (a test run that was killed before it could clean up).
async fn clean_stale_schemas(pool: &PgPool) {
    static ONCE: Once = Once::new();
    let mut first = false;
    ONCE.call_once(|| first = true);
    if !first {
        return;
    }
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'es\\_t%\\_%'",
    )
    .fetch_all(pool)
    .await
    else {
        return;
    };
    for name in names {
        let Some(pid) = name
            .strip_prefix("es_t")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive =
            pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .execute(pool)
                .await;
        }
    }
}

/// Drops a schema on a connection of its own.
pub async fn drop_schema(schema: &str) {
    if let Ok(mut conn) = PgConnection::connect(&url()).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}

/// Opens a store in a fresh schema, runs `test` with it, then drops the
/// schema (see [`run_in_schema`]). Skips (returns) when the server is
/// missing outside CI.
pub async fn with_store<F, Fut>(options: PgStoreOptions, max_connections: u32, test: F)
where
    F: FnOnce(PgEventStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(pool) = server(max_connections).await else {
        return;
    };
    let schema = unique_schema();
    let store = options
        .schema(schema.clone())
        .open(pool)
        .await
        .expect("open the store in a fresh schema");
    run_in_schema(store, test).await;
}

/// Runs `test` with `store`, then closes the store's pool and drops its
/// schema (also when the test panics, whose panic is then resumed).
pub async fn run_in_schema<F, Fut>(store: PgEventStore, test: F)
where
    F: FnOnce(PgEventStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let pool = store.pool().clone();
    let schema = store.schema().to_owned();
    let outcome = tokio::spawn(test(store)).await;
    pool.close().await;
    drop_schema(&schema).await;
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("test task failed: {error}"),
        }
    }
}

/// Makes the tests of one binary that hold it run one at a time.
pub async fn serial() -> tokio::sync::OwnedMutexGuard<()> {
    static SERIAL: LazyLock<Arc<tokio::sync::Mutex<()>>> = LazyLock::new(Arc::default);
    Arc::clone(&SERIAL).lock_owned().await
}

/// Drops its schema when dropped, then lets the next serial test go.
#[derive(Debug)]
pub struct SchemaGuard(String, Option<tokio::sync::OwnedMutexGuard<()>>);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // Drop runs inside the test's runtime: clean up from a thread with
        // a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(drop_schema(&schema));
            }
        });
        let _ = cleanup.join();
    }
}

/// A [`PgEventStore`] in a fresh schema, with the guard that drops the
/// schema (and then lets the next serial test go) at the end of the case:
/// the conformance suite's fixture. Holds `serial` (if given) until then.
/// Panics when the server is missing: the suite's factory cannot skip.
pub async fn fixture(
    serial: Option<tokio::sync::OwnedMutexGuard<()>>,
) -> (PgEventStore, SchemaGuard) {
    let pool = connect(12).await.unwrap_or_else(|error| {
        panic!(
            "the conformance suite needs PostgreSQL at {} (user postgres, trust auth): {error}",
            url()
        )
    });
    let schema = unique_schema();
    let store = PgStoreOptions::new()
        .schema(schema.clone())
        .open(pool)
        .await
        .expect("open the store in a fresh schema");
    (store, SchemaGuard(schema, serial))
}

/// `count` events of type `Counted`, numbered from 0 in their payloads.
pub fn counted(count: usize) -> Vec<es_core::NewEvent> {
    (0..count)
        .map(|n| es_core::NewEvent {
            event_id: es_core::EventId::new(),
            event_type: "Counted".to_owned(),
            schema_version: 1,
            payload: serde_json::json!({ "n": n }).into(),
            metadata: es_core::Metadata::default(),
        })
        .collect()
}

/// One read of at most `limit` events of the whole log after `after`:
/// returned whole (`read_all`), or sent on in slices (`read_all_into`, as
/// the log reader reads) and joined here.
pub async fn read_log(
    store: &PgEventStore,
    after: es_core::Position,
    limit: usize,
    sent_on: bool,
) -> es_core::LogSlice {
    use es_core::{EventFilter, EventStore};
    if !sent_on {
        return store
            .read_all(after, &EventFilter::all(), limit)
            .await
            .expect("read the global log");
    }
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let end = store
        .read_all_into(after, &EventFilter::all(), limit, &sender)
        .await
        .expect("read the global log");
    drop(sender);
    let mut events = Vec::new();
    while let Some(slice) = receiver.recv().await {
        events.extend(slice.events);
    }
    assert_eq!(events.len(), end.events, "every event sent is counted");
    es_core::LogSlice {
        events,
        next: end.next,
    }
}
