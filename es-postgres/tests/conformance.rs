//! The es-core store conformance suite against PostgreSQL, each case in a
//! fresh schema of the local server (dropped afterwards).
//!
//! The cases run one at a time: the global log is gap-safe, so a reader
//! waits for every older transaction of the whole server to end, and the
//! suite's read-your-writes checks would see the other cases' transactions.

mod common;

es_core::store_conformance_tests!(async { common::fixture(Some(common::serial().await)).await });

/// The inbox's claims, in the store's transaction (skipped outside CI when
/// the server is missing).
#[test]
fn inbox_claims() {
    es_core::testkit::block_on(async {
        let _serial = common::serial().await;
        common::with_store(es_postgres::PgStoreOptions::new(), 4, |store| async move {
            es_core::testkit::conformance::inbox_claims::<es_postgres::PgTx, _>(store).await;
        })
        .await;
    });
}
