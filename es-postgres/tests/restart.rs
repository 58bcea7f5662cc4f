//! Faults: the database server restarts while a projection runs. The runner
//! reconnects and resumes from its checkpoint, with no event skipped or
//! applied twice. And a prepared transaction (two-phase commit), which
//! needs a server setting the shared test server does not have, holds the
//! log's readers back until it ends.
//!
//! The shared test server (127.0.0.1:5432) is never restarted: each test
//! makes a PostgreSQL cluster of its own in a temporary directory, listening
//! on 127.0.0.1 only, stops it as a crash would (`pg_ctl -m immediate`) and
//! starts it again. It needs the server binaries (`initdb`, `pg_ctl`,
//! `postgres` under `/usr/lib/postgresql/*/bin`); without them the tests fail
//! when `CI=true` and are skipped otherwise. As root they run as the
//! `postgres` user, since `initdb` refuses root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::testkit::conformance::new_event;
use es_core::{
    AppendOptions, BoxError, CheckpointStore, EventFilter, EventStore, ExpectedVersion, Position,
    Projection, ProjectionRunner, RecordedEvent, StreamId,
};
use es_postgres::{PgEventStore, PgTx};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

/// The temporary directories of the clusters: `<prefix><pid>-<n>`.
const DIR_PREFIX: &str = "es-pg-restart-";

/// The schema of the store in the test's cluster.
const SCHEMA: &str = "es_restart";

/// What a cluster needs: the directory of the server binaries and, when the
/// test runs as root, `runuser` and the `postgres` user's uid and gid.
struct Prerequisites {
    bin: PathBuf,
    as_postgres: Option<(PathBuf, u32, u32)>,
}

/// The prerequisites, or what is missing.
fn prerequisites() -> Result<Prerequisites, String> {
    let bin = server_binaries()?;
    let uid = std::fs::metadata("/proc/self")
        .map_err(|e| format!("cannot tell which user runs the test (/proc/self: {e})"))?
        .uid();
    if uid != 0 {
        return Ok(Prerequisites {
            bin,
            as_postgres: None,
        });
    }
    let runuser = [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or("the test runs as root and `runuser` (to run initdb as `postgres`) is missing")?;
    Ok(Prerequisites {
        bin,
        as_postgres: Some((runuser, postgres_id("-u")?, postgres_id("-g")?)),
    })
}

/// The newest `/usr/lib/postgresql/<version>/bin` that holds `initdb`,
/// `pg_ctl` and `postgres`.
fn server_binaries() -> Result<PathBuf, String> {
    let root = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(root).map_err(|e| {
        format!(
            "no PostgreSQL server binaries under {} ({e})",
            root.display()
        )
    })?;
    let mut found: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name.to_str()?.split('.').next()?.parse().ok()?;
            let bin = entry.path().join("bin");
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|program| bin.join(program).is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "initdb, pg_ctl and postgres are not all in any {}/*/bin",
            root.display()
        )
    })
}

/// The `postgres` user's uid (`-u`) or gid (`-g`).
fn postgres_id(flag: &str) -> Result<u32, String> {
    let output = Command::new("id")
        .args([flag, "postgres"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `id {flag} postgres`: {e}"))?;
    if !output.status.success() {
        return Err(
            "the test runs as root and there is no `postgres` user to run initdb as".to_owned(),
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("`id {flag} postgres` printed no number: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// A PostgreSQL cluster of the test's own, listening on 127.0.0.1 only;
/// stopped and deleted when dropped (also when the test panics).
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    /// `runuser`, to run the binaries as `postgres` when the test is root.
    runuser: Option<PathBuf>,
    port: u16,
}

impl Cluster {
    /// A new cluster, running. `None` when a prerequisite is missing (the
    /// test then returns; in CI it has already failed).
    fn start() -> Option<Self> {
        let prerequisites = match prerequisites() {
            Ok(p) => p,
            Err(reason) => {
                common::skip_or_fail(&format!(
                    "the test needs a PostgreSQL cluster of its own: {reason}"
                ));
                return None;
            }
        };
        remove_stale_clusters(&prerequisites);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier process with the same id.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create the cluster's directory");
        let cluster = Cluster {
            dir,
            bin: prerequisites.bin,
            runuser: prerequisites
                .as_postgres
                .as_ref()
                .map(|(runuser, _, _)| runuser.clone()),
            port: free_port(),
        };
        if let Some((_, uid, gid)) = prerequisites.as_postgres {
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .expect("give the cluster's directory to `postgres`");
        }
        cluster
            .run(
                cluster
                    .command("initdb")
                    .arg("-D")
                    .arg(cluster.data())
                    .args(["-U", "postgres", "--auth=trust"])
                    .args(["--encoding=UTF8", "--no-locale", "--no-sync"]),
                "initdb",
            )
            .unwrap_or_else(|error| panic!("{error}"));
        cluster.start_server();
        Some(cluster)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A command running one of the server binaries (as `postgres` when the
    /// test is root).
    fn command(&self, program: &str) -> Command {
        command(&self.bin, self.runuser.as_deref(), &self.dir, program)
    }

    /// Runs a command to its end; the error holds its output and the end of
    /// the server log.
    fn run(&self, command: &mut Command, what: &str) -> Result<(), String> {
        let output = command
            .output()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(format!(
            "{what} failed ({}):\n{}{}\nend of the server log:\n{tail}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        ))
    }

    /// Starts the server and waits (at most a minute) until it accepts
    /// connections.
    fn start_server(&self) {
        // Prepared transactions are allowed (off by default) for the test
        // of a two-phase commit left open.
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c max_prepared_transactions=2",
            self.port,
            self.dir.display()
        );
        self.run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-o")
                .arg(options)
                .arg("-l")
                .arg(self.log())
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
        .unwrap_or_else(|error| panic!("{error}"));
    }

    /// Stops the server as a crash would: every backend is killed at once,
    /// nothing is flushed or checkpointed, and the next start recovers.
    fn stop_server(&self) -> Result<(), String> {
        self.run(
            self.command("pg_ctl").arg("-D").arg(self.data()).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
                "stop",
            ]),
            "pg_ctl stop",
        )
    }

    /// Stops the server as a crash would, waits a second, starts it again.
    async fn crash_and_restart(&self) {
        tokio::task::block_in_place(|| self.stop_server())
            .unwrap_or_else(|error| panic!("{error}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(|| self.start_server());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.stop_server();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn command(bin: &Path, runuser: Option<&Path>, dir: &Path, program: &str) -> Command {
    let program = bin.join(program);
    let mut command = match runuser {
        Some(runuser) => {
            let mut command = Command::new(runuser);
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        }
        None => Command::new(program),
    };
    command.current_dir(dir).stdin(Stdio::null());
    command
}

/// Stops and deletes the clusters of test processes that are gone (killed
/// before their guard could run).
fn remove_stale_clusters(prerequisites: &Prerequisites) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if dir.join("data").join("postmaster.pid").exists() {
            let runuser = prerequisites
                .as_postgres
                .as_ref()
                .map(|(runuser, _, _)| runuser.as_path());
            let _ = command(&prerequisites.bin, runuser, &dir, "pg_ctl")
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A read model that counts, per event position, how many times the event
/// was applied: an event skipped has no row, an event applied twice has
/// `times = 2`.
struct Applied;

#[async_trait]
impl Projection for Applied {
    type Context = PgTx;
    const NAME: &'static str = "applied";

    fn event_types() -> Option<Vec<String>> {
        None
    }

    async fn handle(&self, tx: &mut PgTx, event: &RecordedEvent) -> Result<(), BoxError> {
        sqlx::query(&format!(
            "INSERT INTO \"{SCHEMA}\".applied (position, times) VALUES ($1, 1)
             ON CONFLICT (position) DO UPDATE SET times = applied.times + 1"
        ))
        .bind(i64::try_from(event.position.0)?)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        sqlx::query(&format!("DELETE FROM \"{SCHEMA}\".applied"))
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

/// The store on the test's cluster, with its read model table. The pool
/// waits at most 10 s for a connection, so that no call hangs for long
/// while the server is down (connections refused are retried until then).
async fn open_store(cluster: &Cluster) -> PgEventStore {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cluster.url())
        .await
        .expect("connect to the test's cluster");
    let store = PgEventStore::options()
        .schema(SCHEMA)
        .poll_interval(Duration::from_millis(100))
        .open(pool)
        .await
        .expect("open the store");
    sqlx::query(&format!(
        "CREATE TABLE \"{SCHEMA}\".applied (position bigint PRIMARY KEY, times int NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .expect("create the read model");
    store
}

/// Appends one event at a time, each with an idempotency key of its own,
/// until stopped. An append that fails (the server is down, or its
/// connection died before the commit was confirmed) is tried again with
/// the same key, for at most a minute: every event is in the log exactly
/// once whether or not the failed attempt had committed.
struct Writer {
    appended: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn spawn(store: PgEventStore) -> Self {
        let appended = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (appended, failures, stop) = (
                Arc::clone(&appended),
                Arc::clone(&failures),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let stream = StreamId::new(format!("ticks-{}", n % 8));
                    let options = AppendOptions {
                        idempotency_key: Some(format!("tick-{n}")),
                    };
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let event = new_event("Tick", json!({ "n": n }));
                        match store
                            .append(&stream, ExpectedVersion::Any, vec![event], &options)
                            .await
                        {
                            Ok(_) => break,
                            Err(error) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                                assert!(
                                    Instant::now() < deadline,
                                    "append {n} still fails after a minute: {error}"
                                );
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    n += 1;
                    appended.store(n, Ordering::SeqCst);
                    // Pace the appends so that the runner keeps up.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        Writer {
            appended,
            failures,
            stop,
            task,
        }
    }

    fn appended(&self) -> usize {
        self.appended.load(Ordering::SeqCst)
    }

    /// Stops after the append in progress; returns how many events were
    /// appended and how many attempts failed.
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task");
        (
            self.appended.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
        )
    }
}

/// Waits (at most `within`) until `done` holds; panics naming `what`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The projection's checkpoint; `None` while it has none or the server is
/// unreachable.
/// Waits until the projection has committed its first batches while events
/// keep coming, crashes and restarts the server, and waits until appends
/// go on after it. Returns the checkpoint before the crash and how many
/// events were appended then.
async fn restart_mid_stream(
    cluster: &Cluster,
    store: &PgEventStore,
    writer: &Writer,
) -> (Option<Position>, usize) {
    eventually(
        "the projection commits its first batches",
        Duration::from_secs(60),
        || async { writer.appended() >= 100 && checkpoint(store).await.is_some() },
    )
    .await;
    let before = checkpoint(store).await;
    cluster.crash_and_restart().await;
    let at_restart = writer.appended();
    eventually(
        "100 more events appended after the restart",
        Duration::from_secs(90),
        || async { writer.appended() >= at_restart + 100 },
    )
    .await;
    (before, at_restart)
}

async fn checkpoint(store: &PgEventStore) -> Option<Position> {
    store
        .load_checkpoint(Applied::NAME)
        .await
        .ok()
        .flatten()
        .map(|c| c.position)
}

/// The log's head once the server answers again (within a minute).
async fn head(store: &PgEventStore) -> Position {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match store.head().await {
            Ok(head) => return head,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the server does not answer after its restart: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that the log holds each of the `appended` events once and that
/// the read model applied every event of the log exactly once.
async fn assert_each_event_applied_once(store: &PgEventStore, appended: usize) {
    let events: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT position, (payload->>'n')::bigint FROM \"{SCHEMA}\".events ORDER BY position"
    ))
    .fetch_all(store.pool())
    .await
    .expect("read the log");
    let numbers: BTreeSet<i64> = events.iter().map(|&(_, n)| n).collect();
    assert_eq!(
        events.len(),
        appended,
        "the log holds each appended event once"
    );
    assert_eq!(
        numbers,
        (0..i64::try_from(appended).unwrap()).collect::<BTreeSet<_>>(),
        "the log holds every appended event"
    );
    let applied: BTreeMap<i64, i32> =
        sqlx::query_as(&format!("SELECT position, times FROM \"{SCHEMA}\".applied"))
            .fetch_all(store.pool())
            .await
            .expect("read the read model")
            .into_iter()
            .collect();
    let positions: BTreeSet<i64> = events.iter().map(|&(p, _)| p).collect();
    let missing: Vec<i64> = positions
        .iter()
        .filter(|p| !applied.contains_key(p))
        .copied()
        .collect();
    let unknown: Vec<i64> = applied
        .keys()
        .filter(|p| !positions.contains(p))
        .copied()
        .collect();
    let doubled: Vec<(i64, i32)> = applied
        .iter()
        .filter(|&(_, &times)| times != 1)
        .map(|(&p, &t)| (p, t))
        .collect();
    assert!(missing.is_empty(), "events never applied: {missing:?}");
    assert!(
        unknown.is_empty(),
        "applied but not in the log: {unknown:?}"
    );
    assert!(
        doubled.is_empty(),
        "events applied more than once (position, times): {doubled:?}"
    );
}

/// The way to run a projection in production on PostgreSQL:
/// [`PgEventStore::run_leased`]. The restart kills its lease connection and
/// every pooled connection; it takes the lease again once the server is
/// back and goes on from the checkpoint committed with the last batch.
#[test]
fn a_leased_runner_resumes_from_its_checkpoint_after_the_server_restarts() {
    es_core::testkit::block_on(async {
        let _serial = common::serial().await;
        let Some(cluster) = Cluster::start() else {
            return;
        };
        let store = open_store(&cluster).await;
        // The backend of each lease taken: one more after the restart.
        let leases: Arc<Mutex<Vec<i32>>> = Arc::default();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let runner = {
            let store = store.clone();
            let leases = Arc::clone(&leases);
            tokio::spawn(async move {
                store
                    .run_leased(
                        move |leased| {
                            let pid = leased.lease_backend_pid().expect("a leased store");
                            leases.lock().unwrap().push(pid);
                            ProjectionRunner::new(leased, Applied)
                                .batch_size(5)
                                .idle_wait(Duration::from_millis(200))
                        },
                        Duration::from_millis(100),
                        async move {
                            let _ = stop_rx.wait_for(|stop| *stop).await;
                        },
                    )
                    .await
            })
        };
        let writer = Writer::spawn(store.clone());

        let (before, at_restart) = restart_mid_stream(&cluster, &store, &writer).await;
        let (appended, failed) = writer.stop().await;
        let head = head(&store).await;
        eventually(
            "the projection reaches the head after the restart",
            Duration::from_secs(90),
            || async {
                assert!(
                    !runner.is_finished(),
                    "run_leased returned before it was stopped"
                );
                checkpoint(&store).await == Some(head)
            },
        )
        .await;
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(30), runner)
            .await
            .expect("run_leased stops within 30 s")
            .expect("runner task")
            .expect("run_leased ends without an error");

        let leases = leases.lock().unwrap().clone();
        eprintln!(
            "checkpoint before the restart {before:?}, head {head}; {appended} events \
             appended ({at_restart} before the restart, {failed} failed attempts); \
             lease backends {leases:?}"
        );
        assert!(
            leases.len() >= 2,
            "the runner took its lease again after the restart: {leases:?}"
        );
        assert!(
            appended > at_restart,
            "events were appended after the restart"
        );
        assert_each_event_applied_once(&store, appended).await;
        store.pool().close().await;
    });
}

/// The es-core runner on the plain store ([`ProjectionRunner::spawn`]) does
/// not reconnect by itself: a store error ends its run (`run_until` returns
/// it), which is what `run_leased` above retries. A call that was waiting
/// for a connection when the server went down may instead get one once it
/// is back, and then the runner goes on. Either way, a runner started again
/// by its owner resumes from the checkpoint with nothing skipped or doubled.
#[test]
fn a_plain_runner_stopped_by_the_restart_resumes_from_its_checkpoint_when_started_again() {
    es_core::testkit::block_on(async {
        let _serial = common::serial().await;
        let Some(cluster) = Cluster::start() else {
            return;
        };
        let store = open_store(&cluster).await;
        let runner = ProjectionRunner::new(store.clone(), Applied)
            .batch_size(5)
            .idle_wait(Duration::from_millis(200));
        let mut running = runner.spawn();
        let writer = Writer::spawn(store.clone());

        let (_, at_restart) = restart_mid_stream(&cluster, &store, &writer).await;
        let (appended, failed) = writer.stop().await;
        let head = head(&store).await;

        // The owner starts the runner again when its run ended with an error
        // (the restart); a second error is a failure.
        let mut restarts = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        while checkpoint(&store).await != Some(head) {
            if running.is_finished() {
                let error = running
                    .stop()
                    .await
                    .expect_err("the runner only ends with an error before it is stopped");
                assert!(
                    matches!(error, es_core::Error::Store { .. }),
                    "a store error ends the run: {error:?}"
                );
                assert!(
                    restarts.is_empty(),
                    "the runner failed again after the server was back: {error}"
                );
                restarts.push(error.to_string());
                running = runner.spawn();
            }
            assert!(
                Instant::now() < deadline,
                "the projection did not reach the head {head}: {:?}",
                checkpoint(&store).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.stop().await.expect("the runner stops cleanly");
        eprintln!(
            "{appended} events appended ({at_restart} before the restart, {failed} failed \
             attempts); runner errors that the test restarted it after: {restarts:?}"
        );
        assert_each_event_applied_once(&store, appended).await;
        store.pool().close().await;
    });
}

/// A prepared transaction of a two-phase commit counts as running until it
/// ends, so it holds the log's readers back as an open transaction does,
/// though no connection shows it: the crate docs send the reader to
/// `pg_prepared_xacts` for it. Once it ends, the events committed behind it
/// are read, none skipped.
#[test]
fn a_prepared_transaction_holds_the_log_back_until_it_ends() {
    es_core::testkit::block_on(async {
        let _serial = common::serial().await;
        let Some(cluster) = Cluster::start() else {
            return;
        };
        let store = open_store(&cluster).await;
        let append = |n: i64| {
            let store = store.clone();
            async move {
                store
                    .append(
                        &StreamId::new("ticks"),
                        ExpectedVersion::Any,
                        vec![new_event("Tick", json!({ "n": n }))],
                        &AppendOptions::default(),
                    )
                    .await
                    .expect("append")
            }
        };
        let numbers = |events: &[RecordedEvent]| -> Vec<i64> {
            events
                .iter()
                .map(|e| {
                    e.payload.decode::<serde_json::Value>().unwrap()["n"]
                        .as_i64()
                        .unwrap()
                })
                .collect()
        };
        append(0).await;
        let before = store
            .read_all(Position::START, &EventFilter::all(), 10)
            .await
            .expect("read the log");
        assert_eq!(numbers(&before.events), [0]);

        // Another session takes a transaction id, prepares it, and leaves.
        let mut session = PgConnection::connect(&cluster.url())
            .await
            .expect("connect");
        for statement in [
            "BEGIN",
            "SELECT pg_current_xact_id()",
            "PREPARE TRANSACTION 'held'",
        ] {
            sqlx::query(statement)
                .execute(&mut session)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        session.close().await.expect("close the session");

        append(1).await;
        let held = store
            .read_all(before.next, &EventFilter::all(), 10)
            .await
            .expect("read the log");
        assert!(
            held.events.is_empty(),
            "an event committed after the prepared transaction began is read before it ends: {:?}",
            numbers(&held.events)
        );
        assert_eq!(held.next, before.next, "the cursor stays");
        assert_eq!(store.head().await.expect("head"), before.next);
        let shown: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity a
             JOIN pg_prepared_xacts p ON a.backend_xid = p.transaction",
        )
        .fetch_one(store.pool())
        .await
        .expect("query pg_stat_activity");
        assert_eq!(shown, 0, "no connection shows the prepared transaction");
        let prepared: Vec<String> = sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts")
            .fetch_all(store.pool())
            .await
            .expect("query pg_prepared_xacts");
        assert_eq!(prepared, ["held"]);

        sqlx::query("ROLLBACK PREPARED 'held'")
            .execute(store.pool())
            .await
            .expect("roll the prepared transaction back");
        let after = store
            .read_all(before.next, &EventFilter::all(), 10)
            .await
            .expect("read the log");
        assert_eq!(
            numbers(&after.events),
            [1],
            "the event held back is read now"
        );
        assert_eq!(store.head().await.expect("head"), after.next);
        store.pool().close().await;
    });
}
