//! An embedded, durable event store for [`es_core`] in one SQLite file: the
//! zero-setup default, with no database server to run.
//!
//! [`SqliteEventStore`] implements every es-core store trait: the event log
//! with optimistic concurrency and idempotency keys, snapshots, projection
//! checkpoints and parked events. Projections whose read model lives in the
//! same file get the store's transaction, [`SqliteTx`], so their writes and
//! their checkpoint commit together. SQLite is compiled into the binary
//! (sqlx's bundled SQLite); nothing needs to be installed.
//!
//! It also implements [`Inbox`](es_core::Inbox) in [`SqliteTx`]: a consumer
//! of events from outside the store (a Kafka topic, say) claims each event
//! in the transaction its read model is written in, and the table
//! `es_inbox` keeps per consumer and stream the highest version applied, so
//! a redelivered event is recognised and applied once.
//!
//! # Example
//!
//! ```
//! use es_core::{Aggregate, Event, Repository};
//! use es_sqlite::SqliteEventStore;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
//! pub enum CounterEvent { Added { amount: u64 } }
//!
//! #[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
//! #[aggregate(name = "counter", event = CounterEvent, command = u64, error = std::convert::Infallible)]
//! pub struct Counter { total: u64 }
//!
//! impl Counter {
//!     fn handle(&self, amount: u64) -> Result<Vec<CounterEvent>, std::convert::Infallible> {
//!         Ok(vec![CounterEvent::Added { amount }])
//!     }
//!     fn apply(&mut self, CounterEvent::Added { amount }: &CounterEvent) { self.total += amount }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! # let dir = tempfile::tempdir()?; let path = dir.path().join("counters.db");
//! let store = SqliteEventStore::open(&path).await?;   // created if missing
//! let counters = Repository::<Counter, _>::new(store);
//! counters.execute("c-1", 5).await?;                  // load, decide, append
//! assert_eq!(counters.load("c-1").await?.state.total, 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Concepts
//!
//! - **One file.** [`SqliteEventStore::open`] takes a path (the file is
//!   created if missing) or `:memory:`. The file is switched to WAL mode and
//!   the embedded schema [`MIGRATOR`] runs on open. The store's tables are
//!   prefixed `es_`; read models may add their own tables to the same file.
//! - **One writer, many readers.** Every write runs on one writer connection
//!   in a `BEGIN IMMEDIATE` transaction, so appends are serialized (also
//!   across processes sharing the file), positions follow commit order and
//!   the global log has no gaps. Reads run on a pool of read-only
//!   connections in parallel; reads of one stream use the writer while it is
//!   free (its page cache stays warm). `:memory:` uses a single connection
//!   for both.
//! - **Appends** are one transaction each: the version check, a multi-row
//!   insert, and the idempotency key. A stale expected version fails with
//!   [`es_core::Error::Conflict`] carrying the expected and actual versions.
//! - **Waiting** for new events needs no polling: the writer wakes waiting
//!   readers of the same process after each commit; a bounded wait sees
//!   other processes' appends when it ends.
//! - **Checkpoints of the WAL** run on a background task with a connection
//!   of their own (passive, at most every 100 ms while writes come in), so
//!   that no commit pays for copying the WAL back and syncing the file.
//!   [`SqliteEventStore::close`] completes them.
//! - **Durability.** A committed append survives a crash of the process;
//!   with [`Durability::PowerLoss`] it also survives a power loss.
//! - **Errors.** Opening returns this crate's [`Error`]: a file that is not a
//!   database, one written by a newer version (a row of `_sqlx_migrations`
//!   this code does not know), and a read-only file each have a variant, and
//!   a failed open never changes the file: those checks only read it. The
//!   store traits return [`es_core::Error`], with this crate's error as the
//!   source of [`es_core::Error::Store`].
//! - **One migrator per file.** The store's migrations are recorded in
//!   sqlx's `_sqlx_migrations` table; a second sqlx migrator on the same
//!   file would look like a newer schema. Create read-model tables with
//!   `CREATE TABLE IF NOT EXISTS` in a [`SqliteEventStore::transaction`].
//!
//! # Transactional projections
//!
//! A projection with `type Context = SqliteTx` runs its SQL on
//! [`SqliteTx::conn`]; the [`ProjectionRunner`](es_core::ProjectionRunner)
//! commits the batch's writes and the checkpoint in one transaction, and a
//! rebuild clears the read model and resets the checkpoint in one
//! transaction. A projection with `type Context = ()` works too (its
//! checkpoint is saved after each batch). [`sqlx`] is re-exported so that
//! handlers use the same version.
//!
//! While a [`SqliteTx`] is open it holds the store's one writer connection:
//! a handler must not append through the store (a process manager that
//! issues commands uses the `()` context), and with `:memory:` it must not
//! read through the store either.
//!
//! | item | what it is |
//! | --- | --- |
//! | [`SqliteEventStore`] | the store: open, close, transactions, readers |
//! | [`SqliteStoreOptions`], [`Durability`] | settings of `open_with` |
//! | [`SqliteTx`] | the projection context: a write transaction on the store's file |
//! | [`SqliteReader`] | a read connection, to query read models |
//! | [`MIGRATOR`] | the embedded schema migrations |
//! | [`Error`], [`Result`] | this crate's error |

mod checkpoint;
mod error;
mod inbox;
mod open;
mod options;
mod rows;
mod store;
mod tx;

pub use crate::error::{Error, Result};
pub use crate::open::MIGRATOR;
pub use crate::options::{Durability, SqliteStoreOptions};
pub use crate::store::{SqliteEventStore, SqliteReader};
pub use crate::tx::SqliteTx;

/// The sqlx crate this store is built on, for the SQL of read models.
pub use sqlx;
