//! A counter aggregate for the repository tests.

use es_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

/// The counter's events.
#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    /// `by` added `amount` with its `n`-th command.
    Added { by: u32, n: u32, amount: u64 },
}

/// Add to the counter.
#[derive(Debug, Clone)]
pub struct Add {
    pub by: u32,
    pub n: u32,
    pub amount: u64,
}

/// The counter refuses to go past its limit.
#[derive(Debug, thiserror::Error)]
#[error("the counter would pass {0}")]
pub struct LimitReached(pub u64);

/// A counter with a limit.
#[derive(Aggregate, Default, Clone, Debug, Serialize, Deserialize)]
#[aggregate(name = "counter", event = CounterEvent, command = Add, error = LimitReached)]
pub struct Counter {
    pub total: u64,
    pub adds: u64,
}

// `handle` takes its command by value: the signature the derive asks for.
#[allow(clippy::needless_pass_by_value)]
impl Counter {
    pub const LIMIT: u64 = 1_000_000_000;

    fn handle(&self, add: Add) -> Result<Vec<CounterEvent>, LimitReached> {
        if self.total + add.amount > Self::LIMIT {
            return Err(LimitReached(Self::LIMIT));
        }
        Ok(vec![CounterEvent::Added {
            by: add.by,
            n: add.n,
            amount: add.amount,
        }])
    }

    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::Added { amount, .. } => {
                self.total += amount;
                self.adds += 1;
            }
        }
    }
}
