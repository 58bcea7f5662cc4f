//! Benchmark of the SQLite store on a file in a temporary directory, printed
//! as a markdown table: W1, W3, W4 and W5 of the PostgreSQL issue, each run
//! three times on a fresh database (median and spread).
//!
//! ```sh
//! cargo run --release -p es-sqlite --example sqlite_bench
//! cargo run --release -p es-sqlite --example sqlite_bench -- --power-loss   # synchronous = FULL
//! ```
//!
//! - W1: 10,000 commands round-robin over 1,000 aggregates through the
//!   repository, one task (commands/s);
//! - W3: load one aggregate of 10,000 events without a snapshot, and with
//!   one (ms, median of 20 loads);
//! - W4: 100,000 events into one stream in appends of 100 (events/s);
//! - W5: read the whole global log (the 100,000 events of W4) in order,
//!   in pages of 1,000, decoded into typed events (events/s).
//!
//! The read workloads (W3, W5) run on the file reopened after it was
//! written, as a restarted service reads it.

use std::io::Write;
use std::time::Instant;

use es_core::{
    Aggregate, Event, EventFilter, EventStore, ExpectedVersion, Metadata, Position, Repository,
    Snapshot, SnapshotStore, StreamId, Version,
};
use es_sqlite::{Durability, SqliteEventStore, SqliteStoreOptions};
use serde::{Deserialize, Serialize};

/// The events of the benchmark's aggregate.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum AccountEvent {
    /// Money came in.
    Deposited {
        /// How much.
        amount: u64,
        /// A note.
        memo: String,
    },
}

/// The benchmark's aggregate: a balance and a count of deposits.
#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "account", event = AccountEvent, command = u64, error = std::convert::Infallible)]
pub struct Account {
    balance: u64,
    deposits: u64,
}

impl Account {
    fn handle(
        &self,
        amount: u64,
    ) -> std::result::Result<Vec<AccountEvent>, std::convert::Infallible> {
        Ok(vec![AccountEvent::Deposited {
            amount,
            memo: format!("deposit {}", self.deposits + 1),
        }])
    }

    fn apply(&mut self, event: &AccountEvent) {
        let AccountEvent::Deposited { amount, .. } = event;
        self.balance += amount;
        self.deposits += 1;
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const RUNS: usize = 3;
const W1_COMMANDS: u64 = 10_000;
const W1_AGGREGATES: u64 = 1_000;
const W3_EVENTS: u64 = 10_000;
const W3_LOADS: usize = 20;
const W4_EVENTS: u64 = 100_000;
const W4_BATCH: u64 = 100;
const W5_PAGE: usize = 1_000;

struct Bench {
    durability: Durability,
    /// Only the workloads whose names (`w1`, `w3`, `w4`) are listed after `--only`.
    only: Option<Vec<String>>,
}

impl Bench {
    fn runs(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|w| w == workload))
    }
}

impl Bench {
    async fn store(&self, dir: &tempfile::TempDir, name: &str) -> Result<SqliteEventStore> {
        let options = SqliteStoreOptions::new().durability(self.durability);
        Ok(SqliteEventStore::open_with(dir.path().join(name), options).await?)
    }

    /// Closes a store (which completes its WAL checkpoint) and opens its
    /// file again: the read workloads read a log that was written before, as
    /// a service that restarts does.
    async fn reopen(
        &self,
        dir: &tempfile::TempDir,
        name: &str,
        store: SqliteEventStore,
    ) -> Result<SqliteEventStore> {
        store.close().await?;
        self.store(dir, name).await
    }

    /// W1: commands per second.
    async fn w1(&self) -> Result<f64> {
        let dir = tempfile::tempdir()?;
        let store = self.store(&dir, "w1.db").await?;
        let accounts = Repository::<Account, _>::new(store.clone());
        let start = Instant::now();
        for n in 0..W1_COMMANDS {
            accounts.execute(n % W1_AGGREGATES, 1).await?;
        }
        let rate = W1_COMMANDS as f64 / start.elapsed().as_secs_f64();
        let total = accounts.load(7).await?.state.balance;
        assert_eq!(total, W1_COMMANDS / W1_AGGREGATES);
        store.close().await?;
        Ok(rate)
    }

    /// W3: milliseconds to load one aggregate of 10,000 events, without and
    /// with a snapshot.
    async fn w3(&self) -> Result<(f64, f64)> {
        let dir = tempfile::tempdir()?;
        let store = self.store(&dir, "w3.db").await?;
        let stream = Repository::<Account, SqliteEventStore>::stream_id("long");
        append_events(&store, &stream, W3_EVENTS).await?;
        let store = self.reopen(&dir, "w3.db", store).await?;
        let accounts = Repository::<Account, _>::new(store.clone());
        let full = median_ms(W3_LOADS, || async {
            let loaded = accounts.load("long").await?;
            assert_eq!(loaded.version, Version(W3_EVENTS));
            Ok(())
        })
        .await?;
        let state = accounts.load("long").await?.state;
        store
            .save_snapshot(Snapshot {
                stream_id: stream.clone(),
                version: Version(W3_EVENTS),
                state_version: Account::STATE_VERSION,
                state: serde_json::to_value(&state)?,
                taken_at: chrono::Utc::now(),
            })
            .await?;
        let snapshotted = Repository::<SnapshottedAccount, _>::new(store.clone());
        let from_snapshot = median_ms(W3_LOADS, || async {
            let loaded = snapshotted.load("long").await?;
            assert_eq!(loaded.version, Version(W3_EVENTS));
            assert_eq!(loaded.state.0.deposits, W3_EVENTS);
            Ok(())
        })
        .await?;
        store.close().await?;
        Ok((full, from_snapshot))
    }

    /// W4 and W5: events per second appended, then read and decoded.
    async fn w4_w5(&self) -> Result<(f64, f64)> {
        let dir = tempfile::tempdir()?;
        let store = self.store(&dir, "w4.db").await?;
        let stream = StreamId::new("account-w4");
        let start = Instant::now();
        append_events(&store, &stream, W4_EVENTS).await?;
        let w4 = W4_EVENTS as f64 / start.elapsed().as_secs_f64();
        let store = self.reopen(&dir, "w4.db", store).await?;

        let start = Instant::now();
        let mut after = Position::START;
        let mut decoded = 0u64;
        let mut total = 0u64;
        loop {
            let slice = store.read_all(after, &EventFilter::all(), W5_PAGE).await?;
            if slice.events.is_empty() {
                break;
            }
            for raw in &slice.events {
                let envelope = AccountEvent::decode(raw)?;
                let AccountEvent::Deposited { amount, .. } = envelope.event;
                total += amount;
                decoded += 1;
            }
            after = slice.next;
        }
        let w5 = decoded as f64 / start.elapsed().as_secs_f64();
        assert_eq!(decoded, W4_EVENTS);
        assert_eq!(total, W4_EVENTS);
        store.close().await?;
        Ok((w4, w5))
    }
}

/// The same aggregate with a snapshot policy, so that loads read snapshots.
#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "account", event = AccountEvent, command = u64,
            error = std::convert::Infallible, snapshot(every = 1000, version = 1))]
#[serde(transparent)]
pub struct SnapshottedAccount(Account);

impl SnapshottedAccount {
    fn handle(
        &self,
        amount: u64,
    ) -> std::result::Result<Vec<AccountEvent>, std::convert::Infallible> {
        self.0.handle(amount)
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.0.apply(event);
    }
}

/// Appends `count` deposits to a stream in appends of [`W4_BATCH`].
async fn append_events(store: &SqliteEventStore, stream: &StreamId, count: u64) -> Result<()> {
    let mut version = 0;
    while version < count {
        let n = W4_BATCH.min(count - version);
        let metadata = Metadata {
            recorded_at: Some(chrono::Utc::now()),
            ..Metadata::default()
        };
        let events = (0..n)
            .map(|i| {
                AccountEvent::Deposited {
                    amount: 1,
                    memo: format!("deposit {}", version + i + 1),
                }
                .encode(metadata.clone())
            })
            .collect::<es_core::Result<Vec<_>>>()?;
        store
            .append(
                stream,
                ExpectedVersion::Exact(Version(version)),
                events,
                &Default::default(),
            )
            .await?;
        version += n;
    }
    Ok(())
}

/// The median of `runs` timings of `f`, in milliseconds.
async fn median_ms<F, Fut>(runs: usize, f: F) -> Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f().await?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1e3)
}

/// Median, minimum and maximum of a few measurements.
fn summary(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.sort_by(f64::total_cmp);
    let median = *values.get(values.len() / 2)?;
    Some((median, values[0], values[values.len() - 1]))
}

fn rate(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2} M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1} k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

async fn sqlite_version() -> Result<String> {
    let store = SqliteEventStore::open(":memory:").await?;
    let mut reader = store.reader().await?;
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(reader.conn())
        .await?;
    Ok(version)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let durability = if args.iter().any(|a| a == "--power-loss") {
        Durability::PowerLoss
    } else {
        Durability::Process
    };
    let only = args.iter().position(|a| a == "--only").map(|at| {
        args[at + 1..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .cloned()
            .collect()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(Bench { durability, only }))
}

async fn run(bench: Bench) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let (mut w1, mut w3_full, mut w3_snap, mut w4, mut w5) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let started = Instant::now();
        if bench.runs("w1") {
            w1.push(bench.w1().await?);
        }
        if bench.runs("w3") {
            let (full, snap) = bench.w3().await?;
            w3_full.push(full);
            w3_snap.push(snap);
        }
        if bench.runs("w4") {
            let (a, r) = bench.w4_w5().await?;
            w4.push(a);
            w5.push(r);
        }
        eprintln!("run {run}/{RUNS} done in {:.1?}", started.elapsed());
    }
    let synchronous = match bench.durability {
        Durability::PowerLoss => "FULL (Durability::PowerLoss)",
        _ => "NORMAL (Durability::Process, the default)",
    };
    writeln!(
        out,
        "SQLite {}, WAL, synchronous = {synchronous}; file in a temporary directory; {RUNS} runs, fresh database each\n",
        sqlite_version().await?
    )?;
    writeln!(out, "| workload | median | spread (min – max) | target |")?;
    writeln!(out, "| --- | ---: | ---: | ---: |")?;
    let row = |out: &mut std::io::StdoutLock<'_>,
               name: &str,
               values: Vec<f64>,
               unit: &str,
               target: &str| {
        let Some((median, min, max)) = summary(values) else {
            return Ok(());
        };
        writeln!(
            out,
            "| {name} | {} {unit} | {} – {} | {target} |",
            rate(median),
            rate(min),
            rate(max)
        )
    };
    let ms = |out: &mut std::io::StdoutLock<'_>, name: &str, values: Vec<f64>| {
        let Some((median, min, max)) = summary(values) else {
            return Ok(());
        };
        writeln!(out, "| {name} | {median:.2} ms | {min:.2} – {max:.2} | |")
    };
    row(
        &mut out,
        "W1 commands, 1,000 aggregates, one task",
        w1,
        "commands/s",
        "≥ 5,000/s",
    )?;
    ms(
        &mut out,
        "W3 load 10,000 events, no snapshot (median of 20)",
        w3_full,
    )?;
    ms(
        &mut out,
        "W3 load 10,000 events, from a snapshot (median of 20)",
        w3_snap,
    )?;
    row(
        &mut out,
        "W4 append 100,000 events, 100 per append",
        w4,
        "events/s",
        "≥ 150,000/s",
    )?;
    row(
        &mut out,
        "W5 read the log, decoded",
        w5,
        "events/s",
        "≥ 500,000/s",
    )?;
    Ok(())
}
