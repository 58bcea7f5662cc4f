//! The es-core store conformance suite against PostgreSQL, each case in a
//! fresh schema of the local server (dropped afterwards).
//!
//! The cases run one at a time: the global log is gap-safe, so a reader
//! waits for every older transaction of the whole server to end, and the
//! suite's read-your-writes checks would see the other cases' transactions.

mod common;

es_core::store_conformance_tests!(async {
    common::TestStore::new(Some(common::serial().await)).await
});
