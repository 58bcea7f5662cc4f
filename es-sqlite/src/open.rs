//! Opening a database file: checks that only read, connections, migrations.

use std::io::Read;
use std::path::{Path, PathBuf};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, TransactionManager};

use crate::error::{Error, Result};
use crate::options::{Durability, SqliteStoreOptions};

/// The store's schema migrations, embedded in the binary. The store runs them
/// when it opens a file; they are exposed for tools that inspect a file.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// SQLite's primary result code for "file is not a database".
const SQLITE_NOTADB: i64 = 26;

/// Checks an existing file without writing to it: that it can be written,
/// that it is an SQLite database, and that its schema is one this code knows.
pub(crate) async fn check_existing(path: &Path, options: &SqliteStoreOptions) -> Result<()> {
    check_writable(path)?;
    check_header(path)?;
    let connect = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(options.busy_timeout);
    let mut conn = SqliteConnection::connect_with(&connect)
        .await
        .map_err(|source| classify(path, "cannot open", source))?;
    let checked = check_schema(path, &mut conn).await;
    let closed = conn
        .close()
        .await
        .map_err(|source| classify(path, "cannot close the read-only check of", source));
    checked.and(closed)
}

/// The file and its directory must be writable: the store writes the file
/// and keeps its `-wal` and `-shm` files beside it.
fn check_writable(path: &Path) -> Result<()> {
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(|e| io("read the metadata of", e))?;
    if metadata.is_dir() {
        return Err(io(
            "open a database at",
            std::io::Error::other("it is a directory"),
        ));
    }
    let read_only = |source| Error::ReadOnly {
        path: path.to_owned(),
        source,
    };
    if metadata.permissions().readonly() {
        return Err(read_only(None));
    }
    // Opening for writing, without truncating or writing, changes nothing.
    if let Err(error) = std::fs::OpenOptions::new().write(true).open(path) {
        return Err(match error.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                read_only(Some(error))
            }
            _ => io("open for writing", error),
        });
    }
    let wal = sidecar(path, "-wal");
    if !wal.exists() {
        let dir = directory_of(path);
        let dir_metadata = std::fs::metadata(&dir).map_err(|e| io("read the directory of", e))?;
        if dir_metadata.permissions().readonly() {
            return Err(read_only(None));
        }
    }
    Ok(())
}

/// Checks the directory a new database file is created in.
pub(crate) fn check_new(path: &Path) -> Result<()> {
    let dir = directory_of(path);
    match std::fs::metadata(&dir) {
        Ok(metadata) if metadata.permissions().readonly() => Err(Error::ReadOnly {
            path: path.to_owned(),
            source: None,
        }),
        Ok(_) => Ok(()),
        Err(source) => Err(Error::Io {
            action: "create a database in the directory of",
            path: path.to_owned(),
            source,
        }),
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A non-empty file must start with SQLite's header. (SQLite treats an
/// empty file as an empty database.)
fn check_header(path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    file.by_ref()
        .take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(|source| Error::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
    if header.is_empty() || header == SQLITE_HEADER {
        Ok(())
    } else {
        Err(Error::NotADatabase {
            path: path.to_owned(),
        })
    }
}

/// Compares the migrations recorded in the file with the embedded ones.
async fn check_schema(path: &Path, conn: &mut SqliteConnection) -> Result<()> {
    let has_table: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|source| classify(path, "cannot read the schema of", source))?;
    if has_table == 0 {
        return Ok(());
    }
    let rows =
        sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await
            .map_err(|source| classify(path, "cannot read the migrations of", source))?;
    let supported = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    for row in rows {
        let read = |source| classify(path, "cannot read the migrations of", source);
        let version: i64 = row.try_get(0).map_err(read)?;
        let checksum: Vec<u8> = row.try_get(1).map_err(read)?;
        let success: bool = row.try_get(2).map_err(read)?;
        let mismatch = |problem: &str| Error::SchemaMismatch {
            path: path.to_owned(),
            version,
            problem: problem.to_owned(),
        };
        let Some(known) = MIGRATOR.iter().find(|m| m.version == version) else {
            return Err(Error::NewerSchema {
                path: path.to_owned(),
                found: version,
                supported,
            });
        };
        if !success {
            return Err(mismatch(
                "failed half-way (it is recorded as not successful)",
            ));
        }
        if *known.checksum != *checksum {
            return Err(mismatch(
                "differs from the one this es-sqlite applies (its checksum changed)",
            ));
        }
    }
    Ok(())
}

/// Maps a driver error met while opening: "not a database" gets its variant.
fn classify(path: &Path, action: &str, source: sqlx::Error) -> Error {
    if crate::error::primary_code(&source) == Some(SQLITE_NOTADB) {
        return Error::NotADatabase {
            path: path.to_owned(),
        };
    }
    Error::sqlite(format!("{action} `{}`", path.display()), source)
}

fn synchronous(durability: Durability) -> SqliteSynchronous {
    match durability {
        Durability::Process => SqliteSynchronous::Normal,
        Durability::PowerLoss => SqliteSynchronous::Full,
    }
}

/// Opens the writer connection of a file (created if missing) in WAL mode and
/// brings its schema up to date.
pub(crate) async fn open_writer(
    path: &Path,
    options: &SqliteStoreOptions,
) -> Result<SqliteConnection> {
    let connect = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Truncate the WAL back to 64 MiB when it is reset after a checkpoint.
        .pragma("journal_size_limit", "67108864")
        .synchronous(synchronous(options.durability))
        // Every distinct append statement (batch sizes) stays prepared.
        .statement_cache_capacity(200)
        .foreign_keys(true)
        .busy_timeout(options.busy_timeout);
    let mut conn = SqliteConnection::connect_with(&connect)
        .await
        .map_err(|source| classify(path, "cannot open", source))?;
    migrate(path, &mut conn).await?;
    Ok(conn)
}

/// Opens the one connection of an in-memory database and creates its schema.
pub(crate) async fn open_memory(options: &SqliteStoreOptions) -> Result<SqliteConnection> {
    let connect = SqliteConnectOptions::new()
        .in_memory(true)
        .foreign_keys(true)
        .busy_timeout(options.busy_timeout);
    let path = Path::new(":memory:");
    let mut conn = SqliteConnection::connect_with(&connect)
        .await
        .map_err(|source| classify(path, "cannot open", source))?;
    migrate(path, &mut conn).await?;
    Ok(conn)
}

/// Runs the migrations inside one `BEGIN IMMEDIATE` transaction: a second
/// process opening the same new file waits instead of racing, and a failed
/// migration leaves nothing behind.
async fn migrate(path: &Path, conn: &mut SqliteConnection) -> Result<()> {
    let sql_error =
        |action: &str, source| Error::sqlite(format!("{action} `{}`", path.display()), source);
    <Sqlite as sqlx::Database>::TransactionManager::begin(conn, Some("BEGIN IMMEDIATE".into()))
        .await
        .map_err(|source| sql_error("cannot lock for migrations", source))?;
    // `run_direct` on the connection itself: `run` goes through a generic
    // `Acquire<'a>`, which makes the future of `SqliteEventStore::open`
    // fail to prove `Send` (so it could not be spawned).
    let migrated = MIGRATOR.run_direct(&mut *conn).await;
    match migrated {
        Ok(()) => <Sqlite as sqlx::Database>::TransactionManager::commit(conn)
            .await
            .map_err(|source| sql_error("cannot commit the migrations of", source)),
        Err(error) => {
            // The rollback's own failure would hide the cause; report the cause.
            if let Err(rollback) =
                <Sqlite as sqlx::Database>::TransactionManager::rollback(conn).await
            {
                tracing::warn!(error = %rollback, "rollback of failed migrations failed");
            }
            Err(match error {
                MigrateError::VersionMissing(found) => Error::NewerSchema {
                    path: path.to_owned(),
                    found,
                    supported: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
                },
                source => Error::Migrate {
                    path: path.to_owned(),
                    source,
                },
            })
        }
    }
}

/// The pool of read-only connections of a file.
pub(crate) fn reader_pool(path: &Path, options: &SqliteStoreOptions) -> SqlitePool {
    let connect = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .foreign_keys(true)
        // No memory-mapped I/O (SQLite's default): after every commit of
        // another connection SQLite unmaps the whole mapping at the start of
        // the next read transaction, which costs a reader more than reading
        // the few pages it needs.
        .busy_timeout(options.busy_timeout);
    SqlitePoolOptions::new()
        .max_connections(options.readers.max(1))
        .min_connections(0)
        // A local file has no network to fail: skip the ping per acquire.
        .test_before_acquire(false)
        .connect_lazy_with(connect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_sit_beside_the_file() {
        assert_eq!(
            sidecar(Path::new("/d/app.db"), "-wal"),
            PathBuf::from("/d/app.db-wal")
        );
        assert_eq!(directory_of(Path::new("app.db")), PathBuf::from("."));
        assert_eq!(directory_of(Path::new("/d/app.db")), PathBuf::from("/d"));
    }

    #[test]
    fn the_embedded_migrations_are_ordered_and_named() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert!(!versions.is_empty());
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
    }
}
