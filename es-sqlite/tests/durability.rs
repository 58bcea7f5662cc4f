//! Durability: a child process appends batches of events through the
//! repository and is killed with SIGKILL in the middle of the stream. On
//! reopening, the file holds a prefix of whole appends (no batch in part),
//! every append the child reported as committed is there, and the
//! repository loads every aggregate. Three rounds: kill, check, resume.
//!
//! The child is this test binary run again with [`CHILD_ENV`] set, executing
//! the ignored test `child_appender`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use es_core::{Aggregate, Event, EventFilter, EventStore, Position, Repository};
use es_sqlite::SqliteEventStore;
use serde::{Deserialize, Serialize};

/// Set to the database path in the child process.
const CHILD_ENV: &str = "ES_SQLITE_DURABILITY_CHILD";
/// Aggregates the child writes to, round-robin.
const LEDGERS: u64 = 16;
/// The most appends one child makes: it is killed long before.
const MAX_APPENDS: u64 = 100_000;

/// One event of a batch: the batch's number, its index in it and its size.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum LedgerEvent {
    /// An entry of batch `batch`.
    Entry {
        /// The batch (one append) it belongs to.
        batch: u64,
        /// Its index in the batch.
        index: u32,
        /// The batch's size.
        of: u32,
    },
}

/// A ledger that checks, while it folds, that each batch is whole.
#[derive(Aggregate, Default, Clone, Serialize, Deserialize, Debug)]
#[aggregate(name = "ledger", event = LedgerEvent, command = u64, error = std::convert::Infallible)]
pub struct Ledger {
    entries: u64,
    batches: u64,
    /// The batch in progress and the next index expected in it.
    open: Option<(u64, u32)>,
    /// Whether an entry came out of order or a batch was cut.
    broken: bool,
}

/// The size of batch `n`: mostly small appends (one statement), every
/// fourth large enough to take the store's transaction path.
fn batch_size(n: u64) -> u32 {
    if n % 4 == 3 {
        40
    } else {
        5
    }
}

impl Ledger {
    fn handle(&self, batch: u64) -> Result<Vec<LedgerEvent>, std::convert::Infallible> {
        let of = batch_size(batch);
        Ok((0..of)
            .map(|index| LedgerEvent::Entry { batch, index, of })
            .collect())
    }

    fn apply(&mut self, event: &LedgerEvent) {
        let LedgerEvent::Entry { batch, index, of } = *event;
        self.entries += 1;
        let expected = match self.open {
            Some((open, next)) if open == batch => next,
            Some(_) => {
                self.broken = true; // the previous batch was cut short
                0
            }
            None => 0,
        };
        if index != expected {
            self.broken = true;
        }
        if index + 1 == of {
            self.open = None;
            self.batches += 1;
        } else {
            self.open = Some((batch, index + 1));
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The child: appends batch after batch, numbered on from what the file
/// holds, and prints `committed N` after each append returned.
#[test]
#[ignore = "the child process of `killed_writer_leaves_whole_appends`, which runs it"]
fn child_appender() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    runtime().block_on(async {
        let store = SqliteEventStore::open(&path).await.expect("child: open");
        let ledgers = Repository::<Ledger, _>::new(store.clone());
        let mut start = 0;
        for id in 0..LEDGERS {
            start += ledgers.load(id).await.expect("child: load").state.batches;
        }
        let mut out = std::io::stdout().lock();
        for batch in start..start + MAX_APPENDS {
            ledgers
                .execute(batch % LEDGERS, batch)
                .await
                .expect("child: execute");
            writeln!(out, "committed {batch}").expect("child: report");
            out.flush().expect("child: flush");
        }
    });
}

/// Runs the child until it reported `at_least` more appends, then kills it.
/// Returns the last batch it reported as committed.
fn run_and_kill(path: &Path, at_least: u64, linger: Duration) -> Option<u64> {
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_appender",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("the child's stdout");
    let (lines, reported) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("committed ") {
                if let Ok(n) = n.trim().parse::<u64>() {
                    if lines.send(n).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    let mut last = None;
    while seen < at_least {
        let left = deadline.saturating_duration_since(Instant::now());
        match reported.recv_timeout(left) {
            Ok(n) => {
                seen += 1;
                last = Some(n);
            }
            Err(_) => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("the child's output");
                panic!(
                    "the child reported {seen} appends in 60 s; stderr:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    std::thread::sleep(linger);
    assert!(
        child.try_wait().expect("the child's status").is_none(),
        "the child must still be appending when it is killed"
    );
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed: {status:?}");
    reader.join().expect("the reader thread");
    // Lines written before the kill may still sit in the pipe: read them all.
    while let Ok(n) = reported.try_recv() {
        last = Some(n);
    }
    last
}

#[test]
fn killed_writer_leaves_whole_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let rt = runtime();
    for (round, linger_ms) in [(0u64, 0u64), (1, 3), (2, 11)] {
        let acknowledged = run_and_kill(&path, 150 + 40 * round, Duration::from_millis(linger_ms))
            .expect("the child reported appends");
        rt.block_on(async {
            let store = SqliteEventStore::open(&path)
                .await
                .expect("reopen after the kill");
            let mut events = Vec::new();
            let mut after = Position::START;
            for _ in 0..10_000 {
                let slice = store
                    .read_all(after, &EventFilter::all(), 1000)
                    .await
                    .unwrap();
                if slice.events.is_empty() {
                    break;
                }
                after = slice.next;
                events.extend(slice.events);
            }
            // Group the log by batch: every batch whole, in order, contiguous.
            let mut batches: BTreeMap<u64, Vec<(u32, u32, u64)>> = BTreeMap::new();
            for raw in &events {
                let LedgerEvent::Entry { batch, index, of } =
                    LedgerEvent::decode(raw).expect("decodes").event;
                batches
                    .entry(batch)
                    .or_default()
                    .push((index, of, raw.position.0));
            }
            for (batch, entries) in &batches {
                let of = batch_size(*batch);
                assert_eq!(
                    entries.len(),
                    of as usize,
                    "round {round}: batch {batch} is whole"
                );
                for (i, (index, size, position)) in entries.iter().enumerate() {
                    assert_eq!((*index, *size), (i as u32, of), "batch {batch}");
                    assert_eq!(
                        *position,
                        entries[0].2 + i as u64,
                        "batch {batch} is contiguous"
                    );
                }
            }
            let count = batches.len() as u64;
            let numbers: Vec<u64> = batches.keys().copied().collect();
            assert_eq!(
                numbers,
                (0..count).collect::<Vec<_>>(),
                "a prefix of the appends"
            );
            assert!(
                count > acknowledged,
                "round {round}: batch {acknowledged} was reported committed, the file has {count}"
            );
            assert!(
                count <= acknowledged + 2,
                "round {round}: at most the append in flight is beyond the last report"
            );
            let ledgers = Repository::<Ledger, _>::new(store.clone());
            let mut entries = 0;
            let mut loaded_batches = 0;
            for id in 0..LEDGERS {
                let ledger = ledgers
                    .load(id)
                    .await
                    .expect("the repository loads it")
                    .state;
                assert!(
                    !ledger.broken,
                    "round {round}: ledger {id} folds whole batches"
                );
                assert_eq!(ledger.open, None, "ledger {id} ends on a whole batch");
                entries += ledger.entries;
                loaded_batches += ledger.batches;
            }
            assert_eq!(entries, events.len() as u64);
            assert_eq!(loaded_batches, count);
            store.close().await.unwrap();
        });
    }
}
