//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the SQLite store.
///
/// [`SqliteEventStore::open`](crate::SqliteEventStore::open) returns these
/// directly, so a caller can tell a wrong path from a newer file. The
/// es-core store traits return [`es_core::Error`]: there, concurrency
/// conflicts, empty appends and reused idempotency keys are es-core's own
/// typed variants, and everything else is an
/// [`es_core::Error::Store`] whose message says what the store was doing and
/// whose `source` is one of these (downcast it to match on the variant).
///
/// Every failed open leaves the file as it was: the checks that produce
/// [`Error::NotADatabase`], [`Error::NewerSchema`], [`Error::SchemaMismatch`]
/// and [`Error::ReadOnly`] only read it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists but is not an SQLite database. Check the path; the
    /// file was left unchanged.
    #[error("`{}` is not an SQLite database; the file was left unchanged", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },

    /// The database holds a schema migration this version of es-sqlite does
    /// not know: a newer es-sqlite wrote it (upgrade this program), or
    /// another `sqlx` migrator shares the file (not supported: create read
    /// model tables with `CREATE TABLE IF NOT EXISTS` instead). The file was
    /// left unchanged.
    #[error(
        "`{}` has schema migration {found}, newer than the newest this es-sqlite knows ({supported}): \
         it was written by a newer es-sqlite, or by another migrator; the file was left unchanged",
        path.display()
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The unknown migration version found in the file.
        found: i64,
        /// The newest migration version this code knows.
        supported: i64,
    },

    /// A schema migration this code knows is recorded in the file with other
    /// content, or as failed half-way. The file was left unchanged; restore
    /// it from a backup or inspect `_sqlx_migrations`.
    #[error("`{}`: schema migration {version} {problem}; the file was left unchanged", path.display())]
    SchemaMismatch {
        /// The file.
        path: PathBuf,
        /// The migration's version.
        version: i64,
        /// What is wrong with it.
        problem: String,
    },

    /// The file (or its directory, where SQLite keeps its `-wal` and `-shm`
    /// files) cannot be written. The store needs write access; the file was
    /// left unchanged.
    #[error(
        "`{}` is read-only: the store writes the database and its `-wal` and `-shm` files \
         beside it; the file was left unchanged",
        path.display()
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// The operating system's refusal, when there was one.
        #[source]
        source: Option<std::io::Error>,
    },

    /// A file system operation failed.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        /// What the store was doing.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// SQLite refused an operation.
    #[error("{context}: {source}")]
    Sqlite {
        /// What the store was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The embedded schema migrations failed; the migration that failed was
    /// rolled back.
    #[error("cannot migrate `{}`: {source}", path.display())]
    Migrate {
        /// The file.
        path: PathBuf,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A stored row does not have the shape the store writes (edited by
    /// hand, or damaged). The row is left as it is.
    #[error("stored row unreadable: {0}")]
    Corrupt(String),

    /// The writer connection stayed busy for longer than the write timeout:
    /// a projection transaction ([`SqliteTx`](crate::SqliteTx)) was held
    /// open that long, or the code holding it waits for a write of its own
    /// (an append from inside a projection handler cannot work). Retry, or
    /// end long transactions sooner.
    #[error("waited {waited:?} for the writer connection: a transaction holds it (is a `SqliteTx` kept open, or waiting for a write of its own?)")]
    WriterBusy {
        /// How long the store waited.
        waited: Duration,
    },

    /// [`SqliteEventStore::close`](crate::SqliteEventStore::close) was called.
    #[error("the SQLite event store is closed")]
    Closed,
}

impl Error {
    pub(crate) fn sqlite(context: impl Into<String>, source: sqlx::Error) -> Self {
        Error::Sqlite {
            context: context.into(),
            source,
        }
    }
}

impl From<Error> for es_core::Error {
    fn from(error: Error) -> Self {
        es_core::Error::Store {
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }
}

/// SQLite's primary result code of a database error (the low byte of the
/// extended code the driver reports).
pub(crate) fn primary_code(error: &sqlx::Error) -> Option<i64> {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .map(|code| code & 0xff),
        _ => None,
    }
}

/// Adds context to a driver error, as an [`es_core::Error`].
pub(crate) trait SqlContext<T> {
    /// Maps the error to [`Error::Sqlite`] with `context`, then into es-core's error.
    fn ctx(self, context: impl FnOnce() -> String) -> es_core::Result<T>;
}

impl<T> SqlContext<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> es_core::Result<T> {
        self.map_err(|source| Error::sqlite(context(), source).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_keep_their_variant_and_context() {
        let err: es_core::Error = Error::Corrupt("position 3: payload is not JSON".into()).into();
        let text = err.to_string();
        assert!(text.contains("position 3"), "{text}");
        let es_core::Error::Store {
            source: Some(source),
            ..
        } = err
        else {
            panic!("a store error");
        };
        assert!(matches!(
            source.downcast_ref::<Error>(),
            Some(Error::Corrupt(_))
        ));
    }

    #[test]
    fn open_errors_name_the_file_and_say_it_is_unchanged() {
        let err = Error::NewerSchema {
            path: "/data/app.db".into(),
            found: 9,
            supported: 1,
        };
        let text = err.to_string();
        for part in ["/data/app.db", "9", "(1)", "unchanged"] {
            assert!(text.contains(part), "{text} lacks {part}");
        }
    }
}
