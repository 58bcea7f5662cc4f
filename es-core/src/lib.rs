//! Event sourcing for Rust: write pure domain code, get durable storage,
//! optimistic concurrency, snapshots, replay and schema evolution.
//!
//! `es-core` holds the framework's contract and the parts every backend
//! shares:
//!
//! - the vocabulary: [`StreamId`], [`Version`], [`Position`], [`EventId`],
//!   [`EventType`], [`Metadata`], [`ExpectedVersion`], [`RecordedEvent`],
//!   [`Envelope`];
//! - the domain traits: [`Event`] (with its [`EventSchema`]: types, aliases,
//!   upcasters, catalog) and [`Aggregate`] (pure `handle` and `apply`), with
//!   their derive macros;
//! - the store traits: [`EventStore`], [`SnapshotStore`], [`CheckpointStore`],
//!   [`ContextProvider`], and the [`InMemoryStore`] that implements them all;
//! - the [`Repository`] that loads aggregates and executes commands with
//!   retries on conflicts, snapshots, idempotency keys and a state cache;
//! - [`Projection`]s and the [`ProjectionRunner`] that feeds them from the
//!   global log, with checkpoints, rebuilds and parked events, and process
//!   managers (sagas) whose commands are idempotent through [`Reaction`];
//! - with the `testkit` feature, `testkit`: the store conformance suite and a
//!   given/when/then fixture for aggregates.
//!
//! # Example
//!
//! ```
//! use es_core::{Aggregate, Event, InMemoryStore, Repository};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
//! pub enum AccountEvent {
//!     Deposited { amount: u64 },
//!     Withdrawn { amount: u64 },
//! }
//!
//! #[derive(Debug, Clone)]
//! pub enum Command { Deposit(u64), Withdraw(u64) }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds")]
//! pub struct InsufficientFunds;
//!
//! #[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
//! #[aggregate(name = "account", event = AccountEvent, command = Command, error = InsufficientFunds)]
//! pub struct Account { balance: u64 }
//!
//! impl Account {   // pure: no I/O, no clock, no async
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
//! accounts.execute("alice", Command::Deposit(100)).await?;   // load, decide, append
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
//! | `derive` (default) | `#[derive(Event)]`, `#[derive(Aggregate)]`, `#[derive(Projection)]` |
//! | `testkit` | `testkit`: the store conformance suite and `AggregateTest` |

#[cfg(feature = "derive")]
pub use es_macros::{Aggregate, Event, Projection};

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod aggregate;
mod error;
mod event;
mod memory;
mod payload;
mod projection;
mod reader;
mod repository;
mod saga;
mod store;
mod types;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use crate::aggregate::{Aggregate, SnapshotPolicy};
pub use crate::error::{BoxError, DecodeError, DecodeErrorKind, Error, Result, UpcastError};
pub use crate::event::{Catalog, Event, EventSchema, EventTypeInfo, FieldInfo, SchemaBuilder};
pub use crate::memory::InMemoryStore;
pub use crate::payload::Payload;
pub use crate::projection::{
    reset_projection, BatchError, FailurePolicy, Handles, Projection, ProjectionRunner,
    ProjectionStatus, ResetProjection, RetryReport, RunningProjection,
};
pub use crate::reader::{LogReader, DEFAULT_READ_BYTES, DEFAULT_READ_SIZE};
pub use crate::repository::{ExecuteError, ExecuteOptions, Executed, Loaded, Repository};
pub use crate::saga::{CausingEvent, Reaction};
pub use crate::store::{
    CheckpointStore, ContextProvider, EventStore, Inbox, LogSlice, ReadEnd, Replay, SnapshotStore,
};
pub use crate::types::{
    AppendOptions, AppendOutcome, Checkpoint, Committed, Envelope, EventFilter, EventId, EventType,
    EventTypeReuse, ExpectedVersion, Metadata, NewEvent, ParkedEvent, Position, RecordedEvent,
    ReplayedEvent, Snapshot, StreamId, StreamIdReuse, Version,
};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
