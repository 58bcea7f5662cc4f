//! Waking readers: local appends wake waiters of the same store directly; a
//! background task tells other processes with one `NOTIFY` for any number of
//! appends; a `LISTEN`ing task (started by the first waiter) wakes waiters on
//! notifications from other processes.
//!
//! Appends never send `NOTIFY` themselves: PostgreSQL serializes the commits
//! of notifying transactions, which would forbid group commit and cap
//! concurrent appends at one WAL flush each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// The wake-up signals of one store, shared by its clones.
#[derive(Debug)]
pub(crate) struct Signals {
    /// Bumped by every local append and every notification received.
    wake: watch::Sender<u64>,
    /// Bumped by every local append; the notifier task follows it.
    appended: watch::Sender<u64>,
    /// Dropped with the store: the background tasks end when it is gone.
    alive: watch::Sender<()>,
    listening: AtomicBool,
    notifier_started: AtomicBool,
    /// The shortest time between two notifications.
    notify_interval: Duration,
}

impl Signals {
    pub(crate) fn new(notify_interval: Duration) -> Self {
        Self {
            notify_interval,
            wake: watch::Sender::new(0),
            appended: watch::Sender::new(0),
            alive: watch::Sender::new(()),
            listening: AtomicBool::new(false),
            notifier_started: AtomicBool::new(false),
        }
    }

    /// Called after an append committed.
    pub(crate) fn appended(&self, pool: &PgPool, notify_sql: &Arc<str>) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        if !self.notifier_started.swap(true, Ordering::AcqRel) {
            let mut appended = self.appended.subscribe();
            // Notify for the append that started the task too.
            appended.mark_changed();
            let alive = self.alive.subscribe();
            tokio::spawn(notifier(
                pool.clone(),
                Arc::clone(notify_sql),
                self.notify_interval,
                appended,
                alive,
            ));
        }
    }

    /// Whether this store appended since it was opened (its notifier runs).
    pub(crate) fn has_appended(&self) -> bool {
        self.notifier_started.load(Ordering::Acquire)
    }

    /// Ends the background tasks (notifier and listener).
    pub(crate) fn stop(&self) {
        self.alive.send_replace(());
    }

    /// A receiver of wake-ups, and the listener started if it was not.
    pub(crate) fn subscribe(&self, pool: &PgPool, channel: &str) -> watch::Receiver<u64> {
        if !self.listening.swap(true, Ordering::AcqRel) {
            tokio::spawn(listener(
                pool.clone(),
                channel.to_owned(),
                self.wake.clone(),
                self.alive.subscribe(),
            ));
        }
        self.wake.subscribe()
    }
}

/// Sends one notification for each burst of local appends.
async fn notifier(
    pool: PgPool,
    sql: Arc<str>,
    interval: Duration,
    mut appended: watch::Receiver<u64>,
    mut alive: watch::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { break },
            _ = alive.changed() => break,
        }
        appended.borrow_and_update();
        match sqlx::query(&sql).execute(&pool).await {
            Ok(_) => {
                backoff = Duration::from_millis(50);
                // At most one notification per interval: the appends in
                // between are announced together by the next one.
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = alive.changed() => break,
                }
            }
            Err(error) => {
                // Waiters elsewhere fall back to polling meanwhile.
                tracing::warn!(%error, "cannot send the new-events notification");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = alive.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Try again for the appends that were not announced.
                appended.mark_changed();
            }
        }
    }
}

/// Listens for notifications of other processes and wakes local waiters.
async fn listener(
    pool: PgPool,
    channel: String,
    wake: watch::Sender<u64>,
    mut alive: watch::Receiver<()>,
) {
    let bump = |wake: &watch::Sender<u64>| wake.send_modify(|n| *n = n.wrapping_add(1));
    let mut backoff = Duration::from_millis(100);
    let mut listener: Option<PgListener> = None;
    loop {
        let current = match listener.as_mut() {
            Some(l) => l,
            None => {
                let connected = tokio::select! {
                    connected = connect(&pool, &channel) => connected,
                    _ = alive.changed() => break,
                };
                match connected {
                    Ok(l) => {
                        backoff = Duration::from_millis(100);
                        // Notifications sent while not listening are lost.
                        bump(&wake);
                        listener.insert(l)
                    }
                    Err(error) => {
                        tracing::warn!(%error, channel, "cannot listen for new events; polling");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = alive.changed() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        let received = tokio::select! {
            received = current.try_recv() => received,
            _ = alive.changed() => break,
        };
        match received {
            Ok(Some(_)) => bump(&wake),
            Ok(None) => {
                // The connection was lost (and reconnects on the next call):
                // notifications may have been missed meanwhile.
                bump(&wake);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => {
                tracing::warn!(%error, channel, "listening for new events failed; reconnecting");
                listener = None;
                bump(&wake);
            }
        }
    }
}

async fn connect(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
