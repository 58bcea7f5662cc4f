//! The domain's rules, one given/when/then test each, and the schema
//! evolution of `OrderPlaced` against a stored version 1 fixture.

use es_core::testkit::AggregateTest;
use es_core::{
    AppendOptions, Event, EventId, EventStore, ExpectedVersion, InMemoryStore, Metadata, NewEvent,
    Position, RecordedEvent, Repository, StreamId, Version,
};
use order_service::{
    Currency, Inventory, InventoryCommand, InventoryError, InventoryEvent, Line, Money, Order,
    OrderCommand, OrderError, OrderEvent, OrderStatus, RuleKind,
};

fn eur(amount: u64) -> Money {
    Money::new(amount, Currency::eur())
}

fn usd(amount: u64) -> Money {
    Money::new(amount, Currency::new("USD").unwrap())
}

fn line(sku: &str, quantity: u32, unit_price: Money) -> Line {
    Line {
        sku: sku.into(),
        quantity,
        unit_price,
    }
}

fn mug() -> Line {
    line("mug", 2, eur(1250))
}

fn tea() -> Line {
    line("tea", 1, eur(899))
}

fn place(lines: Vec<Line>) -> OrderCommand {
    OrderCommand::Place {
        customer: "ada".into(),
        currency: Currency::eur(),
        lines,
    }
}

fn placed(lines: Vec<Line>) -> OrderEvent {
    OrderEvent::Placed {
        customer: "ada".into(),
        currency: Currency::eur(),
        lines,
    }
}

fn confirmed(skus: &[&str]) -> OrderEvent {
    OrderEvent::StockConfirmed {
        skus: skus.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// An order with a mug and tea, stock reserved: 33.99 EUR to pay.
fn confirmed_order() -> Vec<OrderEvent> {
    vec![placed(vec![mug(), tea()]), confirmed(&["mug", "tea"])]
}

fn paid_order() -> Vec<OrderEvent> {
    let mut events = confirmed_order();
    events.push(OrderEvent::Paid { amount: eur(3399) });
    events
}

fn shipped_order() -> Vec<OrderEvent> {
    let mut events = paid_order();
    events.push(OrderEvent::Shipped);
    events
}

fn cancelled_order() -> Vec<OrderEvent> {
    let mut events = confirmed_order();
    events.push(OrderEvent::Cancelled {
        reason: "changed my mind".into(),
        refund: None,
    });
    events
}

// ---- placing ----

#[test]
fn placing_an_order_with_lines() {
    let order = AggregateTest::<Order>::given_no_events()
        .when(place(vec![mug(), tea()]))
        .then([placed(vec![mug(), tea()])]);
    assert_eq!(order.status(), Some(OrderStatus::AwaitingStock));
    assert_eq!(order.total(), 3399);
    assert_eq!(order.customer(), "ada");
}

#[test]
fn an_order_is_placed_once() {
    AggregateTest::<Order>::given([placed(vec![mug()])])
        .when(place(vec![mug()]))
        .then_error(OrderError::AlreadyPlaced);
}

#[test]
fn an_order_needs_lines() {
    AggregateTest::<Order>::given_no_events()
        .when(place(vec![]))
        .then_error(OrderError::NoLines);
}

#[test]
fn an_order_needs_a_customer() {
    for customer in ["", "   ", &"c".repeat(65)] {
        AggregateTest::<Order>::given_no_events()
            .when(OrderCommand::Place {
                customer: customer.to_owned(),
                currency: Currency::eur(),
                lines: vec![mug()],
            })
            .then_error(OrderError::InvalidCustomer);
    }
}

#[test]
fn quantities_are_positive_when_placing() {
    AggregateTest::<Order>::given_no_events()
        .when(place(vec![mug(), line("tea", 0, eur(899))]))
        .then_error(OrderError::ZeroQuantity { sku: "tea".into() });
}

#[test]
fn prices_are_in_the_order_currency_when_placing() {
    AggregateTest::<Order>::given_no_events()
        .when(place(vec![mug(), line("tea", 1, usd(899))]))
        .then_error(OrderError::CurrencyMismatch {
            expected: Currency::eur(),
            found: Currency::new("USD").unwrap(),
        });
}

#[test]
fn skus_are_checked_when_placing() {
    AggregateTest::<Order>::given_no_events()
        .when(place(vec![line("a/b", 1, eur(1))]))
        .then_error(OrderError::InvalidSku { sku: "a/b".into() });
}

#[test]
fn one_line_per_sku_when_placing() {
    AggregateTest::<Order>::given_no_events()
        .when(place(vec![mug(), mug()]))
        .then_error(OrderError::DuplicateSku { sku: "mug".into() });
}

#[test]
fn totals_stay_within_limits() {
    AggregateTest::<Order>::given_no_events()
        .when(place(vec![line("gold", u32::MAX, eur(u64::MAX / 2))]))
        .then_error(OrderError::TooLarge);
    AggregateTest::<Order>::given([placed(vec![line("gold", 1, eur(u64::MAX - 10))])])
        .when(OrderCommand::AddLine(line("more", 1, eur(11))))
        .then_error(OrderError::TooLarge);
}

#[test]
fn commands_on_an_order_never_placed_are_refused() {
    for command in [
        OrderCommand::AddLine(mug()),
        OrderCommand::RemoveLine { sku: "mug".into() },
        OrderCommand::Pay { amount: eur(1) },
        OrderCommand::Ship,
        OrderCommand::Cancel { reason: "x".into() },
    ] {
        AggregateTest::<Order>::given_no_events()
            .when(command)
            .then_error(OrderError::NotFound);
    }
}

// ---- changing lines ----

#[test]
fn adding_a_line() {
    let order = AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::AddLine(line("spoon", 3, eur(100))))
        .then([OrderEvent::LineAdded {
            line: line("spoon", 3, eur(100)),
        }]);
    assert_eq!(order.total(), 3699);
    assert_eq!(
        order.status(),
        Some(OrderStatus::AwaitingStock),
        "the new line waits for stock"
    );
}

#[test]
fn added_quantities_are_positive() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::AddLine(line("spoon", 0, eur(100))))
        .then_error(OrderError::ZeroQuantity {
            sku: "spoon".into(),
        });
}

#[test]
fn added_prices_are_in_the_order_currency() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::AddLine(line("spoon", 1, usd(100))))
        .then_error(OrderError::CurrencyMismatch {
            expected: Currency::eur(),
            found: Currency::new("USD").unwrap(),
        });
}

#[test]
fn one_line_per_sku_when_adding() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::AddLine(mug()))
        .then_error(OrderError::DuplicateSku { sku: "mug".into() });
}

#[test]
fn removing_a_line() {
    let order = AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::RemoveLine { sku: "tea".into() })
        .then([OrderEvent::LineRemoved { sku: "tea".into() }]);
    assert_eq!(order.total(), 2500);
    assert_eq!(order.status(), Some(OrderStatus::Confirmed));
}

#[test]
fn removing_a_line_the_order_lacks() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::RemoveLine {
            sku: "spoon".into(),
        })
        .then_error(OrderError::UnknownLine {
            sku: "spoon".into(),
        });
}

#[test]
fn the_last_line_stays() {
    AggregateTest::<Order>::given([placed(vec![mug()])])
        .when(OrderCommand::RemoveLine { sku: "mug".into() })
        .then_error(OrderError::LastLine);
}

#[test]
fn lines_do_not_change_after_payment() {
    AggregateTest::<Order>::given(paid_order())
        .when(OrderCommand::AddLine(line("spoon", 1, eur(100))))
        .then_error(OrderError::LinesLocked);
    AggregateTest::<Order>::given(paid_order())
        .when(OrderCommand::RemoveLine { sku: "tea".into() })
        .then_error(OrderError::LinesLocked);
}

// ---- the checkout's commands ----

#[test]
fn confirming_stock_marks_the_lines() {
    let order = AggregateTest::<Order>::given([placed(vec![mug(), tea()])])
        .when(OrderCommand::ConfirmStock {
            skus: vec!["mug".into(), "gone".into()],
        })
        .then([confirmed(&["mug"])]);
    assert_eq!(order.status(), Some(OrderStatus::AwaitingStock));
    let order = AggregateTest::<Order>::given([placed(vec![mug(), tea()]), confirmed(&["mug"])])
        .when(OrderCommand::ConfirmStock {
            skus: vec!["tea".into()],
        })
        .then([confirmed(&["tea"])]);
    assert_eq!(order.status(), Some(OrderStatus::Confirmed));
}

#[test]
fn confirming_reserved_lines_again_does_nothing() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::ConfirmStock {
            skus: vec!["mug".into()],
        })
        .then([]);
}

#[test]
fn rejecting_a_line_drops_it() {
    AggregateTest::<Order>::given([placed(vec![mug()]), confirmed(&["mug"]), added("tea")])
        .when(reject("tea"))
        .then([OrderEvent::LineRejected {
            sku: "tea".into(),
            reason: "out of stock".into(),
        }]);
}

fn added(sku: &str) -> OrderEvent {
    OrderEvent::LineAdded {
        line: line(sku, 1, eur(899)),
    }
}

fn reject(sku: &str) -> OrderCommand {
    OrderCommand::RejectLine {
        sku: sku.into(),
        reason: "out of stock".into(),
    }
}

#[test]
fn rejecting_the_only_line_cancels_the_order() {
    AggregateTest::<Order>::given([placed(vec![mug()])])
        .when(reject("mug"))
        .then([OrderEvent::Cancelled {
            reason: "out of stock".into(),
            refund: None,
        }]);
}

#[test]
fn rejecting_a_reserved_or_missing_line_does_nothing() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(reject("mug"))
        .then([]);
    AggregateTest::<Order>::given(confirmed_order())
        .when(reject("spoon"))
        .then([]);
}

// ---- paying ----

#[test]
fn paying_the_total() {
    let order = AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::Pay { amount: eur(3399) })
        .then([OrderEvent::Paid { amount: eur(3399) }]);
    assert_eq!(order.status(), Some(OrderStatus::Paid));
    assert_eq!(order.paid(), 3399);
}

#[test]
fn stock_is_reserved_before_payment() {
    AggregateTest::<Order>::given([placed(vec![mug(), tea()]), confirmed(&["mug"])])
        .when(OrderCommand::Pay { amount: eur(3399) })
        .then_error(OrderError::AwaitingStock);
}

#[test]
fn payments_are_exact() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::Pay { amount: eur(3000) })
        .then_error(OrderError::WrongAmount {
            expected: eur(3399),
            offered: eur(3000),
        });
}

#[test]
fn payments_are_in_the_order_currency() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::Pay { amount: usd(3399) })
        .then_error(OrderError::CurrencyMismatch {
            expected: Currency::eur(),
            found: Currency::new("USD").unwrap(),
        });
}

#[test]
fn an_order_is_paid_once() {
    AggregateTest::<Order>::given(paid_order())
        .when(OrderCommand::Pay { amount: eur(3399) })
        .then_error(OrderError::AlreadyPaid);
}

// ---- shipping ----

#[test]
fn shipping_a_paid_order() {
    let order = AggregateTest::<Order>::given(paid_order())
        .when(OrderCommand::Ship)
        .then([OrderEvent::Shipped]);
    assert_eq!(order.status(), Some(OrderStatus::Shipped));
}

#[test]
fn no_shipping_before_payment() {
    AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::Ship)
        .then_error(OrderError::NotPaid);
    AggregateTest::<Order>::given([placed(vec![mug()])])
        .when(OrderCommand::Ship)
        .then_error(OrderError::NotPaid);
}

#[test]
fn no_change_after_shipping() {
    for command in [
        OrderCommand::AddLine(line("spoon", 1, eur(100))),
        OrderCommand::RemoveLine { sku: "tea".into() },
        OrderCommand::Pay { amount: eur(3399) },
        OrderCommand::Ship,
        OrderCommand::Cancel {
            reason: "too late".into(),
        },
        OrderCommand::ConfirmStock {
            skus: vec!["mug".into()],
        },
    ] {
        AggregateTest::<Order>::given(shipped_order())
            .when(command)
            .then_error(OrderError::AlreadyShipped);
    }
}

// ---- cancelling ----

#[test]
fn cancelling_an_unpaid_order() {
    let order = AggregateTest::<Order>::given(confirmed_order())
        .when(OrderCommand::Cancel {
            reason: "changed my mind".into(),
        })
        .then([OrderEvent::Cancelled {
            reason: "changed my mind".into(),
            refund: None,
        }]);
    assert_eq!(order.status(), Some(OrderStatus::Cancelled));
}

#[test]
fn cancelling_a_paid_order_refunds_it() {
    AggregateTest::<Order>::given(paid_order())
        .when(OrderCommand::Cancel {
            reason: String::new(),
        })
        .then([OrderEvent::Cancelled {
            reason: "cancelled by the customer".into(),
            refund: Some(eur(3399)),
        }]);
}

#[test]
fn no_change_after_cancellation() {
    for command in [
        OrderCommand::AddLine(line("spoon", 1, eur(100))),
        OrderCommand::Pay { amount: eur(3399) },
        OrderCommand::Ship,
        OrderCommand::Cancel {
            reason: "again".into(),
        },
        reject("mug"),
    ] {
        AggregateTest::<Order>::given(cancelled_order())
            .when(command)
            .then_error(OrderError::Cancelled);
    }
}

#[test]
fn every_rule_has_a_name_and_a_kind() {
    let errors = [
        (OrderError::NotFound, RuleKind::NotFound),
        (
            OrderError::ZeroQuantity { sku: "a".into() },
            RuleKind::InvalidInput,
        ),
        (OrderError::AlreadyShipped, RuleKind::Conflict),
        (OrderError::NotPaid, RuleKind::Conflict),
        (
            OrderError::UnknownLine { sku: "a".into() },
            RuleKind::NotFound,
        ),
    ];
    for (error, kind) in errors {
        assert_eq!(error.kind(), kind, "{error}");
    }
    assert_eq!(OrderError::NotPaid.rule(), "no_shipping_before_payment");
    assert_eq!(
        OrderError::AlreadyShipped.rule(),
        "no_change_after_shipping"
    );
    assert_eq!(
        OrderError::ZeroQuantity { sku: "a".into() }.rule(),
        "positive_quantity"
    );
}

// ---- inventory ----

fn restocked(quantity: u32) -> InventoryEvent {
    InventoryEvent::Restocked { quantity }
}

fn reserve(order_id: &str, quantity: u32) -> InventoryCommand {
    InventoryCommand::Reserve {
        order_id: order_id.into(),
        quantity,
    }
}

fn reserved(order_id: &str, quantity: u32) -> InventoryEvent {
    InventoryEvent::Reserved {
        order_id: order_id.into(),
        quantity,
    }
}

#[test]
fn restocking() {
    let stock = AggregateTest::<Inventory>::given([restocked(2)])
        .when(InventoryCommand::Restock { quantity: 3 })
        .then([restocked(3)]);
    assert_eq!(stock.on_hand(), 5);
    AggregateTest::<Inventory>::given_no_events()
        .when(InventoryCommand::Restock { quantity: 0 })
        .then_error(InventoryError::ZeroQuantity);
}

#[test]
fn reserving_available_stock() {
    let stock = AggregateTest::<Inventory>::given([restocked(5), reserved("o1", 2)])
        .when(reserve("o2", 3))
        .then([reserved("o2", 3)]);
    assert_eq!(stock.available(), 0);
    assert_eq!(stock.reserved(), 5);
}

#[test]
fn reserving_more_than_available_is_recorded_as_rejected() {
    AggregateTest::<Inventory>::given([restocked(5), reserved("o1", 4)])
        .when(reserve("o2", 2))
        .then([InventoryEvent::ReservationRejected {
            order_id: "o2".into(),
            requested: 2,
            available: 1,
        }]);
}

#[test]
fn reserving_twice_for_an_order_does_nothing() {
    AggregateTest::<Inventory>::given([restocked(5), reserved("o1", 2)])
        .when(reserve("o1", 2))
        .then([]);
    AggregateTest::<Inventory>::given([restocked(5)])
        .when(reserve("o1", 0))
        .then_error(InventoryError::ZeroQuantity);
}

#[test]
fn releasing_and_committing() {
    let stock = AggregateTest::<Inventory>::given([restocked(5), reserved("o1", 2)])
        .when(InventoryCommand::Release {
            order_id: "o1".into(),
        })
        .then([InventoryEvent::Released {
            order_id: "o1".into(),
            quantity: 2,
        }]);
    assert_eq!(stock.available(), 5);
    let stock = AggregateTest::<Inventory>::given([restocked(5), reserved("o1", 2)])
        .when(InventoryCommand::Commit {
            order_id: "o1".into(),
        })
        .then([InventoryEvent::Committed {
            order_id: "o1".into(),
            quantity: 2,
        }]);
    assert_eq!((stock.on_hand(), stock.reserved()), (3, 0));
    for command in [
        InventoryCommand::Release {
            order_id: "none".into(),
        },
        InventoryCommand::Commit {
            order_id: "none".into(),
        },
    ] {
        AggregateTest::<Inventory>::given([restocked(5)])
            .when(command)
            .then([]);
    }
}

// ---- schema evolution ----

/// The stored version 1 `OrderPlaced` of `tests/fixtures`.
fn stored_v1() -> RecordedEvent {
    let text = include_str!("fixtures/order_placed_v1.json");
    let row: serde_json::Value = serde_json::from_str(text).unwrap();
    RecordedEvent {
        position: Position(1),
        stream_id: StreamId::new(row["stream_id"].as_str().unwrap()),
        version: Version(row["version"].as_u64().unwrap()),
        event_id: serde_json::from_value(row["event_id"].clone()).unwrap(),
        event_type: row["event_type"].as_str().unwrap().into(),
        schema_version: u32::try_from(row["schema_version"].as_u64().unwrap()).unwrap(),
        payload: row["payload"].clone().into(),
        metadata: serde_json::from_value(row["metadata"].clone()).unwrap(),
        recorded_at: serde_json::from_value(row["recorded_at"].clone()).unwrap(),
    }
}

#[test]
fn order_placed_v1_is_upcast_to_v2() {
    let stored = stored_v1();
    assert_eq!(stored.schema_version, 1);
    let envelope = OrderEvent::decode(&stored).unwrap();
    assert_eq!(envelope.stored_schema_version, 1);
    assert_eq!(envelope.event_type, "OrderPlaced");
    assert_eq!(
        envelope.event,
        OrderEvent::Placed {
            customer: "ada".into(),
            currency: Currency::eur(),
            lines: vec![
                line("mug-blue", 2, eur(1250)),
                line("tea-earl-grey", 1, eur(899))
            ],
        }
    );
    assert_eq!(
        envelope.metadata.correlation_id.as_deref(),
        Some("legacy-import-17")
    );
    // New events are written at version 2.
    assert_eq!(envelope.event.schema_version(), 2);
}

#[tokio::test]
async fn an_order_stored_at_v1_still_loads_and_takes_commands() {
    let stored = stored_v1();
    let store = InMemoryStore::new();
    let event = NewEvent {
        event_id: EventId::new(),
        event_type: stored.event_type.to_string(),
        schema_version: stored.schema_version,
        payload: stored.payload.clone(),
        metadata: Metadata::default(),
    };
    store
        .append(
            &stored.stream_id,
            ExpectedVersion::NoStream,
            vec![event],
            &AppendOptions::default(),
        )
        .await
        .unwrap();
    let orders = Repository::<Order, _>::new(store.clone());
    let id = stored.stream_id.as_str().trim_start_matches("order-");
    let order = orders.load(id).await.unwrap().state;
    assert_eq!(order.currency(), Currency::eur());
    assert_eq!(order.total(), 3399);
    orders
        .execute(
            id,
            OrderCommand::ConfirmStock {
                skus: vec!["mug-blue".into(), "tea-earl-grey".into()],
            },
        )
        .await
        .unwrap();
    orders
        .execute(id, OrderCommand::Pay { amount: eur(3399) })
        .await
        .unwrap();
    assert_eq!(
        orders.load(id).await.unwrap().state.status(),
        Some(OrderStatus::Paid)
    );
}

#[test]
fn event_catalogs_are_versioned() {
    es_core::assert_catalog!(OrderEvent);
    es_core::assert_catalog!(InventoryEvent);
}
