//! The PostgreSQL event store.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use es_core::{
    AppendOptions, AppendOutcome, Checkpoint, CheckpointStore, Committed, Error, EventFilter,
    EventStore, ExpectedVersion, LogSlice, NewEvent, ParkedEvent, Position, ReadEnd, RecordedEvent,
    Replay, ReplayedEvent, Result, Snapshot, SnapshotStore, StreamId, Version,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::copy;
use crate::inline::{InlineHandler, InlineProjection};
use crate::lease::Lease;
use crate::notify::Signals;
use crate::row::{
    committed_from_row, db_error, db_error_in, event_from_row, is_null, metadata_json, recorded,
    stored_schema_version, timestamp, to_i32, to_i64, to_u64, EventColumns, EventReader,
};
use crate::sink::Sink;
use crate::sql::{Statements, MAX_APPEND, PENDING};
use crate::tx::PgTx;

/// The store's migrations, embedded in the binary. [`PgEventStore`] runs
/// them on open, inside its schema (or only checks them, with
/// [`PgStoreOptions::run_migrations`]; [`PgStoreOptions::migrate`] runs them
/// alone); they are exposed for tools that want to inspect them.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// How many times an append with [`ExpectedVersion::Any`] is tried again
/// when a concurrent append took the same version.
const ANY_VERSION_ATTEMPTS: usize = 16;

/// How long a read of the log's end waits for older transactions to end
/// when committed events wait behind them.
const PENDING_WAIT: Duration = Duration::from_millis(100);

/// A connection of the pool that [`PgStoreOptions::connect`] builds is
/// checked before it is handed out when it sat idle for this long.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Options of a [`PgEventStore`]: its schema, how often it tells other
/// processes of its appends, the polling fallback of waiting readers, and
/// the pool built by [`PgStoreOptions::connect`].
///
/// ```
/// use std::time::Duration;
/// use es_postgres::PgStoreOptions;
///
/// let options = PgStoreOptions::new()
///     .schema("orders")
///     .poll_interval(Duration::from_millis(500))
///     .notify_interval(Duration::from_millis(20))
///     .max_connections(20);
/// assert_eq!(options.schema_name(), "orders");
/// ```
#[derive(Clone, Debug)]
pub struct PgStoreOptions {
    schema: String,
    poll_interval: Duration,
    notify_interval: Duration,
    max_connections: u32,
    gap_protection: bool,
    run_migrations: bool,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PgStoreOptions {
    /// Schema `es`, at most one notification every 50 ms, a poll every
    /// second when no notification came, pools of 10 connections.
    pub fn new() -> Self {
        Self {
            schema: "es".to_owned(),
            poll_interval: Duration::from_secs(1),
            notify_interval: Duration::from_millis(50),
            max_connections: 10,
            gap_protection: true,
            run_migrations: true,
        }
    }

    /// The schema that holds the store's tables (created if missing). It
    /// must be a plain lower-case identifier (`[a-z_][a-z0-9_]*`, at most
    /// 48 bytes); another name is refused when the store opens.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The schema name set.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// How often a waiting reader looks for new events when no notification
    /// arrives (the fallback for a missed notification).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The shortest time between two notifications (`NOTIFY`) by which
    /// this store tells other processes' waiting readers of its appends.
    /// The first append after a quiet spell is announced at once; while
    /// appends keep coming, one notification announces all those of an
    /// interval, so a reader elsewhere hears of them at most this late.
    /// Each notification is a short transaction of its own: a shorter
    /// interval wakes readers elsewhere sooner and costs busy writers more.
    /// Readers in the same process are woken at once, whatever the interval.
    #[must_use]
    pub fn notify_interval(mut self, interval: Duration) -> Self {
        self.notify_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The size of the pool that [`connect`](Self::connect) builds.
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Whether opening the store migrates its schema (the default), or
    /// only checks that every migration of this version of the store was
    /// applied to it, unchanged, and fails naming those that were not. Turn
    /// it off when the application's database role may not change the
    /// schema, and migrate in a deploy step with [`migrate`](Self::migrate).
    ///
    /// ```no_run
    /// # async fn deploy(admin: sqlx::PgPool, app: sqlx::PgPool) -> es_core::Result<()> {
    /// use es_postgres::PgStoreOptions;
    ///
    /// // The deploy step, as a role that owns the schema:
    /// PgStoreOptions::new().schema("orders").migrate(&admin).await?;
    /// // The application, as a role that may only read and write rows:
    /// let store = PgStoreOptions::new()
    ///     .schema("orders")
    ///     .run_migrations(false)
    ///     .open(app)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn run_migrations(mut self, run: bool) -> Self {
        self.run_migrations = run;
        self
    }

    /// Creates the schema if missing and runs the migrations in it, without
    /// opening a store: for a deploy step (see
    /// [`run_migrations`](Self::run_migrations)). Two processes migrating
    /// the same schema at once take turns.
    pub async fn migrate(&self, pool: &PgPool) -> Result<()> {
        migrate(pool, &Statements::new(&self.schema)?).await
    }

    /// Turns the gap protection of the global log off: readers then follow
    /// plain position order and skip events whose transaction commits after
    /// a later position became visible. Exists only so a test can show that
    /// the gap-safety test catches such skips; never use it.
    #[doc(hidden)]
    #[must_use]
    pub fn without_gap_protection_for_tests(mut self) -> Self {
        self.gap_protection = false;
        self
    }

    /// The options of the pool that [`connect`](Self::connect) builds, to
    /// build one like it yourself (to add settings of your own, or to
    /// share it with the application's other queries).
    ///
    /// sqlx checks a connection with a round trip (a ping) when it comes
    /// back to the pool, off the caller's path, and by default checks it
    /// again before handing it out, a round trip on the path of every
    /// store call. This pool skips that second check for a connection that
    /// came back within the last second, which the first check covers, and
    /// keeps it for one that sat idle longer, so that a connection the
    /// server dropped meanwhile (a restart, an idle timeout) is replaced
    /// instead of failing the call. Each store call on a busy pool then
    /// costs one round trip instead of two.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use es_postgres::PgStoreOptions;
    ///
    /// let options = PgStoreOptions::new().schema("orders").max_connections(20);
    /// let pool = options
    ///     .pool_options()
    ///     .acquire_timeout(Duration::from_secs(5))
    ///     .connect("postgres://app@db.internal/orders")
    ///     .await?;
    /// let store = options.open(pool).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool_options(&self) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= CHECK_IDLE_AFTER {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
    }

    /// Builds a pool for `url` (see [`pool_options`](Self::pool_options))
    /// and opens the store on it.
    pub async fn connect(self, url: &str) -> Result<PgEventStore> {
        let pool = self
            .pool_options()
            .connect(url)
            .await
            .map_err(db_error("cannot connect to PostgreSQL"))?;
        self.open(pool).await
    }

    /// Opens the store on a pool: creates the schema if missing and runs the
    /// migrations in it (or checks them: [`run_migrations`](Self::run_migrations)).
    /// The pool keeps its own settings; one built with sqlx's defaults
    /// checks every connection before handing it out, a round trip on each
    /// store call that [`pool_options`](Self::pool_options) saves.
    pub async fn open(self, pool: PgPool) -> Result<PgEventStore> {
        let sql = Statements::new(&self.schema)?;
        if self.run_migrations {
            migrate(&pool, &sql).await?;
        } else {
            check_migrated(&pool, &sql.schema).await?;
        }
        Ok(PgEventStore {
            shared: Arc::new(Shared {
                notify_sql: Arc::from(sql.notify.as_str()),
                pool,
                sql,
                poll_interval: self.poll_interval,
                gap_protection: self.gap_protection,
                signals: Signals::new(self.notify_interval),
                span: AtomicU64::new(0),
            }),
            inline: Arc::from(Vec::new()),
            lease: None,
        })
    }
}

/// Creates the schema and runs the migrations in it, on a connection of its
/// own that is closed afterwards (it had its `search_path` changed).
async fn migrate(pool: &PgPool, sql: &Statements) -> Result<()> {
    let schema = &sql.schema;
    let mut conn = pool
        .acquire()
        .await
        .map_err(db_error("cannot connect to PostgreSQL"))?;
    conn.close_on_drop();
    // Two processes opening the same new schema take turns.
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('es-postgres migrate ' || $1, 0))")
        .bind(schema)
        .execute(&mut *conn)
        .await
        .map_err(db_error(format!(
            "cannot lock schema `{schema}` to migrate it"
        )))?;
    sqlx::query(&sql.create_schema)
        .execute(&mut *conn)
        .await
        .map_err(db_error(format!("cannot create schema `{schema}`")))?;
    sqlx::query(&sql.set_search_path)
        .execute(&mut *conn)
        .await
        .map_err(db_error(format!("cannot select schema `{schema}`")))?;
    MIGRATOR
        .run_direct(&mut *conn)
        .await
        .map_err(|source| Error::store(format!("cannot migrate schema `{schema}`"), source))?;
    Ok(())
}

/// Checks that every embedded migration was applied to `schema`, with the
/// checksum it has here, and no migration this version does not know of
/// (the same rules as running them).
async fn check_migrated(pool: &PgPool, schema: &str) -> Result<()> {
    let not_ready = |what: String| Error::Store {
        message: format!(
            "schema `{schema}` is not ready for this version of the store: {what}; \
             migrate it (PgStoreOptions::migrate) or open the store with migrations on"
        ),
        source: None,
    };
    let applied: Vec<(i64, Vec<u8>)> = match sqlx::query_as(&format!(
        "SELECT version, checksum FROM \"{schema}\"._sqlx_migrations WHERE success"
    ))
    .fetch_all(pool)
    .await
    {
        Ok(applied) => applied,
        // No schema, or no migration table in it.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("3F000" | "42P01")) => {
            return Err(not_ready("it was never migrated".to_owned()));
        }
        Err(e) => {
            return Err(Error::store(
                format!("cannot read the migrations applied to schema `{schema}`"),
                e,
            ))
        }
    };
    let applied: BTreeMap<i64, Vec<u8>> = applied.into_iter().collect();
    let mut missing = Vec::new();
    for migration in MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
    {
        match applied.get(&migration.version) {
            None => missing.push(format!("{} ({})", migration.version, migration.description)),
            Some(checksum) if checksum.as_slice() != &*migration.checksum => {
                return Err(not_ready(format!(
                    "migration {} ({}) was changed after it was applied",
                    migration.version, migration.description
                )));
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(not_ready(format!(
            "not applied: migration {}",
            missing.join(", migration ")
        )));
    }
    if let Some(unknown) = applied
        .keys()
        .find(|v| MIGRATOR.iter().all(|m| m.version != **v))
    {
        return Err(not_ready(format!(
            "it has migration {unknown}, which this version does not know of"
        )));
    }
    Ok(())
}

/// The PostgreSQL event store: events, snapshots, checkpoints, parked events
/// and the transaction context of projections, in one schema.
///
/// Cloning gives another handle to the same store (the pool is shared).
/// See the [crate docs](crate) for the global log's order and its cost.
#[derive(Clone)]
pub struct PgEventStore {
    shared: Arc<Shared>,
    inline: Arc<[Arc<dyn InlineHandler>]>,
    lease: Option<Arc<Lease>>,
}

struct Shared {
    pool: PgPool,
    sql: Statements,
    notify_sql: Arc<str>,
    poll_interval: Duration,
    gap_protection: bool,
    signals: Signals,
    /// The positions per event of the last large read of the whole log (0
    /// before one), where a split read's second part starts.
    span: AtomicU64,
}

impl fmt::Debug for PgEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStore")
            .field("schema", &self.shared.sql.schema)
            .field(
                "inline",
                &self.inline.iter().map(|i| i.name()).collect::<Vec<_>>(),
            )
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// What the append statement reported.
struct AppendRow {
    /// The stream's version before the append (or now, when nothing was
    /// written).
    current: u64,
    /// The positions of the first and last event written; `None` when
    /// nothing was.
    written: Option<(i64, i64)>,
    prior: Option<Committed>,
}

impl PgEventStore {
    /// Opens the store in schema `es` with a pool of 10 connections to `url`.
    pub async fn connect(url: &str) -> Result<Self> {
        PgStoreOptions::new().connect(url).await
    }

    /// Opens the store in schema `es` on a pool.
    pub async fn open(pool: PgPool) -> Result<Self> {
        PgStoreOptions::new().open(pool).await
    }

    /// Options to open a store with another schema, pool size or polling
    /// interval.
    pub fn options() -> PgStoreOptions {
        PgStoreOptions::new()
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Closes the store: announces this process's last appends to other
    /// processes' waiting readers, ends the background tasks and closes the
    /// pool, waiting for the connections in use to be returned. Every handle
    /// of the store (its clones share the pool) fails its operations after
    /// this with [`Error::Store`].
    ///
    /// ```no_run
    /// # async fn run() -> es_core::Result<()> {
    /// let store = es_postgres::PgEventStore::connect("postgres://postgres@127.0.0.1/test").await?;
    /// // … serve …
    /// store.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        let shared = &self.shared;
        if shared.signals.has_appended() {
            if let Err(error) = sqlx::query(&shared.notify_sql).execute(&shared.pool).await {
                tracing::warn!(%error, "cannot send the last new-events notification");
            }
        }
        shared.signals.stop();
        shared.pool.close().await;
    }

    /// The schema of the store's tables.
    pub fn schema(&self) -> &str {
        &self.shared.sql.schema
    }

    /// The channel that `NOTIFY` announces new events on.
    pub fn channel(&self) -> &str {
        &self.shared.sql.channel
    }

    pub(crate) fn sql(&self) -> &Statements {
        &self.shared.sql
    }

    /// Opens a transaction: the context of projections with
    /// `type Context = PgTx`. On a leased handle (see
    /// [`try_lease`](Self::try_lease)) the transaction runs on the lease's
    /// connection, and fails once the lease is lost.
    pub async fn begin(&self) -> Result<PgTx> {
        if let Some(lease) = &self.lease {
            return lease.begin().await;
        }
        let tx = self
            .shared
            .pool
            .begin()
            .await
            .map_err(db_error("cannot begin a transaction"))?;
        Ok(PgTx::new(tx))
    }

    /// This store with `projection` applied inline: every append through
    /// the returned handle (and its clones) runs the projection's handler on
    /// the appended events of the types it handles, in the append's own
    /// transaction, after the events are inserted. A handler error fails the
    /// append and writes nothing; a read right after a command sees its
    /// effect. The same projection type can run in catch-up mode instead
    /// (with a [`ProjectionRunner`](es_core::ProjectionRunner)); see the
    /// crate docs on switching between the modes.
    #[must_use]
    pub fn with_inline<P>(&self, projection: P) -> Self
    where
        P: es_core::Projection<Context = PgTx>,
    {
        let mut inline: Vec<Arc<dyn InlineHandler>> = self.inline.iter().cloned().collect();
        inline.push(Arc::new(InlineProjection::new(projection)));
        Self {
            shared: Arc::clone(&self.shared),
            inline: Arc::from(inline),
            lease: self.lease.clone(),
        }
    }

    /// This store with a lease: projection transactions run on its connection.
    pub(crate) fn leased(&self, lease: Arc<Lease>) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            inline: Arc::clone(&self.inline),
            lease: Some(lease),
        }
    }

    pub(crate) fn lease(&self) -> Option<&Lease> {
        self.lease.as_deref()
    }

    pub(crate) fn lease_arc(&self) -> Option<Arc<Lease>> {
        self.lease.clone()
    }

    /// The names of the projections applied inline by this handle.
    pub fn inline_projections(&self) -> Vec<&'static str> {
        self.inline.iter().map(|i| i.name()).collect()
    }

    /// An append without idempotency key or inline projection: the insert
    /// alone. Nothing written means the expected version did not match.
    async fn append_plain(
        &self,
        stream_id: &StreamId,
        expected: i64,
        columns: &EventColumns<'_>,
    ) -> std::result::Result<AppendRow, AppendFailure> {
        let sql = &self.shared.sql;
        let appends = if expected < 0 {
            &sql.append_any
        } else {
            &sql.append_exact
        };
        let statement = |statement| {
            sqlx::query(statement)
                .bind(stream_id.as_str())
                .bind(expected)
        };
        let query = columns
            .bind_one_to(|| statement(&appends.one))
            .or_else(|| columns.bind_uniform_to(|| statement(&appends.uniform)))
            .unwrap_or_else(|| columns.bind_to(statement(&appends.many)));
        let row = query
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(AppendFailure::Db)?;
        let err =
            |source| AppendFailure::Other(Error::store("cannot read the append's result", source));
        let (first, first_position, last_position): (Option<i64>, Option<i64>, Option<i64>) =
            match row {
                Some(row) => (
                    row.try_get(0).map_err(err)?,
                    row.try_get(1).map_err(err)?,
                    row.try_get(2).map_err(err)?,
                ),
                None => (None, None, None),
            };
        let current = match first {
            Some(first) => to_u64(first - 1, "version").map_err(AppendFailure::Other)?,
            None => {
                self.stream_version(stream_id)
                    .await
                    .map_err(AppendFailure::Other)?
                    .0
            }
        };
        Ok(AppendRow {
            current,
            written: first_position.zip(last_position),
            prior: None,
        })
    }

    async fn append_once(
        &self,
        stream_id: &StreamId,
        expected: i64,
        key: Option<&str>,
        columns: &EventColumns<'_>,
        inline: &[&Arc<dyn InlineHandler>],
        events: &[NewEvent],
    ) -> std::result::Result<AppendRow, AppendFailure> {
        if key.is_none() && inline.is_empty() {
            return self.append_plain(stream_id, expected, columns).await;
        }
        let query = columns.bind_to(
            sqlx::query(&self.shared.sql.append)
                .bind(stream_id.as_str())
                .bind(key)
                .bind(expected),
        );
        if inline.is_empty() {
            let row = query
                .fetch_one(&self.shared.pool)
                .await
                .map_err(AppendFailure::Db)?;
            return append_row(&row)
                .map(|(row, _)| row)
                .map_err(AppendFailure::Other);
        }
        // Inline projections: the insert is the transaction's first write,
        // so the transaction id (the log order) is taken at the insert.
        let tx = self.shared.pool.begin().await.map_err(AppendFailure::Db)?;
        let mut tx = PgTx::new(tx);
        let row = query
            .fetch_one(tx.conn())
            .await
            .map_err(AppendFailure::Db)?;
        let (row, positions) = append_row(&row).map_err(AppendFailure::Other)?;
        if row.prior.is_some() || row.written.is_none() {
            return Ok(row);
        }
        let stored = recorded(
            stream_id,
            Version(row.current + 1),
            events.to_vec(),
            &positions,
            &columns.recorded_at,
        )
        .map_err(AppendFailure::Other)?;
        for handler in inline {
            for event in stored.iter().filter(|e| handler.wants(&e.event_type)) {
                handler.handle(&mut tx, event).await.map_err(|source| {
                    AppendFailure::Other(Error::Projection {
                        projection: handler.name().to_owned(),
                        position: event.position,
                        stream_id: event.stream_id.clone(),
                        version: event.version,
                        event_type: event.event_type.to_string(),
                        source,
                    })
                })?;
            }
        }
        tx.into_inner().commit().await.map_err(AppendFailure::Db)?;
        Ok(row)
    }

    /// Reads a page of the global log into `sink` and answers how it ended
    /// (its header row; see the page statement in `sql.rs`). A page of the
    /// whole log is a binary `COPY` ([`copy::read_page`]); a page of some
    /// event types is the prepared statement with the types bound, each
    /// row turned into an event as it arrives (while the server still
    /// sends the rest).
    async fn fetch_page(
        &self,
        after: Position,
        limit: i64,
        filter: &EventFilter,
        sink: &mut Sink<'_>,
    ) -> Result<PageEnd> {
        let context = || log_read_context(after.0);
        let sql = &self.shared.sql;
        let protected = self.shared.gap_protection;
        let after = to_i64(after.0, "position")?;
        let Some(types) = &filter.event_types else {
            if protected && limit >= SPLIT_READ {
                if let Some(end) = self.read_split(after, limit, &context, sink).await? {
                    return Ok(end);
                }
            }
            let page = sql.copy_page(protected, after, limit);
            let header = copy::read_page(&self.shared.pool, &page, &context, sink).await?;
            return Ok(PageEnd::of(header));
        };
        let statement = if protected {
            &sql.read_all_filtered
        } else {
            &sql.read_all_filtered_unprotected
        };
        let query = sqlx::query(statement).bind(after).bind(limit).bind(types);
        let mut rows = query.fetch(&self.shared.pool);
        let mut reader = EventReader::default();
        let mut header = None;
        while let Some(row) = rows.next().await {
            let row = row.map_err(db_error_in(&context))?;
            // The header is the row without an event (a null position).
            let position: Option<i64> = row.try_get_unchecked(0).map_err(db_error_in(&context))?;
            if let Some(position) = position {
                sink.events.push(reader.read_at(&row, position)?);
                sink.pass_on();
            } else {
                // `tail` and the flags in the columns of version and schema
                // version (see the page statement).
                header = Some(PageEnd {
                    tail: row
                        .try_get::<Option<i64>, _>("version")
                        .map_err(db_error_in(&context))?,
                    pending: row
                        .try_get::<i32, _>("schema_version")
                        .map_err(db_error_in(&context))?
                        & PENDING
                        != 0,
                    more: false,
                });
            }
        }
        header.ok_or_else(|| Error::Store {
            message: format!("{}: the page has no header row", context()),
            source: None,
        })
    }

    /// Reads an unfiltered page of `limit` events as two parts at once, on
    /// two connections, so that two server processes send them: the first
    /// from `after` up to a position where about half the page is expected
    /// to end (by the positions per event of the last large read, the
    /// log's recent density), the second from that position on. `None`
    /// when no read has measured the density yet.
    ///
    /// The second part is kept when the first holds every event up to where
    /// it reads to: that position is below the first part's bound (so the
    /// transactions of all events up to it have ended), and the first part
    /// ended before its size (the whole page). It is then cut to what fits
    /// in the page; otherwise the first part alone is the page. A page of
    /// both parts that ends short of its size, because the first part had
    /// fewer events than expected, says that more may follow at once
    /// ([`PageEnd::more`]).
    async fn read_split(
        &self,
        after: i64,
        limit: i64,
        context: &(dyn Fn() -> String + Sync),
        sink: &mut Sink<'_>,
    ) -> Result<Option<PageEnd>> {
        let span = i64::try_from(self.shared.span.load(Ordering::Relaxed)).unwrap_or(0);
        let half = limit / 2;
        let Some(upto) = span
            .checked_mul(half)
            .and_then(|distance| after.checked_add(distance))
            .filter(|_| span > 0)
        else {
            return Ok(None);
        };
        let shared = Arc::clone(&self.shared);
        let second = tokio::spawn(async move {
            let context = || log_read_context(upto);
            let page = shared.sql.copy_page(true, upto, limit - half);
            let mut rest = Sink::keep(usize::try_from(limit - half).unwrap_or(0));
            let header = copy::read_page(&shared.pool, &page, &context, &mut rest).await?;
            Ok::<_, Error>((rest.events, header))
        });
        // Dropped (this read failed or was cancelled), the second part
        // stops too.
        let mut second = AbortOnDrop(second);
        let before = sink.len();
        let page = self.shared.sql.copy_part(after, upto, limit);
        let first = copy::read_page(&self.shared.pool, &page, context, sink).await?;
        let (mut rest, header) = (&mut second.0).await.map_err(|error| {
            Error::store(format!("{}: the second part ended", context()), error)
        })??;
        let size = usize::try_from(limit).unwrap_or(usize::MAX);
        let read = sink.len() - before;
        if !first.covered || read >= size {
            // The first part is the page: it may not hold every event up
            // to where the second starts. Full, it has nothing to wait for.
            return Ok(Some(PageEnd {
                pending: first.pending && read < size,
                ..PageEnd::of(first)
            }));
        }
        let second_full = rest.len() >= usize::try_from(limit - half).unwrap_or(usize::MAX);
        let cut = rest.len() > size - read;
        rest.truncate(size - read);
        sink.append(rest);
        Ok(Some(PageEnd {
            more: second_full || cut,
            ..PageEnd::of(header)
        }))
    }

    /// Reads at most `limit` events of the log after `after` into `sink`;
    /// answers where the read ends (see [`LogSlice::next`]).
    async fn read_into(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
        sink: &mut Sink<'_>,
    ) -> Result<Position> {
        let mut cursor = after;
        let mut waited = Duration::ZERO;
        let mut backoff = Duration::from_millis(1);
        while sink.len() < limit {
            let room = i64::try_from(limit - sink.len()).unwrap_or(i64::MAX);
            let end = self.fetch_page(cursor, room, filter, sink).await?;
            let full = sink.len() >= limit;
            // A full page ends at its last event; another, at the last
            // event below its bound (`tail`), whether the filter kept it or
            // not: every event up to there was read.
            cursor = match (sink.last_position(), end.tail) {
                (Some(last), _) if full || end.more => last,
                (_, Some(tail)) => Position(to_u64(tail, "position")?),
                (Some(last), None) => last,
                (None, None) => cursor,
            }
            .max(cursor);
            if full || end.more {
                continue;
            }
            if !end.pending || waited >= PENDING_WAIT {
                break;
            }
            // Committed events wait for an older transaction, most often
            // one that is about to end: give it a moment, and read on from
            // where this page ended.
            tokio::time::sleep(backoff).await;
            waited += backoff;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
        if filter.event_types.is_none() {
            self.measure_density(sink);
        }
        Ok(cursor)
    }

    /// Keeps the positions per event of a large read of the whole log, by
    /// which the next split read places the start of its second part.
    fn measure_density(&self, sink: &Sink<'_>) {
        if sink.len() < DENSITY_SAMPLE {
            return;
        }
        if let (Some(first), Some(last)) = (sink.first_position(), sink.last_position()) {
            let span =
                last.0.saturating_sub(first.0) / u64::try_from(sink.len() - 1).unwrap_or(u64::MAX);
            self.shared.span.store(span.max(1), Ordering::Relaxed);
        }
    }

    /// Whether events after `after` are readable now, and whether committed
    /// events after it wait for older transactions to end.
    async fn probe(&self, after: Position) -> Result<(bool, bool)> {
        let sql = &self.shared.sql;
        let statement = if self.shared.gap_protection {
            &sql.probe
        } else {
            &sql.probe_unprotected
        };
        let row = sqlx::query(statement)
            .bind(to_i64(after.0, "position")?)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(db_error(format!(
                "cannot look for events after position {after}"
            )))?;
        let visible: bool = row
            .try_get("visible")
            .map_err(db_error("cannot read the probe"))?;
        let pending: bool = row
            .try_get("pending")
            .map_err(db_error("cannot read the probe"))?;
        Ok((visible, pending))
    }
}

/// What a read of the log after `after` says when it fails.
fn log_read_context(after: impl fmt::Display) -> String {
    format!("cannot read the global log after position {after}")
}

/// The smallest unfiltered read that [`PgEventStore::read_split`] splits.
const SPLIT_READ: i64 = 16_384;

/// How many events a read of the whole log has at least for its positions
/// per event to place the split of the next large read.
const DENSITY_SAMPLE: usize = 1024;

/// How a page of the log ended.
#[derive(Clone, Copy, Debug)]
struct PageEnd {
    /// The last event below the page's bound (a filtered page's).
    tail: Option<i64>,
    /// Whether committed events wait for an older transaction.
    pending: bool,
    /// Whether the page ended at its size rather than where the log's
    /// readable events do, so that the read goes on at once.
    more: bool,
}

impl PageEnd {
    fn of(header: copy::Header) -> Self {
        Self {
            tail: header.tail,
            pending: header.pending,
            more: false,
        }
    }
}

/// A spawned task, aborted when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum AppendFailure {
    Db(sqlx::Error),
    Other(Error),
}

/// Refuses an append of more events than its transaction's range of
/// positions can number ([`MAX_APPEND`]).
fn check_append_len(stream_id: &StreamId, len: usize) -> Result<()> {
    if len > MAX_APPEND {
        return Err(Error::Store {
            message: format!(
                "cannot append {len} events to stream `{stream_id}` at once: an append \
                 holds at most {MAX_APPEND} events in this store; split it into several"
            ),
            source: None,
        });
    }
    Ok(())
}

/// Reads the result of the statement for appends with an idempotency key
/// or inline projections, with the position of each event written.
fn append_row(row: &PgRow) -> Result<(AppendRow, Vec<i64>)> {
    let err = |source| Error::store("cannot read the append's result", source);
    let current: i64 = row.try_get("current_version").map_err(err)?;
    let positions: Vec<i64> = row
        .try_get::<Option<Vec<i64>>, _>("positions")
        .map_err(err)?
        .unwrap_or_default();
    let written = positions.first().copied().zip(positions.last().copied());
    let row = AppendRow {
        current: to_u64(current, "version")?,
        written,
        prior: committed_from_row(row, "prior_")?,
    };
    Ok((row, positions))
}

/// The replayed event of a row whose first columns are position, version,
/// event type, schema version and payload (the replay statements'; their
/// types are the migration's).
fn replayed<'r>(row: &'r PgRow, context: &dyn Fn() -> String) -> Result<ReplayedEvent<'r>> {
    let columns = || -> std::result::Result<(i64, i64, &str, i32, &str), sqlx::Error> {
        Ok((
            row.try_get_unchecked(0)?,
            row.try_get_unchecked(1)?,
            row.try_get_unchecked(2)?,
            row.try_get_unchecked(3)?,
            row.try_get_unchecked(4)?,
        ))
    };
    // The payload's text is lent as it is in the row: the column's type is
    // `json`, so the server checked it.
    let (position, version, event_type, schema_version, payload) =
        columns().map_err(db_error_in(context))?;
    Ok(ReplayedEvent {
        position: Position(to_u64(position, "position")?),
        version: Version(to_u64(version, "version")?),
        event_type,
        schema_version: stored_schema_version(schema_version)?,
        payload,
    })
}

/// Hands the rows of one stream's replay to a visitor in version order.
///
/// The replay statements have no `ORDER BY`: the server then reads the
/// stream's rows as they lie in the table (a bitmap scan of the
/// `(stream_id, version)` index) and sends each at once, instead of sorting
/// them all first (for a stream of 10,000 events, 1.6 ms instead of 4.2 ms on
/// the server, and the first row comes before the last is read). An
/// append-only table holds a stream's events in version order, so rows come
/// in order and are handed on as they come; a row that comes early (its
/// event landed in space freed earlier in the table) waits here for the
/// ones before it.
struct InVersionOrder {
    next: u64,
    early: BTreeMap<u64, PgRow>,
}

impl InVersionOrder {
    /// Expects the stream's events from version `from` on.
    fn new(from: Version) -> Self {
        Self {
            next: from.0.max(1),
            early: BTreeMap::new(),
        }
    }

    /// Takes the next row of the statement.
    fn push(
        &mut self,
        row: PgRow,
        context: &dyn Fn() -> String,
        visit: &mut (dyn for<'e> FnMut(ReplayedEvent<'e>) -> Result<()> + Send),
    ) -> Result<()> {
        let event = replayed(&row, context)?;
        let version = event.version.0;
        if version > self.next {
            self.early.insert(version, row);
            return Ok(());
        }
        visit(event)?;
        self.next = self.next.max(version + 1);
        while let Some(row) = self.early.remove(&self.next) {
            visit(replayed(&row, context)?)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Hands on the rows still waiting (after a version missing from the
    /// stream, which appends never leave), in version order.
    fn finish(
        self,
        context: &dyn Fn() -> String,
        visit: &mut (dyn for<'e> FnMut(ReplayedEvent<'e>) -> Result<()> + Send),
    ) -> Result<()> {
        for row in self.early.values() {
            visit(replayed(row, context)?)?;
        }
        Ok(())
    }
}

/// The snapshot of a row with the columns `version`, `schema_version` (the
/// state version), `payload` (the state) and `taken_at`: the
/// `load_snapshot` statement's, and the `replay_from_snapshot` statement's
/// first.
fn snapshot_from_row(stream_id: &StreamId, row: &PgRow) -> Result<Snapshot> {
    let context = || format!("cannot read the snapshot of `{stream_id}`");
    let version: i64 = row.try_get("version").map_err(db_error_in(&context))?;
    let state_version: i32 = row
        .try_get("schema_version")
        .map_err(db_error_in(&context))?;
    // A `json` value comes as its text.
    let state: &str = row
        .try_get_unchecked("payload")
        .map_err(db_error_in(&context))?;
    let taken_at = timestamp(row, "taken_at").map_err(db_error_in(&context))?;
    Ok(Snapshot {
        stream_id: stream_id.clone(),
        version: Version(to_u64(version, "version")?),
        state_version: u32::try_from(state_version).unwrap_or(0),
        state: serde_json::from_str(state).map_err(|e| Error::store(context(), e))?,
        taken_at,
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
}

/// The outcome of an append whose idempotency key was used before.
fn remembered(key: &str, first: Committed, stream_id: &StreamId) -> Result<AppendOutcome> {
    if &first.stream_id != stream_id {
        return Err(Error::IdempotencyKeyReused {
            key: key.to_owned(),
            used_for: first.stream_id,
            stream_id: stream_id.clone(),
        });
    }
    Ok(AppendOutcome::Duplicate(first))
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendOutcome> {
        if events.is_empty() {
            return Err(Error::EmptyAppend {
                stream_id: stream_id.clone(),
            });
        }
        check_append_len(stream_id, events.len())?;
        let columns = EventColumns::encode(&events, Utc::now())?;
        let expected_param = match expected {
            ExpectedVersion::Any => -1,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(v) => to_i64(v.0, "expected version")?,
        };
        let inline: Vec<&Arc<dyn InlineHandler>> = self
            .inline
            .iter()
            .filter(|h| events.iter().any(|e| h.wants(&e.event_type)))
            .collect();
        let key = options.idempotency_key.as_deref();
        let count = events.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self
                .append_once(stream_id, expected_param, key, &columns, &inline, &events)
                .await
            {
                Ok(row) => {
                    if let (Some(first), Some(key)) = (row.prior, key) {
                        return remembered(key, first, stream_id);
                    }
                    let Some((first_position, last_position)) = row.written else {
                        return Err(Error::Conflict {
                            stream_id: stream_id.clone(),
                            expected,
                            actual: Version(row.current),
                        });
                    };
                    let committed = Committed {
                        stream_id: stream_id.clone(),
                        first_version: Version(row.current + 1),
                        last_version: Version(row.current + count as u64),
                        first_position: Position(to_u64(first_position, "position")?),
                        last_position: Position(to_u64(last_position, "position")?),
                    };
                    self.shared
                        .signals
                        .appended(&self.shared.pool, &self.shared.notify_sql);
                    return Ok(AppendOutcome::Appended(committed));
                }
                Err(AppendFailure::Other(error)) => return Err(error),
                Err(AppendFailure::Db(error)) => error,
            };
            if !is_unique_violation(&failure) {
                return Err(Error::store(
                    format!(
                        "cannot append {count} events to stream `{stream_id}` (expected {expected})"
                    ),
                    failure,
                ));
            }
            // A concurrent append won: with the same key, report it; else
            // it took the version.
            if let Some(key) = key {
                if let Some(first) = self.find_idempotency_key(key).await? {
                    return remembered(key, first, stream_id);
                }
            }
            if expected == ExpectedVersion::Any && attempt < ANY_VERSION_ATTEMPTS {
                continue;
            }
            let actual = self.stream_version(stream_id).await?;
            return Err(Error::Conflict {
                stream_id: stream_id.clone(),
                expected,
                actual,
            });
        }
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&self.shared.sql.read_stream)
            .bind(stream_id.as_str())
            .bind(to_i64(from.0, "version")?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.shared.pool)
            .await
            .map_err(db_error(format!(
                "cannot read stream `{stream_id}` from version {from}"
            )))?;
        let mut reader = EventReader::default();
        rows.iter().map(|row| reader.read(row)).collect()
    }

    /// One statement for the whole stream; each row is read and visited as
    /// it arrives, without collecting the stream first.
    async fn visit_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        visit: &mut (dyn for<'e> FnMut(&'e RecordedEvent) -> Result<()> + Send),
    ) -> Result<()> {
        let context = || format!("cannot read stream `{stream_id}` from version {from}");
        let mut rows = sqlx::query(&self.shared.sql.read_stream)
            .bind(stream_id.as_str())
            .bind(to_i64(from.0, "version")?)
            .bind(i64::MAX)
            .fetch(&self.shared.pool);
        let mut reader = EventReader::default();
        while let Some(row) = rows.next().await {
            let row = row.map_err(db_error_in(&context))?;
            visit(&reader.read(&row)?)?;
        }
        Ok(())
    }

    /// One statement reading only what a replay needs; each row is visited
    /// as it arrives.
    async fn replay_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        visit: &mut (dyn for<'e> FnMut(ReplayedEvent<'e>) -> Result<()> + Send),
    ) -> Result<()> {
        let context = || format!("cannot read stream `{stream_id}` from version {from}");
        let mut rows = sqlx::query(&self.shared.sql.replay_stream)
            .bind(stream_id.as_str())
            .bind(to_i64(from.0, "version")?)
            .fetch(&self.shared.pool);
        let mut in_order = InVersionOrder::new(from);
        while let Some(row) = rows.next().await {
            let row = row.map_err(db_error_in(&context))?;
            in_order.push(row, &context, visit)?;
        }
        in_order.finish(&context, visit)
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version> {
        let version: i64 = sqlx::query_scalar(&self.shared.sql.stream_version)
            .bind(stream_id.as_str())
            .fetch_one(&self.shared.pool)
            .await
            .map_err(db_error(format!(
                "cannot read the version of stream `{stream_id}`"
            )))?;
        Ok(Version(to_u64(version, "version")?))
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice> {
        let mut sink = Sink::keep(0);
        let next = self.read_into(after, filter, limit, &mut sink).await?;
        Ok(LogSlice {
            events: sink.events,
            next,
        })
    }

    async fn read_all_into(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
        slices: &UnboundedSender<LogSlice>,
    ) -> Result<ReadEnd> {
        let mut sink = Sink::send_to(slices);
        let next = self.read_into(after, filter, limit, &mut sink).await?;
        Ok(sink.finish(next))
    }

    async fn head(&self) -> Result<Position> {
        let sql = &self.shared.sql;
        let statement = if self.shared.gap_protection {
            &sql.head
        } else {
            &sql.head_unprotected
        };
        let mut waited = Duration::ZERO;
        let mut backoff = Duration::from_millis(1);
        loop {
            let row = sqlx::query(statement)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(db_error("cannot read the head of the global log"))?;
            let head: Option<i64> = row
                .try_get("head")
                .map_err(db_error("cannot read the head of the global log"))?;
            let pending: bool = row
                .try_get("pending")
                .map_err(db_error("cannot read the head of the global log"))?;
            if pending && waited < PENDING_WAIT {
                tokio::time::sleep(backoff).await;
                waited += backoff;
                backoff = (backoff * 2).min(Duration::from_millis(20));
                continue;
            }
            return match head {
                Some(p) => Ok(Position(to_u64(p, "position")?)),
                None => Ok(Position::START),
            };
        }
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut wake = self
            .shared
            .signals
            .subscribe(&self.shared.pool, &self.shared.sql.channel);
        let mut backoff = Duration::from_millis(2);
        loop {
            wake.borrow_and_update();
            let (visible, pending) = self.probe(after).await?;
            if visible {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let remaining = deadline - now;
            if pending {
                // Committed events wait for an older transaction to end,
                // which sends no notification: look again soon.
                tokio::time::sleep(backoff.min(remaining)).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            } else {
                backoff = Duration::from_millis(2);
                let wait = remaining.min(self.shared.poll_interval);
                // A closed channel cannot happen while the store lives; the
                // timeout bounds the wait either way.
                let _ = tokio::time::timeout(wait, wake.changed()).await;
            }
        }
    }

    async fn find_idempotency_key(&self, key: &str) -> Result<Option<Committed>> {
        let row = sqlx::query(&self.shared.sql.find_key)
            .bind(key)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(db_error(format!("cannot look up idempotency key `{key}`")))?;
        match row {
            Some(row) => committed_from_row(&row, ""),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl SnapshotStore for PgEventStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let stream_id = &snapshot.stream_id;
        let state = serde_json::to_string(&snapshot.state).map_err(|source| Error::Encode {
            what: format!("snapshot of `{stream_id}`"),
            source,
        })?;
        sqlx::query(&self.shared.sql.save_snapshot)
            .bind(stream_id.as_str())
            .bind(to_i64(snapshot.version.0, "version")?)
            .bind(to_i32(snapshot.state_version, "state version")?)
            .bind(state)
            .bind(snapshot.taken_at)
            .execute(&self.shared.pool)
            .await
            .map_err(db_error(format!(
                "cannot save the snapshot of `{stream_id}` at version {}",
                snapshot.version
            )))?;
        Ok(())
    }

    /// One statement: the snapshot's row, then the events after it. Only
    /// when the repository does not build on the snapshot are the events
    /// read again, from the version it asks for.
    async fn replay_from_snapshot(
        &self,
        stream_id: &StreamId,
        replay: &mut dyn Replay,
    ) -> Result<()> {
        let context = || format!("cannot load stream `{stream_id}` from its snapshot");
        let mut rows = sqlx::query(&self.shared.sql.replay_from_snapshot)
            .bind(stream_id.as_str())
            .fetch(&self.shared.pool);
        let mut started = false;
        let mut in_order = InVersionOrder::new(Version::INITIAL);
        while let Some(row) = rows.next().await {
            let row = row.map_err(db_error_in(&context))?;
            // The snapshot's row has no position.
            let is_snapshot = is_null(&row, 0).map_err(db_error_in(&context))?;
            if is_snapshot && started {
                return Err(Error::Store {
                    message: format!("{}: the snapshot came after events", context()),
                    source: None,
                });
            }
            if !started {
                started = true;
                // The statement's events are those after the snapshot's version.
                let (from, after) = if is_snapshot {
                    let version: i64 = row.try_get_unchecked(1).map_err(db_error_in(&context))?;
                    let snapshot = snapshot_from_row(stream_id, &row).map(Some);
                    (replay.start(snapshot), Version(to_u64(version, "version")?))
                } else {
                    (replay.start(Ok(None)), Version::INITIAL)
                };
                if from != after.next() {
                    drop(rows);
                    return self
                        .replay_stream(stream_id, from, &mut |event| replay.event(event))
                        .await;
                }
                in_order = InVersionOrder::new(from);
                if is_snapshot {
                    continue;
                }
            }
            in_order.push(row, &context, &mut |event| replay.event(event))?;
        }
        if !started {
            replay.start(Ok(None));
        }
        in_order.finish(&context, &mut |event| replay.event(event))
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> Result<Option<Snapshot>> {
        let context = || format!("cannot load the snapshot of `{stream_id}`");
        let row = sqlx::query(&self.shared.sql.load_snapshot)
            .bind(stream_id.as_str())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(db_error_in(&context))?;
        row.map(|row| snapshot_from_row(stream_id, &row))
            .transpose()
    }
}

/// Saves a checkpoint on a connection (the pool's, or a projection's transaction).
pub(crate) async fn save_checkpoint_on(
    conn: &mut PgConnection,
    sql: &Statements,
    projection: &str,
    checkpoint: Checkpoint,
) -> Result<()> {
    sqlx::query(&sql.save_checkpoint)
        .bind(projection)
        .bind(to_i64(checkpoint.position.0, "position")?)
        .bind(to_i32(checkpoint.version, "projection version")?)
        .execute(conn)
        .await
        .map_err(db_error(format!(
            "cannot save the checkpoint of projection `{projection}` at position {}",
            checkpoint.position
        )))?;
    Ok(())
}

#[async_trait]
impl CheckpointStore for PgEventStore {
    async fn load_checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>> {
        let context = || format!("cannot load the checkpoint of projection `{projection}`");
        let row = sqlx::query(&self.shared.sql.load_checkpoint)
            .bind(projection)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(db_error_in(&context))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let position: i64 = row.try_get("position").map_err(db_error_in(&context))?;
        let version: i32 = row.try_get("version").map_err(db_error_in(&context))?;
        Ok(Some(Checkpoint {
            position: Position(to_u64(position, "position")?),
            version: u32::try_from(version).unwrap_or(0),
        }))
    }

    async fn save_checkpoint(&self, projection: &str, checkpoint: Checkpoint) -> Result<()> {
        let mut conn = self.shared.pool.acquire().await.map_err(db_error(format!(
            "cannot save the checkpoint of projection `{projection}`"
        )))?;
        save_checkpoint_on(&mut conn, &self.shared.sql, projection, checkpoint).await
    }

    async fn park(&self, parked: ParkedEvent) -> Result<()> {
        let event = &parked.event;
        sqlx::query(&self.shared.sql.park)
            .bind(&parked.projection)
            .bind(to_i64(event.position.0, "position")?)
            .bind(event.stream_id.as_str())
            .bind(to_i64(event.version.0, "version")?)
            .bind(event.event_id.0)
            .bind(event.event_type.as_str())
            .bind(to_i32(event.schema_version, "schema version")?)
            .bind(event.payload.as_str())
            .bind(metadata_json(&event.metadata)?)
            .bind(event.recorded_at)
            .bind(&parked.error)
            .bind(parked.parked_at)
            .execute(&self.shared.pool)
            .await
            .map_err(db_error(format!(
                "cannot park the event at position {} (stream `{}` v{}) for projection `{}`",
                event.position, event.stream_id, event.version, parked.projection
            )))?;
        Ok(())
    }

    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>> {
        let context = || format!("cannot list the parked events of projection `{projection}`");
        let rows = sqlx::query(&self.shared.sql.parked)
            .bind(projection)
            .fetch_all(&self.shared.pool)
            .await
            .map_err(db_error_in(&context))?;
        rows.iter()
            .map(|row| {
                Ok(ParkedEvent {
                    projection: projection.to_owned(),
                    event: event_from_row(row)?,
                    error: row.try_get("error").map_err(db_error_in(&context))?,
                    parked_at: timestamp(row, "parked_at").map_err(db_error_in(&context))?,
                })
            })
            .collect()
    }

    async fn unpark(&self, projection: &str, position: Position) -> Result<bool> {
        let done = sqlx::query(&self.shared.sql.unpark)
            .bind(projection)
            .bind(to_i64(position.0, "position")?)
            .execute(&self.shared.pool)
            .await
            .map_err(db_error(format!(
                "cannot unpark position {position} of projection `{projection}`"
            )))?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_is_at_most_one_transaction_range_of_positions() {
        let stream = StreamId::new("import-1");
        assert!(check_append_len(&stream, 1).is_ok());
        assert!(check_append_len(&stream, MAX_APPEND).is_ok());
        let error = check_append_len(&stream, MAX_APPEND + 1)
            .expect_err("one event more than a range holds")
            .to_string();
        assert!(error.contains("1048577 events"), "{error}");
        assert!(error.contains("`import-1`"), "{error}");
        assert!(error.contains("at most 1048576"), "{error}");
    }
}
