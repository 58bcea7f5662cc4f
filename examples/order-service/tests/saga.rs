//! The checkout saga under failures: a crash between two of its steps, then
//! a restart, completes the checkout exactly once; a replay of the whole log
//! repeats no effect.

mod common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::{line, FlakyStore, TestApp};
use es_core::InMemoryStore;
use order_service::MemoryReadModels;
use serde_json::json;

/// Waits until `done` holds, for at most ten seconds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The streams a checkout touches, and how many events each holds.
async fn stream_lengths<S, R>(t: &TestApp<S, R>, order: &str) -> Vec<usize>
where
    S: order_service::AppStore + es_core::ContextProvider<R::Tx>,
    R: order_service::ReadModelStore,
{
    vec![
        t.stream_len(&format!("order-{order}")).await,
        t.stream_len("inventory-mug").await,
        t.stream_len("inventory-tea").await,
    ]
}

#[tokio::test]
async fn a_crash_between_saga_steps_completes_exactly_once_after_restart() {
    let flaky = FlakyStore::new(InMemoryStore::new());
    let read_models = MemoryReadModels::new();
    let first = TestApp::started(flaky.clone(), read_models.clone()).await;
    first.restock("mug", 10).await;
    first.restock("tea", 10).await;

    // Step 0 of the checkout reserves the mugs, step 1 the tea: crash there.
    flaky.crash_on_key_suffix(Some("/1"));
    let id = first
        .place("ada", json!([line("mug", 2, 1250), line("tea", 1, 899)]))
        .await;
    wait_until("the crash", || flaky.crashes() > 0).await;
    first.app.shutdown().await;
    assert_eq!(first.stock("mug").await["reserved"], 2, "step 0 ran");
    assert_eq!(first.stock("tea").await["reserved"], 0, "step 1 did not");
    assert_eq!(first.order(&id).await["status"], "awaiting_stock");
    let checkout = first.get("/admin/projections").await.expect(StatusCode::OK)[2].clone();
    assert_eq!(checkout["name"], "checkout");
    assert_eq!(checkout["state"], "stopped");
    assert!(checkout["lag"].as_u64().unwrap() > 0, "{checkout}");
    drop(first);

    // The restart handles the placement again: step 0 is remembered, steps 1 and 2 run.
    flaky.crash_on_key_suffix(None);
    let second = TestApp::started(flaky.clone(), read_models).await;
    second.settle().await;
    let order = second.order(&id).await;
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(second.stock("mug").await["reserved"], 2);
    assert_eq!(second.stock("tea").await["reserved"], 1);
    assert_eq!(
        stream_lengths(&second, &id).await,
        [2, 2, 2],
        "placed + confirmed, restocked + reserved once each"
    );

    // A rebuild replays the whole log through the saga: nothing is repeated.
    second
        .call(Method::POST, "/admin/projections/checkout/rebuild", None)
        .await
        .expect(StatusCode::OK);
    second.settle().await;
    assert_eq!(stream_lengths(&second, &id).await, [2, 2, 2]);
    assert_eq!(second.stock("mug").await["reserved"], 2);
    second.app.shutdown().await;
}

#[tokio::test]
async fn the_supervisor_restarts_a_failed_saga_without_repeating_steps() {
    let flaky = FlakyStore::new(InMemoryStore::new());
    let t = TestApp::started(flaky.clone(), MemoryReadModels::new()).await;
    t.restock("mug", 10).await;
    t.restock("tea", 10).await;
    flaky.crash_on_key_suffix(Some("/2")); // the confirmation, after both reservations
    let id = t
        .place("ada", json!([line("mug", 2, 1250), line("tea", 1, 899)]))
        .await;
    wait_until("the crash", || flaky.crashes() > 0).await;
    // While the saga waits to be started again, the service is not ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = t.get("/ready").await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            let checks = ready.body["checks"].to_string();
            assert!(checks.contains("simulated crash"), "{checks}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the saga never reported its failure"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    flaky.crash_on_key_suffix(None);

    // The supervisor starts the saga again after a pause.
    t.settle().await;
    assert_eq!(t.order(&id).await["status"], "confirmed");
    assert_eq!(stream_lengths(&t, &id).await, [2, 2, 2]);
    t.get("/ready").await.expect(StatusCode::OK);
    t.app.shutdown().await;
}
