//! The catalog snapshot catches a change of an event's shape: the same family
//! with one field's type changed has another catalog than the stored snapshot.

mod before {
    use serde::{Deserialize, Serialize};

    #[derive(es_core::Event, Serialize, Deserialize)]
    #[event(family = "Shape")]
    pub(crate) enum Shape {
        Paid { amount: u32, currency: String },
    }
}

mod after {
    use serde::{Deserialize, Serialize};

    /// `amount` widened from `u32` to `u64` without a version bump.
    #[derive(es_core::Event, Serialize, Deserialize)]
    #[event(family = "Shape")]
    pub(crate) enum Shape {
        Paid { amount: u64, currency: String },
    }
}

#[test]
fn the_stored_catalog_matches_the_code() {
    es_core::assert_catalog!(before::Shape);
}

#[test]
fn a_field_type_change_changes_the_catalog() {
    use es_core::Event as _;
    let before = before::Shape::catalog().to_string();
    let after = after::Shape::catalog().to_string();
    // The stored snapshot equals `before` (the test above), so `after` fails it.
    assert_ne!(before, after);
    assert!(before.contains("amount: u32"));
    assert!(after.contains("amount: u64"));
}
