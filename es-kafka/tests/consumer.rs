//! The Kafka-fed projection runner against a real broker: a consumer killed
//! mid-batch, redeliveries, and messages that are not events it can read.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::*;
use es_core::{
    BoxError, CheckpointStore, EventStore, FailurePolicy, InMemoryStore, Projection, RecordedEvent,
};
use es_kafka::{KafkaConfig, KafkaProjectionRunner, KafkaRelay, TopicMapping};
use es_sqlite::{SqliteEventStore, SqliteTx};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// A source store with `streams` × `per_stream` events relayed to a new topic.
async fn relayed(bootstrap: &str, streams: usize, per_stream: usize) -> (InMemoryStore, String) {
    let source = InMemoryStore::new();
    fill(&source, streams, per_stream, 10).await;
    let topic = unique("items");
    create_topic(bootstrap, &topic, 4).await;
    relay(bootstrap, &source, &topic).await;
    (source, topic)
}

/// Relays what `source` has that was not relayed yet to `topic`.
async fn relay(bootstrap: &str, source: &InMemoryStore, topic: &str) {
    KafkaRelay::new(source.clone(), &KafkaConfig::new(bootstrap))
        .unwrap()
        .topics(TopicMapping::single(topic))
        .catch_up(3)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_batch_applies_each_effect_once() {
    let Some(bootstrap) = broker() else { return };
    let (source, topic) = relayed(&bootstrap, 40, 100).await;
    let head = source.head().await.unwrap().0;
    let dir = tempfile::tempdir().unwrap();
    let read_model = read_model_store(dir.path()).await;
    let config = KafkaConfig::new(&bootstrap);
    let group = unique("group");
    let slow = ItemTotals {
        delay: Some(Duration::from_millis(1)),
    };
    let runner = KafkaProjectionRunner::new(&config, &group, [&topic], read_model.clone(), slow)
        .unwrap()
        .batch_size(300);
    let running = runner.spawn();
    eventually("a few batches in", Duration::from_secs(60), || async {
        runner.stats().handled() >= 600
    })
    .await;
    running.abort();
    let applied: i64 = totals(&read_model).await.values().map(|t| t.1).sum();
    assert!(
        (applied as u64) < head,
        "killed before the end ({applied} of {head})"
    );

    let restarted = KafkaProjectionRunner::new(
        &config,
        &group,
        [&topic],
        read_model.clone(),
        ItemTotals::default(),
    )
    .unwrap()
    .batch_size(300);
    let running = restarted.spawn();
    eventually("every event applied", Duration::from_secs(120), || async {
        totals(&read_model).await.values().map(|t| t.1).sum::<i64>() as u64 == head
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(totals(&read_model).await, expected_totals(&source).await);

    // Another group reads the whole topic again: every event is a duplicate.
    let replay = totals_runner(&config, &topic, &read_model);
    let running = replay.spawn();
    eventually("the topic read again", Duration::from_secs(120), || async {
        replay.stats().duplicates() == head
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(replay.stats().handled(), 0);
    assert_eq!(
        totals(&read_model).await,
        expected_totals(&source).await,
        "no effect applied twice"
    );
}

/// [`ItemTotals`] at its next version: the same read model, to be built again.
#[derive(Default)]
struct ItemTotalsV2(ItemTotals);

#[async_trait]
impl Projection for ItemTotalsV2 {
    type Context = SqliteTx;
    const NAME: &'static str = ItemTotals::NAME;
    const VERSION: u32 = ItemTotals::VERSION + 1;

    fn event_types() -> Option<Vec<String>> {
        ItemTotals::event_types()
    }

    async fn handle(&self, tx: &mut SqliteTx, event: &RecordedEvent) -> Result<(), BoxError> {
        self.0.handle(tx, event).await
    }

    async fn reset(&self, tx: &mut SqliteTx) -> Result<(), BoxError> {
        self.0.reset(tx).await
    }
}

/// Adds 1,000 to every total, as a bug in an earlier handler could have.
async fn corrupt(read_model: &SqliteEventStore) {
    let mut tx = read_model.transaction().await.unwrap();
    sqlx::query("UPDATE item_totals SET total = total + 1000")
        .execute(tx.conn())
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_replays_the_topics_and_a_new_version_rebuilds_by_itself() {
    let Some(bootstrap) = broker() else { return };
    let (source, topic) = relayed(&bootstrap, 20, 50).await;
    let head = source.head().await.unwrap().0;
    let expected = expected_totals(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let read_model = read_model_store(dir.path()).await;
    let config = KafkaConfig::new(&bootstrap);
    let group = unique("group");
    let runner = KafkaProjectionRunner::new(
        &config,
        &group,
        [&topic],
        read_model.clone(),
        ItemTotals::default(),
    )
    .unwrap();
    let build = |running: es_kafka::RunningKafkaProjection, expected: &Totals| {
        let (read_model, expected) = (read_model.clone(), expected.clone());
        async move {
            eventually("the read model built", Duration::from_secs(60), || async {
                totals(&read_model).await == expected
            })
            .await;
            running.stop().await.unwrap();
        }
    };
    build(runner.spawn(), &expected).await;
    assert_eq!(totals(&read_model).await, expected);

    // While the group has a running member the broker refuses to move its
    // offsets, and the read model stays as it is.
    let running = runner.spawn();
    fill(&source, 1, 1, 1).await;
    relay(&bootstrap, &source, &topic).await;
    let expected = expected_totals(&source).await;
    eventually("the new event applied", Duration::from_secs(60), || async {
        totals(&read_model).await == expected
    })
    .await;
    let error = runner.rebuild().await.unwrap_err();
    assert!(error.to_string().contains("still running"), "{error}");
    assert_eq!(totals(&read_model).await, expected);
    running.stop().await.unwrap();
    let head = head + 1;

    // A rebuild of the same version empties the read model and consumes the
    // topic again from its first offset.
    corrupt(&read_model).await;
    runner.rebuild().await.unwrap();
    assert!(totals(&read_model).await.is_empty());
    build(runner.spawn(), &expected).await;
    assert_eq!(totals(&read_model).await, expected);
    assert_eq!(runner.stats().handled(), 2 * head);
    assert_eq!(runner.stats().duplicates(), 0, "the claims were reset too");

    // A new projection version rebuilds when it starts.
    corrupt(&read_model).await;
    let next = KafkaProjectionRunner::new(
        &config,
        &group,
        [&topic],
        read_model.clone(),
        ItemTotalsV2::default(),
    )
    .unwrap();
    build(next.spawn(), &expected).await;
    assert_eq!(totals(&read_model).await, expected);
    assert_eq!(next.stats().handled(), head);
    let recorded = read_model
        .load_checkpoint("item_totals@kafka")
        .await
        .unwrap()
        .expect("the version is recorded");
    assert_eq!(recorded.version, ItemTotalsV2::VERSION);
}

/// A hand-made message: key, headers, payload.
type Handmade<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8]);

/// Produces one hand-made message.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) {
    let mut owned = OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn event_headers<'a>(
    event_type: &'a str,
    schema: &'a str,
    version: &'a str,
    id: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("es-event-type", event_type),
        ("es-schema-version", schema),
        ("es-stream-version", version),
        ("es-event-id", id),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_parked_or_stop_the_projection() {
    let Some(bootstrap) = broker() else { return };
    let topic = unique("bad");
    create_topic(&bootstrap, &topic, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let id = || uuid::Uuid::now_v7().to_string();
    let (a, b, c, d, e) = (id(), id(), id(), id(), id());
    let messages: [Handmade<'_>; 6] = [
        (
            "item-1",
            &event_headers("Added", "1", "1", &a),
            br#"{"count":5}"#,
        ),
        ("item-1", &event_headers("Exploded", "1", "2", &b), br#"{}"#),
        (
            "item-1",
            &event_headers("Added", "2", "3", &c),
            b"{not json",
        ),
        ("item-1", &[("es-event-type", "Added")], br#"{"n":1}"#),
        (
            "item-1",
            &event_headers("Added", "2", "4", &d),
            br#"{"n":2}"#,
        ),
        (
            "item-2",
            &event_headers("Added", "2", "1", &e),
            br#"{"oops":2}"#,
        ),
    ];
    for (key, headers, payload) in messages {
        send(&producer, &topic, key, headers, payload).await;
    }

    let config = KafkaConfig::new(&bootstrap);
    let dir = tempfile::tempdir().unwrap();
    let read_model = read_model_store(dir.path()).await;

    // Stop: the first bad message ends the run, naming where it is.
    let stopping = totals_runner(&config, &topic, &read_model);
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        stopping.run_until(std::future::pending()),
    )
    .await
    .expect("the run stops by itself")
    .unwrap_err();
    let text = format!(
        "{error}: {}",
        std::error::Error::source(&error)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        text.contains(&format!("{topic}/0@1")) && text.contains("Exploded"),
        "{text}"
    );
    assert!(
        totals(&read_model).await.is_empty(),
        "nothing of the failed batch committed"
    );

    // Park: bad messages are kept with topic, partition and offset; the rest applies.
    let parking = totals_runner(&config, &topic, &read_model).failure_policy(FailurePolicy::Park);
    let running = parking.spawn();
    eventually("all six messages seen", Duration::from_secs(60), || async {
        parking.stats().handled() + parking.stats().parked() == 6
    })
    .await;
    running.stop().await.unwrap();
    let model = totals(&read_model).await;
    assert_eq!(
        model.get("item-1"),
        Some(&(7, 2, 4)),
        "v1 upcast (5) and v4 (2) applied"
    );
    assert_eq!(model.get("item-2"), None);
    let parked = parking.parked().await.unwrap();
    let offsets: Vec<i64> = parked.iter().map(|p| p.origin.offset).collect();
    assert_eq!(offsets, [1, 2, 3, 5]);
    assert!(parked
        .iter()
        .all(|p| p.origin.topic == topic && p.origin.partition == 0));
    assert!(parked[0].error.contains("Exploded"), "{}", parked[0].error);
    assert!(parked[1].error.contains("not JSON"), "{}", parked[1].error);
    assert_eq!(
        parked[1].event.payload,
        serde_json::json!("{not json"),
        "the bytes are kept"
    );
    assert!(
        parked[2].error.contains("es-schema-version"),
        "{}",
        parked[2].error
    );
    assert!(parked[3].error.contains("item-2"), "{}", parked[3].error);
    assert_eq!(parked[3].event.event_id.to_string(), e);

    // A parked message that still fails stays parked.
    assert!(!parking.retry_parked(&parked[0]).await.unwrap());
    assert_eq!(parking.parked().await.unwrap().len(), 4);
}
