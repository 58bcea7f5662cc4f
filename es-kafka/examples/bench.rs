//! Benchmark of the Kafka relay and the Kafka-fed projection runner against
//! the broker at `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092), printed as a
//! markdown table; each workload runs three times on a new topic (median
//! and spread).
//!
//! ```sh
//! cargo run --release -p es-kafka --example bench
//! ```
//!
//! - relay: 100,000 events of 100 streams in an in-memory store, from the
//!   relay's start until the broker acknowledged the last one and the
//!   checkpoint is saved (events/s);
//! - consumer: the same 100,000 messages read by a new consumer group into an
//!   in-memory read model through the projection runner, with claims and
//!   offset commits, until the last one is handled (events/s).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use es_core::{
    AppendOptions, BoxError, Event, EventStore, ExpectedVersion, InMemoryStore, Metadata,
    Projection, RecordedEvent, StreamId,
};
use es_kafka::{KafkaConfig, KafkaProjectionRunner, KafkaRelay, TopicMapping};
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
        .topics(TopicMapping::single(topic))
        .upcast::<ItemEvent>();
    let start = Instant::now();
    relay.catch_up(3).await?;
    let elapsed = start.elapsed();
    assert_eq!(relay.stats().acknowledged(), EVENTS);
    Ok(EVENTS as f64 / elapsed.as_secs_f64())
}

/// Reads the topic into the in-memory read model; events/s.
async fn consume(config: &KafkaConfig, topic: &str) -> Outcome<f64> {
    let group = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let runner = KafkaProjectionRunner::new(
        config,
        group,
        [topic],
        InMemoryStore::new(),
        Counts::default(),
    )?
    .batch_size(2000);
    let start = Instant::now();
    let running = runner.spawn();
    let deadline = Instant::now() + Duration::from_secs(600);
    while runner.stats().handled() < EVENTS {
        if running.is_finished() || Instant::now() > deadline {
            running.stop().await?;
            return Err("the consumer stopped before the end".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    running.stop().await?;
    Ok(EVENTS as f64 / elapsed.as_secs_f64())
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
    let mut relayed = Vec::new();
    let mut consumed = Vec::new();
    for run in 0..RUNS {
        let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
        relayed.push(relay(&config, &store, &topic).await?);
        consumed.push(consume(&config, &topic).await?);
        eprintln!(
            "run {}: relay {:.0}/s, consumer {:.0}/s",
            run + 1,
            relayed[run],
            consumed[run]
        );
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
    writeln!(
        out,
        "| relay: store → acknowledged | {} | ≥ 50,000 |",
        summary(relayed)
    )?;
    writeln!(
        out,
        "| consumer → in-memory read model | {} | ≥ 30,000 |",
        summary(consumed)
    )?;
    Ok(())
}
