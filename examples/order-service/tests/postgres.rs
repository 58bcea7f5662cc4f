//! The service on PostgreSQL (`--store postgres`): the lifecycle, a restart
//! that reopens the same schema, rebuilds, the saga across a crash and a
//! reopen, and the real server. Each test gets a schema of its own on the
//! server at 127.0.0.1:5432 (user `postgres`, database `test`), dropped at
//! its end. Without a server the tests say so and pass, except under
//! `CI=true`, where they fail.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use clap::Parser;
use common::{line, order_lifecycle, FlakyStore, TestApp};
use es_core::{Checkpoint, ContextProvider, EventStore};
use es_postgres::{PgEventStore, PgTx};
use order_service::{Config, PgReadModels};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A connection pool for administration, or `None` when there is no server
/// (a failure under CI).
async fn server() -> Option<PgPool> {
    static CLEANED: OnceCell<()> = OnceCell::const_new();
    let connected = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(URL)
        .await;
    match connected {
        Ok(pool) => {
            CLEANED.get_or_init(|| clean_stale_schemas(&pool)).await;
            Some(pool)
        }
        Err(error) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("no PostgreSQL server at {URL}: {error}")
        }
        Err(error) => {
            eprintln!("skipped: no PostgreSQL server at {URL}: {error}");
            None
        }
    }
}

/// Drops the schemas of test processes that are gone.
async fn clean_stale_schemas(pool: &PgPool) {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'order\\_service\\_t%'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    for schema in schemas {
        let pid = schema
            .trim_start_matches("order_service_t")
            .split('_')
            .next()
            .unwrap_or_default();
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(pool)
                .await;
        }
    }
}

/// A schema of its own for one test, dropped by [`Schema::drop_now`].
struct Schema {
    name: String,
    admin: PgPool,
}

impl Schema {
    async fn fresh() -> Option<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let admin = server().await?;
        let name = format!(
            "order_service_t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Some(Self { name, admin })
    }

    async fn open(&self) -> (PgEventStore, PgReadModels) {
        let store = PgEventStore::options()
            .schema(self.name.clone())
            .max_connections(8)
            .connect(URL)
            .await
            .unwrap();
        let read_models = PgReadModels::open(store.clone()).await.unwrap();
        (store, read_models)
    }

    async fn drop_now(self) {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_order_lifecycle_on_postgres() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let (store, read_models) = schema.open().await;
    let t = TestApp::started(store.clone(), read_models).await;
    order_lifecycle(&t).await;
    t.app.shutdown().await;
    drop(t);
    store.pool().close().await;
    schema.drop_now().await;
}

#[tokio::test]
async fn orders_and_read_models_survive_a_restart_on_postgres() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let (store, read_models) = schema.open().await;
    let t = TestApp::started(store.clone(), read_models).await;
    let id = order_lifecycle(&t).await;
    t.settle().await;
    let order = t.order(&id).await;
    let read = t.read_models().await;
    let head = store.head().await.unwrap();
    t.app.shutdown().await;
    drop(t);
    store.pool().close().await;

    let (store, read_models) = schema.open().await;
    let t = TestApp::stopped(store.clone(), read_models);
    assert_eq!(t.read_models().await, read);
    assert_eq!(t.order(&id).await, order);
    t.app.start().await;
    t.settle().await;
    assert_eq!(store.head().await.unwrap(), head, "nothing handled twice");
    assert_eq!(t.read_models().await, read);
    t.app.shutdown().await;
    drop(t);
    store.pool().close().await;
    schema.drop_now().await;
}

#[tokio::test]
async fn a_rebuild_gives_the_same_read_models_on_postgres() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let (store, read_models) = schema.open().await;
    let t = TestApp::started(store.clone(), read_models).await;
    order_lifecycle(&t).await;
    t.settle().await;
    let before = t.read_models().await;
    for name in ["order_summaries", "customer_totals", "checkout"] {
        t.call(
            Method::POST,
            &format!("/admin/projections/{name}/rebuild"),
            None,
        )
        .await
        .expect(StatusCode::OK);
    }
    t.settle().await;
    assert_eq!(t.read_models().await, before);
    t.app.shutdown().await;
    drop(t);
    store.pool().close().await;
    schema.drop_now().await;
}

/// The flaky wrapper hands the PostgreSQL transaction through to the store.
#[async_trait]
impl ContextProvider<PgTx> for FlakyStore<PgEventStore> {
    async fn begin(&self) -> es_core::Result<PgTx> {
        <PgEventStore as ContextProvider<PgTx>>::begin(self.inner()).await
    }

    async fn commit(
        &self,
        context: PgTx,
        projection: &str,
        checkpoint: Option<Checkpoint>,
    ) -> es_core::Result<()> {
        <PgEventStore as ContextProvider<PgTx>>::commit(
            self.inner(),
            context,
            projection,
            checkpoint,
        )
        .await
    }

    fn is_transactional(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_saga_crash_on_postgres_completes_exactly_once_after_reopening() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let (store, read_models) = schema.open().await;
    let flaky = FlakyStore::new(store.clone());
    let t = TestApp::started(flaky.clone(), read_models).await;
    t.restock("mug", 10).await;
    t.restock("tea", 10).await;
    flaky.crash_on_key_suffix(Some("/1"));
    let id = t
        .place("ada", json!([line("mug", 2, 1250), line("tea", 1, 899)]))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while flaky.crashes() == 0 {
        assert!(Instant::now() < deadline, "the saga never reached step 1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.app.shutdown().await;
    assert_eq!(t.stock("tea").await["reserved"], 0);
    drop(t);
    drop(flaky);
    store.pool().close().await;

    let (store, read_models) = schema.open().await;
    let t = TestApp::started(store.clone(), read_models).await;
    t.settle().await;
    assert_eq!(t.order(&id).await["status"], "confirmed");
    assert_eq!(t.stock("mug").await["reserved"], 2);
    assert_eq!(t.stock("tea").await["reserved"], 1);
    assert_eq!(t.stream_len(&format!("order-{id}")).await, 2);
    assert_eq!(t.stream_len("inventory-mug").await, 2);
    assert_eq!(t.stream_len("inventory-tea").await, 2);
    t.app.shutdown().await;
    drop(t);
    store.pool().close().await;
    schema.drop_now().await;
}

#[tokio::test]
async fn the_server_runs_on_postgres_until_shutdown() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = Config::try_parse_from([
        "order-service",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--store",
        "postgres",
        "--database-url",
        URL,
        "--database-schema",
        &schema.name,
    ])
    .unwrap();
    // KAFKA_BOOTSTRAP may be set for the Kafka tests: publishing is theirs.
    config.kafka_bootstrap = None;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Not spawned: `run` also holds the SQLite branch, whose open is not `Send`.
    let server = order_service::run(config, async {
        let _ = stopped.await;
    });
    let client = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(stream) => break stream,
                Err(error) => {
                    assert!(Instant::now() < deadline, "never listened: {error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        stream
            .write_all(b"GET /ready HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        stop.send(()).unwrap();
    };
    let (served, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server, client)
    })
    .await
    .expect("the server stops on the signal");
    served.unwrap();
    schema.drop_now().await;
}

#[tokio::test]
async fn postgres_needs_a_postgres_url() {
    let config = Config::try_parse_from([
        "order-service",
        "--store",
        "postgres",
        "--database-url",
        "./order-service.db",
        "--listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    let error = order_service::run(config, async {}).await.unwrap_err();
    assert!(
        error.to_string().contains("needs a PostgreSQL URL"),
        "{error}"
    );
}
