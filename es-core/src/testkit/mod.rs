//! Tools to test domain code and stores (feature `testkit`).
//!
//! - [`AggregateTest`]: given/when/then for an aggregate's pure functions,
//!   with a readable diff on failure.
//! - [`conformance`]: the store conformance suite, one async function per
//!   behaviour, and [`store_conformance_tests!`](crate::store_conformance_tests)
//!   to run all of them against a backend:
//!
//! ```
//! es_core::store_conformance_tests!(async { es_core::InMemoryStore::new() });
//! ```

mod aggregate_test;
pub mod conformance;

pub use aggregate_test::{AggregateOutcome, AggregateTest};

/// Runs a future to completion on a new multi-threaded tokio runtime; used by
/// the tests that [`store_conformance_tests!`](crate::store_conformance_tests) writes.
///
/// # Panics
///
/// When the runtime cannot be built, or when the future panics (a failed
/// assertion).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the test")
        .block_on(future)
}
