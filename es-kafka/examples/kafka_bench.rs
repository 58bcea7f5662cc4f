//! Benchmark of the Kafka relay and the Kafka-fed projection runner against
//! the broker at `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092), printed as a
//! markdown table; each workload runs three times on a new topic (median
//! and spread).
//!
//! ```sh
//! cargo run --release -p es-kafka --example kafka_bench
//! ```
//!
//! - relay: 100,000 events of 100 streams in an in-memory store, from the
//!   relay's start until the broker acknowledged the last one and the
//!   checkpoint is saved (events/s);
//! - floors: a plain producer with the relay's settings, and a plain consumer
//!   doing no work, over 100,000 messages of the same size and header count:
//!   what the broker allows on this machine. The broker's storage decides
//!   most of it: the SQLite storage of the test command's broker writes each
//!   header as it comes, so run a broker with memory storage
//!   (`nisshi broker --storage-engine memory://nisshi/ …`) to see the
//!   framework's own cost;
//! - consumer: the same 100,000 messages read by a new consumer group into an
//!   in-memory read model through the projection runner, with claims and
//!   offset commits, from the first message received until the last one is
//!   handled (events/s);
//! - group join: how long a new consumer group waits for its first message.
//!   The broker holds a new group's first assignment back for a few seconds
//!   (Kafka's `group.initial.rebalance.delay.ms`), a one-time cost per
//!   start that the consumer rates above leave out.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use es_core::{
    AppendOptions, BoxError, Event, EventStore, ExpectedVersion, InMemoryStore, Metadata,
    Projection, RecordedEvent, StreamId,
};
use es_kafka::{KafkaConfig, KafkaProjectionRunner, KafkaRelay, TopicMapping};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// The benchmark's events.
#[derive(Event, Serialize, Deserialize, Clone, Debug)]
pub enum ItemEvent {
    /// Items added.
    Added {
        /// How many.
        n: u64,
        /// A note.
        memo: String,
    },
}

/// An in-memory read model: events per stream.
#[derive(Default)]
struct Counts(Mutex<HashMap<StreamId, u64>>);

#[async_trait::async_trait]
impl Projection for Counts {
    type Context = ();
    const NAME: &'static str = "bench_counts";

    fn event_types() -> Option<Vec<String>> {
        Some(ItemEvent::stored_types())
    }

    async fn handle(&self, _: &mut (), event: &RecordedEvent) -> Result<(), BoxError> {
        let ItemEvent::Added { n, .. } = ItemEvent::decode(event)?.event;
        let mut counts = self.0.lock().map_err(|_| "poisoned")?;
        *counts.entry(event.stream_id.clone()).or_default() += n;
        Ok(())
    }

    async fn reset(&self, _: &mut ()) -> Result<(), BoxError> {
        self.0.lock().map_err(|_| "poisoned")?.clear();
        Ok(())
    }
}

const RUNS: usize = 3;
const EVENTS: u64 = 100_000;
const STREAMS: u64 = 100;

type Outcome<T> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn source() -> Outcome<InMemoryStore> {
    let store = InMemoryStore::new();
    for round in 0..EVENTS / STREAMS / 10 {
        for s in 0..STREAMS {
            let events = (0..10)
                .map(|k| {
                    ItemEvent::Added {
                        n: 1,
                        memo: format!("round {round} item {k}"),
                    }
                    .encode(Metadata::correlated(format!("req-{s}-{round}")))
                })
                .collect::<es_core::Result<Vec<_>>>()?;
            store
                .append(
                    &StreamId::for_aggregate("item", s),
                    ExpectedVersion::Any,
                    events,
                    &AppendOptions::default(),
                )
                .await?;
        }
    }
    Ok(store)
}

/// Relays the store to a new topic; events/s.
async fn relay(config: &KafkaConfig, store: &InMemoryStore, topic: &str) -> Outcome<f64> {
    let relay = KafkaRelay::new(store.clone(), config)?
        .name(format!("relay_to_{topic}"))
        .topics(TopicMapping::single(topic))
        .upcast::<ItemEvent>();
    let start = Instant::now();
    relay.catch_up(3).await?;
    let elapsed = start.elapsed();
    assert_eq!(relay.stats().acknowledged(), EVENTS);
    Ok(EVENTS as f64 / elapsed.as_secs_f64())
}

/// Reads the topic into the in-memory read model; events/s from the first
/// message received, and the seconds until it was.
async fn consume(config: &KafkaConfig, topic: &str) -> Outcome<(f64, f64)> {
    let group = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let runner = KafkaProjectionRunner::new(
        config,
        group,
        [topic],
        InMemoryStore::new(),
        Counts::default(),
    )?
    .batch_size(2000);
    let spawned = Instant::now();
    let running = runner.spawn();
    let deadline = spawned + Duration::from_secs(600);
    let mut first = None;
    while runner.stats().handled() < EVENTS {
        if running.is_finished() || Instant::now() > deadline {
            running.stop().await?;
            return Err("the consumer stopped before the end".into());
        }
        if first.is_none() && runner.stats().received() > 0 {
            first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let done = Instant::now();
    running.stop().await?;
    let first = first.unwrap_or(done);
    let rate = EVENTS as f64 / done.duration_since(first).as_secs_f64();
    Ok((rate, first.duration_since(spawned).as_secs_f64()))
}

const FLOOR_HEADERS: [&str; 9] = [
    "es-event-id",
    "es-event-type",
    "es-schema-version",
    "es-stream-id",
    "es-stream-version",
    "es-position",
    "es-recorded-at",
    "content-type",
    "es-correlation-id",
];

/// The floor of the relay: a plain producer with the relay's settings
/// sending the same number of messages of the same size, all at once.
async fn produce_floor(bootstrap: &str, topic: &str) -> Outcome<f64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "100000")
        .create()?;
    let payload = br#"{"n":1,"memo":"round 10 item 3"}"#;
    let start = Instant::now();
    let mut deliveries = Vec::with_capacity(EVENTS as usize);
    for i in 0..EVENTS {
        let key = format!("item-{}", i % STREAMS);
        // As many headers as the relay writes, of about the same size.
        let mut headers = OwnedHeaders::new();
        for key in FLOOR_HEADERS {
            headers = headers.insert(Header {
                key,
                value: Some("0190a4b2-7c3e-7d2a-9f1e-3b5c6d7e8f90"),
            });
        }
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload[..])
            .headers(headers);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for delivery in deliveries {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(EVENTS as f64 / start.elapsed().as_secs_f64())
}

/// The floor of the consumer: a plain consumer reading the topic, no work,
/// from the first message.
async fn consume_floor(bootstrap: &str, topic: &str) -> Outcome<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("floor-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    consumer.subscribe(&[topic])?;
    tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
    let start = Instant::now();
    let mut read = 1;
    while read < EVENTS {
        tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        read += 1;
    }
    Ok(EVENTS as f64 / start.elapsed().as_secs_f64())
}

fn summary(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let spread = (values[values.len() - 1] - values[0]) / median * 100.0;
    format!(
        "{median:>9.0} | ±{spread:.0}% ({:.0}–{:.0})",
        values[0],
        values[values.len() - 1]
    )
}

#[tokio::main]
async fn main() -> Outcome<()> {
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let config = KafkaConfig::new(&bootstrap);
    let store = source().await?;
    let mut rows: [(&str, &str, Vec<f64>); 4] = [
        ("relay: store → acknowledged", "≥ 50,000", Vec::new()),
        ("floor: plain producer, same settings", "", Vec::new()),
        ("consumer → in-memory read model", "≥ 30,000", Vec::new()),
        ("floor: plain consumer, no work", "", Vec::new()),
    ];
    let mut joins = Vec::new();
    for run in 0..RUNS {
        let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
        rows[0].2.push(relay(&config, &store, &topic).await?);
        let (rate, join) = consume(&config, &topic).await?;
        rows[2].2.push(rate);
        joins.push(join);
        let floor_topic = format!("floor-{}", uuid::Uuid::now_v7().simple());
        rows[1]
            .2
            .push(produce_floor(&bootstrap, &floor_topic).await?);
        rows[3]
            .2
            .push(consume_floor(&bootstrap, &floor_topic).await?);
        let last: Vec<String> = rows.iter().map(|r| format!("{:.0}", r.2[run])).collect();
        eprintln!("run {}: {}", run + 1, last.join(" / "));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "broker {bootstrap}, {EVENTS} events of {STREAMS} streams, {RUNS} runs\n"
    )?;
    writeln!(
        out,
        "| workload | events/s (median) | spread (min–max) | target |"
    )?;
    writeln!(out, "| --- | ---: | --- | ---: |")?;
    for (name, target, values) in rows {
        writeln!(out, "| {name} | {} | {target} |", summary(values))?;
    }
    joins.sort_by(f64::total_cmp);
    writeln!(
        out,
        "\nA new consumer group waited {:.2} s (median) for its first message.",
        joins[joins.len() / 2]
    )?;
    Ok(())
}
