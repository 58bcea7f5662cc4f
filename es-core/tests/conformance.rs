//! The store conformance suite against the in-memory store.

es_core::store_conformance_tests!(async { es_core::InMemoryStore::new() });
