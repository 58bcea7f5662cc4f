//! Opening files: a new file is created and reopened with its events; a
//! file that is not a database, a database of a newer schema, a changed or
//! failed migration, and a read-only file are each refused with their own
//! error, and the failed open leaves the file exactly as it was; a file of
//! an older schema is brought up to date.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use es_core::{
    AppendOptions, EventId, EventStore, ExpectedVersion, Inbox, Metadata, NewEvent, StreamId,
    Version,
};
use es_sqlite::{Error, SqliteEventStore};
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What a failed open must not change: the file's bytes and its mtime.
#[derive(Debug, PartialEq)]
struct FileState {
    bytes: Vec<u8>,
    modified: SystemTime,
}

fn file_state(path: &Path) -> FileState {
    FileState {
        bytes: std::fs::read(path).expect("read the file"),
        modified: std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("the file's mtime"),
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Noted".into(),
        schema_version: 1,
        payload: json!({ "n": n }).into(),
        metadata: Metadata::default(),
    }
}

/// A closed store with two events, at `dir/name`.
async fn closed_store(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let store = SqliteEventStore::open(&path).await.expect("open");
    store
        .append(
            &StreamId::new("note-1"),
            ExpectedVersion::NoStream,
            vec![event(1), event(2)],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
    store.close().await.expect("close");
    path
}

/// Runs SQL on a file with a plain connection (as a newer program, or an
/// operator, would), then closes it.
async fn run_sql(path: &Path, sql: &str) {
    let options = SqliteConnectOptions::new().filename(path);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("a plain connection");
    sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
    conn.close().await.expect("close the plain connection");
}

#[test]
fn a_new_file_is_created_and_reopened_with_its_events() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = closed_store(dir.path(), "new.db").await;
        assert!(path.exists());
        let store = SqliteEventStore::open(&path).await.expect("reopen");
        assert_eq!(store.path(), Some(path.as_path()));
        let stream = StreamId::new("note-1");
        assert_eq!(store.stream_version(&stream).await.unwrap(), Version(2));
        let events = store.read_stream(&stream, Version(1), 10).await.unwrap();
        assert_eq!(events[1].payload, json!({"n": 2}));
        // The next position follows the reopened log.
        let committed = store
            .append(
                &stream,
                ExpectedVersion::Exact(Version(2)),
                vec![event(3)],
                &AppendOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(committed.committed().first_position.0, 3);
        let mut reader = store.reader().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(reader.conn())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(reader.conn())
            .await
            .unwrap();
        assert_eq!(foreign_keys, 1);
        drop(reader);
        store.close().await.unwrap();
        let closed = store.head().await.unwrap_err();
        assert!(closed.to_string().contains("closed"), "{closed}");
    });
}

#[test]
fn a_missing_directory_is_an_io_error() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("app.db");
        let error = SqliteEventStore::open(&path).await.unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("missing"), "{error}");
        assert!(!path.exists());
    });
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_unchanged() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).unwrap();
        let before = file_state(&path);
        let error = SqliteEventStore::open(&path).await.unwrap_err();
        match &error {
            Error::NotADatabase { path: p } => assert_eq!(p, &path),
            other => panic!("expected NotADatabase, got {other:?}"),
        }
        assert!(error.to_string().contains("notes.txt"), "{error}");
        assert_eq!(file_state(&path), before);
        assert!(!dir.path().join("notes.txt-wal").exists());

        // A file that starts like a database but is damaged after its header.
        let damaged = dir.path().join("damaged.db");
        let mut bytes = b"SQLite format 3\0".to_vec();
        bytes.extend((0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        std::fs::write(&damaged, &bytes).unwrap();
        let before = file_state(&damaged);
        let error = SqliteEventStore::open(&damaged).await.unwrap_err();
        assert!(
            matches!(error, Error::NotADatabase { .. } | Error::Sqlite { .. }),
            "{error:?}"
        );
        assert_eq!(file_state(&damaged), before);
    });
}

#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_unchanged() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = closed_store(dir.path(), "future.db").await;
        run_sql(
            &path,
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (20991231000000, 'from a newer es-sqlite', TRUE, x'00', 0)",
        )
        .await;
        let before = file_state(&path);
        let error = SqliteEventStore::open(&path).await.unwrap_err();
        match &error {
            Error::NewerSchema {
                path: p,
                found,
                supported,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*found, 20_991_231_000_000);
                assert!(*supported < *found);
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
        assert!(error.to_string().contains("newer"), "{error}");
        assert_eq!(file_state(&path), before);
    });
}

#[test]
fn a_database_of_the_first_schema_is_brought_up_to_date() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = closed_store(dir.path(), "first.db").await;
        // The file as the first schema left it: without the inbox.
        run_sql(
            &path,
            "DROP TABLE es_inbox; DELETE FROM _sqlx_migrations WHERE version > 1",
        )
        .await;
        let store = SqliteEventStore::open(&path)
            .await
            .expect("open and migrate");
        assert_eq!(
            store
                .stream_version(&StreamId::new("note-1"))
                .await
                .unwrap(),
            Version(2)
        );
        let mut tx = store.transaction().await.unwrap();
        let stream = StreamId::new("note-1");
        assert!(store
            .claim(&mut tx, "notes", &stream, Version(1))
            .await
            .unwrap());
        assert!(!store
            .claim(&mut tx, "notes", &stream, Version(1))
            .await
            .unwrap());
        tx.commit().await.unwrap();
        store.close().await.unwrap();
    });
}

#[test]
fn a_changed_or_failed_migration_is_refused_and_left_unchanged() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let changed = closed_store(dir.path(), "changed.db").await;
        run_sql(&changed, "UPDATE _sqlx_migrations SET checksum = x'0102'").await;
        let before = file_state(&changed);
        let error = SqliteEventStore::open(&changed).await.unwrap_err();
        assert!(
            matches!(&error, Error::SchemaMismatch { problem, .. } if problem.contains("checksum")),
            "{error:?}"
        );
        assert_eq!(file_state(&changed), before);

        let failed = closed_store(dir.path(), "failed.db").await;
        run_sql(&failed, "UPDATE _sqlx_migrations SET success = FALSE").await;
        let before = file_state(&failed);
        let error = SqliteEventStore::open(&failed).await.unwrap_err();
        assert!(
            matches!(&error, Error::SchemaMismatch { problem, .. } if problem.contains("half-way")),
            "{error:?}"
        );
        assert_eq!(file_state(&failed), before);
    });
}

#[test]
fn a_read_only_file_is_refused_and_left_unchanged() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = closed_store(dir.path(), "frozen.db").await;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let before = file_state(&path);
        let error = SqliteEventStore::open(&path).await.unwrap_err();
        let refused = matches!(&error, Error::ReadOnly { path: p, .. } if p == &path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(refused, "expected ReadOnly, got {error:?}");
        assert!(error.to_string().contains("read-only"), "{error}");
        assert_eq!(file_state(&path), before);

        // A directory where SQLite cannot create the `-wal` file.
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        let path = closed_store(&locked, "inside.db").await;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        let before = file_state(&path);
        let error = SqliteEventStore::open(&path).await.unwrap_err();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(error, Error::ReadOnly { .. }), "{error:?}");
        assert_eq!(file_state(&path), before);

        // Once writable again, the same file opens with its events.
        let store = SqliteEventStore::open(&path).await.expect("writable again");
        assert_eq!(
            store
                .stream_version(&StreamId::new("note-1"))
                .await
                .unwrap(),
            Version(2)
        );
    });
}

#[test]
fn an_empty_file_becomes_a_store() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.db");
        std::fs::write(&path, b"").unwrap();
        let store = SqliteEventStore::open(&path)
            .await
            .expect("an empty file is a new database");
        assert_eq!(store.head().await.unwrap().0, 0);
    });
}

#[test]
fn two_stores_on_one_file_share_one_gap_free_log() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let a = SqliteEventStore::open(&path).await.unwrap();
        let b = SqliteEventStore::open(&path).await.unwrap();
        let mut tasks = Vec::new();
        for (w, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            tasks.push(tokio::spawn(async move {
                for n in 0..25 {
                    store
                        .append(
                            &StreamId::new(format!("w-{w}")),
                            ExpectedVersion::Exact(Version(2 * n)),
                            vec![event(n), event(n)],
                            &AppendOptions::default(),
                        )
                        .await
                        .expect("append");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let all = a
            .read_all(es_core::Position::START, &es_core::EventFilter::all(), 1000)
            .await
            .unwrap();
        let positions: Vec<u64> = all.events.iter().map(|e| e.position.0).collect();
        assert_eq!(positions, (1..=200).collect::<Vec<_>>(), "gap-free log");
        // A waiter of one store learns of the other's appends when its wait ends.
        let head = b.head().await.unwrap();
        assert_eq!(head.0, 200);
        assert!(a
            .wait_for_events(es_core::Position(199), std::time::Duration::from_millis(10))
            .await
            .unwrap());
    });
}
