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

/// Snapshots an event family's catalog (types, aliases, versions, fields)
/// with insta, so a change of an event's shape without a version bump fails
/// the test that calls it. The snapshot is named `catalog_<Family>` and lives
/// in `snapshots/` beside the test; review changes with `cargo insta review`.
///
/// ```no_run
/// # use es_core::Event;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # enum OrderEvent { Placed { total: u64 } }
/// #[test]
/// fn order_events_are_versioned() {
///     es_core::assert_catalog!(OrderEvent);
/// }
/// ```
#[macro_export]
macro_rules! assert_catalog {
    ($family:ty) => {
        $crate::__private::insta::with_settings!({ omit_expression => true }, {
            $crate::__private::insta::assert_snapshot!(
                ::std::format!("catalog_{}", <$family as $crate::Event>::schema().family()),
                <$family as $crate::Event>::catalog().to_string()
            );
        })
    };
}
