//! Benchmark of the PostgreSQL store against a hand-written SQL floor.
//!
//! Run it against the local server (127.0.0.1:5432, user `postgres`,
//! database `test`, or `ES_BENCH_URL`):
//!
//! ```sh
//! cargo run --release -p es-postgres --example postgres_bench
//! cargo run --release -p es-postgres --example postgres_bench -- --only w3 w5   # some workloads
//! ```
//!
//! Each workload runs 3 times in a fresh schema, alternating with the same
//! workload written as plain sqlx (the floor: select the stream, insert with
//! the version check; a multi-row insert; one plain ordered read of the
//! position and payload). The log read (W5) alternates more closely: each
//! of its 3 runs fills one schema and reads it in turn, read after read,
//! through the framework, as the floor and by hand with every column. The
//! table
//! shows the median and the spread (min–max) of both, and the framework's
//! figure as a ratio to the floor, because absolute numbers drift on a
//! shared machine. The last column compares the CPU time the measured part
//! used, the framework's against the floor's (medians; the same work on
//! both sides): this process's, and the server's (every `postgres` process
//! of this machine, read from `/proc`, so it means something only when the
//! server is local; "—" where none can be seen or a side used too little to
//! measure). A busy machine moves it less than wall time, and it tells
//! the client's share of a gap from the server's.
//!
//! Run it on an otherwise idle machine: the ratios hold against drift, not
//! against a build on the same cores. The log read (W5) suffers most, since
//! it needs a core for the reader and one for the server at once: on two
//! cores, with a compile beside it, the framework's read halved.
#![allow(clippy::print_stdout, missing_docs)]

use std::time::Instant;

use async_trait::async_trait;
use es_core::{
    Aggregate, AppendOptions, BatchError, BoxError, Envelope, Event, EventFilter, EventStore,
    ExpectedVersion, Handles, LogReader, Position, ProjectionRunner, Repository, ResetProjection,
    SnapshotStore, StreamId,
};
use es_postgres::{PgEventStore, PgStoreOptions, PgTx};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use tokio_stream::StreamExt;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum BenchEvent {
    Added { amount: u64, note: String },
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

/// W1, W2: no snapshots.
#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "tick", event = BenchEvent, command = u64, error = Never)]
pub struct Tick {
    total: u64,
    count: u64,
}

// `handle` takes its command by value: the signature the derive asks for.
#[allow(clippy::needless_pass_by_value, clippy::unnecessary_wraps)]
impl Tick {
    fn handle(&self, amount: u64) -> Result<Vec<BenchEvent>, Never> {
        Ok(vec![BenchEvent::Added {
            amount,
            note: "bench".into(),
        }])
    }
    fn apply(&mut self, BenchEvent::Added { amount, .. }: &BenchEvent) {
        self.total += amount;
        self.count += 1;
    }
}

/// W3: [`Tick`] with snapshots allowed (taken by hand).
#[derive(Aggregate, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "ledger", event = BenchEvent, command = u64, error = Never,
            snapshot(every = 1000000, version = 1))]
pub struct Ledger(Tick);

impl Ledger {
    fn handle(&self, amount: u64) -> Result<Vec<BenchEvent>, Never> {
        self.0.handle(amount)
    }
    fn apply(&mut self, event: &BenchEvent) {
        self.0.apply(event);
    }
}

/// W6: one read-model row per event, committed with the checkpoint.
#[derive(es_core::Projection)]
#[projection(name = "rows", events(BenchEvent), context = PgTx)]
pub struct Rows {
    table: String,
    /// Whole batches in one insert (`handle_events`), or one insert per event.
    batched: bool,
}

#[async_trait]
impl Handles<BenchEvent> for Rows {
    async fn handle_event(&self, tx: &mut PgTx, e: Envelope<BenchEvent>) -> Result<(), BoxError> {
        let BenchEvent::Added { amount, .. } = e.event;
        sqlx::query(&format!(
            "INSERT INTO {} (position, stream_id, amount) VALUES ($1, $2, $3)",
            self.table
        ))
        .bind(i64::try_from(e.position.0)?)
        .bind(e.stream_id.as_str())
        .bind(i64::try_from(amount)?)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// A batch's rows in one insert.
    async fn handle_events(
        &self,
        tx: &mut PgTx,
        events: Vec<Envelope<BenchEvent>>,
    ) -> Result<(), BatchError> {
        if !self.batched {
            for (handled, event) in events.into_iter().enumerate() {
                self.handle_event(tx, event)
                    .await
                    .map_err(|source| BatchError { handled, source })?;
            }
            return Ok(());
        }
        let mut positions = Vec::with_capacity(events.len());
        let mut streams = Vec::with_capacity(events.len());
        let mut amounts = Vec::with_capacity(events.len());
        for e in &events {
            let BenchEvent::Added { amount, .. } = e.event;
            positions.push(i64::try_from(e.position.0).map_err(|err| BatchError::at(0, err))?);
            streams.push(e.stream_id.as_str());
            amounts.push(i64::try_from(amount).map_err(|err| BatchError::at(0, err))?);
        }
        sqlx::query(&format!(
            "INSERT INTO {} (position, stream_id, amount) SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[])",
            self.table
        ))
        .bind(&positions)
        .bind(&streams)
        .bind(&amounts)
        .execute(tx.conn())
        .await
        .map_err(|err| BatchError::at(0, err))?;
        Ok(())
    }
}

#[async_trait]
impl ResetProjection for Rows {
    async fn reset_read_model(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        sqlx::query(&format!("DELETE FROM {}", self.table))
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

struct Bench {
    pool: PgPool,
    url: String,
    next: u32,
}

impl Bench {
    async fn schema(&mut self) -> Res<(PgEventStore, String)> {
        self.next += 1;
        let schema = format!("es_bench_{}_{}", std::process::id(), self.next);
        let store = PgStoreOptions::new()
            .schema(schema.clone())
            .open(self.pool.clone())
            .await?;
        // The floor's table: the same columns, no transaction id.
        sqlx::query(&format!(
            "CREATE TABLE \"{schema}\".floor (
                position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                stream_id text NOT NULL, version bigint NOT NULL, event_id uuid NOT NULL,
                event_type text NOT NULL, schema_version int NOT NULL, payload json NOT NULL,
                metadata json NOT NULL, recorded_at timestamptz NOT NULL,
                UNIQUE (stream_id, version))"
        ))
        .execute(&self.pool)
        .await?;
        sqlx::query(&format!(
            "CREATE TABLE \"{schema}\".floor_snapshots (stream_id text PRIMARY KEY, version bigint, state json)"
        ))
        .execute(&self.pool)
        .await?;
        Ok((store, schema))
    }

    async fn drop(&self, schema: &str) -> Res<()> {
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn payload(amount: u64) -> serde_json::Value {
    serde_json::json!({ "amount": amount, "note": "bench" })
}

/// Floor: one command = select the stream's events, fold, insert the next version.
async fn floor_command(pool: &PgPool, schema: &str, stream: &str, amount: u64) -> Res<()> {
    let rows = sqlx::query(&format!(
        "SELECT version, payload FROM \"{schema}\".floor WHERE stream_id = $1 ORDER BY version"
    ))
    .bind(stream)
    .fetch_all(pool)
    .await?;
    let mut state = (0u64, 0u64);
    for row in &rows {
        let Json(e): Json<FloorAdded> = row.try_get("payload")?;
        state.0 += e.amount;
        state.1 += 1;
    }
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".floor (stream_id, version, event_id, event_type, schema_version, payload, metadata, recorded_at)
         VALUES ($1, $2, $3, 'Added', 1, $4, '{{}}', now())"
    ))
    .bind(stream)
    .bind(i64::try_from(state.1 + 1)?)
    .bind(uuid::Uuid::now_v7())
    .bind(Json(payload(amount)))
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Deserialize)]
struct FloorAdded {
    amount: u64,
    #[allow(dead_code)]
    note: String,
}

const W1_COMMANDS: u64 = 10_000;
const W1_AGGREGATES: u64 = 1_000;

/// Who runs the commands of W1 and W2.
#[derive(Clone, Copy, PartialEq)]
enum Runner {
    /// Plain sqlx (the floor).
    Floor,
    /// The repository, on the bench's pool (the floor's, sqlx's defaults).
    Repository,
    /// The same with its state cache on.
    Cached,
    /// The same on a pool the store builds (`PgStoreOptions::connect`).
    OwnPool,
}

/// The floor, or the repository on the bench's pool.
fn runner(floor: bool) -> Runner {
    if floor {
        Runner::Floor
    } else {
        Runner::Repository
    }
}

async fn w1(b: &mut Bench, tasks: u64, runner: Runner) -> Res<Sample> {
    let (store, schema) = b.schema().await?;
    let store = if runner == Runner::OwnPool {
        PgStoreOptions::new()
            .schema(schema.clone())
            .max_connections(16)
            .connect(&b.url)
            .await?
    } else {
        store
    };
    let floor = runner == Runner::Floor;
    let repo = if runner == Runner::Cached {
        Repository::<Tick, _>::new(store.clone()).with_cache(W1_AGGREGATES as usize)
    } else {
        Repository::<Tick, _>::new(store.clone())
    };
    let meter = Meter::start();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let repo = repo.clone();
        let pool = b.pool.clone();
        let schema = schema.clone();
        handles.push(tokio::spawn(async move {
            let per_task = W1_COMMANDS / tasks;
            let aggregates = W1_AGGREGATES / tasks;
            for i in 0..per_task {
                let id = t * aggregates + i % aggregates;
                if floor {
                    floor_command(&pool, &schema, &format!("tick-{id}"), i).await?;
                } else {
                    repo.execute(id, i).await?;
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let rate = meter.rate(W1_COMMANDS as f64);
    b.drop(&schema).await?;
    Ok(rate)
}

const W3_EVENTS: u64 = 10_000;

/// W3: median of 20 loads (ms) of one 10,000-event aggregate.
async fn w3(b: &mut Bench, floor: bool, snapshot: bool) -> Res<Sample> {
    let (store, schema) = b.schema().await?;
    let stream = StreamId::new("ledger-big");
    let mut version = 0;
    while version < W3_EVENTS {
        if floor {
            insert_floor_batch(&b.pool, &schema, stream.as_str(), version, 1_000).await?;
        } else {
            let events = added(1_000)?;
            store
                .append(
                    &stream,
                    ExpectedVersion::Exact(es_core::Version(version)),
                    events,
                    &AppendOptions::default(),
                )
                .await?;
        }
        version += 1_000;
    }
    let repo = Repository::<Ledger, _>::new(store.clone());
    if snapshot {
        if floor {
            sqlx::query(&format!(
                "INSERT INTO \"{schema}\".floor_snapshots VALUES ($1, $2, $3)"
            ))
            .bind(stream.as_str())
            .bind(i64::try_from(W3_EVENTS)?)
            .bind(Json(serde_json::json!({"total": 1, "count": W3_EVENTS})))
            .execute(&b.pool)
            .await?;
        } else {
            let loaded = repo.load("big").await?;
            store
                .save_snapshot(es_core::Snapshot {
                    stream_id: stream.clone(),
                    version: loaded.version,
                    state_version: Ledger::STATE_VERSION,
                    state: serde_json::to_value(&loaded.state)?,
                    taken_at: chrono::Utc::now(),
                })
                .await?;
        }
    }
    let mut times = Vec::new();
    let meter = Meter::start();
    for _ in 0..20 {
        let start = Instant::now();
        if floor {
            let mut from = 0i64;
            let mut state = (0u64, 0u64);
            if snapshot {
                let row = sqlx::query(&format!(
                    "SELECT version, state FROM \"{schema}\".floor_snapshots WHERE stream_id = $1"
                ))
                .bind(stream.as_str())
                .fetch_one(&b.pool)
                .await?;
                from = row.try_get("version")?;
                let Json(s): Json<serde_json::Value> = row.try_get("state")?;
                state.1 = s["count"].as_u64().unwrap_or(0);
            }
            let rows = sqlx::query(&format!(
                "SELECT version, payload FROM \"{schema}\".floor WHERE stream_id = $1 AND version > $2 ORDER BY version"
            ))
            .bind(stream.as_str())
            .bind(from)
            .fetch_all(&b.pool)
            .await?;
            for row in &rows {
                let Json(e): Json<FloorAdded> = row.try_get("payload")?;
                state.0 += e.amount;
                state.1 += 1;
            }
            assert_eq!(state.1, W3_EVENTS);
        } else {
            let loaded = repo.load("big").await?;
            assert_eq!(loaded.state.0.count, W3_EVENTS);
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu = meter.cpu();
    b.drop(&schema).await?;
    Ok(Sample {
        value: median(times),
        cpu,
    })
}

async fn insert_floor_batch(
    pool: &PgPool,
    schema: &str,
    stream: &str,
    after: u64,
    n: u64,
) -> Res<()> {
    let versions: Vec<i64> = (after + 1..=after + n).map(|v| v as i64).collect();
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
    let payloads: Vec<String> = (0..n).map(|i| payload(i).to_string()).collect();
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".floor (stream_id, version, event_id, event_type, schema_version, payload, metadata, recorded_at)
         SELECT $1, v, id, 'Added', 1, p::json, '{{}}', now()
         FROM unnest($2::int8[], $3::uuid[], $4::text[]) AS t(v, id, p)"
    ))
    .bind(stream)
    .bind(&versions)
    .bind(&ids)
    .bind(&payloads)
    .execute(pool)
    .await?;
    Ok(())
}

const W4_EVENTS: u64 = 100_000;
const W4_BATCH: u64 = 100;

/// W4: 100,000 events into one stream in appends of 100 (events/s).
async fn w4(b: &mut Bench, floor: bool) -> Res<Sample> {
    let (store, schema) = b.schema().await?;
    let stream = StreamId::new("bulk-1");
    let meter = Meter::start();
    let mut version = 0;
    while version < W4_EVENTS {
        if floor {
            insert_floor_batch(&b.pool, &schema, stream.as_str(), version, W4_BATCH).await?;
        } else {
            let events = added(W4_BATCH)?;
            store
                .append(
                    &stream,
                    ExpectedVersion::Exact(es_core::Version(version)),
                    events,
                    &AppendOptions::default(),
                )
                .await?;
        }
        version += W4_BATCH;
    }
    let rate = meter.rate(W4_EVENTS as f64);
    b.drop(&schema).await?;
    Ok(rate)
}

/// `n` encoded `Added` events, of amounts 0 to `n - 1`.
fn added(n: u64) -> Res<Vec<es_core::NewEvent>> {
    Ok((0..n)
        .map(|i| {
            BenchEvent::Added {
                amount: i,
                note: "bench".into(),
            }
            .encode(Default::default())
        })
        .collect::<Result<Vec<_>, _>>()?)
}

/// Fills a schema with 100,000 events over 1,000 streams, in both tables.
async fn fill(b: &mut Bench) -> Res<(PgEventStore, String)> {
    let (store, schema) = b.schema().await?;
    for s in 0..1_000u64 {
        let stream = StreamId::new(format!("tick-{s}"));
        let events = added(100)?;
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                events,
                &AppendOptions::default(),
            )
            .await?;
        insert_floor_batch(&b.pool, &schema, stream.as_str(), 0, 100).await?;
    }
    sqlx::query(&format!("ANALYZE \"{schema}\".events"))
        .execute(&b.pool)
        .await?;
    sqlx::query(&format!("ANALYZE \"{schema}\".floor"))
        .execute(&b.pool)
        .await?;
    Ok((store, schema))
}

/// W5's target (decoded events/s), set where the floor read
/// [`W5_REFERENCE_FLOOR`] rows/s.
const W5_TARGET: f64 = 1_500_000.0;
/// The floor's W5 figure on the machine the target was set on (rows/s).
const W5_REFERENCE_FLOOR: f64 = 2_100_000.0;

/// Who reads the log in W5.
#[derive(Clone, Copy, PartialEq)]
enum W5Reader {
    /// The framework, through its log reader (the projection runner's path).
    Framework,
    /// The floor: one plain ordered read of what a typed event needs (the
    /// position and the payload), decoded.
    Floor,
    /// One plain ordered read of every column the framework reads (what a
    /// stored event is), each decoded by sqlx: what the framework's read
    /// costs without the framework.
    AllColumns,
}

/// How many times each W5 reader reads the log in one run: enough CPU time
/// for `/proc`'s ticks to compare the client's and the server's with the
/// floor's.
const W5_READS: usize = 5;

/// The W5 readers, in the order [`w5`] answers their samples.
const W5_READERS: [W5Reader; 3] = [W5Reader::Framework, W5Reader::Floor, W5Reader::AllColumns];

/// W5: the whole log in order, decoded into typed events (events/s). One
/// run fills the log once and reads it [`W5_READS`] times with each of
/// [`W5_READERS`] in turn (each first in turn), after one read by each that
/// is not measured (the first read of a freshly written table also sets
/// its rows' hint bits). Reading in turn on the same tables lets the
/// machine's drift from minute to minute fall on all three alike.
async fn w5(b: &mut Bench) -> Res<[Sample; 3]> {
    let (store, schema) = fill(b).await?;
    for reader in W5_READERS {
        read_log(b, &store, &schema, reader).await?;
    }
    let mut time = [0.0f64; 3];
    let mut cpu = [Cpu::default(); 3];
    for round in 0..W5_READS {
        for turn in 0..W5_READERS.len() {
            let i = (round + turn) % W5_READERS.len();
            let meter = Meter::start();
            read_log(b, &store, &schema, W5_READERS[i]).await?;
            time[i] += meter.start.elapsed().as_secs_f64();
            cpu[i] = cpu[i].plus(meter.cpu());
        }
    }
    b.drop(&schema).await?;
    let events = (100_000 * W5_READS) as f64;
    Ok([0, 1, 2].map(|i| Sample {
        value: events / time[i],
        cpu: cpu[i],
    }))
}

/// One W5 read of the whole log; answers how many events it read.
async fn read_log(b: &Bench, store: &PgEventStore, schema: &str, reader: W5Reader) -> Res<u64> {
    let mut count = 0u64;
    match reader {
        W5Reader::Floor => {
            let sql = format!("SELECT position, payload FROM \"{schema}\".floor ORDER BY position");
            let mut rows = sqlx::query(&sql).fetch(&b.pool);
            while let Some(row) = rows.try_next().await? {
                let position: i64 = row.try_get("position")?;
                let Json(e): Json<FloorAdded> = row.try_get("payload")?;
                std::hint::black_box((position, e.amount));
                count += 1;
            }
        }
        W5Reader::AllColumns => {
            let sql = format!(
                "SELECT position, stream_id, version, event_id, event_type, schema_version,
                        payload, metadata, recorded_at
                 FROM \"{schema}\".floor ORDER BY position"
            );
            let mut rows = sqlx::query(&sql).fetch(&b.pool);
            while let Some(row) = rows.try_next().await? {
                let Json(e): Json<FloorAdded> = row.try_get("payload")?;
                let Json(metadata): Json<serde_json::Value> = row.try_get("metadata")?;
                std::hint::black_box((
                    row.try_get::<i64, _>("position")?,
                    row.try_get::<String, _>("stream_id")?,
                    row.try_get::<i64, _>("version")?,
                    row.try_get::<uuid::Uuid, _>("event_id")?,
                    row.try_get::<String, _>("event_type")?,
                    row.try_get::<i32, _>("schema_version")?,
                    e.amount,
                    metadata,
                    row.try_get::<chrono::DateTime<chrono::Utc>, _>("recorded_at")?,
                ));
                count += 1;
            }
        }
        W5Reader::Framework => {
            let store = std::sync::Arc::new(store.clone());
            let mut reader = LogReader::new(store, Position::START, EventFilter::all(), 1000);
            loop {
                let slice = reader.next_page().await?;
                if slice.events.is_empty() {
                    break;
                }
                for raw in &slice.events {
                    let e = BenchEvent::decode(raw)?;
                    std::hint::black_box(&e.event);
                    count += 1;
                }
            }
        }
    }
    assert_eq!(count, 100_000);
    Ok(count)
}

/// W6: a projection catching up over 100,000 events, one row per event (events/s).
async fn w6(b: &mut Bench, batched: bool) -> Res<Sample> {
    let (store, schema) = fill(b).await?;
    let table = format!("\"{schema}\".rows");
    sqlx::query(&format!(
        "CREATE TABLE {table} (position bigint PRIMARY KEY, stream_id text NOT NULL, amount bigint NOT NULL)"
    ))
    .execute(&b.pool)
    .await?;
    let runner = ProjectionRunner::new(
        store.clone(),
        Rows {
            table: table.clone(),
            batched,
        },
    )
    .batch_size(1000);
    let meter = Meter::start();
    runner.catch_up().await?;
    let rate = meter.rate(100_000.0);
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&b.pool)
        .await?;
    assert_eq!(rows, 100_000);
    b.drop(&schema).await?;
    Ok(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds: this process's, and the local PostgreSQL server's (all
/// its processes: backends, WAL writer, checkpointer, autovacuum).
#[derive(Clone, Copy, Default)]
struct Cpu {
    client: f64,
    /// `None` where no `postgres` process can be seen (not Linux, or no
    /// server on this machine). With `ES_BENCH_URL` on another machine, a
    /// local server's processes would be counted: compare only local runs.
    server: Option<f64>,
}

impl Cpu {
    /// Used so far, from `/proc` (Linux; zero for the client elsewhere).
    fn now() -> Self {
        let mut server = None;
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let dir = entry.path();
                let is_server = std::fs::read_to_string(dir.join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == "postgres");
                if is_server {
                    *server.get_or_insert(0.0) += cpu_seconds(&dir).unwrap_or(0.0);
                }
            }
        }
        Self {
            client: cpu_seconds(std::path::Path::new("/proc/self")).unwrap_or(0.0),
            server,
        }
    }

    /// The CPU time of two stretches.
    fn plus(self, other: Self) -> Self {
        Self {
            client: self.client + other.client,
            server: match (self.server, other.server) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        }
    }

    fn since(self, earlier: Self) -> Self {
        Self {
            client: self.client - earlier.client,
            server: self
                .server
                .zip(earlier.server)
                .map(|(now, then)| now - then),
        }
    }
}

/// User and system time of the process whose `/proc` folder is `dir`
/// (fields 14 and 15 of its `stat`, in ticks of 1/100 s: Linux's
/// `USER_HZ`); `None` when it is gone or unreadable.
fn cpu_seconds(dir: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The wall time and CPU time of a measured stretch of a workload.
struct Meter {
    start: Instant,
    cpu: Cpu,
}

impl Meter {
    fn start() -> Self {
        Self {
            cpu: Cpu::now(),
            start: Instant::now(),
        }
    }

    /// The CPU time used since the start.
    fn cpu(&self) -> Cpu {
        Cpu::now().since(self.cpu)
    }

    /// `work` done since the start, per second.
    fn rate(&self, work: f64) -> Sample {
        Sample {
            value: work / self.start.elapsed().as_secs_f64(),
            cpu: self.cpu(),
        }
    }
}

/// What one run of a workload measured: its figure (a rate, or a time in
/// ms) and the CPU time the measured part used.
struct Sample {
    value: f64,
    cpu: Cpu,
}

#[derive(Clone)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    /// The median CPU time of the runs.
    cpu: Cpu,
}

impl Stat {
    fn of(samples: &[Sample]) -> Self {
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let server: Option<Vec<f64>> = samples.iter().map(|s| s.cpu.server).collect();
        Self {
            median: median(values),
            min,
            max,
            cpu: Cpu {
                client: median(samples.iter().map(|s| s.cpu.client).collect()),
                server: server.map(median),
            },
        }
    }

    fn show(&self, unit: &str) -> String {
        let f = |x: f64| {
            if x >= 100.0 {
                format!("{:.0}", x)
            } else {
                format!("{:.2}", x)
            }
        };
        format!(
            "{} {unit} ({}–{})",
            f(self.median),
            f(self.min),
            f(self.max)
        )
    }

    /// The CPU time of this one's runs against the floor's (the same work),
    /// client and server: less sensitive than wall time to a busy machine.
    /// "—" for a side where either used less than 0.1 s, too little for
    /// `/proc`'s ticks of 0.01 s to tell.
    fn cpu_against(&self, floor: &Self) -> String {
        let ratio = |fw: Option<f64>, fl: Option<f64>| match fw.zip(fl) {
            Some((fw, fl)) if fw >= 0.1 && fl >= 0.1 => format!("{:.2}", fw / fl),
            _ => "—".to_owned(),
        };
        format!(
            "{} / {}",
            ratio(Some(self.cpu.client), Some(floor.cpu.client)),
            ratio(self.cpu.server, floor.cpu.server)
        )
    }
}

async fn three<F>(b: &mut Bench, mut f: F) -> Res<Stat>
where
    F: AsyncFnMut(&mut Bench) -> Res<Sample>,
{
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(f(b).await?);
    }
    Ok(Stat::of(&v))
}

/// Runs a workload 3 times through the framework and 3 times as the floor,
/// alternately, so that a drift of the shared machine falls on both.
async fn paired<F>(b: &mut Bench, mut f: F) -> Res<(Stat, Stat)>
where
    F: AsyncFnMut(&mut Bench, bool) -> Res<Sample>,
{
    let (mut fw, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        fw.push(f(b, false).await?);
        floor.push(f(b, true).await?);
    }
    Ok((Stat::of(&fw), Stat::of(&floor)))
}

#[tokio::main]
async fn main() -> Res<()> {
    let url = std::env::var("ES_BENCH_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    let mut settings = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&pool)
            .await?;
        settings.push(format!("{name} = {value}"));
    }
    println!("PostgreSQL settings: {}", settings.join(", "));
    let mut b = Bench {
        pool: pool.clone(),
        url: url.clone(),
        next: 0,
    };
    // `--only w1 w5 …` runs just those workloads.
    let only: Vec<String> = std::env::args()
        .skip_while(|a| a != "--only")
        .skip(1)
        .collect();
    let wanted = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    let started = Instant::now();
    let mut rows: Vec<(&str, Stat, Option<Stat>, String)> = Vec::new();
    if wanted("w1") {
        let (fw, floor) = paired(&mut b, async |b, floor| w1(b, 1, runner(floor)).await).await?;
        let cached = three(&mut b, async |b| w1(b, 1, Runner::Cached).await).await?;
        let own_pool = three(&mut b, async |b| w1(b, 1, Runner::OwnPool).await).await?;
        rows.push((
            "W1 commands/s, 1 task",
            fw,
            Some(floor.clone()),
            "≥ 0.90".into(),
        ));
        rows.push((
            "W1 with the state cache on",
            cached,
            Some(floor.clone()),
            "> 1.00".into(),
        ));
        rows.push((
            "W1 on the store's own pool (`connect`)",
            own_pool,
            Some(floor),
            String::new(),
        ));
    }
    if wanted("w2") {
        let (fw, floor) = paired(&mut b, async |b, floor| w1(b, 8, runner(floor)).await).await?;
        rows.push(("W2 commands/s, 8 tasks", fw, Some(floor), "≥ 0.90".into()));
    }
    if wanted("w3") {
        let (fw, floor) = paired(&mut b, async |b, floor| w3(b, floor, false).await).await?;
        rows.push((
            "W3 load of 10,000 events, ms",
            fw,
            Some(floor),
            "≤ 1.20".into(),
        ));
        let (fw, floor) = paired(&mut b, async |b, floor| w3(b, floor, true).await).await?;
        rows.push((
            "W3 load from a snapshot, ms",
            fw,
            Some(floor),
            "≤ 0.5 ms".into(),
        ));
    }
    if wanted("w4") {
        let (fw, floor) = paired(&mut b, async |b, floor| w4(b, floor).await).await?;
        rows.push((
            "W4 events/s, appends of 100",
            fw,
            Some(floor),
            "≥ 0.80".into(),
        ));
    }
    if wanted("w5") {
        let mut runs: [Vec<Sample>; 3] = Default::default();
        for _ in 0..3 {
            for (run, sample) in runs.iter_mut().zip(w5(&mut b).await?) {
                run.push(sample);
            }
        }
        let [fw, floor, all] = runs.map(|run| Stat::of(&run));
        // The target was set where the floor read 2.1 M rows/s; the same
        // share of this run's floor is the target on this machine.
        let scaled = W5_TARGET / W5_REFERENCE_FLOOR * floor.median;
        let target = format!(
            "≥ 1.5 M/s where the floor reads 2.1 M/s: ≥ {:.2} of the floor, {scaled:.0} /s here",
            W5_TARGET / W5_REFERENCE_FLOOR
        );
        rows.push((
            "W5 events/s, read and decoded",
            fw,
            Some(floor.clone()),
            target,
        ));
        rows.push((
            "W5 by hand, every column the framework reads",
            all,
            Some(floor),
            String::new(),
        ));
    }
    if wanted("w6") {
        let fw = three(&mut b, async |b| w6(b, true).await).await?;
        rows.push((
            "W6 projection events/s, batch handler",
            fw,
            None,
            "≥ 50,000/s".into(),
        ));
        let fw = three(&mut b, async |b| w6(b, false).await).await?;
        rows.push((
            "W6 projection events/s, one insert per event",
            fw,
            None,
            String::new(),
        ));
    }

    println!();
    println!("| workload | es-postgres median (min–max) | SQL floor median (min–max) | ratio to floor | target | CPU against the floor (client / server) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, fw, floor, target) in &rows {
        let unit = if name.ends_with("ms") { "ms" } else { "/s" };
        let (floor_text, ratio, cpu) = match floor {
            Some(f) => (
                f.show(unit),
                format!("{:.2}", fw.median / f.median),
                fw.cpu_against(f),
            ),
            None => ("—".to_owned(), "—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {name} | {} | {floor_text} | {ratio} | {target} | {cpu} |",
            fw.show(unit)
        );
    }
    println!();
    println!(
        "3 runs of each, {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
