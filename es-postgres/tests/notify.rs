//! How a store tells other processes of its appends: the first append after
//! a quiet spell at once, then one notification per interval for all the
//! appends in between.

mod common;

use std::time::{Duration, Instant};

use es_core::testkit::conformance::new_event;
use es_core::{AppendOptions, EventStore, ExpectedVersion, StreamId};
use es_postgres::{PgEventStore, PgStoreOptions};
use serde_json::json;
use sqlx::postgres::PgListener;

const INTERVAL: Duration = Duration::from_millis(800);

async fn append(store: &PgEventStore, stream: &StreamId, i: u64) {
    store
        .append(
            stream,
            ExpectedVersion::Any,
            vec![new_event("Tick", json!({ "i": i }))],
            &AppendOptions::default(),
        )
        .await
        .expect("append");
}

/// The next notification on the store's channel, and when it came; `None`
/// when none came within `within`.
async fn next(listener: &mut PgListener, within: Duration) -> Option<Instant> {
    match tokio::time::timeout(within, listener.recv()).await {
        Ok(received) => {
            received.expect("listen");
            Some(Instant::now())
        }
        Err(_) => None,
    }
}

#[test]
fn appends_are_announced_at_once_then_once_per_notify_interval() {
    es_core::testkit::block_on(async {
        let options = PgStoreOptions::new().notify_interval(INTERVAL);
        common::with_store(options, 4, |store| async move {
            let mut listener = PgListener::connect_with(store.pool())
                .await
                .expect("connect a listener");
            listener.listen(store.channel()).await.expect("listen");
            let stream = StreamId::new("ticks-1");

            let started = Instant::now();
            for i in 0..5 {
                append(&store, &stream, i).await;
            }
            let first = next(&mut listener, Duration::from_secs(10))
                .await
                .expect("the first append is announced");
            assert!(
                first - started < INTERVAL,
                "announced at once, not after an interval ({:?})",
                first - started
            );

            // Appends within the interval: announced together, once, when
            // it has passed.
            for i in 5..10 {
                append(&store, &stream, i).await;
            }
            let second = next(&mut listener, Duration::from_secs(10))
                .await
                .expect("the later appends are announced");
            assert!(
                second - first >= INTERVAL - Duration::from_millis(50),
                "one notification per interval ({:?} apart)",
                second - first
            );
            assert_eq!(
                next(&mut listener, 2 * INTERVAL).await,
                None,
                "no appends since: no more notifications"
            );

            // After a quiet spell, the next append is announced at once.
            let quiet = Instant::now();
            append(&store, &stream, 10).await;
            let third = next(&mut listener, Duration::from_secs(10))
                .await
                .expect("announced");
            assert!(third - quiet < INTERVAL, "{:?}", third - quiet);
        })
        .await;
    });
}
