//! How a store is opened.

use std::time::Duration;

/// How durable a committed write is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// A committed write survives a crash of the process (SQLite's WAL with
    /// `synchronous = NORMAL`). After a power loss or an operating system
    /// crash the last commits may be missing, but the file is never
    /// corrupt and never holds part of a commit. The default: it is what
    /// SQLite recommends for WAL mode, and it costs no `fsync` per commit.
    #[default]
    Process,
    /// Every commit is synced to the disk before the write returns
    /// (`synchronous = FULL`): commits survive a power loss too, at the cost
    /// of one `fsync` per commit.
    PowerLoss,
}

/// Settings of [`SqliteEventStore::open_with`](crate::SqliteEventStore::open_with).
///
/// ```
/// use std::time::Duration;
/// use es_sqlite::{Durability, SqliteStoreOptions};
///
/// let options = SqliteStoreOptions::new()
///     .durability(Durability::PowerLoss)
///     .readers(8)
///     .busy_timeout(Duration::from_secs(10));
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteStoreOptions {
    pub(crate) durability: Durability,
    pub(crate) readers: u32,
    pub(crate) busy_timeout: Duration,
    pub(crate) write_timeout: Duration,
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl SqliteStoreOptions {
    /// The defaults: [`Durability::Process`], 4 readers, a busy timeout of
    /// 5 s and a write timeout of 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How durable a commit is.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The most read connections open at once (at least 1). Reads of the
    /// log, of streams and of snapshots run on them in parallel with the
    /// writer. A `:memory:` database has no readers: everything runs on its
    /// one connection.
    #[must_use]
    pub fn readers(mut self, readers: u32) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// How long a connection waits for a lock that another process holds
    /// (SQLite's `busy_timeout`).
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How long a write waits for the store's writer connection while a
    /// transaction of this process holds it, before it fails with
    /// [`Error::WriterBusy`](crate::Error::WriterBusy).
    #[must_use]
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }
}
