//! The store: es-core's store traits over one SQLite file.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use es_core::{
    AppendOptions, AppendOutcome, Checkpoint, CheckpointStore, Committed, EventFilter, EventStore,
    ExpectedVersion, LogSlice, NewEvent, ParkedEvent, Position, RecordedEvent, Snapshot,
    SnapshotStore, StreamId, Version,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Connection, Row, Sqlite};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

use crate::checkpoint::{self, Checkpointer};
use crate::error::{Error, Result, SqlContext};
use crate::open;
use crate::options::SqliteStoreOptions;
use crate::rows::{self, EncodedEvent, PARKED_COLUMNS};
use crate::tx::{ContextSlot, SqliteTx, WriteTx, WriterGuard};

/// The queries of the events of `FROM <source>` (`es_events` and a `WHERE`
/// clause, or a subquery of whole `es_events` rows), built once per call site.
macro_rules! select_events {
    ($source:expr $(,)?) => {{
        static SQL: std::sync::OnceLock<EventSql> = std::sync::OnceLock::new();
        SQL.get_or_init(|| EventSql::new($source))
    }};
}

/// A query of events, packed (see [`rows::packed_sql`]) and row by row.
struct EventSql {
    packed: String,
    rows: String,
}

impl EventSql {
    fn new(source: &str) -> Self {
        Self {
            packed: rows::packed_sql(source),
            rows: rows::rows_sql(source),
        }
    }
}

/// A parameter of an event query.
#[derive(Clone, Copy)]
enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

/// Rows of an event query, decoded once the connection is released.
enum Fetched {
    Packed(SqliteRow),
    Rows(Vec<SqliteRow>),
}

/// SQLite's primary result code for a text or blob larger than its limit.
const SQLITE_TOOBIG: i64 = 18;

/// Runs an event query: packed, or row by row when the page is too large
/// for one SQLite text.
async fn fetch_events(
    conn: &mut SqliteConnection,
    sql: &'static EventSql,
    binds: &[Bind<'_>],
    what: impl Fn() -> String,
) -> es_core::Result<Fetched> {
    let bind =
        |mut query: sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments<'static>>| {
            for value in binds {
                query = match *value {
                    Bind::Int(n) => query.bind(n),
                    Bind::Text(text) => query.bind(text.to_owned()),
                };
            }
            query
        };
    match bind(sqlx::query(sql.packed.as_str()))
        .fetch_one(&mut *conn)
        .await
    {
        Ok(row) => Ok(Fetched::Packed(row)),
        Err(error) if crate::error::primary_code(&error) == Some(SQLITE_TOOBIG) => {
            tracing::debug!("page of events too large to pack; reading it row by row");
            bind(sqlx::query(sql.rows.as_str()))
                .fetch_all(&mut *conn)
                .await
                .map(Fetched::Rows)
                .ctx(what)
        }
        Err(error) => Err(Error::sqlite(what(), error).into()),
    }
}

impl Fetched {
    fn events(&self) -> Result<Vec<RecordedEvent>> {
        match self {
            Fetched::Packed(row) => {
                let read = |source| Error::sqlite("cannot read packed events", source);
                let mut columns = [None; rows::PACKED_VALUES - 1];
                for (index, column) in columns.iter_mut().enumerate() {
                    *column = row.try_get(index + 1).map_err(read)?;
                }
                rows::Unpacker {
                    count: row.try_get(0).map_err(read)?,
                    columns,
                }
                .events()
            }
            Fetched::Rows(found) => found.iter().map(rows::decode_event_row).collect(),
        }
    }
}

/// An event store in one SQLite file: events, snapshots, checkpoints and
/// parked events, with read models of projections beside them.
///
/// Cloning it gives another handle to the same store. It implements every
/// es-core store trait ([`EventStore`], [`SnapshotStore`],
/// [`CheckpointStore`]) and provides [`SqliteTx`] as the context of
/// projections whose read model lives in the same file
/// ([`ContextProvider<SqliteTx>`](es_core::ContextProvider)), as well as the
/// `()` context of every store.
///
/// Writes go through one writer connection, one transaction at a time, each
/// holding SQLite's write lock from its start (`BEGIN IMMEDIATE`); so
/// positions are given in commit order and the global log has no gaps, also
/// when several processes share the file. Reads run on a pool of read-only
/// connections, in parallel with the writer (WAL mode); a read of one
/// stream (what the repository loads) runs on the writer connection instead
/// when no write holds it, because the writer's page cache survives its own
/// commits while a reader's is emptied by every commit.
///
/// ```
/// use es_core::{AppendOptions, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Version};
/// use es_sqlite::SqliteEventStore;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteEventStore::open(dir.path().join("events.db")).await?;
/// let event = NewEvent {
///     event_id: EventId::new(),
///     event_type: "Opened".into(),
///     schema_version: 1,
///     payload: serde_json::json!({"owner": "ada"}).into(),
///     metadata: Metadata::default(),
/// };
/// let stream = "account-1".into();
/// store.append(&stream, ExpectedVersion::NoStream, vec![event], &AppendOptions::default()).await?;
/// assert_eq!(store.stream_version(&stream).await?, Version(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteEventStore {
    inner: Arc<Inner>,
}

/// The shared state of a store. Fields drop in order: the connections
/// before the temporary directory they live in.
pub(crate) struct Inner {
    writer: Arc<Mutex<Option<SqliteConnection>>>,
    /// `None` for `:memory:`, whose reads run on the writer connection.
    readers: Option<SqlitePool>,
    /// The last position this process committed; wakes waiting readers.
    head: watch::Sender<Position>,
    /// The slot of the open [`SqliteTx`], if one is open.
    open_context: std::sync::Mutex<Option<Arc<ContextSlot>>>,
    write_timeout: Duration,
    /// `None` for `:memory:`, or outside a tokio runtime.
    checkpointer: Option<Checkpointer>,
    path: Option<PathBuf>,
    _temporary: Option<TemporaryDir>,
}

impl Inner {
    /// The writer connection, exclusively.
    pub(crate) async fn writer(&self) -> Result<WriterGuard, es_core::Error> {
        let waited = self.write_timeout;
        let guard = tokio::time::timeout(waited, Arc::clone(&self.writer).lock_owned())
            .await
            .map_err(|_| Error::WriterBusy { waited })?;
        let mut conn =
            OwnedMutexGuard::try_map(guard, Option::as_mut).map_err(|_| Error::Closed)?;
        if self
            .checkpointer
            .as_ref()
            .is_some_and(Checkpointer::fallback)
        {
            tracing::warn!("the checkpoint task is gone; the writer checkpoints by itself");
            sqlx::query(&format!(
                "PRAGMA wal_autocheckpoint = {}",
                checkpoint::AUTOCHECKPOINT_PAGES
            ))
            .execute(&mut *conn)
            .await
            .ctx(|| "cannot turn automatic checkpoints back on".into())?;
        }
        Ok(conn)
    }

    /// Tells the checkpoint task that the WAL grew.
    pub(crate) fn wrote(&self) {
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.wrote();
        }
    }

    pub(crate) fn open_context(&self) -> MutexGuard<'_, Option<Arc<ContextSlot>>> {
        // Setting an `Option` cannot panic half-way.
        self.open_context
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection to read with: one of the readers, or the writer for `:memory:`.
    async fn reader(&self) -> es_core::Result<ReadConn> {
        match &self.readers {
            Some(pool) => pool
                .acquire()
                .await
                .map(ReadConn::Pooled)
                .ctx(|| "cannot get a read connection".into()),
            None => self.writer().await.map(ReadConn::Writer),
        }
    }

    /// A connection for a short read of one stream: the writer when no write
    /// holds it, otherwise a reader. The writer made the last commits
    /// itself, so its page cache is still valid, whereas a reader starts
    /// every read transaction after another connection's commit with an
    /// empty cache.
    async fn stream_reader(&self) -> es_core::Result<ReadConn> {
        if let Ok(guard) = Arc::clone(&self.writer).try_lock_owned() {
            if let Ok(conn) = OwnedMutexGuard::try_map(guard, Option::as_mut) {
                return Ok(ReadConn::Writer(conn));
            }
        }
        self.reader().await
    }

    /// Publishes a committed position to waiting readers.
    fn advance(&self, position: Position) {
        self.head.send_if_modified(|head| {
            let newer = position > *head;
            if newer {
                *head = position;
            }
            newer
        });
    }
}

/// A directory that is removed with the store that lives in it.
struct TemporaryDir(PathBuf);

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), %error, "temporary store not removed");
        }
    }
}

/// A connection for reading.
enum ReadConn {
    Pooled(PoolConnection<Sqlite>),
    Writer(WriterGuard),
}

impl Deref for ReadConn {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            ReadConn::Pooled(conn) => conn,
            ReadConn::Writer(conn) => conn,
        }
    }
}

impl DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            ReadConn::Pooled(conn) => conn,
            ReadConn::Writer(conn) => conn,
        }
    }
}

/// A connection for reading the store's file, such as the tables of read
/// models: one of the store's read-only connections (for `:memory:`, its
/// only connection, held exclusively until this is dropped).
pub struct SqliteReader(ReadConn);

impl SqliteReader {
    /// The connection.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.0
    }
}

impl fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteReader").finish_non_exhaustive()
    }
}

impl fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteEventStore")
            .field("path", &self.inner.path)
            .field("head", &*self.inner.head.borrow())
            .finish_non_exhaustive()
    }
}

impl SqliteEventStore {
    /// Opens the store in a file, creating the file if it is missing, or an
    /// in-memory store for the path `:memory:`; with default
    /// [options](SqliteStoreOptions).
    ///
    /// An existing file is checked before anything is written to it: a
    /// file that is not an SQLite database, a database with schema
    /// migrations this code does not know, and a file that cannot be written
    /// are refused with [`Error::NotADatabase`], [`Error::NewerSchema`] (or
    /// [`Error::SchemaMismatch`]) and [`Error::ReadOnly`], and stay as they
    /// were. Then the store switches the file to WAL mode and applies its
    /// [migrations](crate::MIGRATOR).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteStoreOptions::default()).await
    }

    /// Opens the store with options; see [`SqliteEventStore::open`].
    pub async fn open_with(path: impl AsRef<Path>, options: SqliteStoreOptions) -> Result<Self> {
        let path = path.as_ref();
        if path == Path::new(":memory:") {
            let writer = open::open_memory(&options).await?;
            return Self::assemble(writer, None, None, None, &options, None).await;
        }
        match std::fs::metadata(path) {
            Ok(_) => open::check_existing(path, &options).await?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => open::check_new(path)?,
            Err(source) => {
                return Err(Error::Io {
                    action: "read the metadata of",
                    path: path.to_owned(),
                    source,
                })
            }
        }
        Self::open_file(path, &options, None).await
    }

    /// Opens a new store in a file of a new temporary directory, which is
    /// removed when the last handle of the store is dropped: a fresh,
    /// durable store for each test.
    pub async fn open_temporary() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("es-sqlite-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir(&dir).map_err(|source| Error::Io {
            action: "create the temporary directory",
            path: dir.clone(),
            source,
        })?;
        let guard = TemporaryDir(dir.clone());
        let options = SqliteStoreOptions::default();
        Self::open_file(&dir.join("events.db"), &options, Some(guard)).await
    }

    async fn open_file(
        path: &Path,
        options: &SqliteStoreOptions,
        temporary: Option<TemporaryDir>,
    ) -> Result<Self> {
        let mut writer = open::open_writer(path, options).await?;
        let checkpointer = Checkpointer::start(path, options.busy_timeout).await?;
        if checkpointer.is_some() {
            sqlx::query("PRAGMA wal_autocheckpoint = 0")
                .execute(&mut writer)
                .await
                .map_err(|source| {
                    Error::sqlite("cannot hand checkpoints to the checkpoint task", source)
                })?;
        }
        let readers = open::reader_pool(path, options);
        Self::assemble(
            writer,
            Some(readers),
            checkpointer,
            Some(path.to_owned()),
            options,
            temporary,
        )
        .await
    }

    async fn assemble(
        mut writer: SqliteConnection,
        readers: Option<SqlitePool>,
        checkpointer: Option<Checkpointer>,
        path: Option<PathBuf>,
        options: &SqliteStoreOptions,
        temporary: Option<TemporaryDir>,
    ) -> Result<Self> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM es_events")
            .fetch_one(&mut writer)
            .await
            .map_err(|source| Error::sqlite("cannot read the head of the log", source))?;
        let head = Position(rows::to_u64(head, "position")?);
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Arc::new(Mutex::new(Some(writer))),
                readers,
                head: watch::Sender::new(head),
                open_context: std::sync::Mutex::new(None),
                write_timeout: options.write_timeout,
                checkpointer,
                path,
                _temporary: temporary,
            }),
        })
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The database file (`None` for `:memory:`).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Begins a transaction on the writer connection, as a projection's
    /// context does: to create a read model's tables, say. See [`SqliteTx`].
    pub async fn transaction(&self) -> es_core::Result<SqliteTx> {
        SqliteTx::begin(&self.inner).await
    }

    /// A connection to read the file with, such as a read model's tables.
    /// See [`SqliteReader`]; for `:memory:` it holds the only connection,
    /// so drop it soon.
    pub async fn reader(&self) -> es_core::Result<SqliteReader> {
        self.inner.reader().await.map(SqliteReader)
    }

    /// Waits for the writes in progress, then closes every connection; the
    /// file is complete (its WAL checkpointed) when this returns, unless
    /// another process has it open. Every later operation of any handle
    /// fails with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        if let Some(checkpointer) = &self.inner.checkpointer {
            checkpointer.stop().await;
        }
        if let Some(readers) = &self.inner.readers {
            readers.close().await;
        }
        let mut writer = self.inner.writer.lock().await;
        match writer.take() {
            Some(conn) => conn
                .close()
                .await
                .map_err(|source| Error::sqlite("cannot close the writer connection", source)),
            None => Ok(()),
        }
    }

    /// Writes a parked event now, in a transaction of its own.
    pub(crate) async fn write_park_now(&self, parked: &ParkedEvent) -> es_core::Result<()> {
        let mut conn = self.inner.writer().await?;
        write_parked(&mut conn, parked).await?;
        self.inner.wrote();
        Ok(())
    }

    async fn find_key(
        conn: &mut SqliteConnection,
        key: &str,
    ) -> es_core::Result<Option<Committed>> {
        let row = sqlx::query(
            "SELECT stream_id, first_version, last_version, first_position, last_position \
             FROM es_idempotency_keys WHERE key = ?1",
        )
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .ctx(|| format!("cannot look up idempotency key `{key}`"))?;
        match row {
            Some(row) => Ok(Some(rows::decode_committed(&row)?)),
            None => Ok(None),
        }
    }

    async fn version_on(
        conn: &mut SqliteConnection,
        stream_id: &StreamId,
    ) -> es_core::Result<Version> {
        let version: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(version), 0) FROM es_events WHERE stream_id = ?1",
        )
        .bind(stream_id.as_str())
        .fetch_one(&mut *conn)
        .await
        .ctx(|| format!("cannot read the version of stream `{stream_id}`"))?;
        Ok(Version(rows::to_u64(version, "version")?))
    }

    async fn head_on(conn: &mut SqliteConnection) -> es_core::Result<Position> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM es_events")
            .fetch_one(&mut *conn)
            .await
            .ctx(|| "cannot read the head of the log".into())?;
        Ok(Position(rows::to_u64(head, "position")?))
    }

    /// An append of at most [`rows::MAX_CHECKED`] events at an exact version,
    /// without an idempotency key (every command of the repository without
    /// a key): one `INSERT … SELECT … WHERE <the stream is at version>`
    /// statement, atomic on its own, instead of a transaction of four
    /// statements.
    async fn append_checked(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        version: Version,
        events: &[EncodedEvent],
    ) -> es_core::Result<AppendOutcome> {
        let mut query = sqlx::query(rows::insert_checked_sql(events.len()));
        let mut next = rows::to_i64(version.0, "version")?;
        for event in events {
            next += 1;
            query = query
                .bind(stream_id.as_str())
                .bind(next)
                .bind(event.event_id)
                .bind(event.event_type.as_str())
                .bind(event.schema_version)
                .bind(event.payload.as_str())
                .bind(event.metadata.as_str())
                .bind(event.recorded_at);
        }
        query = query
            .bind(stream_id.as_str())
            .bind(rows::to_i64(version.0, "version")?);
        let mut conn = self.inner.writer().await?;
        let done = query
            .execute(&mut *conn)
            .await
            .ctx(|| format!("cannot append to stream `{stream_id}`"))?;
        let count = events.len() as u64;
        if done.rows_affected() != count {
            let actual = Self::version_on(&mut conn, stream_id).await?;
            if done.rows_affected() == 0 {
                return Err(es_core::Error::Conflict {
                    stream_id: stream_id.clone(),
                    expected,
                    actual,
                });
            }
            return Err(Error::Corrupt(format!(
                "an append of {count} events to `{stream_id}` wrote {}",
                done.rows_affected()
            ))
            .into());
        }
        drop(conn);
        self.inner.wrote();
        let last = done.last_insert_rowid();
        let first = last - i64::try_from(count).unwrap_or(i64::MAX) + 1;
        let committed = Committed {
            stream_id: stream_id.clone(),
            first_version: version.next(),
            last_version: Version(version.0 + count),
            first_position: Position(rows::to_u64(first, "position")?),
            last_position: Position(rows::to_u64(last, "position")?),
        };
        self.inner.advance(committed.last_position);
        Ok(AppendOutcome::Appended(committed))
    }

    /// Inserts the events of one append; returns the first and last positions.
    async fn insert_events(
        conn: &mut SqliteConnection,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        after: Version,
        events: &[EncodedEvent],
    ) -> es_core::Result<(i64, i64)> {
        let mut rest = events;
        let mut version = rows::to_i64(after.0, "version")?;
        let mut first = None;
        let mut last = 0;
        for size in rows::chunk_sizes(events.len()) {
            let (chunk, tail) = rest.split_at(size);
            let mut query = sqlx::query(rows::insert_sql(size));
            for event in chunk {
                version += 1;
                query = query
                    .bind(stream_id.as_str())
                    .bind(version)
                    .bind(event.event_id)
                    .bind(event.event_type.as_str())
                    .bind(event.schema_version)
                    .bind(event.payload.as_str())
                    .bind(event.metadata.as_str())
                    .bind(event.recorded_at);
            }
            let done = query.execute(&mut *conn).await;
            let done = match done {
                Ok(done) => done,
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    // The version check ran under the write lock, so only a
                    // writer that bypasses it gets here: still a conflict.
                    return Err(es_core::Error::Conflict {
                        stream_id: stream_id.clone(),
                        expected,
                        actual: Self::version_on(conn, stream_id).await?,
                    });
                }
                Err(source) => {
                    return Err(Error::sqlite(
                        format!("cannot append to stream `{stream_id}`"),
                        source,
                    )
                    .into())
                }
            };
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            let end = done.last_insert_rowid();
            first.get_or_insert(end - size + 1);
            last = end;
            rest = tail;
        }
        let first = first.unwrap_or(last);
        let expected = i64::try_from(events.len()).unwrap_or(i64::MAX);
        if last - first + 1 != expected {
            return Err(Error::Corrupt(format!(
                "positions {first}..={last} of one append to `{stream_id}` are not contiguous"
            ))
            .into());
        }
        Ok((first, last))
    }
}

/// Writes (or replaces) a parked event.
pub(crate) async fn write_parked(
    conn: &mut SqliteConnection,
    parked: &ParkedEvent,
) -> es_core::Result<()> {
    let event = &parked.event;
    let metadata = {
        let mut metadata = event.metadata.clone();
        metadata.recorded_at = None;
        serde_json::to_string(&metadata).map_err(|source| es_core::Error::Encode {
            what: format!("metadata of parked {}", event.event_type),
            source,
        })?
    };
    sqlx::query(
        "INSERT OR REPLACE INTO es_parked_events (projection, position, stream_id, version, \
         event_id, event_type, schema_version, payload, metadata, recorded_at, error, parked_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .bind(parked.projection.as_str())
    .bind(rows::to_i64(event.position.0, "position")?)
    .bind(event.stream_id.as_str())
    .bind(rows::to_i64(event.version.0, "version")?)
    .bind(event.event_id.0)
    .bind(event.event_type.as_str())
    .bind(i64::from(event.schema_version))
    .bind(event.payload.as_str())
    .bind(metadata)
    .bind(rows::to_micros(event.recorded_at))
    .bind(parked.error.as_str())
    .bind(rows::to_micros(parked.parked_at))
    .execute(&mut *conn)
    .await
    .ctx(|| {
        format!(
            "cannot park event {} for projection `{}`",
            event.position, parked.projection
        )
    })?;
    Ok(())
}

/// Writes a projection's checkpoint.
pub(crate) async fn write_checkpoint(
    conn: &mut SqliteConnection,
    projection: &str,
    checkpoint: Checkpoint,
) -> es_core::Result<()> {
    sqlx::query(
        "INSERT INTO es_checkpoints (projection, position, version, updated_at) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position, \
         version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(projection)
    .bind(rows::to_i64(checkpoint.position.0, "position")?)
    .bind(i64::from(checkpoint.version))
    .bind(rows::to_micros(Utc::now()))
    .execute(&mut *conn)
    .await
    .ctx(|| format!("cannot save the checkpoint of projection `{projection}`"))?;
    Ok(())
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> es_core::Result<AppendOutcome> {
        if events.is_empty() {
            return Err(es_core::Error::EmptyAppend {
                stream_id: stream_id.clone(),
            });
        }
        // Encode before taking the writer: the lock is held for SQL only.
        let mut now = None;
        let encoded = events
            .into_iter()
            .map(|event| rows::encode_event(event, &mut now))
            .collect::<es_core::Result<Vec<_>>>()?;
        let checked_version = match expected {
            ExpectedVersion::Exact(version) => Some(version),
            ExpectedVersion::NoStream => Some(Version::INITIAL),
            ExpectedVersion::Any => None,
        };
        if let (Some(version), None, true) = (
            checked_version,
            &options.idempotency_key,
            encoded.len() <= rows::MAX_CHECKED,
        ) {
            return self
                .append_checked(stream_id, expected, version, &encoded)
                .await;
        }
        let mut tx = WriteTx::begin(&self.inner).await?;
        if let Some(key) = &options.idempotency_key {
            if let Some(first) = Self::find_key(tx.conn(), key).await? {
                drop(tx);
                if &first.stream_id != stream_id {
                    return Err(es_core::Error::IdempotencyKeyReused {
                        key: key.clone(),
                        used_for: first.stream_id,
                        stream_id: stream_id.clone(),
                    });
                }
                return Ok(AppendOutcome::Duplicate(first));
            }
        }
        let actual = Self::version_on(tx.conn(), stream_id).await?;
        if !expected.matches(actual) {
            return Err(es_core::Error::Conflict {
                stream_id: stream_id.clone(),
                expected,
                actual,
            });
        }
        let (first, last) =
            Self::insert_events(tx.conn(), stream_id, expected, actual, &encoded).await?;
        let count = encoded.len() as u64;
        let committed = Committed {
            stream_id: stream_id.clone(),
            first_version: actual.next(),
            last_version: Version(actual.0 + count),
            first_position: Position(rows::to_u64(first, "position")?),
            last_position: Position(rows::to_u64(last, "position")?),
        };
        if let Some(key) = &options.idempotency_key {
            sqlx::query(
                "INSERT INTO es_idempotency_keys (key, stream_id, first_version, last_version, \
                 first_position, last_position, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(key.as_str())
            .bind(stream_id.as_str())
            .bind(rows::to_i64(committed.first_version.0, "version")?)
            .bind(rows::to_i64(committed.last_version.0, "version")?)
            .bind(first)
            .bind(last)
            .bind(rows::to_micros(Utc::now()))
            .execute(tx.conn())
            .await
            .ctx(|| format!("cannot record idempotency key `{key}`"))?;
        }
        tx.commit().await?;
        drop(tx);
        self.inner.wrote();
        self.inner.advance(committed.last_position);
        Ok(AppendOutcome::Appended(committed))
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        limit: usize,
    ) -> es_core::Result<Vec<RecordedEvent>> {
        let mut conn = self.inner.stream_reader().await?;
        // Versions of a stream have no gaps (each append checks the version
        // it continues), so a range of versions is the page: an index range
        // that SQLite aggregates without a subquery.
        let sql = select_events!("es_events WHERE stream_id = ? AND version >= ? AND version < ?");
        let from = rows::to_i64(from.0, "version")?;
        let binds = [
            Bind::Text(stream_id.as_str()),
            Bind::Int(from),
            Bind::Int(from.saturating_add(rows::limit(limit))),
        ];
        let found = fetch_events(&mut conn, sql, &binds, || {
            format!("cannot read stream `{stream_id}`")
        })
        .await?;
        drop(conn);
        Ok(found.events()?)
    }

    async fn stream_version(&self, stream_id: &StreamId) -> es_core::Result<Version> {
        let mut conn = self.inner.stream_reader().await?;
        Self::version_on(&mut conn, stream_id).await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> es_core::Result<LogSlice> {
        if limit == 0 {
            return Ok(LogSlice {
                events: Vec::new(),
                next: after,
            });
        }
        let from = rows::to_i64(after.0, "position")?;
        let mut conn = self.inner.reader().await?;
        let what = || format!("cannot read the log after position {after}");
        // `end` is where the read stops when it returns fewer than `limit`
        // events: the last position it examined.
        let (found, end) = match &filter.event_types {
            None => {
                // Positions have no gaps either (one writer, AUTOINCREMENT,
                // no deletes): the page is the range up to the head, or up
                // to `limit` events, and the reader has examined all of it.
                let head = Self::head_on(&mut conn).await?;
                let end = from
                    .saturating_add(rows::limit(limit))
                    .min(rows::to_i64(head.0, "position")?);
                let sql = select_events!("es_events WHERE position > ? AND position <= ?");
                let binds = [Bind::Int(from), Bind::Int(end)];
                let found = fetch_events(&mut conn, sql, &binds, what).await?;
                (found, Position(rows::to_u64(end.max(from), "position")?))
            }
            Some(types) => {
                // Read the head first: every event up to it is committed, so
                // when fewer than `limit` events pass the filter, the reader
                // has examined the log up to the head and no further.
                let head = Self::head_on(&mut conn).await?;
                let types =
                    serde_json::to_string(types).map_err(|source| es_core::Error::Encode {
                        what: "event type filter".into(),
                        source,
                    })?;
                let sql = select_events!(
                    "(SELECT * FROM es_events WHERE position > ? AND position <= ? \
                     AND event_type IN (SELECT value FROM json_each(?)) \
                     ORDER BY position LIMIT ?)",
                );
                let binds = [
                    Bind::Int(from),
                    Bind::Int(rows::to_i64(head.0, "position")?),
                    Bind::Text(&types),
                    Bind::Int(rows::limit(limit)),
                ];
                (fetch_events(&mut conn, sql, &binds, what).await?, head)
            }
        };
        drop(conn);
        let events = found.events()?;
        let last = events.last().map(|e| e.position);
        let next = match last {
            Some(last) if events.len() >= limit => last,
            _ => end.max(after),
        };
        Ok(LogSlice { events, next })
    }

    async fn head(&self) -> es_core::Result<Position> {
        let mut conn = self.inner.reader().await?;
        Self::head_on(&mut conn).await
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> es_core::Result<bool> {
        // Subscribe before looking, so that a commit between the look and
        // the wait still wakes this waiter.
        let mut head = self.inner.head.subscribe();
        if *head.borrow_and_update() > after || self.head().await? > after {
            return Ok(true);
        }
        let woke = tokio::time::timeout(timeout, head.wait_for(|head| *head > after))
            .await
            .is_ok_and(|changed| changed.is_ok());
        if woke {
            return Ok(true);
        }
        // Another process may have appended: it does not wake this one.
        Ok(self.head().await? > after)
    }

    async fn find_idempotency_key(&self, key: &str) -> es_core::Result<Option<Committed>> {
        let mut conn = self.inner.reader().await?;
        Self::find_key(&mut conn, key).await
    }
}

#[async_trait]
impl SnapshotStore for SqliteEventStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> es_core::Result<()> {
        let state =
            serde_json::to_string(&snapshot.state).map_err(|source| es_core::Error::Encode {
                what: format!("snapshot of `{}`", snapshot.stream_id),
                source,
            })?;
        let mut conn = self.inner.writer().await?;
        sqlx::query(
            "INSERT INTO es_snapshots (stream_id, version, state_version, state, taken_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
             state_version = excluded.state_version, state = excluded.state, \
             taken_at = excluded.taken_at",
        )
        .bind(snapshot.stream_id.as_str())
        .bind(rows::to_i64(snapshot.version.0, "version")?)
        .bind(i64::from(snapshot.state_version))
        .bind(state)
        .bind(rows::to_micros(snapshot.taken_at))
        .execute(&mut *conn)
        .await
        .ctx(|| format!("cannot save the snapshot of `{}`", snapshot.stream_id))?;
        drop(conn);
        self.inner.wrote();
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> es_core::Result<Option<Snapshot>> {
        let mut conn = self.inner.reader().await?;
        let row = sqlx::query(
            "SELECT stream_id, version, state_version, state, taken_at \
             FROM es_snapshots WHERE stream_id = ?1",
        )
        .bind(stream_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .ctx(|| format!("cannot load the snapshot of `{stream_id}`"))?;
        drop(conn);
        match row {
            Some(row) => Ok(Some(rows::decode_snapshot(&row)?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl CheckpointStore for SqliteEventStore {
    async fn load_checkpoint(&self, projection: &str) -> es_core::Result<Option<Checkpoint>> {
        let mut conn = self.inner.reader().await?;
        let row = sqlx::query("SELECT position, version FROM es_checkpoints WHERE projection = ?1")
            .bind(projection)
            .fetch_optional(&mut *conn)
            .await
            .ctx(|| format!("cannot load the checkpoint of projection `{projection}`"))?;
        match row {
            Some(row) => Ok(Some(rows::decode_checkpoint(&row)?)),
            None => Ok(None),
        }
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        checkpoint: Checkpoint,
    ) -> es_core::Result<()> {
        let mut conn = self.inner.writer().await?;
        write_checkpoint(&mut conn, projection, checkpoint).await?;
        drop(conn);
        self.inner.wrote();
        Ok(())
    }

    /// Parks an event. While a [`SqliteTx`] is open (the projection runner
    /// parks inside its batch), the event is written in that transaction and
    /// commits with its checkpoint; should that transaction roll back, the
    /// event is written on its own right after.
    async fn park(&self, parked: ParkedEvent) -> es_core::Result<()> {
        let open = self.inner.open_context().clone();
        match open {
            Some(slot) => {
                slot.push(parked);
                Ok(())
            }
            None => self.write_park_now(&parked).await,
        }
    }

    async fn parked(&self, projection: &str) -> es_core::Result<Vec<ParkedEvent>> {
        let mut conn = self.inner.reader().await?;
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!("SELECT {PARKED_COLUMNS} FROM es_parked_events WHERE projection = ?1 ORDER BY position")
        });
        let found = sqlx::query(sql)
            .bind(projection)
            .fetch_all(&mut *conn)
            .await
            .ctx(|| format!("cannot list the parked events of projection `{projection}`"))?;
        drop(conn);
        found
            .iter()
            .map(|row| rows::decode_parked(row).map_err(Into::into))
            .collect()
    }

    async fn unpark(&self, projection: &str, position: Position) -> es_core::Result<bool> {
        let mut conn = self.inner.writer().await?;
        let done =
            sqlx::query("DELETE FROM es_parked_events WHERE projection = ?1 AND position = ?2")
                .bind(projection)
                .bind(rows::to_i64(position.0, "position")?)
                .execute(&mut *conn)
                .await
                .ctx(|| format!("cannot unpark event {position} of projection `{projection}`"))?;
        drop(conn);
        self.inner.wrote();
        Ok(done.rows_affected() > 0)
    }
}
