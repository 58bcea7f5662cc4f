//! Helpers shared by the Kafka tests: the broker, unique names, a small
//! domain, a SQLite read model whose effects would double on a redelivery,
//! and a plain consumer to read topics back.
//!
//! The broker is the one the test command starts (`KAFKA_BOOTSTRAP`, default
//! 127.0.0.1:9092). When it cannot be reached, tests fail with the reason
//! when `CI=true`, and are skipped with the reason printed otherwise.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use es_core::{
    AppendOptions, BoxError, Envelope, Event, EventStore, ExpectedVersion, Handles, Metadata,
    RecordedEvent, ResetProjection, StreamId,
};
use es_sqlite::{SqliteEventStore, SqliteTx};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use serde::{Deserialize, Serialize};

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The shared broker's address, or `None` (reason printed) outside CI.
pub fn broker() -> Option<String> {
    let address = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    match TcpStream::connect_timeout(&address.parse().expect("KAFKA_BOOTSTRAP is host:port"), Duration::from_secs(2)) {
        Ok(_) => Some(address),
        Err(error) if in_ci() => panic!(
            "a Kafka broker is required at {address} when CI=true (the test command starts one), and it is unreachable: {error}"
        ),
        Err(error) => {
            eprintln!("SKIPPED: no Kafka broker at {address} ({error}); run ./scripts/test, which starts one");
            None
        }
    }
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// The domain: item counters. `Added` is at schema version 2; version 1
/// stored `count` instead of `n`.
#[derive(es_core::Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ItemEvent {
    #[event(version = 2, upcast_from = AddedV1)]
    Added {
        n: u64,
    },
    Removed {
        n: u64,
    },
}

impl ItemEvent {
    /// What the event does to a stream's total.
    pub fn delta(&self) -> i64 {
        match self {
            ItemEvent::Added { n } => *n as i64,
            ItemEvent::Removed { n } => -(*n as i64),
        }
    }
}

#[derive(Deserialize)]
pub struct AddedV1 {
    count: u64,
}

impl From<AddedV1> for ItemEvent {
    fn from(v1: AddedV1) -> Self {
        ItemEvent::Added { n: v1.count }
    }
}

/// Appends `per_stream` events to each of `streams` streams `item-<i>`,
/// round-robin in appends of `chunk` events per stream, each with a
/// correlation id. Returns how many it appended.
pub async fn fill<S: EventStore>(
    store: &S,
    streams: usize,
    per_stream: usize,
    chunk: usize,
) -> usize {
    let mut appended = 0;
    let mut done = 0;
    while done < per_stream {
        let take = chunk.min(per_stream - done);
        for s in 0..streams {
            let stream = StreamId::for_aggregate("item", s);
            let events = (0..take)
                .map(|k| {
                    let n = (done + k + 1) as u64;
                    let event = if n % 5 == 0 {
                        ItemEvent::Removed { n: 1 }
                    } else {
                        ItemEvent::Added { n }
                    };
                    event
                        .encode(Metadata::correlated(format!("req-{s}-{n}")))
                        .unwrap()
                })
                .collect();
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    events,
                    &AppendOptions::default(),
                )
                .await
                .unwrap();
            appended += take;
        }
        done += take;
    }
    appended
}

/// A read model in SQLite whose effects double on a redelivery: per stream
/// a running total, the number of events applied and the last version.
#[derive(es_core::Projection, Default)]
#[projection(name = "item_totals", events(ItemEvent), context = SqliteTx)]
pub struct ItemTotals {
    /// Sleep this long per event (to widen the window for a crash).
    pub delay: Option<Duration>,
}

#[async_trait]
impl Handles<ItemEvent> for ItemTotals {
    async fn handle_event(
        &self,
        tx: &mut SqliteTx,
        event: Envelope<ItemEvent>,
    ) -> Result<(), BoxError> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let delta = event.event.delta();
        sqlx::query(
            "INSERT INTO item_totals (stream_id, total, events, last_version) VALUES (?, ?, 1, ?)
             ON CONFLICT (stream_id) DO UPDATE SET total = total + excluded.total,
                 events = events + 1, last_version = excluded.last_version",
        )
        .bind(event.stream_id.as_str())
        .bind(delta)
        .bind(event.version.0 as i64)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ResetProjection for ItemTotals {
    async fn reset_read_model(&self, tx: &mut SqliteTx) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM item_totals")
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}

/// A runner of [`ItemTotals`] over `topic` into `read_model`, in a new
/// consumer group.
pub fn totals_runner(
    config: &es_kafka::KafkaConfig,
    topic: &str,
    read_model: &SqliteEventStore,
) -> es_kafka::KafkaProjectionRunner<ItemTotals, SqliteEventStore> {
    es_kafka::KafkaProjectionRunner::new(
        config,
        unique("group"),
        [topic],
        read_model.clone(),
        ItemTotals::default(),
    )
    .unwrap()
}

/// (total, events, last version) per stream.
pub type Totals = BTreeMap<String, (i64, i64, i64)>;

/// A SQLite store in `dir` with the read model's table.
pub async fn read_model_store(dir: &Path) -> SqliteEventStore {
    let store = SqliteEventStore::open(dir.join("read-model.db"))
        .await
        .unwrap();
    let mut tx = store.transaction().await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS item_totals (stream_id TEXT PRIMARY KEY, total INTEGER NOT NULL,
             events INTEGER NOT NULL, last_version INTEGER NOT NULL)",
    )
    .execute(tx.conn())
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store
}

pub async fn totals(store: &SqliteEventStore) -> Totals {
    let mut reader = store.reader().await.unwrap();
    let rows: Vec<(String, i64, i64, i64)> =
        sqlx::query_as("SELECT stream_id, total, events, last_version FROM item_totals")
            .fetch_all(reader.conn())
            .await
            .unwrap();
    rows.into_iter()
        .map(|(s, t, e, v)| (s, (t, e, v)))
        .collect()
}

/// The totals built straight from a store's log: what the read model must equal.
pub async fn expected_totals<S: EventStore>(store: &S) -> Totals {
    let mut totals = Totals::new();
    let mut after = es_core::Position::START;
    loop {
        let slice = store
            .read_all(after, &es_core::EventFilter::all(), 5000)
            .await
            .unwrap();
        if slice.next == after {
            return totals;
        }
        for raw in &slice.events {
            let event = ItemEvent::decode(raw).unwrap();
            let delta = event.event.delta();
            let entry = totals.entry(raw.stream_id.to_string()).or_default();
            entry.0 += delta;
            entry.1 += 1;
            entry.2 = raw.version.0 as i64;
        }
        after = slice.next;
    }
}

/// Waits (bounded) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached within {limit:?}");
}

/// A message read back from a topic.
#[derive(Clone, Debug)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub payload: serde_json::Value,
}

/// Reads `topic` from the start until messages of `count` distinct events
/// (by `es-event-id`) arrived, or `limit` passed; duplicates are kept.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    count: usize,
    limit: Duration,
) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    let mut received: Vec<Received> = Vec::with_capacity(count);
    let mut distinct = std::collections::HashSet::new();
    while distinct.len() < count {
        let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(error)) => {
                eprintln!("reader: {error}");
                continue;
            }
            Ok(Ok(message)) => message,
        };
        let headers: BTreeMap<String, String> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(id) = headers.get("es-event-id") {
            distinct.insert(id.clone());
        }
        received.push(Received {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            headers,
            payload: serde_json::from_slice(message.payload().unwrap_or_default()).unwrap(),
        });
    }
    received
}

/// Checks that `received` holds every event of `store` once after dropping
/// duplicates by event id, in version order within each stream.
pub async fn assert_complete<S: EventStore>(store: &S, received: &[Received]) {
    let mut seen = std::collections::HashSet::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for message in received {
        if !seen.insert(message.headers["es-event-id"].clone()) {
            continue;
        }
        let version: u64 = message.headers["es-stream-version"].parse().unwrap();
        let previous = last.insert(message.key.clone(), version).unwrap_or(0);
        assert!(
            version > previous,
            "stream {} went from v{previous} to v{version}: order lost",
            message.key
        );
    }
    let head = store.head().await.unwrap();
    let expected = expected_totals(store).await;
    assert_eq!(
        seen.len() as u64,
        head.0,
        "every event once after deduplication"
    );
    for (stream, (_, events, last_version)) in expected {
        assert_eq!(
            last.get(&stream).copied(),
            Some(last_version as u64),
            "stream {stream}"
        );
        assert_eq!(events, last_version);
    }
}

/// A broker of a test's own (own port, own SQLite file), to kill and restart.
pub struct OwnBroker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnBroker {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let mut broker = OwnBroker {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join(format!(
            "broker-{}.log",
            Instant::now().elapsed().as_nanos()
        )))
        .unwrap();
        let child = Command::new(nisshi())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://kafka.db",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nisshi (the test command installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "own broker did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The broker binary: `NISSHI` or `nisshi` on the path.
pub fn nisshi() -> String {
    std::env::var("NISSHI").unwrap_or_else(|_| "nisshi".to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates `topic` with `partitions` partitions on `bootstrap`.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

/// The stored event a message would have come from (for hand-made messages).
pub fn message_headers(event: &RecordedEvent) -> Vec<(String, String)> {
    vec![
        ("es-event-id".into(), event.event_id.to_string()),
        ("es-event-type".into(), event.event_type.to_string()),
        ("es-schema-version".into(), event.schema_version.to_string()),
        ("es-stream-version".into(), event.version.0.to_string()),
        ("es-position".into(), event.position.0.to_string()),
    ]
}
