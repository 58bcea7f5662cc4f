//! The es-core store conformance suite against the SQLite store: each test
//! on a fresh database file in a temporary directory of its own, and again
//! on `:memory:`; the inbox's claims likewise.

es_core::store_conformance_tests!(async {
    es_sqlite::SqliteEventStore::open_temporary()
        .await
        .expect("a temporary SQLite store")
});

/// The same suite on an in-memory database (one connection for everything).
mod in_memory {
    es_core::store_conformance_tests!(async {
        es_sqlite::SqliteEventStore::open(":memory:")
            .await
            .expect("an in-memory SQLite store")
    });
}

/// The inbox's claims, in the store's transaction.
#[test]
fn inbox_claims() {
    es_core::testkit::block_on(async {
        let store = es_sqlite::SqliteEventStore::open_temporary()
            .await
            .expect("a temporary SQLite store");
        es_core::testkit::conformance::inbox_claims::<es_sqlite::SqliteTx, _>(store).await;
    });
}

/// The inbox's claims on an in-memory database.
#[test]
fn inbox_claims_in_memory() {
    es_core::testkit::block_on(async {
        let store = es_sqlite::SqliteEventStore::open(":memory:")
            .await
            .expect("an in-memory SQLite store");
        es_core::testkit::conformance::inbox_claims::<es_sqlite::SqliteTx, _>(store).await;
    });
}

/// A claim in a transaction of another store is refused: it would be
/// recorded in the other store's file.
#[test]
fn a_claim_in_another_stores_transaction_is_refused() {
    use es_core::{Inbox, StreamId, Version};
    es_core::testkit::block_on(async {
        let store = es_sqlite::SqliteEventStore::open_temporary().await.unwrap();
        let other = es_sqlite::SqliteEventStore::open_temporary().await.unwrap();
        let mut tx = other.transaction().await.unwrap();
        let error = store
            .claim(&mut tx, "summary", &StreamId::new("order-1"), Version(1))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("another SQLite store"),
            "{error}"
        );
        let error = store.reset_claims(&mut tx, "summary").await.unwrap_err();
        assert!(
            error.to_string().contains("another SQLite store"),
            "{error}"
        );
    });
}
