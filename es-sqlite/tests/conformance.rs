//! The es-core store conformance suite against the SQLite store: each test
//! on a fresh database file in a temporary directory of its own, and again
//! on `:memory:`.

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
