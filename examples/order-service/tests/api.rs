//! The HTTP API through the real router on the in-memory store: the order
//! lifecycle, every rule violation, bad input, request ids, the admin
//! endpoints, health and the OpenAPI document.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{eur, line, order_lifecycle, FlakyStore, TestApp};
use es_core::{EventStore, InMemoryStore, StreamId, Version};
use order_service::MemoryReadModels;
use serde_json::{json, Value};

#[tokio::test]
async fn the_order_lifecycle() {
    let t = TestApp::memory().await;
    order_lifecycle(&t).await;
    t.app.shutdown().await;
}

#[tokio::test]
async fn out_of_stock_cancels_the_order_and_releases_the_rest() {
    let t = TestApp::memory().await;
    t.restock("mug", 10).await;
    let id = t
        .place(
            "ada",
            json!([line("mug", 2, 1250), line("rare-vase", 1, 99_00)]),
        )
        .await;
    t.settle().await;
    let order = t.order(&id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(t.stock("mug").await["available"], 10, "mug released");
    let listed = t
        .get("/orders?status=cancelled")
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed[0]["order_id"], json!(id));

    // A line added later without stock is rejected, the rest stays confirmed.
    let id = t.place("ada", json!([line("mug", 1, 1250)])).await;
    t.post(&format!("/orders/{id}/lines"), line("rare-vase", 1, 99_00))
        .await
        .expect(StatusCode::OK);
    t.settle().await;
    let order = t.order(&id).await;
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["lines"].as_array().unwrap().len(), 1);
}

/// Every rule of the domain, as the API reports it.
#[tokio::test]
async fn rule_violations_name_the_rule() {
    let t = TestApp::memory().await;
    t.restock("mug", 10).await;
    t.restock("tea", 10).await;
    let conflict = StatusCode::CONFLICT;
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    let place = |lines: Value| json!({ "customer": "ada", "currency": "EUR", "lines": lines });

    let cases = [
        (place(json!([])), invalid, "order_needs_lines"),
        (
            place(json!([line("mug", 0, 100)])),
            invalid,
            "positive_quantity",
        ),
        (place(json!([line("a b", 1, 100)])), invalid, "valid_sku"),
        (
            place(json!([line("mug", 1, 100), line("mug", 2, 100)])),
            conflict,
            "one_line_per_sku",
        ),
        (
            place(
                json!([{ "sku": "mug", "quantity": 1, "unit_price": { "amount": 1, "currency": "USD" } }]),
            ),
            invalid,
            "currency_consistency",
        ),
        (
            json!({ "customer": "", "currency": "EUR", "lines": [line("mug", 1, 1)] }),
            invalid,
            "customer_required",
        ),
        (
            place(json!([line("mug", u32::MAX, u64::MAX / 2)])),
            invalid,
            "amount_within_limits",
        ),
    ];
    for (body, status, rule) in cases {
        t.post("/orders", body)
            .await
            .expect_error(status, "rule_violated", Some(rule));
    }

    let id = t
        .place("ada", json!([line("mug", 2, 1250), line("tea", 1, 899)]))
        .await;
    let order = |path: &str| format!("/orders/{id}{path}");

    // Before the saga confirmed the stock, an order cannot be paid: on an
    // app whose saga does not run, the order stays unconfirmed.
    let paused = TestApp::stopped(InMemoryStore::new(), MemoryReadModels::new());
    let waiting = paused.place("ada", json!([line("mug", 1, 100)])).await;
    paused
        .post(&format!("/orders/{waiting}/pay"), eur(100))
        .await
        .expect_error(
            conflict,
            "rule_violated",
            Some("stock_reserved_before_payment"),
        );

    t.settle().await;
    t.post(&order("/lines"), line("mug", 1, 100))
        .await
        .expect_error(conflict, "rule_violated", Some("one_line_per_sku"));
    t.post(&order("/lines"), line("spoon", 0, 100))
        .await
        .expect_error(invalid, "rule_violated", Some("positive_quantity"));
    t.post(
        &order("/lines"),
        json!({ "sku": "spoon", "quantity": 1, "unit_price": { "amount": 1, "currency": "GBP" } }),
    )
    .await
    .expect_error(invalid, "rule_violated", Some("currency_consistency"));
    t.call(Method::DELETE, &order("/lines/spoon"), None)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found", Some("line_must_exist"));
    t.call(Method::POST, &order("/ship"), None)
        .await
        .expect_error(
            conflict,
            "rule_violated",
            Some("no_shipping_before_payment"),
        );
    t.post(&order("/pay"), eur(100)).await.expect_error(
        invalid,
        "rule_violated",
        Some("exact_payment"),
    );
    t.post(&order("/pay"), json!({ "amount": 3399, "currency": "USD" }))
        .await
        .expect_error(invalid, "rule_violated", Some("currency_consistency"));
    t.post(&order("/pay"), eur(3399))
        .await
        .expect(StatusCode::OK);
    t.post(&order("/pay"), eur(3399)).await.expect_error(
        conflict,
        "rule_violated",
        Some("pay_once"),
    );
    t.post(&order("/lines"), line("spoon", 1, 100))
        .await
        .expect_error(
            conflict,
            "rule_violated",
            Some("no_line_change_after_payment"),
        );
    t.call(Method::DELETE, &order("/lines/tea"), None)
        .await
        .expect_error(
            conflict,
            "rule_violated",
            Some("no_line_change_after_payment"),
        );
    t.call(Method::POST, &order("/ship"), None)
        .await
        .expect(StatusCode::OK);
    for (method, path, body) in [
        (Method::POST, "/ship", None),
        (Method::POST, "/cancel", Some(json!({ "reason": "late" }))),
        (Method::POST, "/pay", Some(eur(3399))),
        (Method::POST, "/lines", Some(line("spoon", 1, 100))),
        (Method::DELETE, "/lines/tea", None),
    ] {
        t.call(method, &order(path), body).await.expect_error(
            conflict,
            "rule_violated",
            Some("no_change_after_shipping"),
        );
    }

    // The last line stays; a cancelled order no longer changes.
    let single = t.place("bo", json!([line("tea", 1, 899)])).await;
    t.call(Method::DELETE, &format!("/orders/{single}/lines/tea"), None)
        .await
        .expect_error(conflict, "rule_violated", Some("order_keeps_a_line"));
    t.post(&format!("/orders/{single}/cancel"), json!({}))
        .await
        .expect(StatusCode::OK);
    t.post(&format!("/orders/{single}/cancel"), json!({}))
        .await
        .expect_error(
            conflict,
            "rule_violated",
            Some("no_change_after_cancellation"),
        );

    // Stock rules.
    t.post("/inventory/mug/restock", json!({ "quantity": 0 }))
        .await
        .expect_error(invalid, "rule_violated", Some("positive_quantity"));
    t.post("/inventory/bad%20sku/restock", json!({ "quantity": 1 }))
        .await
        .expect_error(invalid, "rule_violated", Some("valid_sku"));
}

#[tokio::test]
async fn bad_input_gets_json_errors() {
    let t = TestApp::memory().await;
    let raw = |body: &str, content_type: &str| {
        Request::post("/orders")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    t.send(raw("{\"customer\": ", "application/json"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_json", None);
    t.post(
        "/orders",
        json!({ "customer": "ada", "currency": "EUR", "lines": [], "coupon": "FREE" }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_body", None);
    t.post(
        "/orders",
        json!({ "customer": "ada", "currency": "EUR", "lines": [{ "sku": "mug", "quantity": 1, "unit_price": eur(1), "gift": true }] }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_body", None);
    t.post("/orders", json!({ "customer": "ada", "lines": [] }))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body", None);
    t.post(
        "/orders",
        json!({ "customer": "ada", "currency": "euro", "lines": [] }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_body", None);
    t.post(
        "/orders",
        json!({ "customer": "ada", "currency": "EUR", "lines": [line("mug", 1, 1)] })
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o["lines"][0]["quantity"] = json!(-1);
                Value::Object(o)
            })
            .unwrap(),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_body", None);
    t.send(raw("{}", "text/plain")).await.expect_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );

    // Oversized bodies, with and without a content length.
    let big = format!(
        "{{\"customer\": \"{}\", \"currency\": \"EUR\", \"lines\": []}}",
        "x".repeat(70 * 1024)
    );
    let mut sized = raw(&big, "application/json");
    sized
        .headers_mut()
        .insert(header::CONTENT_LENGTH, big.len().into());
    t.send(sized)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None);
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..80).map(|_| Ok("x".repeat(1024))).collect();
    let streamed = Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(tokio_stream::iter(chunks)))
        .unwrap();
    t.send(streamed)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None);

    // Unknown ids and paths.
    let unknown = uuid::Uuid::now_v7();
    t.get(&format!("/orders/{unknown}")).await.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        Some("order_must_exist"),
    );
    t.post(&format!("/orders/{unknown}/pay"), eur(1))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found", Some("order_must_exist"));
    t.get("/orders/not-a-uuid")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path", None);
    t.get("/inventory/never-stocked")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found", None);
    t.get("/customers/nobody/totals")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found", None);
    t.call(Method::POST, "/admin/projections/nope/rebuild", None)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found", None);
    t.get("/no/such/route")
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found", None);
    t.call(Method::DELETE, "/orders", None).await.expect_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    t.get("/orders?colour=red")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query", None);
    t.get("/orders?status=lost")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query", None);
}

#[tokio::test]
async fn request_ids_become_correlation_ids() {
    let t = TestApp::memory().await;
    t.restock("mug", 5).await;
    let request = Request::post("/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", "req-checkout-42")
        .body(Body::from(
            json!({ "customer": "ada", "currency": "EUR", "lines": [line("mug", 1, 100)] })
                .to_string(),
        ))
        .unwrap();
    let reply = t.send(request).await;
    assert_eq!(reply.headers["x-request-id"], "req-checkout-42");
    let id = reply.expect(StatusCode::CREATED)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.settle().await;
    let store = t.app.store();
    let events = store
        .read_stream(&StreamId::new(format!("order-{id}")), Version(1), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "placed, then confirmed by the saga");
    for event in &events {
        assert_eq!(
            event.metadata.correlation_id.as_deref(),
            Some("req-checkout-42"),
            "{}",
            event.event_type
        );
    }
    assert_eq!(
        events[1].metadata.causation_id.as_deref(),
        Some(events[0].event_id.to_string().as_str()),
        "the saga's command was caused by the placement"
    );
    let mug = store
        .read_stream(&StreamId::new("inventory-mug"), Version(2), 10)
        .await
        .unwrap();
    assert_eq!(mug[0].event_type, "StockReserved");
    assert_eq!(
        mug[0].metadata.correlation_id.as_deref(),
        Some("req-checkout-42")
    );

    // Without a request id, one is made up and returned.
    let reply = t.get("/health").await;
    let generated = reply.headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
}

#[tokio::test]
async fn admin_lists_and_rebuilds_projections() {
    let t = TestApp::memory().await;
    order_lifecycle(&t).await;
    t.settle().await;
    let head = t.app.store().head().await.unwrap();
    let projections = t.get("/admin/projections").await.expect(StatusCode::OK);
    let names: Vec<&str> = projections
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["order_summaries", "customer_totals", "checkout"]);
    for p in projections.as_array().unwrap() {
        assert_eq!(p["head"], head.get(), "{p}");
        assert_eq!(p["position"], head.get(), "{p}");
        assert_eq!(p["lag"], 0, "{p}");
        assert_eq!(p["parked"], 0, "{p}");
        assert_eq!(p["state"], "running", "{p}");
    }

    let before = t.read_models().await;
    for name in ["order_summaries", "customer_totals"] {
        let rebuilt = t
            .call(
                Method::POST,
                &format!("/admin/projections/{name}/rebuild"),
                None,
            )
            .await
            .expect(StatusCode::OK);
        assert_eq!(rebuilt["name"], name);
        t.settle().await;
    }
    assert_eq!(
        t.read_models().await,
        before,
        "a rebuild gives the same read models"
    );
    assert_eq!(t.app.store().head().await.unwrap(), head);
}

#[tokio::test]
async fn health_and_readiness() {
    let stopped = TestApp::stopped(InMemoryStore::new(), MemoryReadModels::new());
    stopped.get("/health").await.expect(StatusCode::OK);
    let not_ready = stopped
        .get("/ready")
        .await
        .expect(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready["ready"], false);
    stopped.app.start().await;
    let ready = stopped.get("/ready").await.expect(StatusCode::OK);
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["checks"].as_array().unwrap().len(), 4);
    stopped.app.shutdown().await;
    stopped
        .get("/ready")
        .await
        .expect(StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_conflict_that_outlives_the_retries_is_409() {
    let flaky = FlakyStore::new(InMemoryStore::new());
    let t = TestApp::started(flaky.clone(), MemoryReadModels::new()).await;
    t.restock("mug", 5).await;
    let id = t.place("ada", json!([line("mug", 1, 100)])).await;
    t.settle().await;
    flaky.always_conflict(true);
    t.post(&format!("/orders/{id}/pay"), eur(100))
        .await
        .expect_error(StatusCode::CONFLICT, "concurrency_conflict", None);
    flaky.always_conflict(false);
    t.post(&format!("/orders/{id}/pay"), eur(100))
        .await
        .expect(StatusCode::OK);
    t.app.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let t = TestApp::memory().await;
    let doc = t.get("/openapi.json").await.expect(StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: BTreeSet<String> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let expected: BTreeSet<String> = [
        "POST /orders",
        "GET /orders",
        "GET /orders/{id}",
        "POST /orders/{id}/lines",
        "DELETE /orders/{id}/lines/{sku}",
        "POST /orders/{id}/pay",
        "POST /orders/{id}/ship",
        "POST /orders/{id}/cancel",
        "GET /customers/totals",
        "GET /customers/{customer}/totals",
        "POST /inventory/{sku}/restock",
        "GET /inventory/{sku}",
        "GET /admin/projections",
        "POST /admin/projections/{name}/rebuild",
        "GET /health",
        "GET /ready",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(paths, expected);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "OrderView",
        "OrderSummary",
        "PlaceOrderRequest",
        "ErrorBody",
        "Money",
        "Line",
        "OrderStatus",
        "CustomerTotals",
        "ProjectionView",
    ] {
        assert!(schemas.contains_key(schema), "{schema} is missing");
    }
    assert_eq!(
        doc["components"]["schemas"]["PlaceOrderRequest"]["additionalProperties"], false,
        "unknown fields are refused, and the document says so"
    );
    // The served document is the one the code builds.
    assert_eq!(doc, serde_json::to_value(order_service::openapi()).unwrap());
}
