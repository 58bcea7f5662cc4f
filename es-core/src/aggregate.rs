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
/// Implemented by `#[derive(Aggregate)]`, or by hand. `handle` and `apply`
/// are plain functions: no I/O, no clock, no randomness, no async. The
/// [`Repository`](crate::Repository) loads the state, calls `handle`, appends
/// the events and applies them.
///
/// ```
/// use es_core::{Aggregate, SnapshotPolicy};
/// # use es_core::{Event, EventSchema};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # pub enum CounterEvent { Added(u64) }
/// # impl Event for CounterEvent {
/// #     fn event_type(&self) -> &'static str { "Added" }
/// #     fn to_payload(&self) -> serde_json::Result<serde_json::Value> { let Self::Added(n) = self; Ok((*n).into()) }
/// #     fn from_payload(_: &str, p: &serde_json::Value) -> serde_json::Result<Self> { Ok(Self::Added(u64::deserialize(p)?)) }
/// #     fn schema() -> &'static EventSchema {
/// #         static S: std::sync::OnceLock<EventSchema> = std::sync::OnceLock::new();
/// #         S.get_or_init(|| EventSchema::builder("CounterEvent").event("Added", 1).build())
/// #     }
/// # }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter would pass its limit")]
/// pub struct LimitReached;
///
/// #[derive(Default, Clone, Serialize, Deserialize)]
/// pub struct Counter { total: u64 }
///
/// impl Aggregate for Counter {
///     const NAME: &'static str = "counter";
///     type Event = CounterEvent;
///     type Command = u64;
///     type Error = LimitReached;
///
///     fn handle(&self, add: u64) -> Result<Vec<CounterEvent>, LimitReached> {
///         if self.total + add > 10 { return Err(LimitReached); }
///         Ok(vec![CounterEvent::Added(add)])
///     }
///     fn apply(&mut self, event: &CounterEvent) {
///         match event { CounterEvent::Added(n) => self.total += n }
///     }
///     fn snapshot_policy() -> SnapshotPolicy { SnapshotPolicy::Every(100) }
/// }
/// ```
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

    /// Decides which events a command produces. Pure.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event. Pure and infallible.
    fn apply(&mut self, event: &Self::Event);

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
