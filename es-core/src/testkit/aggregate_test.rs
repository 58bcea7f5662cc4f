//! Given/when/then tests for aggregates.

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::event::Event;
use crate::types::Metadata;

/// A given/when/then test of an aggregate's pure functions.
///
/// `given` events are applied to the default state, `when` hands a command
/// to `handle`, and `then` compares the produced events, `then_error` the
/// refusal. A mismatch panics with a line diff of the two sides. `then` also
/// checks that each produced event survives encoding and decoding unchanged,
/// so a payload that cannot round-trip is caught here rather than in the
/// store.
///
/// ```
/// # use es_core::{Aggregate, Event};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # pub enum CounterEvent { Added { amount: u64 } }
/// # #[derive(Debug, PartialEq, thiserror::Error)] #[error("limit")] pub struct LimitReached;
/// # #[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
/// # #[aggregate(name = "counter", event = CounterEvent, command = u64, error = LimitReached)]
/// # pub struct Counter { total: u64 }
/// # impl Counter {
/// #     fn handle(&self, add: u64) -> Result<Vec<CounterEvent>, LimitReached> {
/// #         if self.total + add > 10 { return Err(LimitReached); } Ok(vec![CounterEvent::Added { amount: add }]) }
/// #     fn apply(&mut self, CounterEvent::Added { amount }: &CounterEvent) { self.total += amount }
/// # }
/// use es_core::testkit::AggregateTest;
///
/// AggregateTest::<Counter>::given([CounterEvent::Added { amount: 4 }])
///     .when(5)
///     .then([CounterEvent::Added { amount: 5 }]);
///
/// AggregateTest::<Counter>::given([CounterEvent::Added { amount: 8 }])
///     .when(5)
///     .then_error(LimitReached);
/// ```
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

/// An [`AggregateTest`] with its command handled, ready for `then`.
#[derive(Debug)]
#[must_use = "assert the outcome with `then` or `then_error`"]
pub struct AggregateOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// A test starting from the default state with these events applied.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.evolve(&event);
        }
        Self { state }
    }

    /// A test starting from the default state.
    pub fn given_no_events() -> Self {
        Self::given([])
    }

    /// The state after the given events.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Hands a command to the aggregate.
    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let result = self.state.decide(command);
        AggregateOutcome {
            state: self.state,
            result,
        }
    }
}

impl<A: Aggregate> AggregateOutcome<A>
where
    A::Event: PartialEq + Debug,
    A::Error: Debug,
{
    /// Asserts that the command produced exactly these events, and returns
    /// the state after applying them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let events = match self.result {
            Ok(events) => events,
            Err(error) => panic!(
                "expected events, but the command was rejected: {error:?}\n{}",
                diff(&expected, &error)
            ),
        };
        if events != expected {
            panic!(
                "the command produced other events than expected\n{}",
                diff(&expected, &events)
            );
        }
        let mut state = self.state;
        for event in &events {
            assert_round_trip(event);
            state.evolve(event);
        }
        state
    }

    /// Asserts that the command was refused with this error.
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // by value reads best in a test: `.then_error(NotPaid)`
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Ok(events) => panic!(
                "expected the command to be rejected with {expected:?}, but it produced events\n{}",
                diff(&expected, &events)
            ),
            Err(error) if error == expected => {}
            Err(error) => panic!(
                "the command was rejected with another error\n{}",
                diff(&expected, &error)
            ),
        }
    }

    /// Asserts that the command was refused, and returns the error for
    /// further checks.
    #[track_caller]
    pub fn then_rejected(self) -> A::Error {
        match self.result {
            Ok(events) => {
                panic!("expected the command to be rejected, but it produced {events:#?}")
            }
            Err(error) => error,
        }
    }
}

/// Encodes and decodes an event through its schema and asserts it comes back equal.
#[track_caller]
fn assert_round_trip<E: Event + PartialEq + Debug>(event: &E) {
    let encoded = match event.encode(Metadata::default()) {
        Ok(encoded) => encoded,
        Err(error) => panic!("event {event:?} does not encode: {error}"),
    };
    let decoded = E::schema().decode_payload::<E>(
        &encoded.event_type,
        encoded.schema_version,
        &encoded.payload,
    );
    match decoded {
        Ok(back) if &back == event => {}
        Ok(back) => panic!(
            "event {} does not survive encoding and decoding\n{}",
            encoded.event_type,
            diff(event, &back)
        ),
        Err(error) => panic!(
            "event {} encodes to {} but does not decode: {error}",
            encoded.event_type, encoded.payload
        ),
    }
}

/// A line diff of the pretty debug forms of `expected` and `actual`.
pub(crate) fn diff(expected: &dyn Debug, actual: &dyn Debug) -> String {
    let expected = format!("{expected:#?}");
    let actual = format!("{actual:#?}");
    let mut out = String::from("--- expected\n+++ actual\n");
    for change in similar::TextDiff::from_lines(&expected, &actual).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => '-',
            similar::ChangeTag::Insert => '+',
            similar::ChangeTag::Equal => ' ',
        };
        out.push(sign);
        out.push_str(change.value());
        if !change.value().ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::diff;

    #[test]
    fn diff_marks_changed_lines() {
        let text = diff(&vec![1, 2, 3], &vec![1, 5, 3]);
        assert!(text.contains("-    2,\n"), "{text}");
        assert!(text.contains("+    5,\n"), "{text}");
        assert!(text.contains("     1,\n"), "{text}");
    }
}
