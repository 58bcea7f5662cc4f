//! Write transactions on the store's one writer connection, and the
//! projection context built on them.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, PoisonError};

use async_trait::async_trait;
use es_core::{Checkpoint, ContextProvider, ParkedEvent};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Sqlite, TransactionManager};
use tokio::sync::OwnedMappedMutexGuard;

use crate::error::SqlContext;
use crate::store::{self, Inner, SqliteEventStore};

/// The store's writer connection, held exclusively.
pub(crate) type WriterGuard = OwnedMappedMutexGuard<Option<SqliteConnection>, SqliteConnection>;

type Manager = <Sqlite as sqlx::Database>::TransactionManager;

/// A `BEGIN IMMEDIATE` transaction on the writer connection. Dropped before
/// it commits (an error, a cancelled future), it rolls back: the rollback is
/// queued on the connection before the connection is released, so the next
/// holder finds it clean.
pub(crate) struct WriteTx {
    conn: WriterGuard,
    open: bool,
}

impl WriteTx {
    /// Takes the writer connection and begins a transaction that holds
    /// SQLite's write lock from the start, so that its reads (a stream's
    /// version) stay true until it commits, across processes too.
    pub(crate) async fn begin(inner: &Inner) -> es_core::Result<Self> {
        let mut conn = inner.writer().await?;
        Manager::begin(&mut conn, Some("BEGIN IMMEDIATE".into()))
            .await
            .ctx(|| "cannot begin a write transaction".into())?;
        Ok(Self { conn, open: true })
    }

    /// The connection inside the transaction.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// Commits. On an error the transaction is rolled back when `self` drops.
    pub(crate) async fn commit(&mut self) -> es_core::Result<()> {
        Manager::commit(&mut self.conn)
            .await
            .ctx(|| "cannot commit".into())?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            Manager::start_rollback(&mut self.conn);
        }
    }
}

/// Parked events waiting for the open projection transaction to commit.
#[derive(Debug, Default)]
pub(crate) struct ContextSlot {
    pending: std::sync::Mutex<Vec<ParkedEvent>>,
}

impl ContextSlot {
    pub(crate) fn push(&self, parked: ParkedEvent) {
        self.lock().push(parked);
    }

    fn take(&self) -> Vec<ParkedEvent> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ParkedEvent>> {
        // A push cannot panic half-way: the vector stays whole.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A transaction on the store's writer connection: the context of a
/// projection whose read model lives in the store's file.
///
/// A projection with `type Context = SqliteTx` receives it in `handle` and
/// `reset` and runs its own SQL on it with [`SqliteTx::conn`]; the
/// [`ProjectionRunner`](es_core::ProjectionRunner) then saves the
/// checkpoint in the same transaction and commits, so the read model and
/// the checkpoint never disagree. A transaction dropped without a commit
/// rolls back.
///
/// While it is open it holds the store's only writer connection: appends
/// and other writes of this store wait for it (up to the
/// [write timeout](crate::SqliteStoreOptions::write_timeout)). A handler must
/// therefore not append through the store; a process manager that issues
/// commands uses the `()` context. Events parked while it is open are written
/// in it, so parking commits together with the checkpoint that passes them.
///
/// ```
/// # use es_sqlite::{SqliteEventStore, SqliteTx};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = SqliteEventStore::open(":memory:").await?;
/// let mut tx = store.transaction().await?;
/// sqlx::query("CREATE TABLE IF NOT EXISTS totals (id TEXT PRIMARY KEY, total INTEGER)")
///     .execute(tx.conn())
///     .await?;
/// tx.commit().await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct SqliteTx {
    tx: WriteTx,
    slot: Arc<ContextSlot>,
    store: Arc<Inner>,
}

impl SqliteTx {
    pub(crate) async fn begin(store: &Arc<Inner>) -> es_core::Result<Self> {
        let tx = WriteTx::begin(store).await?;
        let slot = Arc::new(ContextSlot::default());
        *store.open_context() = Some(Arc::clone(&slot));
        Ok(Self {
            tx,
            slot,
            store: Arc::clone(store),
        })
    }

    /// The connection inside the transaction: run the read model's SQL on it.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.tx.conn()
    }

    /// Whether the transaction runs on `store`'s file.
    pub(crate) fn belongs_to(&self, store: &SqliteEventStore) -> bool {
        Arc::ptr_eq(&self.store, store.inner())
    }

    /// Commits the transaction (with the events parked while it was open).
    pub async fn commit(self) -> es_core::Result<()> {
        self.finish(None).await
    }

    /// Writes the parked events and the checkpoint, then commits.
    async fn finish(mut self, checkpoint: Option<(&str, Checkpoint)>) -> es_core::Result<()> {
        // On an error, dropping `self` rolls back; the runner handles the
        // events again, and parks again what still fails.
        for parked in self.slot.take() {
            store::write_parked(self.tx.conn(), &parked).await?;
        }
        if let Some((projection, checkpoint)) = checkpoint {
            store::write_checkpoint(self.tx.conn(), projection, checkpoint).await?;
        }
        self.tx.commit().await
    }
}

impl Deref for SqliteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx.conn
    }
}

impl DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.tx.conn()
    }
}

impl fmt::Debug for SqliteTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteTx")
            .field("open", &self.tx.open)
            .finish_non_exhaustive()
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        {
            let mut open = self.store.open_context();
            if open.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
                *open = None;
            }
        }
        if !self.tx.open {
            return;
        }
        // Events parked by others while this transaction was open joined it;
        // it rolls back, so write them on their own once it is gone.
        let pending = self.slot.take();
        if pending.is_empty() {
            return;
        }
        let store = SqliteEventStore::from_inner(Arc::clone(&self.store));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    for parked in pending {
                        if let Err(error) = store.write_park_now(&parked).await {
                            tracing::error!(%error, projection = %parked.projection,
                                position = %parked.event.position, "parked event lost");
                        }
                    }
                });
            }
            Err(_) => tracing::error!(
                count = pending.len(),
                "parked events lost: their transaction rolled back outside a runtime"
            ),
        }
    }
}

#[async_trait]
impl ContextProvider<SqliteTx> for SqliteEventStore {
    async fn begin(&self) -> es_core::Result<SqliteTx> {
        self.transaction().await
    }

    async fn commit(
        &self,
        context: SqliteTx,
        projection: &str,
        checkpoint: Option<Checkpoint>,
    ) -> es_core::Result<()> {
        if !context.belongs_to(self) {
            return Err(es_core::Error::Store {
                message: format!(
                    "projection `{projection}` committed a transaction of another SQLite store"
                ),
                source: None,
            });
        }
        context
            .finish(checkpoint.map(|checkpoint| (projection, checkpoint)))
            .await
    }

    fn is_transactional(&self) -> bool {
        true
    }
}
