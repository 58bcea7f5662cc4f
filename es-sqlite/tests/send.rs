//! The store's futures can be spawned on a multi-threaded runtime.

use es_sqlite::{SqliteEventStore, SqliteStoreOptions};

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_is_send() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let opened = tokio::spawn(assert_send(async move {
        SqliteEventStore::open(&path).await.map(|_| ())
    }));
    opened.await.unwrap().unwrap();
    let path = dir.path().join("other.db");
    let with_options = tokio::spawn(async move {
        SqliteEventStore::open_with(path, SqliteStoreOptions::default())
            .await
            .map(|_| ())
    });
    with_options.await.unwrap().unwrap();
    tokio::spawn(async { SqliteEventStore::open_temporary().await.map(|_| ()) })
        .await
        .unwrap()
        .unwrap();
}
