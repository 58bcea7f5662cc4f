//! Another language's client reads the relay's topic: keys, headers and
//! payloads are what a non-Rust service needs.
//!
//! The client is Python's confluent-kafka, installed by the test command,
//! which exports `KAFKA_PYTHON` (a Python that has it).

mod common;

use std::collections::BTreeMap;

use common::*;
use es_core::{EventFilter, EventStore, Position};
use es_kafka::{KafkaConfig, KafkaRelay, TopicMapping};

fn python() -> Option<String> {
    match std::env::var("KAFKA_PYTHON") {
        Ok(python) => Some(python),
        Err(_) if in_ci() => panic!("KAFKA_PYTHON (a Python with confluent-kafka) is required when CI=true; the test command sets it"),
        Err(_) => {
            eprintln!("SKIPPED: KAFKA_PYTHON is not set; run ./scripts/test, which installs confluent-kafka");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_reads_keys_headers_and_payloads() {
    let Some(bootstrap) = broker() else { return };
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = es_sqlite::SqliteEventStore::open(dir.path().join("source.db"))
        .await
        .unwrap();
    fill(&store, 5, 20, 5).await;
    let prefix = format!("{}.", unique("interop"));
    KafkaRelay::new(store.clone(), &KafkaConfig::new(&bootstrap))
        .unwrap()
        .topics(TopicMapping::prefixed(&prefix))
        .upcast::<ItemEvent>()
        .catch_up(3)
        .await
        .unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/consume.py");
    let topic = format!("{prefix}item");
    let output = tokio::process::Command::new(&python)
        .args([script, &bootstrap, &topic, "100", "60"])
        .output()
        .await
        .expect("run the Python consumer");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Python consumer failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );

    let stored = store
        .read_all(Position::START, &EventFilter::all(), 1000)
        .await
        .unwrap()
        .events;
    let by_id: BTreeMap<String, _> = stored.iter().map(|e| (e.event_id.to_string(), e)).collect();
    let mut partitions: BTreeMap<String, i64> = BTreeMap::new();
    let mut count = 0;
    for line in stdout.lines() {
        let message: serde_json::Value = serde_json::from_str(line).unwrap();
        let headers = &message["headers"];
        let event = by_id[headers["es-event-id"].as_str().unwrap()];
        assert_eq!(message["key"], event.stream_id.as_str());
        assert_eq!(headers["es-event-type"], event.event_type.as_str());
        assert_eq!(
            headers["es-schema-version"],
            event.schema_version.to_string().as_str()
        );
        assert_eq!(
            headers["es-stream-version"],
            event.version.0.to_string().as_str()
        );
        assert_eq!(
            headers["es-position"],
            event.position.0.to_string().as_str()
        );
        assert_eq!(
            headers["es-correlation-id"],
            event.metadata.correlation_id.as_deref().unwrap()
        );
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            message["payload"], event.payload,
            "payload of {}",
            event.event_id
        );
        let partition = message["partition"].as_i64().unwrap();
        let first = partitions
            .entry(event.stream_id.to_string())
            .or_insert(partition);
        assert_eq!(*first, partition, "one stream, one partition");
        count += 1;
    }
    assert_eq!(count, 100);
}
