//! Projection leases: one active runner per projection across processes.
//!
//! A lease is a session-level advisory lock (`pg_try_advisory_lock`) held on
//! a connection of its own. The leased store runs every projection
//! transaction on that same connection and checks, when it opens one, that
//! it is still the connection that took the lock: a runner whose lease
//! connection died can never commit again, even before it notices, so two
//! runners never both commit batches.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use es_core::{ContextProvider, Error, Projection, ProjectionRunner, Result};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::row::db_error;
use crate::store::PgEventStore;
use crate::tx::PgTx;

/// A held lease.
#[derive(Debug)]
pub(crate) struct Lease {
    /// One connection: the one holding the advisory lock.
    pool: PgPool,
    /// Its backend process id.
    pid: i32,
    projection: String,
}

impl Lease {
    /// Opens a transaction on the lease's connection, after checking that
    /// the connection is still the one holding the lock.
    pub(crate) async fn begin(&self) -> Result<PgTx> {
        let lost = |source| {
            Error::store(
                format!("the lease of projection `{}` was lost", self.projection),
                source,
            )
        };
        let mut tx = self.pool.begin().await.map_err(lost)?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .map_err(lost)?;
        if pid != self.pid {
            return Err(Error::Store {
                message: format!(
                    "the lease of projection `{}` was lost: its connection (backend {}) ended",
                    self.projection, self.pid
                ),
                source: None,
            });
        }
        Ok(PgTx::new(tx))
    }

    /// Whether the lease's connection is still the one holding the lock.
    async fn is_held(&self) -> bool {
        let pid = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&self.pool)
            .await;
        matches!(pid, Ok(pid) if pid == self.pid)
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }
}

impl PgEventStore {
    /// Tries to take the lease of a projection: the one active runner of
    /// `projection` among every process using this schema.
    ///
    /// Returns `None` when another connection holds it. Otherwise returns a
    /// handle to this store whose projection transactions (the
    /// [`ContextProvider<PgTx>`] that a
    /// [`ProjectionRunner`] uses) all run on the connection holding the
    /// lease; they fail once that connection is gone, so a runner that lost
    /// its lease cannot commit. The lease ends when the connection closes:
    /// with [`release_lease`](Self::release_lease), when the last handle
    /// is dropped, or when the process or its connection dies.
    pub async fn try_lease(&self, projection: &str) -> Result<Option<PgEventStore>> {
        let key = format!("{}{projection}", self.sql().lease_key);
        let options = (*self.pool().connect_options())
            .clone()
            .application_name("es-postgres projection lease");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await
            .map_err(db_error(format!(
                "cannot connect to take the lease of projection `{projection}`"
            )))?;
        let row: (bool, i32) = sqlx::query_as(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0)), pg_backend_pid()",
        )
        .bind(&key)
        .fetch_one(&pool)
        .await
        .map_err(db_error(format!(
            "cannot take the lease of projection `{projection}`"
        )))?;
        let (locked, pid) = row;
        if !locked {
            pool.close().await;
            return Ok(None);
        }
        tracing::info!(projection, backend = pid, "projection lease taken");
        Ok(Some(self.leased(Arc::new(Lease {
            pool,
            pid,
            projection: projection.to_owned(),
        }))))
    }

    /// The backend process id of the connection holding this handle's
    /// lease (see [`try_lease`](Self::try_lease)); `None` without a lease.
    pub fn lease_backend_pid(&self) -> Option<i32> {
        self.lease().map(Lease::pid)
    }

    /// Ends this handle's lease (closes its connection); its clones lose it
    /// too. Does nothing without a lease.
    pub async fn release_lease(&self) {
        if let Some(lease) = self.lease() {
            lease.pool.close().await;
            tracing::info!(projection = lease.projection, "projection lease released");
        }
    }

    /// Runs a projection in every process that calls this, with exactly one
    /// of them active at a time: takes the projection's lease when it is
    /// free (trying again every `retry`), runs the runner that `runner_for`
    /// builds on the leased store until `shutdown` completes or the lease is
    /// lost, then tries again. A lease whose connection died is noticed
    /// within `retry` (or at the next batch), and another process takes
    /// over from the checkpoint.
    ///
    /// Returns `Ok(())` after `shutdown`, or the error of a projection
    /// handler that stopped the projection
    /// ([`Error::Projection`]); other errors (a lost connection) are
    /// logged and the lease is taken again.
    pub fn run_leased<'a, P, F>(
        &'a self,
        runner_for: F,
        retry: Duration,
        shutdown: impl Future<Output = ()> + Send + 'a,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>
    where
        P: Projection,
        PgEventStore: ContextProvider<P::Context>,
        F: Fn(PgEventStore) -> ProjectionRunner<P, PgEventStore> + Send + Sync + 'a,
    {
        // Boxed so that the future is checked to be `Send` here, once, and
        // callers can spawn it.
        Box::pin(async move {
            let mut shutdown = Box::pin(shutdown);
            let retry = retry.max(Duration::from_millis(10));
            loop {
                let attempt = tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    attempt = self.try_lease(P::NAME) => attempt,
                };
                let leased = match attempt {
                    Ok(Some(leased)) => leased,
                    Ok(None) => {
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(retry) => continue,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(projection = P::NAME, %error, "cannot take the projection lease");
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(retry) => continue,
                        }
                    }
                };
                let runner = runner_for(leased.clone());
                let stopped = AtomicBool::new(false);
                let (watcher, lost) = watch_lease(&leased, retry);
                let stop = async {
                    tokio::select! {
                        () = &mut shutdown => stopped.store(true, Ordering::SeqCst),
                        _ = lost => {}
                    }
                };
                let result = runner.run_until(stop).await;
                watcher.abort();
                leased.release_lease().await;
                match result {
                    Ok(()) if stopped.load(Ordering::SeqCst) => return Ok(()),
                    Ok(()) => {
                        tracing::warn!(projection = P::NAME, "projection lease lost; trying again");
                    }
                    Err(error @ Error::Projection { .. }) => return Err(error),
                    Err(error) => {
                        tracing::warn!(projection = P::NAME, %error, "projection stopped; taking the lease again");
                    }
                }
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(retry) => {}
                }
            }
        })
    }
}

/// Watches a lease on a task of its own (so that its check is always
/// polled and never holds the lease's only connection while the runner
/// waits for it); the receiver completes when the lease is no longer held.
fn watch_lease(
    store: &PgEventStore,
    every: Duration,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (lost, receiver) = tokio::sync::oneshot::channel();
    let lease = store.lease_arc();
    let task = tokio::spawn(async move {
        let Some(lease) = lease else {
            let _ = lost.send(());
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            if !lease.is_held().await {
                let _ = lost.send(());
                return;
            }
        }
    });
    (task, receiver)
}
