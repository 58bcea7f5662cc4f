//! Event sourcing for Rust: write pure domain code, get durable storage,
//! optimistic concurrency, snapshots, replay and schema evolution.
//!
//! `es-core` holds the framework's contract and the parts every backend
//! shares:
//!
//! - the vocabulary: [`StreamId`], [`Version`], [`Position`], [`EventId`],
//!   [`Metadata`], [`ExpectedVersion`], [`RecordedEvent`], [`Envelope`];
//! - the domain traits: [`Event`] (with its [`EventSchema`]: types, aliases,
//!   upcasters, catalog) and [`Aggregate`] (pure `handle` and `apply`);
//! - the store traits: [`EventStore`], [`SnapshotStore`], [`CheckpointStore`],
//!   [`ContextProvider`], and the [`InMemoryStore`] that implements them all;
//! - the [`Repository`] that loads aggregates and executes commands with
//!   retries on conflicts, snapshots, idempotency keys and a state cache;
//! - [`Projection`]s and the [`ProjectionRunner`] that feeds them from the
//!   global log, with checkpoints, rebuilds and parked events;
//! - with the `testkit` feature, `testkit`: the store conformance suite and a
//!   given/when/then fixture for aggregates.
//!
//! # Example
//!
//! ```
//! use std::sync::OnceLock;
//! use es_core::{Aggregate, Event, EventSchema, InMemoryStore, Repository};
//! use serde::{Deserialize, Serialize};
//! use serde_json::Value;
//!
//! #[derive(Debug, Clone, PartialEq)]
//! enum AccountEvent { Deposited { amount: u64 }, Withdrawn { amount: u64 } }
//!
//! impl Event for AccountEvent {
//!     fn event_type(&self) -> &'static str {
//!         match self { Self::Deposited { .. } => "Deposited", Self::Withdrawn { .. } => "Withdrawn" }
//!     }
//!     fn to_payload(&self) -> serde_json::Result<Value> {
//!         let (Self::Deposited { amount } | Self::Withdrawn { amount }) = self;
//!         Ok(serde_json::json!({ "amount": amount }))
//!     }
//!     fn from_payload(event_type: &str, payload: &Value) -> serde_json::Result<Self> {
//!         #[derive(Deserialize)]
//!         struct Amount { amount: u64 }
//!         let Amount { amount } = Amount::deserialize(payload)?;
//!         Ok(if event_type == "Deposited" { Self::Deposited { amount } } else { Self::Withdrawn { amount } })
//!     }
//!     fn schema() -> &'static EventSchema {
//!         static SCHEMA: OnceLock<EventSchema> = OnceLock::new();
//!         SCHEMA.get_or_init(|| EventSchema::builder("AccountEvent")
//!             .event("Deposited", 1).field("amount", "u64")
//!             .event("Withdrawn", 1).field("amount", "u64")
//!             .build())
//!     }
//! }
//!
//! #[derive(Debug, Clone)]
//! enum Command { Deposit(u64), Withdraw(u64) }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds")]
//! struct InsufficientFunds;
//!
//! #[derive(Default, Clone, Serialize, Deserialize)]
//! struct Account { balance: u64 }
//!
//! impl Aggregate for Account {
//!     const NAME: &'static str = "account";
//!     type Event = AccountEvent;
//!     type Command = Command;
//!     type Error = InsufficientFunds;
//!
//!     fn handle(&self, command: Command) -> Result<Vec<AccountEvent>, InsufficientFunds> {
//!         match command {
//!             Command::Deposit(amount) => Ok(vec![AccountEvent::Deposited { amount }]),
//!             Command::Withdraw(amount) if amount > self.balance => Err(InsufficientFunds),
//!             Command::Withdraw(amount) => Ok(vec![AccountEvent::Withdrawn { amount }]),
//!         }
//!     }
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Deposited { amount } => self.balance += amount,
//!             AccountEvent::Withdrawn { amount } => self.balance -= amount,
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let accounts = Repository::<Account, _>::new(InMemoryStore::new());
//! accounts.execute("alice", Command::Deposit(100)).await?;
//! accounts.execute("alice", Command::Withdraw(30)).await?;
//! assert!(accounts.execute("alice", Command::Withdraw(500)).await.is_err());
//! assert_eq!(accounts.load("alice").await?.state.balance, 70);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `testkit` | `testkit`: the store conformance suite and `AggregateTest` |

mod aggregate;
mod error;
mod event;
mod memory;
mod projection;
mod repository;
mod store;
mod types;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use crate::aggregate::{Aggregate, SnapshotPolicy};
pub use crate::error::{BoxError, DecodeError, DecodeErrorKind, Error, Result, UpcastError};
pub use crate::event::{Catalog, Event, EventSchema, EventTypeInfo, FieldInfo, SchemaBuilder};
pub use crate::memory::InMemoryStore;
pub use crate::projection::{
    FailurePolicy, Projection, ProjectionRunner, ProjectionStatus, RetryReport, RunningProjection,
};
pub use crate::repository::{ExecuteError, ExecuteOptions, Executed, Loaded, Repository};
pub use crate::store::{CheckpointStore, ContextProvider, EventStore, LogSlice, SnapshotStore};
pub use crate::types::{
    AppendOptions, AppendOutcome, Checkpoint, Committed, Envelope, EventFilter, EventId,
    ExpectedVersion, Metadata, NewEvent, ParkedEvent, Position, RecordedEvent, Snapshot, StreamId,
    Version,
};
