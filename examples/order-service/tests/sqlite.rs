//! The service on its default store, SQLite: the lifecycle, a restart that
//! reopens the same file, rebuilds, the saga across a crash and a reopen,
//! and the real server on 127.0.0.1 with its graceful shutdown.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use clap::Parser;
use common::{http, line, order_lifecycle, FlakyStore, TestApp};
use es_core::{Checkpoint, ContextProvider, EventStore};
use es_sqlite::{SqliteEventStore, SqliteTx};
use order_service::{Config, SqliteReadModels};
use serde_json::json;

async fn open(path: &Path) -> (SqliteEventStore, SqliteReadModels) {
    let store = SqliteEventStore::open(path).await.unwrap();
    let read_models = SqliteReadModels::open(store.clone()).await.unwrap();
    (store, read_models)
}

#[tokio::test]
async fn the_order_lifecycle_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (store, read_models) = open(&dir.path().join("orders.db")).await;
    let t = TestApp::started(store.clone(), read_models).await;
    order_lifecycle(&t).await;
    t.app.shutdown().await;
    drop(t);
    store.close().await.unwrap();
}

#[tokio::test]
async fn orders_and_read_models_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("order-service.db");

    let (store, read_models) = open(&path).await;
    let t = TestApp::started(store.clone(), read_models).await;
    let id = order_lifecycle(&t).await;
    t.settle().await;
    let order = t.order(&id).await;
    let read = t.read_models().await;
    let head = store.head().await.unwrap();
    let mug = t.stock("mug").await;
    t.app.shutdown().await;
    drop(t);
    store.close().await.unwrap();

    // Reopen the same file: the read models are there before any projection runs.
    let (store, read_models) = open(&path).await;
    let t = TestApp::stopped(store.clone(), read_models);
    assert_eq!(t.read_models().await, read);
    assert_eq!(t.order(&id).await, order);
    assert_eq!(t.stock("mug").await, mug);
    let projections = t.get("/admin/projections").await.expect(StatusCode::OK);
    for p in projections.as_array().unwrap() {
        assert_eq!(p["position"], head.get(), "{p}");
        assert_eq!(p["lag"], 0, "{p}");
    }

    // Started again, the projections resume at their checkpoints: nothing is
    // handled twice, and the saga appends nothing.
    t.app.start().await;
    t.settle().await;
    assert_eq!(store.head().await.unwrap(), head);
    assert_eq!(t.read_models().await, read);

    // And the service goes on.
    let next = t.place("bo", json!([line("mug", 1, 1250)])).await;
    t.settle().await;
    assert_eq!(t.order(&next).await["status"], "confirmed");
    t.app.shutdown().await;
    drop(t);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_rebuild_gives_the_same_read_models_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (store, read_models) = open(&dir.path().join("orders.db")).await;
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
    store.close().await.unwrap();
}

/// The flaky wrapper hands the SQLite transaction through to the store, so
/// the read models keep committing with their checkpoints.
#[async_trait]
impl ContextProvider<SqliteTx> for FlakyStore<SqliteEventStore> {
    async fn begin(&self) -> es_core::Result<SqliteTx> {
        <SqliteEventStore as ContextProvider<SqliteTx>>::begin(self.inner()).await
    }

    async fn commit(
        &self,
        context: SqliteTx,
        projection: &str,
        checkpoint: Option<Checkpoint>,
    ) -> es_core::Result<()> {
        <SqliteEventStore as ContextProvider<SqliteTx>>::commit(
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
async fn a_saga_crash_on_sqlite_completes_exactly_once_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.db");
    let (store, read_models) = open(&path).await;
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
    store.close().await.unwrap();

    let (store, read_models) = open(&path).await;
    let t = TestApp::started(store.clone(), read_models).await;
    t.settle().await;
    assert_eq!(t.order(&id).await["status"], "confirmed");
    assert_eq!(t.stock("mug").await["reserved"], 2);
    assert_eq!(t.stock("tea").await["reserved"], 1);
    assert_eq!(t.stream_len(&format!("order-{id}")).await, 2);
    assert_eq!(t.stream_len("inventory-mug").await, 2);
    assert_eq!(t.stream_len("inventory-tea").await, 2);
    let listed = t
        .get("/orders?status=confirmed")
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed[0]["order_id"], json!(id));
    t.app.shutdown().await;
    drop(t);
    store.close().await.unwrap();
}

#[tokio::test]
async fn the_server_runs_on_sqlite_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("served.db");
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
        "sqlite",
        "--database-url",
        path.to_str().unwrap(),
        "--shutdown-grace-secs",
        "5",
    ])
    .unwrap();
    // KAFKA_BOOTSTRAP may be set for the Kafka tests: publishing is theirs.
    config.kafka_bootstrap = None;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Not spawned: the future of `SqliteEventStore::open` is not `Send`.
    let server = order_service::run(config, async {
        let _ = stopped.await;
    });
    let client = async {
        let health = http(
            port,
            "GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.contains("x-request-id"), "{health}");
        let body = r#"{"quantity": 4}"#;
        let request = format!(
            "POST /inventory/mug/restock HTTP/1.1\r\nhost: 127.0.0.1\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let restock = http(port, &request).await;
        assert!(restock.starts_with("HTTP/1.1 200"), "{restock}");

        stop.send(()).unwrap();
    };
    let (served, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(server, client)
    })
    .await
    .expect("the server stops on the signal");
    served.unwrap();

    // The file was closed cleanly and holds the event.
    let (store, _) = open(&path).await;
    assert_eq!(store.head().await.unwrap().get(), 1);
    store.close().await.unwrap();
}
