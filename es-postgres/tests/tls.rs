//! TLS to the server (the `tls-rustls` feature): a store built from a URL
//! with `sslmode=require` encrypts every connection it makes: its pool's,
//! a projection lease's, and the one that listens for other processes'
//! appends. The local test server has TLS on (Debian's default, with its
//! snake-oil certificate; `require` encrypts without checking the
//! certificate).
#![cfg(feature = "tls-rustls")]

mod common;

use std::time::Duration;

use es_core::testkit::conformance::new_event;
use es_core::{AppendOptions, EventFilter, EventStore, ExpectedVersion, Position, StreamId};
use es_postgres::PgStoreOptions;
use serde_json::json;

/// The test server's URL with `sslmode=require` added.
fn tls_url() -> String {
    let url = common::url();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslmode=require")
}

#[test]
fn a_store_connected_with_sslmode_require_encrypts_every_connection() {
    es_core::testkit::block_on(async {
        // A missing server skips here (or fails in CI).
        let Some(plain) = common::server(1).await else {
            return;
        };
        plain.close().await;
        let store = PgStoreOptions::new()
            .schema(common::unique_schema())
            .max_connections(4)
            .connect(&tls_url())
            .await
            .expect("connect with sslmode=require");
        common::run_in_schema(store, |store| async move {
            // The listener connects on the first wait.
            assert!(
                !store
                    .wait_for_events(Position::START, Duration::from_millis(200))
                    .await
                    .expect("wait on an empty log"),
                "an empty log has no events"
            );
            let stream = StreamId::new("sealed-1");
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![new_event("Sealed", json!({ "n": 1 }))],
                    &AppendOptions::default(),
                )
                .await
                .expect("append over TLS");
            let read = store
                .read_all(Position::START, &EventFilter::all(), 10)
                .await
                .expect("read over TLS");
            assert_eq!(read.events.len(), 1);
            assert_eq!(read.events[0].stream_id, stream);

            let own: bool =
                sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    .fetch_one(store.pool())
                    .await
                    .expect("query pg_stat_ssl");
            assert!(own, "the pool's connections are encrypted");

            // A projection lease holds a connection of its own.
            let leased = store
                .try_lease("sealed")
                .await
                .expect("take a lease")
                .expect("the lease is free");
            let pid = leased.lease_backend_pid().expect("a leased store");
            let lease_ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = $1")
                .bind(pid)
                .fetch_one(store.pool())
                .await
                .expect("query pg_stat_ssl");
            assert!(lease_ssl, "the lease's connection is encrypted");
            leased.release_lease().await;

            // The listener's connection: the one that ran `LISTEN` on the
            // store's channel (looked for during at most 10 s while it
            // connects).
            let mut listener = None;
            for _ in 0..100 {
                listener = sqlx::query_scalar::<_, bool>(
                    "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                     WHERE a.query LIKE 'LISTEN %' AND strpos(a.query, $1) > 0",
                )
                .bind(store.channel())
                .fetch_optional(store.pool())
                .await
                .expect("query pg_stat_ssl");
                if listener.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                listener,
                Some(true),
                "the listener's connection is there and encrypted"
            );
        })
        .await;
    });
}
