//! Aggregates: pure decision and evolution functions over a state.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::Event;

/// When the repository saves a snapshot of an aggregate's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotPolicy {
    /// Never: the state is always rebuilt from the events.
    #[default]
    Never,
    /// Each time the stream's version crosses a multiple of this number.
    Every(u64),
}

impl SnapshotPolicy {
    /// Whether an append that moved the stream from version `before` to
    /// `after` should be followed by a snapshot.
    pub fn is_due(self, before: u64, after: u64) -> bool {
        match self {
            SnapshotPolicy::Never => false,
            SnapshotPolicy::Every(0) => false,
            SnapshotPolicy::Every(n) => before / n != after / n,
        }
    }
}

/// A consistency boundary: a state that decides which events a command
/// produces and evolves by applying events.
///
/// Write the state as a struct and its logic as two plain functions in an
/// inherent `impl`: `handle` decides, `apply` evolves. No I/O, no clock, no
/// randomness, no async. `#[derive(Aggregate)]` wires them into this trait,
/// whose [`decide`](Aggregate::decide) and [`evolve`](Aggregate::evolve) the
/// [`Repository`](crate::Repository) calls: it loads the state, decides,
/// appends the events and applies them.
///
/// ```
/// use es_core::{Aggregate, Event};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
/// pub enum CounterEvent { Added { amount: u64 } }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter would pass its limit")]
/// pub struct LimitReached;
///
/// #[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
/// #[aggregate(name = "counter", event = CounterEvent, command = u64, error = LimitReached,
///             snapshot(every = 100, version = 1))]
/// pub struct Counter { total: u64 }
///
/// impl Counter {
///     fn handle(&self, add: u64) -> Result<Vec<CounterEvent>, LimitReached> {
///         if self.total + add > 10 { return Err(LimitReached); }
///         Ok(vec![CounterEvent::Added { amount: add }])
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Added { amount } => self.total += amount }
///     }
/// }
///
/// assert_eq!(Counter::NAME, "counter");
/// assert!(Counter::default().decide(11).is_err());
/// ```
///
/// # Attributes of `#[aggregate(…)]`
///
/// | key | meaning |
/// | --- | --- |
/// | `name = "order"` | the aggregate's name, the prefix of its stream ids (required) |
/// | `event = OrderEvent` | its event family (required) |
/// | `command = OrderCommand` | its command type (required) |
/// | `error = OrderError` | the error `handle` refuses with (required) |
/// | `snapshot(every = N, version = M)` | snapshot every N events; `M` is the state version (default 1) |
/// | `crate = "path"` | where `es_core` is, for a renamed dependency |
///
/// A missing `handle` or `apply`, or one with another signature, is a
/// compile error naming the function and the signature to write.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate's name: the prefix of its stream ids.
    const NAME: &'static str;

    /// The version of the state's shape. Bump it when the state struct
    /// changes; snapshots of another state version are ignored.
    const STATE_VERSION: u32 = 1;

    /// Its event family.
    type Event: Event;
    /// Its commands. Cloned when a conflict makes the repository decide again.
    type Command: Clone + Send + Sync;
    /// The error by which `handle` refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events a command produces: the aggregate's `handle`. Pure.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event: the aggregate's `apply`. Pure and infallible.
    fn evolve(&mut self, event: &Self::Event);

    /// When to save snapshots; never by default.
    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::Never
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotPolicy;

    #[test]
    fn snapshot_due_when_crossing_a_multiple() {
        let p = SnapshotPolicy::Every(10);
        assert!(!p.is_due(0, 9));
        assert!(p.is_due(9, 10));
        assert!(p.is_due(8, 12));
        assert!(p.is_due(5, 25));
        assert!(!p.is_due(10, 19));
        assert!(!SnapshotPolicy::Never.is_due(0, 100));
        assert!(!SnapshotPolicy::Every(0).is_due(0, 100));
    }
}
