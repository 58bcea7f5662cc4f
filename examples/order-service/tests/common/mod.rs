//! Helpers of the integration tests: the app behind its real router, JSON
//! requests through `tower::ServiceExt::oneshot`, raw requests to a served
//! port, a store wrapper that injects failures, and the order lifecycle
//! shared by every store.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use es_core::{
    AppendOptions, AppendOutcome, Checkpoint, CheckpointStore, Committed, ContextProvider,
    EventFilter, EventStore, ExpectedVersion, InMemoryStore, LogSlice, NewEvent, ParkedEvent,
    Position, RecordedEvent, Snapshot, SnapshotStore, StreamId, Version,
};
use es_kafka::KafkaRelay;
use order_service::{App, AppStore, HttpConfig, MemoryReadModels, ReadModelStore};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// How long a test waits for the projections.
pub const SETTLE: Duration = Duration::from_secs(10);

/// An answer of the API.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        self.body
    }

    /// Asserts an error response with this status, error code and rule.
    #[track_caller]
    pub fn expect_error(self, status: StatusCode, error: &str, rule: Option<&str>) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "error bodies are JSON"
        );
        assert_eq!(self.body["error"], error, "body: {}", self.body);
        assert_eq!(self.body["rule"].as_str(), rule, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.body
        );
        self.body
    }
}

/// The application and its router.
pub struct TestApp<S: AppStore, R: ReadModelStore> {
    pub app: App<S, R>,
    pub router: Router,
}

impl TestApp<InMemoryStore, MemoryReadModels> {
    /// A started app on the in-memory store.
    pub async fn memory() -> Self {
        Self::started(InMemoryStore::new(), MemoryReadModels::new()).await
    }
}

impl<S, R> TestApp<S, R>
where
    S: AppStore + ContextProvider<R::Tx>,
    R: ReadModelStore,
{
    /// An app whose projections are not running.
    pub fn stopped(store: S, read_models: R) -> Self {
        Self::stopped_with_relay(store, read_models, None)
    }

    /// An app, with a Kafka relay when given, whose projections are not running.
    pub fn stopped_with_relay(store: S, read_models: R, relay: Option<KafkaRelay<S>>) -> Self {
        let app = App::with_relay(store, read_models, relay);
        let router = order_service::router(Arc::new(app.clone()), &HttpConfig::default());
        Self { app, router }
    }

    /// An app whose projections run.
    pub async fn started(store: S, read_models: R) -> Self {
        let test = Self::stopped(store, read_models);
        test.app.start().await;
        test
    }

    /// An app whose projections and Kafka relay run.
    pub async fn started_with_relay(store: S, read_models: R, relay: KafkaRelay<S>) -> Self {
        let test = Self::stopped_with_relay(store, read_models, Some(relay));
        test.app.start().await;
        test
    }

    pub async fn settle(&self) {
        self.app.settle(SETTLE).await.unwrap();
    }

    /// Sends a request through the router.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes))
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Sends `body` as JSON (or nothing).
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let builder = Request::builder().method(method).uri(uri);
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        };
        self.send(request.unwrap()).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(body)).await
    }

    pub async fn restock(&self, sku: &str, quantity: u32) {
        self.post(
            &format!("/inventory/{sku}/restock"),
            json!({ "quantity": quantity }),
        )
        .await
        .expect(StatusCode::OK);
    }

    /// Places an order and returns its id.
    pub async fn place(&self, customer: &str, lines: Value) -> String {
        let order = self
            .post(
                "/orders",
                json!({ "customer": customer, "currency": "EUR", "lines": lines }),
            )
            .await
            .expect(StatusCode::CREATED);
        order["id"].as_str().unwrap().to_owned()
    }

    pub async fn order(&self, id: &str) -> Value {
        self.get(&format!("/orders/{id}"))
            .await
            .expect(StatusCode::OK)
    }

    pub async fn stock(&self, sku: &str) -> Value {
        self.get(&format!("/inventory/{sku}"))
            .await
            .expect(StatusCode::OK)
    }

    /// The read models as the API shows them: every order and every total.
    pub async fn read_models(&self) -> (Value, Value) {
        let orders = self.get("/orders?limit=1000").await.expect(StatusCode::OK);
        let totals = self.get("/customers/totals").await.expect(StatusCode::OK);
        (orders, totals)
    }

    /// The number of events in a stream.
    pub async fn stream_len(&self, stream: &str) -> usize {
        self.app
            .store()
            .read_stream(&StreamId::new(stream), Version(1), 1000)
            .await
            .unwrap()
            .len()
    }
}

/// Sends one HTTP/1.1 request to 127.0.0.1 and returns the raw response.
pub async fn http(port: u16, request: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => break stream,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "the server never listened: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    response
}

pub fn line(sku: &str, quantity: u32, cents: u64) -> Value {
    json!({ "sku": sku, "quantity": quantity, "unit_price": { "amount": cents, "currency": "EUR" } })
}

pub fn eur(cents: u64) -> Value {
    json!({ "amount": cents, "currency": "EUR" })
}

/// The whole life of an order through the API, checking the aggregate, the
/// stock the saga moved and the read models at each step. Returns the id
/// of the shipped order.
pub async fn order_lifecycle<S, R>(t: &TestApp<S, R>) -> String
where
    S: AppStore + ContextProvider<R::Tx>,
    R: ReadModelStore,
{
    t.restock("mug", 10).await;
    t.restock("tea", 5).await;
    t.restock("spoon", 3).await;

    // Place: the checkout saga reserves the stock and confirms the order.
    let id = t
        .place("ada", json!([line("mug", 2, 1250), line("tea", 1, 899)]))
        .await;
    t.settle().await;
    let order = t.order(&id).await;
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["total"], eur(3399));
    assert!(order["lines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["stock_reserved"] == true));
    assert_eq!(t.stock("mug").await["available"], 8);

    // Change the lines: the saga reserves the new one and releases the removed one.
    let order = t
        .post(&format!("/orders/{id}/lines"), line("spoon", 3, 150))
        .await
        .expect(StatusCode::OK);
    assert_eq!(order["status"], "awaiting_stock");
    t.settle().await;
    assert_eq!(t.order(&id).await["status"], "confirmed");
    assert_eq!(t.stock("spoon").await["available"], 0);
    let order = t
        .call(Method::DELETE, &format!("/orders/{id}/lines/tea"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(order["total"], eur(2950));
    t.settle().await;
    assert_eq!(t.stock("tea").await["available"], 5, "tea released");

    // Pay, then ship: the saga takes the stock out of the warehouse.
    let order = t
        .post(&format!("/orders/{id}/pay"), eur(2950))
        .await
        .expect(StatusCode::OK);
    assert_eq!(order["status"], "paid");
    assert_eq!(order["paid"], eur(2950));
    let order = t
        .call(Method::POST, &format!("/orders/{id}/ship"), None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(order["status"], "shipped");
    assert_eq!(
        order["version"], 7,
        "placed, confirmed, added, confirmed, removed, paid, shipped"
    );
    t.settle().await;
    let mug = t.stock("mug").await;
    assert_eq!((&mug["on_hand"], &mug["reserved"]), (&json!(8), &json!(0)));

    // A second order, cancelled after payment: refunded, stock released.
    let other = t.place("ada", json!([line("mug", 1, 1250)])).await;
    t.settle().await;
    t.post(&format!("/orders/{other}/pay"), eur(1250))
        .await
        .expect(StatusCode::OK);
    let cancelled = t
        .post(
            &format!("/orders/{other}/cancel"),
            json!({ "reason": "gift bought elsewhere" }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    // An order of someone else, left open.
    let bo = t.place("bo", json!([line("tea", 2, 899)])).await;
    t.settle().await;
    assert_eq!(t.stock("mug").await["available"], 8);

    // The read models: the list with filters, and the totals.
    let shipped = t
        .get("/orders?status=shipped&customer=ada")
        .await
        .expect(StatusCode::OK);
    assert_eq!(shipped.as_array().unwrap().len(), 1);
    assert_eq!(shipped[0]["order_id"], json!(id));
    assert_eq!(shipped[0]["total"], 2950);
    assert_eq!(shipped[0]["paid"], 2950);
    assert_eq!(shipped[0]["version"], 7);
    let ada = t.get("/orders?customer=ada").await.expect(StatusCode::OK);
    assert_eq!(ada.as_array().unwrap().len(), 2);
    let open = t
        .get("/orders?status=confirmed")
        .await
        .expect(StatusCode::OK);
    assert_eq!(open.as_array().unwrap().len(), 1);
    assert_eq!(open[0]["order_id"], json!(bo));
    let cancelled = t
        .get("/orders?status=cancelled")
        .await
        .expect(StatusCode::OK);
    assert_eq!(cancelled[0]["order_id"], json!(other));
    assert_eq!(cancelled[0]["paid"], 0, "refunded");
    let totals = t.get("/customers/ada/totals").await.expect(StatusCode::OK);
    assert_eq!(
        totals,
        json!([{ "customer": "ada", "currency": "EUR", "orders": 2, "shipped": 1,
                 "cancelled": 1, "paid": 2950 }])
    );
    let all = t.get("/customers/totals").await.expect(StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 2);
    id
}

/// A store that fails on purpose: appends of chosen saga steps fail like a
/// crash, or every append conflicts.
#[derive(Clone, Debug)]
pub struct FlakyStore<S> {
    inner: S,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
pub struct Faults {
    /// Appends whose idempotency key ends with this fail while it is set.
    crash_on_key_suffix: Mutex<Option<String>>,
    /// How many appends failed on purpose.
    crashes: AtomicUsize,
    /// Every append conflicts.
    always_conflict: AtomicBool,
}

impl<S> FlakyStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// Fails every append whose idempotency key ends with `suffix`.
    pub fn crash_on_key_suffix(&self, suffix: Option<&str>) {
        *self.faults.crash_on_key_suffix.lock().unwrap() = suffix.map(str::to_owned);
    }

    pub fn crashes(&self) -> usize {
        self.faults.crashes.load(Ordering::SeqCst)
    }

    pub fn always_conflict(&self, on: bool) {
        self.faults.always_conflict.store(on, Ordering::SeqCst);
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: EventStore> EventStore for FlakyStore<S> {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> es_core::Result<AppendOutcome> {
        if self.faults.always_conflict.load(Ordering::SeqCst) {
            return Err(es_core::Error::Conflict {
                stream_id: stream_id.clone(),
                expected,
                actual: Version(u64::MAX),
            });
        }
        let suffix = self.faults.crash_on_key_suffix.lock().unwrap().clone();
        if let (Some(suffix), Some(key)) = (suffix, &options.idempotency_key) {
            if key.ends_with(&suffix) {
                self.faults.crashes.fetch_add(1, Ordering::SeqCst);
                return Err(es_core::Error::Store {
                    message: format!("simulated crash before appending `{key}`"),
                    source: None,
                });
            }
        }
        self.inner
            .append(stream_id, expected, events, options)
            .await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        limit: usize,
    ) -> es_core::Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream_id, from, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> es_core::Result<Version> {
        self.inner.stream_version(stream_id).await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> es_core::Result<LogSlice> {
        self.inner.read_all(after, filter, limit).await
    }

    async fn head(&self) -> es_core::Result<Position> {
        self.inner.head().await
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> es_core::Result<bool> {
        self.inner.wait_for_events(after, timeout).await
    }

    async fn find_idempotency_key(&self, key: &str) -> es_core::Result<Option<Committed>> {
        self.inner.find_idempotency_key(key).await
    }
}

#[async_trait]
impl<S: SnapshotStore> SnapshotStore for FlakyStore<S> {
    async fn save_snapshot(&self, snapshot: Snapshot) -> es_core::Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> es_core::Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream_id).await
    }

    async fn replay_from_snapshot(
        &self,
        stream_id: &StreamId,
        replay: &mut dyn es_core::Replay,
    ) -> es_core::Result<()> {
        self.inner.replay_from_snapshot(stream_id, replay).await
    }
}

#[async_trait]
impl<S: CheckpointStore> CheckpointStore for FlakyStore<S> {
    async fn load_checkpoint(&self, projection: &str) -> es_core::Result<Option<Checkpoint>> {
        self.inner.load_checkpoint(projection).await
    }

    async fn save_checkpoint(
        &self,
        projection: &str,
        checkpoint: Checkpoint,
    ) -> es_core::Result<()> {
        self.inner.save_checkpoint(projection, checkpoint).await
    }

    async fn park(&self, parked: ParkedEvent) -> es_core::Result<()> {
        self.inner.park(parked).await
    }

    async fn parked(&self, projection: &str) -> es_core::Result<Vec<ParkedEvent>> {
        self.inner.parked(projection).await
    }

    async fn unpark(&self, projection: &str, position: Position) -> es_core::Result<bool> {
        self.inner.unpark(projection, position).await
    }
}
