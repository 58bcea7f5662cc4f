//! Every feature of the three derives, checked at run time. The file denies
//! clippy's pedantic lints so that generated code stays clean in users' crates.
#![deny(clippy::pedantic, warnings)]
#![allow(missing_docs, clippy::unused_async)]

use std::sync::Mutex;

use es_core::testkit::AggregateTest;
use es_core::{
    Aggregate, BoxError, Envelope, Event, Handles, InMemoryStore, Metadata, Projection,
    ProjectionRunner, Repository, ResetProjection, SnapshotPolicy, UpcastError,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    sku: String,
    quantity: u32,
}

/// `Placed` as stored at version 1: no currency.
#[derive(Deserialize)]
pub struct PlacedV1 {
    customer: String,
}

/// `Placed` as stored at version 2: lines, still no currency.
#[derive(Serialize, Deserialize)]
pub struct PlacedV2 {
    customer: String,
    lines: Vec<Line>,
}

impl From<PlacedV1> for PlacedV2 {
    fn from(v1: PlacedV1) -> Self {
        PlacedV2 {
            customer: v1.customer,
            lines: Vec::new(),
        }
    }
}

impl From<PlacedV2> for OrderEvent {
    fn from(v2: PlacedV2) -> Self {
        OrderEvent::Placed {
            customer: v2.customer,
            lines: v2.lines,
            currency: "EUR".into(),
        }
    }
}

/// `Paid` at version 1 stored `cents`; version 2 calls it `amount`.
#[allow(clippy::unnecessary_wraps)]
fn paid_v1_to_v2(mut payload: Value) -> Result<Value, UpcastError> {
    let cents = payload
        .get_mut("cents")
        .map(Value::take)
        .ok_or_else(|| UpcastError::msg("no `cents` in Paid v1"))?;
    Ok(json!({ "amount": cents }))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    amount: u64,
}

#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum OrderEvent {
    #[event(version = 3, alias = "OrderCreated", upcast_from = PlacedV1, upcast_from = PlacedV2)]
    Placed {
        customer: String,
        lines: Vec<Line>,
        currency: String,
    },
    #[event(version = 2, upcast(from = 1, with = paid_v1_to_v2))]
    Paid(Payment),
    Shipped,
    #[event(rename = "OrderCancelled", alias = "OrderAborted", alias = "Aborted")]
    Cancelled {
        reason: String,
    },
}

/// A one-type family.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[event(rename = "CustomerRegistered", version = 2, upcast(from = 1, with = add_tier))]
pub struct CustomerRegistered {
    name: String,
    tier: String,
}

#[allow(clippy::unnecessary_wraps, clippy::needless_pass_by_value)]
fn add_tier(mut payload: Value) -> Result<Value, UpcastError> {
    payload["tier"] = json!("basic");
    Ok(payload)
}

fn stored(event_type: &str, schema_version: u32, payload: Value) -> es_core::RecordedEvent {
    es_core::RecordedEvent {
        position: es_core::Position(1),
        stream_id: "order-1".into(),
        version: es_core::Version(1),
        event_id: es_core::EventId::new(),
        event_type: event_type.into(),
        schema_version,
        payload: payload.into(),
        metadata: Metadata::default(),
        recorded_at: chrono::Utc::now(),
    }
}

#[test]
fn event_types_versions_and_payloads() {
    let placed = OrderEvent::Placed {
        customer: "ada".into(),
        lines: vec![],
        currency: "CHF".into(),
    };
    let cases = [
        (
            placed,
            "Placed",
            3,
            json!({"customer": "ada", "lines": [], "currency": "CHF"}),
        ),
        (
            OrderEvent::Paid(Payment { amount: 5 }),
            "Paid",
            2,
            json!({"amount": 5}),
        ),
        (OrderEvent::Shipped, "Shipped", 1, json!({})),
        (
            OrderEvent::Cancelled { reason: "x".into() },
            "OrderCancelled",
            1,
            json!({"reason": "x"}),
        ),
    ];
    for (event, name, version, payload) in cases {
        let encoded = event.encode(Metadata::default()).unwrap();
        assert_eq!(encoded.event_type, name);
        assert_eq!(encoded.schema_version, version);
        assert_eq!(encoded.payload, payload);
        let back = OrderEvent::decode(&stored(name, version, payload)).unwrap();
        assert_eq!(back.event, event);
    }
}

#[test]
fn chains_aliases_and_json_upcasters() {
    // Stored under the type's old name at version 1: alias, then two hops.
    let v1 = OrderEvent::decode(&stored("OrderCreated", 1, json!({"customer": "ada"}))).unwrap();
    assert_eq!(v1.event_type, "Placed");
    assert_eq!(
        v1.event,
        OrderEvent::Placed {
            customer: "ada".into(),
            lines: vec![],
            currency: "EUR".into()
        }
    );
    assert_eq!(v1.stored_schema_version, 1);
    let v2 = OrderEvent::decode(&stored(
        "Placed",
        2,
        json!({"customer": "bo", "lines": [{"sku": "a", "quantity": 2}]}),
    ))
    .unwrap();
    let OrderEvent::Placed {
        lines, currency, ..
    } = v2.event
    else {
        panic!("not placed");
    };
    assert_eq!(lines.len(), 1);
    assert_eq!(currency, "EUR");
    let paid = OrderEvent::decode(&stored("Paid", 1, json!({"cents": 70}))).unwrap();
    assert_eq!(paid.event, OrderEvent::Paid(Payment { amount: 70 }));
    let failing = OrderEvent::decode(&stored("Paid", 1, json!({"euros": 1}))).unwrap_err();
    assert!(matches!(
        failing.kind,
        es_core::DecodeErrorKind::Upcast { from: 1, .. }
    ));
    for alias in ["OrderAborted", "Aborted"] {
        let old = OrderEvent::decode(&stored(alias, 1, json!({"reason": "r"}))).unwrap();
        assert_eq!(old.event_type, "OrderCancelled");
        assert_eq!(old.event, OrderEvent::Cancelled { reason: "r".into() });
    }
    let registered =
        CustomerRegistered::decode(&stored("CustomerRegistered", 1, json!({"name": "c"}))).unwrap();
    assert_eq!(registered.event.tier, "basic");
    assert_eq!(
        CustomerRegistered::stored_types(),
        ["CustomerRegistered".to_string()]
    );
}

#[test]
fn catalog_lists_types_aliases_versions_and_fields() {
    OrderEvent::schema().check().unwrap();
    assert_eq!(
        OrderEvent::catalog().to_string(),
        "OrderEvent
  OrderCancelled v1 (aliases: OrderAborted, Aborted)
    reason: String
  Paid v2 (upcasts from v1)
    0: Payment
  Placed v3 (aliases: OrderCreated) (upcasts from v1, v2)
    customer: String
    lines: Vec<Line>
    currency: String
  Shipped v1
"
    );
}

#[derive(Debug, Clone)]
pub enum OrderCommand {
    Place { customer: String },
    Pay { amount: u64 },
    Ship,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("the order is not paid")]
    NotPaid,
    #[error("the order is already placed")]
    AlreadyPlaced,
}

#[derive(Aggregate, Default, Serialize, Deserialize, Clone, Debug)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError,
            snapshot(every = 2, version = 4))]
pub struct Order {
    placed: bool,
    paid: u64,
    shipped: bool,
}

impl Order {
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { .. } if self.placed => Err(OrderError::AlreadyPlaced),
            OrderCommand::Place { customer } => Ok(vec![OrderEvent::Placed {
                customer,
                lines: vec![],
                currency: "EUR".into(),
            }]),
            OrderCommand::Pay { amount } => Ok(vec![OrderEvent::Paid(Payment { amount })]),
            OrderCommand::Ship if self.paid == 0 => Err(OrderError::NotPaid),
            OrderCommand::Ship => Ok(vec![OrderEvent::Shipped]),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { .. } => self.placed = true,
            OrderEvent::Paid(p) => self.paid += p.amount,
            OrderEvent::Shipped => self.shipped = true,
            OrderEvent::Cancelled { .. } => {}
        }
    }
}

#[test]
fn aggregate_derive_wires_handle_apply_and_policy() {
    assert_eq!(Order::NAME, "order");
    assert_eq!(Order::STATE_VERSION, 4);
    assert_eq!(Order::snapshot_policy(), SnapshotPolicy::Every(2));
    AggregateTest::<Order>::given([])
        .when(OrderCommand::Ship)
        .then_error(OrderError::NotPaid);
    let state = AggregateTest::<Order>::given([OrderEvent::Paid(Payment { amount: 3 })])
        .when(OrderCommand::Ship)
        .then([OrderEvent::Shipped]);
    assert!(state.shipped);
}

/// A generic aggregate: a counter over any event family it can count.
#[derive(Aggregate, Serialize, Deserialize, Clone, Debug)]
#[aggregate(name = "tally", event = OrderEvent, command = u64, error = OrderError)]
#[serde(bound = "")]
pub struct Tally<T: Default + Clone + Send + Sync + 'static> {
    count: u64,
    #[serde(skip)]
    marker: std::marker::PhantomData<T>,
}

impl<T: Default + Clone + Send + Sync + 'static> Default for Tally<T> {
    fn default() -> Self {
        Tally {
            count: 0,
            marker: std::marker::PhantomData,
        }
    }
}

impl<T: Default + Clone + Send + Sync + 'static> Tally<T> {
    #[allow(clippy::unnecessary_wraps, clippy::unused_self)]
    fn handle(&self, amount: u64) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Paid(Payment { amount })])
    }

    fn apply(&mut self, _: &OrderEvent) {
        self.count += 1;
    }
}

#[test]
fn generic_aggregates_work() {
    let state = AggregateTest::<Tally<String>>::given([OrderEvent::Shipped])
        .when(4)
        .then([OrderEvent::Paid(Payment { amount: 4 })]);
    assert_eq!(state.count, 2);
}

#[derive(Projection, Default)]
#[projection(
    name = "order_feed",
    version = 2,
    events(OrderEvent, CustomerRegistered)
)]
pub struct OrderFeed {
    seen: Mutex<Vec<String>>,
}

#[es_core::__private::async_trait]
impl Handles<OrderEvent> for OrderFeed {
    async fn handle_event(&self, (): &mut (), event: Envelope<OrderEvent>) -> Result<(), BoxError> {
        self.seen
            .lock()
            .map_err(|e| e.to_string())?
            .push(format!("order {}", event.event_type));
        Ok(())
    }
}

#[es_core::__private::async_trait]
impl Handles<CustomerRegistered> for OrderFeed {
    async fn handle_event(
        &self,
        (): &mut (),
        event: Envelope<CustomerRegistered>,
    ) -> Result<(), BoxError> {
        self.seen
            .lock()
            .map_err(|e| e.to_string())?
            .push(format!("customer {}", event.event.name));
        Ok(())
    }
}

#[es_core::__private::async_trait]
impl ResetProjection for OrderFeed {
    async fn reset_read_model(&self, (): &mut ()) -> Result<(), BoxError> {
        self.seen.lock().map_err(|e| e.to_string())?.clear();
        Ok(())
    }
}

#[test]
fn projection_derive_reads_only_its_families() {
    assert_eq!(OrderFeed::NAME, "order_feed");
    assert_eq!(OrderFeed::VERSION, 2);
    let mut types = OrderFeed::event_types().unwrap();
    types.sort();
    assert_eq!(
        types,
        [
            "Aborted",
            "CustomerRegistered",
            "OrderAborted",
            "OrderCancelled",
            "OrderCreated",
            "Paid",
            "Placed",
            "Shipped"
        ]
    );
    es_core::testkit::block_on(async {
        let store = InMemoryStore::new();
        let orders = Repository::<Order, _>::new(store.clone());
        orders
            .execute(
                "o1",
                OrderCommand::Place {
                    customer: "ada".into(),
                },
            )
            .await
            .unwrap();
        orders
            .execute("o1", OrderCommand::Pay { amount: 9 })
            .await
            .unwrap();
        let customer = CustomerRegistered {
            name: "ada".into(),
            tier: "gold".into(),
        }
        .encode(Metadata::default())
        .unwrap();
        let other = es_core::testkit::conformance::new_event("Unrelated", json!({}));
        es_core::EventStore::append(
            &store,
            &"customer-ada".into(),
            es_core::ExpectedVersion::NoStream,
            vec![customer, other],
            &es_core::AppendOptions::default(),
        )
        .await
        .unwrap();
        let runner = ProjectionRunner::new(store.clone(), OrderFeed::default());
        runner.catch_up().await.unwrap();
        let seen = runner.projection().seen.lock().unwrap().clone();
        assert_eq!(seen, ["order Placed", "order Paid", "customer ada"]);
        runner.rebuild().await.unwrap();
        assert!(runner.projection().seen.lock().unwrap().is_empty());
        runner.catch_up().await.unwrap();
        assert_eq!(runner.projection().seen.lock().unwrap().len(), 3);
    });
}

mod renamed {
    //! The derives with `crate = "…"`, for a renamed dependency.
    extern crate es_core as core_renamed;

    use serde::{Deserialize, Serialize};

    #[derive(core_renamed::Event, Serialize, Deserialize, Debug, PartialEq)]
    #[event(crate = "core_renamed")]
    pub(crate) enum Renamed {
        Happened { at: u64 },
    }

    #[test]
    fn crate_path_is_honoured() {
        use core_renamed::Event as _;
        let encoded = Renamed::Happened { at: 3 }
            .encode(core_renamed::Metadata::default())
            .unwrap();
        assert_eq!(encoded.event_type, "Happened");
    }
}
