//! WAL checkpoints in the background.
//!
//! SQLite copies the WAL back into the database file ("checkpoints") every
//! 1,000 pages by default, inside the commit that crosses the mark, and a
//! checkpoint syncs the file to disk. On a small machine that made an
//! average commit three to six times slower. The store turns automatic
//! checkpoints off on its writer connection and runs passive checkpoints on
//! a connection of their own, on a tokio task, at most every
//! [`INTERVAL`] while writes come in. A passive checkpoint never blocks the
//! writer or the readers. Should the task be gone (its runtime shut down),
//! the writer turns SQLite's automatic checkpoints back on.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The shortest time between two checkpoints.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// SQLite's default automatic checkpoint, restored by [`Checkpointer::fallback`].
pub(crate) const AUTOCHECKPOINT_PAGES: u32 = 1000;

/// The handle of the checkpoint task.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    wrote: mpsc::Sender<()>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    fell_back: AtomicBool,
}

impl Checkpointer {
    /// Opens the task's connection and starts it on the current tokio
    /// runtime; `None` outside a runtime.
    pub(crate) async fn start(path: &Path, busy_timeout: Duration) -> Result<Option<Self>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Ok(None);
        };
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .busy_timeout(busy_timeout);
        let conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(|source| {
                Error::sqlite(
                    format!(
                        "cannot open the checkpoint connection of `{}`",
                        path.display()
                    ),
                    source,
                )
            })?;
        let (wrote, signals) = mpsc::channel(1);
        let (shutdown, stop) = watch::channel(false);
        let task = runtime.spawn(run(conn, signals, stop));
        Ok(Some(Self {
            wrote,
            shutdown,
            task: Mutex::new(Some(task)),
            fell_back: AtomicBool::new(false),
        }))
    }

    /// Tells the task that the WAL grew. Never waits.
    pub(crate) fn wrote(&self) {
        // A full channel already holds a signal: one checkpoint serves both.
        let _ = self.wrote.try_send(());
    }

    /// Whether the writer must check its own checkpoints now: true once,
    /// when the task is found gone.
    pub(crate) fn fallback(&self) -> bool {
        self.wrote.is_closed() && !self.fell_back.swap(true, Ordering::AcqRel)
    }

    /// Stops the task after its checkpoint in progress and waits for it to
    /// close its connection.
    pub(crate) async fn stop(&self) {
        self.shutdown.send_replace(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(error) = task.await {
                tracing::warn!(%error, "the checkpoint task failed");
            }
        }
    }
}

async fn run(
    mut conn: SqliteConnection,
    mut wrote: mpsc::Receiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            signal = wrote.recv() => {
                if signal.is_none() {
                    break;
                }
            }
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(%error, "WAL checkpoint failed; the next write retries it");
        }
        // Let writes accumulate; their signals meanwhile collapse into one.
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
    if let Err(error) = conn.close().await {
        tracing::warn!(%error, "closing the checkpoint connection failed");
    }
}
