//! The relay against a real broker: completeness and order, upcasting and
//! headers, a broker restart, and a relay killed before its checkpoint.

mod common;

use std::time::Duration;

use common::*;
use es_core::{
    AppendOptions, EventId, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent,
    StreamId,
};
use es_kafka::{KafkaConfig, KafkaRelay, TopicMapping};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_event_once_in_stream_order() {
    let Some(bootstrap) = broker() else { return };
    let store = InMemoryStore::new();
    let appended = fill(&store, 100, 500, 50).await;
    assert_eq!(appended, 50_000);
    let topic = unique("items");
    let relay = KafkaRelay::new(store.clone(), &KafkaConfig::new(&bootstrap))
        .unwrap()
        .topics(TopicMapping::single(&topic))
        .upcast::<ItemEvent>();
    let checkpoint = relay.catch_up(3).await.unwrap();
    assert_eq!(checkpoint, store.head().await.unwrap());
    assert_eq!(relay.stats().acknowledged(), 50_000);

    let received = read_topic(&bootstrap, &topic, 50_000, Duration::from_secs(120)).await;
    assert_complete(&store, &received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_upcast_payloads_with_headers() {
    let Some(bootstrap) = broker() else { return };
    let store = InMemoryStore::new();
    let stream = StreamId::for_aggregate("item", "h1");
    let mut metadata = Metadata::correlated("req-1")
        .caused_by("cmd-1")
        .with(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with("tenant", "acme");
    metadata.recorded_at = None;
    let stored_v1 = NewEvent {
        event_id: EventId::new(),
        event_type: "Added".into(),
        schema_version: 1,
        payload: serde_json::json!({ "count": 7 }).into(),
        metadata,
    };
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![stored_v1],
            &AppendOptions::default(),
        )
        .await
        .unwrap();
    let raw = store
        .read_stream(&stream, es_core::Version(1), 1)
        .await
        .unwrap()
        .remove(0);

    let prefix = format!("{}.", unique("shop"));
    let relay = KafkaRelay::new(store.clone(), &KafkaConfig::new(&bootstrap))
        .unwrap()
        .name("headers_relay")
        .topics(TopicMapping::prefixed(&prefix))
        .upcast::<ItemEvent>();
    relay.catch_up(3).await.unwrap();
    let topic = format!("{prefix}item");
    let received = read_topic(&bootstrap, &topic, 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1, "one message on {topic}");
    let message = &received[0];
    assert_eq!(message.key, "item-h1");
    assert_eq!(
        message.payload,
        serde_json::json!({ "n": 7 }),
        "published upcast to v2"
    );
    let h = &message.headers;
    assert_eq!(h["es-event-type"], "Added");
    assert_eq!(h["es-schema-version"], "2");
    assert_eq!(h["es-event-id"], raw.event_id.to_string());
    assert_eq!(h["es-stream-id"], "item-h1");
    assert_eq!(h["es-stream-version"], "1");
    assert_eq!(h["es-position"], raw.position.0.to_string());
    assert_eq!(h["es-correlation-id"], "req-1");
    assert_eq!(h["es-causation-id"], "cmd-1");
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(h["es-meta-tenant"], "acme");
    assert_eq!(h["content-type"], "application/json");
    let recorded: chrono::DateTime<chrono::Utc> = h["es-recorded-at"].parse().unwrap();
    assert_eq!(recorded, raw.recorded_at);
    assert_eq!(relay.checkpoint().await.unwrap(), raw.position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_upcast_stops_or_is_parked() {
    let Some(bootstrap) = broker() else { return };
    let store = InMemoryStore::new();
    let stream = StreamId::for_aggregate("item", "bad");
    let event = |payload: serde_json::Value| NewEvent {
        event_id: EventId::new(),
        event_type: "Added".into(),
        schema_version: 1,
        payload: payload.into(),
        metadata: Metadata::default(),
    };
    let events = vec![
        event(serde_json::json!({ "count": 1 })),
        event(serde_json::json!({ "wrong": true })),
        event(serde_json::json!({ "count": 3 })),
    ];
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            events,
            &AppendOptions::default(),
        )
        .await
        .unwrap();
    let topic = unique("bad-items");
    let config = KafkaConfig::new(&bootstrap);
    let relay = KafkaRelay::new(store.clone(), &config)
        .unwrap()
        .topics(TopicMapping::single(&topic))
        .upcast::<ItemEvent>();
    let error = relay.catch_up(3).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("item-bad") && text.contains("v2"), "{text}");
    assert_eq!(
        relay.checkpoint().await.unwrap(),
        es_core::Position(1),
        "stopped before the bad event"
    );

    let relay = relay.failure_policy(es_core::FailurePolicy::Park);
    relay.catch_up(3).await.unwrap();
    let parked = es_core::CheckpointStore::parked(&store, "kafka_relay")
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.version, es_core::Version(2));
    let received = read_topic(&bootstrap, &topic, 2, Duration::from_secs(30)).await;
    let versions: Vec<_> = received
        .iter()
        .map(|m| m.headers["es-stream-version"].clone())
        .collect();
    assert_eq!(versions, ["1", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_by_itself_after_a_broker_restart() {
    if broker().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut own = OwnBroker::start(dir.path());
    let bootstrap = own.address();
    let topic = unique("restart");
    create_topic(&bootstrap, &topic, 4).await;
    let store = InMemoryStore::new();
    fill(&store, 50, 100, 20).await;
    let relay = KafkaRelay::new(
        store.clone(),
        &KafkaConfig::new(&bootstrap).set("message.timeout.ms", "5000"),
    )
    .unwrap()
    .topics(TopicMapping::single(&topic))
    .retry_backoff(Duration::from_millis(200))
    .upcast::<ItemEvent>();
    let running = relay.spawn();
    eventually("first events relayed", Duration::from_secs(60), || async {
        relay.stats().acknowledged() >= 5_000
    })
    .await;

    own.kill();
    // Events appended while the broker is away.
    fill(&store, 50, 100, 20).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    own.restart();
    fill(&store, 50, 20, 20).await;

    let head = store.head().await.unwrap();
    eventually(
        "relay caught up after the restart",
        Duration::from_secs(120),
        || async { relay.stats().checkpoint() == head },
    )
    .await;
    running.stop().await.unwrap();
    let received = read_topic(
        &bootstrap,
        &topic,
        head.0 as usize,
        Duration::from_secs(120),
    )
    .await;
    assert_complete(&store, &received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_before_its_checkpoint_only_duplicates() {
    let Some(bootstrap) = broker() else { return };
    let source = InMemoryStore::new();
    fill(&source, 40, 250, 25).await;
    let topic = unique("killed");
    create_topic(&bootstrap, &topic, 4).await;
    let config = KafkaConfig::new(&bootstrap);
    let relay = KafkaRelay::new(source.clone(), &config)
        .unwrap()
        .topics(TopicMapping::single(&topic))
        .max_in_flight(500)
        .checkpoint_interval(Duration::from_secs(3600))
        .upcast::<ItemEvent>();
    let running = relay.spawn();
    eventually("some events relayed", Duration::from_secs(60), || async {
        relay.stats().acknowledged() >= 2_000
    })
    .await;
    running.abort();
    let saved = relay.checkpoint().await.unwrap();
    assert!(
        saved < source.head().await.unwrap(),
        "killed before its checkpoint reached the head"
    );

    // Restarted, it produces again from its checkpoint: duplicates, no loss.
    fill(&source, 40, 10, 10).await;
    relay.catch_up(3).await.unwrap();
    let head = source.head().await.unwrap();
    assert!(
        relay.stats().produced() > head.0,
        "some events were produced twice"
    );

    let dir = tempfile::tempdir().unwrap();
    let read_model = read_model_store(dir.path()).await;
    let runner = totals_runner(&config, &topic, &read_model);
    let consuming = runner.spawn();
    let expected = expected_totals(&source).await;
    eventually("read model complete", Duration::from_secs(120), || async {
        runner.stats().handled() == head.0
    })
    .await;
    consuming.stop().await.unwrap();
    assert!(
        runner.stats().duplicates() > 0,
        "the restarted relay sent some events twice"
    );
    assert_eq!(
        totals(&read_model).await,
        expected,
        "read model equals the one built from the store"
    );
}
