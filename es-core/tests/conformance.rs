//! The store conformance suite against the in-memory store.

es_core::store_conformance_tests!(async { es_core::InMemoryStore::new() });

#[test]
fn inbox_claims() {
    es_core::testkit::block_on(es_core::testkit::conformance::inbox_claims::<(), _>(
        es_core::InMemoryStore::new(),
    ));
}
