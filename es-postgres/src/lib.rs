//! PostgreSQL event store for the es event sourcing framework: the store to
//! run in production.
//!
//! [`PgEventStore`] implements every es-core store trait
//! ([`EventStore`](es_core::EventStore), [`SnapshotStore`](es_core::SnapshotStore),
//! [`CheckpointStore`](es_core::CheckpointStore)) and provides [`PgTx`], the
//! transaction that projections with a read model in the same database work
//! in. It uses sqlx with queries checked at run time (no database is needed
//! to build), runs its own embedded migrations ([`MIGRATOR`]) in a schema of
//! its own (`es` unless [`PgStoreOptions::schema`] says otherwise), and
//! passes the es-core conformance suite. An application whose database role
//! may not change the schema opens the store with
//! [`PgStoreOptions::run_migrations`]`(false)` after a deploy step ran
//! [`PgStoreOptions::migrate`]: the store then checks that every migration
//! was applied, unchanged, and names those that were not.
//!
//! It also implements [`Inbox`](es_core::Inbox) in [`PgTx`]: a consumer of
//! events from outside the store (a Kafka topic, say) claims each event in
//! the transaction its read model is written in, and the `inbox` table keeps
//! per consumer and stream the highest version applied, so a redelivered
//! event is recognised and applied once. The claim's row lock makes two
//! consumers claiming the same stream at once take turns.
//!
//! # Example
//!
//! ```no_run
//! use es_core::{Aggregate, Event, Repository};
//! use es_postgres::PgEventStore;
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
//! impl Account {
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
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Creates the schema `es` and its tables if they are missing.
//!     let store = PgEventStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//!     let accounts = Repository::<Account, _>::new(store);
//!     accounts.execute("alice", Command::Deposit(100)).await?;
//!     accounts.execute("alice", Command::Withdraw(30)).await?;
//!     assert_eq!(accounts.load("alice").await?.state.balance, 70);
//!     Ok(())
//! }
//! ```
//!
//! # Appends
//!
//! An append is one statement, so one round trip: it checks the expected
//! version, inserts every event with one multi-row insert, and records the
//! idempotency key, all or nothing. Versions are guarded by a unique
//! `(stream_id, version)` key: a writer that lost a race gets
//! [`Error::Conflict`](es_core::Error::Conflict) with the version it found.
//! An idempotency key is stored under a unique index with what its first
//! append wrote; a repeated key appends nothing and reports that.
//!
//! # Loads
//!
//! A repository's load is one statement too: the stream's snapshot (when the
//! aggregate takes snapshots) and the events after it come in one result,
//! and each event's payload is decoded from the row as it arrives, without
//! collecting the stream or copying the payload first.
//!
//! # The global log never skips an event
//!
//! Concurrent transactions commit out of order: with positions from a
//! sequence, position 11 may be visible while position 10 is still being
//! written, and a reader that went on from 11 would never see 10. So a
//! position here is not drawn from a sequence: it is the appending
//! transaction's id (`pg_current_xact_id()`) times 2^20, plus the event's
//! index in the append:
//!
//! ```text
//! position = transaction id × 1,048,576 + index      (index 0 ..= 1,048,575)
//! ```
//!
//! Readers only read positions below `pg_snapshot_xmin(pg_current_snapshot())
//! × 1,048,576`: every transaction below that bound has ended, so no event can
//! appear behind the reader any more, and a reader's cursor is the position
//! of the last event it read. The primary key is the log's only index.
//!
//! **Order guarantee.** Every reader of the log sees the same order (the
//! positions' numeric order), every event exactly once; within one stream,
//! in version order (an append's transaction gets its id at its insert,
//! after the previous version committed). Positions grow along the log but
//! are not contiguous: one append's events are numbered one after another,
//! and a later transaction's events start at least 2^20 positions further
//! on. An append holds at most 1,048,576 events (a larger one is refused;
//! split it), and positions stay below 2^53, which a JSON number carries
//! exactly, for the first 8.5 billion writing transactions of the server
//! (ids are server-wide). Positions run out at transaction id 2^43 (8.8 trillion:
//! 27 years of 10,000 writing transactions a second); an append past it
//! fails with an error (`bigint out of range`) rather than number an event
//! out of order.
//!
//! **Pages.** A page of the log is one statement, so one snapshot and one
//! round trip, also when it is empty: it walks the primary key from the
//! cursor to the page's end, so a page costs its size whatever the length of
//! the log (the page's size is kept from the planner, which would otherwise
//! sort the rest of the log for a page larger than it expects). A page of
//! the whole log (no event-type filter: the log reader's, the relay's) is
//! that statement run as a binary `COPY`, whose bytes the store parses
//! itself: about half the client's time of decoding it as rows. A
//! connection whose `COPY` was cut short (a read dropped, a malformed
//! value) is closed rather than reused. A page of the whole log of 16,384
//! events or more (a catch-up's) is read in two parts at once, on two
//! connections, so that two server processes send it: the second part
//! starts where the positions per event of the last large read place the
//! middle of the page, and is kept only if the first part holds every event
//! up to there (that position is below the first part's gap-safety bound,
//! and the first part ended short of the whole page). Otherwise the first
//! part alone is the page; a page of both parts that falls short because
//! the estimate was low reads on at once. The first large read of a store
//! is one part; it measures the density. With two cores, a catch-up reads
//! 15 to 25 % more events per second so. Read through
//! [`read_all_into`](es_core::EventStore::read_all_into) (as the log reader
//! and so the projection runner read), a page is sent on in slices of
//! 1,024 events as they are parsed, the second part of a split read as one
//! slice once the first has ended: the reader decodes the first events
//! while the server still sends the rest.
//!
//! **Upgrading.** Stores before this numbering kept a sequence and a third
//! index; the migration that drops them renumbers the stored events in the
//! log order they had, and the positions of checkpoints, parked events and
//! idempotency keys with them, in one transaction. Positions published
//! before it (in broker messages, say) keep the old numbers there. It
//! rewrites every event under an exclusive lock of the table, so appends
//! and reads wait for it: about 14 seconds per million events on a small
//! (2-core) server. It refuses, changing nothing, a log where one
//! transaction appended more than 1,048,576 events.
//!
//! **What it costs.** A reader waits for the oldest transaction still
//! running *anywhere on the server* (transaction ids are server-wide) that
//! had a transaction id when the reader looked. A transaction that stays
//! open for minutes (an idle `BEGIN` in a console, a long batch job, a
//! forgotten connection in state `idle in transaction`) holds every
//! projection and relay back for as long. Such transactions show in
//! `pg_stat_activity`:
//!
//! ```sql
//! SELECT pid, datname, usename, state, xact_start, now() - xact_start AS age, query
//! FROM pg_stat_activity
//! WHERE backend_xid IS NOT NULL
//! ORDER BY xact_start
//! LIMIT 5;
//! ```
//!
//! End them (`SELECT pg_terminate_backend(pid)`) or bound them with
//! `idle_in_transaction_session_timeout`. Writes keep going meanwhile; only
//! the readers wait. For the same reason a reader does not see its own
//! append at once while another transaction is open on the server.
//!
//! A prepared transaction of a two-phase commit (possible only where
//! `max_prepared_transactions` is above 0) holds readers back the same way
//! until it is committed or rolled back, but belongs to no connection, so
//! the query above misses it: a forgotten one shows in `pg_prepared_xacts`
//! and ends with `COMMIT PREPARED` or `ROLLBACK PREPARED` (its `gid`).
//!
//! **Waking readers.** [`EventStore::wait_for_events`](es_core::EventStore::wait_for_events)
//! wakes at once for appends of the same process, and on a `LISTEN`ed
//! notification for appends of other processes (sent by a background task,
//! so that appends do not serialize on PostgreSQL's notification lock: the
//! first append after a quiet spell at once, then at most one `NOTIFY` per
//! [`PgStoreOptions::notify_interval`], 50 ms by default, for all the
//! appends in between). Without a notification it looks again
//! every [`PgStoreOptions::poll_interval`] (1 s by default), and every few
//! milliseconds while committed events wait for an older transaction.
//!
//! # Projections
//!
//! A projection whose read model lives in this database names
//! `type Context = PgTx;` and writes through [`PgTx::conn`]. The same
//! projection type runs in either of two modes, with the same handler code:
//!
//! - **Catch-up**: an es-core [`ProjectionRunner`](es_core::ProjectionRunner)
//!   over the store reads the log from the projection's checkpoint; each
//!   batch's read-model writes and the checkpoint commit in one transaction,
//!   so every event takes effect exactly once. A rebuild clears the read
//!   model and the checkpoint in one transaction. Events a handler could not
//!   handle are parked in the `parked_events` table (listable, retryable) by
//!   the runner's failure policy.
//! - **Inline**: [`PgEventStore::with_inline`] returns a store handle that
//!   runs the projection inside each append's own transaction, after the
//!   insert; a handler error fails the append, and a read right after a
//!   command sees its effect. Register it on the handle every writer uses
//!   (the [`Repository`](es_core::Repository) needs no change). Inline
//!   projections keep no checkpoint: to move one to catch-up mode, start its
//!   runner with a [`rebuild`](es_core::ProjectionRunner::rebuild) (or a
//!   version bump); to move one from catch-up to inline, let the runner
//!   catch up, stop it, then register it inline before new appends.
//!
//! **Leases.** [`PgEventStore::run_leased`] runs a projection in every
//! replica that calls it with exactly one active: the active one holds a
//! PostgreSQL advisory lock (`pg_try_advisory_lock`) on a connection of its
//! own and commits its batches on that connection, so a runner that lost its
//! connection can no longer commit; another replica takes the lock within
//! its retry interval and goes on from the checkpoint.
//!
//! # Tables
//!
//! | table | holds |
//! | --- | --- |
//! | `events` | the log: position (transaction id and index), stream, version, event id, type, schema version, payload and metadata (`json`), time |
//! | `idempotency_keys` | each idempotency key with what its append wrote |
//! | `snapshots` | the latest snapshot of each stream |
//! | `checkpoints` | each projection's position and version |
//! | `parked_events` | events projections parked, with the error |
//! | `inbox` | per consumer and stream, the highest version claimed |
//!
//! Payloads and metadata are stored as `json` (kept as written; cast to
//! `jsonb` in queries that need operators). An event without metadata (no
//! correlation id, causation id or extra key) has a null `metadata`; events
//! stored before migration 0004 hold `{}` there, which reads the same.
//! Both give `NULL` for `metadata->>'correlation_id'`. A process built
//! before that migration refuses to open a schema that has it (a migration
//! it does not know), and one already running when it is applied fails to
//! read such an event (an error naming it; nothing is lost): in a rolling
//! deploy, stop the older processes' readers (projections, the relay)
//! first, or expect them to stop with that error until they are replaced.
//!
//! # The pool
//!
//! [`PgEventStore::connect`] and [`PgStoreOptions::connect`] build a pool
//! that checks a connection (a round trip) before handing it out only when
//! it sat idle for over a second; sqlx checks each connection anyway as it
//! comes back to the pool. A pool built with sqlx's defaults checks it
//! again every time, one more round trip on each store call. To share one
//! pool between the store and the application's own queries, or to set
//! more options, start from [`PgStoreOptions::pool_options`].
//!
//! # TLS
//!
//! With the `tls-rustls` feature the store's connections can be encrypted
//! (rustls, with the Mozilla root certificates): say how in the URL, as
//! `libpq` does: `sslmode=require` encrypts, `verify-ca` and `verify-full`
//! also check the server's certificate (and name), against `sslrootcert=…`
//! when the server's authority is not a public one (a managed database's
//! own, say). Every connection of the store follows the URL: the pool's,
//! the lease's and the listener's.
//!
//! ```toml
//! es-postgres = { version = "0.1", features = ["tls-rustls"] }
//! ```
//!
//! ```no_run
//! # async fn run() -> es_core::Result<()> {
//! let store = es_postgres::PgEventStore::connect(
//!     "postgres://app@db.example.com/orders?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Without the feature a URL that asks for TLS (`require` and above) is
//! refused with an error that says TLS support is missing; sqlx's default,
//! `prefer`, then connects without it.
//!
//! # Connection poolers
//!
//! Connect the store to PostgreSQL directly or through a pooler in *session*
//! mode (PgBouncer's `pool_mode = session`). *Transaction* mode is not
//! supported: the pooler hands a server session to other clients between
//! transactions, and what needs a session of its own breaks:
//!
//! - **Migrations** take a session advisory lock (two processes migrating a
//!   schema take turns) and set the session's `search_path`; a lock left on
//!   a session the pooler keeps could block the next migration. (A store
//!   opened with [`PgStoreOptions::run_migrations`]`(false)` only reads
//!   which migrations were applied.)
//! - **Leases** hold a session advisory lock on their own connection; it no
//!   longer says which replica runs a projection.
//! - **Wake-ups** `LISTEN` on a connection of their own; notifications would
//!   be lost (readers would still see every event, on their next poll,
//!   [`PgStoreOptions::poll_interval`]).
//! - **Prepared statements**: sqlx prepares each statement once per
//!   connection, which a pooler in transaction mode must track (PgBouncer
//!   1.21 or later with `max_prepared_statements` set).
//!
//! Gap safety depends on nothing but the server's snapshots, in any mode.
//!
//! # Shutting down
//!
//! [`PgEventStore::close`] announces the process's last appends to the other
//! processes' waiting readers, ends the store's background tasks and closes
//! its pool.

mod copy;
mod inbox;
mod inline;
mod lease;
mod notify;
mod row;
mod sink;
mod sql;
mod store;
mod tx;

pub use crate::store::{PgEventStore, PgStoreOptions, MIGRATOR};
pub use crate::tx::PgTx;
