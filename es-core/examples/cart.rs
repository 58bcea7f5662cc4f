//! A shopping cart on the in-memory store: commands, a refused command, an
//! idempotent retry, a projection that follows the log, and a rebuild.
//!
//! Run it with `cargo run -p es-core --example cart`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use es_core::{
    Aggregate, BoxError, Event, EventSchema, ExecuteOptions, InMemoryStore, Metadata, Projection,
    ProjectionRunner, RecordedEvent, Repository,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happens to a cart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum CartEvent {
    ItemAdded { sku: String, quantity: u32 },
    CheckedOut,
}

impl Event for CartEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CartEvent::ItemAdded { .. } => "ItemAdded",
            CartEvent::CheckedOut => "CheckedOut",
        }
    }

    fn to_payload(&self) -> serde_json::Result<Value> {
        // Adjacently tagged: the payload is the `data` part.
        let mut tagged = serde_json::to_value(self)?;
        Ok(tagged
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    fn from_payload(event_type: &str, payload: &Value) -> serde_json::Result<Self> {
        serde_json::from_value(serde_json::json!({ "type": event_type, "data": payload }))
    }

    fn schema() -> &'static EventSchema {
        static SCHEMA: OnceLock<EventSchema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            EventSchema::builder("CartEvent")
                .event("ItemAdded", 1)
                .field("sku", "String")
                .field("quantity", "u32")
                .event("CheckedOut", 1)
                .build()
        })
    }
}

/// What a customer asks of a cart.
#[derive(Debug, Clone)]
enum CartCommand {
    Add { sku: String, quantity: u32 },
    CheckOut,
}

/// Why a cart refuses a command.
#[derive(Debug, thiserror::Error)]
enum CartError {
    #[error("the cart is checked out")]
    CheckedOut,
    #[error("an empty cart cannot be checked out")]
    Empty,
    #[error("quantities must be positive")]
    ZeroQuantity,
}

/// The cart's state: only what its decisions need.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Cart {
    items: u32,
    checked_out: bool,
}

impl Aggregate for Cart {
    const NAME: &'static str = "cart";
    type Event = CartEvent;
    type Command = CartCommand;
    type Error = CartError;

    fn handle(&self, command: CartCommand) -> Result<Vec<CartEvent>, CartError> {
        if self.checked_out {
            return Err(CartError::CheckedOut);
        }
        match command {
            CartCommand::Add { quantity: 0, .. } => Err(CartError::ZeroQuantity),
            CartCommand::Add { sku, quantity } => Ok(vec![CartEvent::ItemAdded { sku, quantity }]),
            CartCommand::CheckOut if self.items == 0 => Err(CartError::Empty),
            CartCommand::CheckOut => Ok(vec![CartEvent::CheckedOut]),
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::ItemAdded { quantity, .. } => self.items += quantity,
            CartEvent::CheckedOut => self.checked_out = true,
        }
    }
}

/// A read model: how many of each SKU were added over all carts.
#[derive(Default)]
struct SkuTotals(Mutex<BTreeMap<String, u32>>);

#[async_trait]
impl Projection for SkuTotals {
    type Context = ();
    const NAME: &'static str = "sku_totals";

    fn event_types() -> Option<Vec<String>> {
        Some(vec!["ItemAdded".into()])
    }

    async fn handle(&self, _: &mut (), event: &RecordedEvent) -> Result<(), BoxError> {
        if let CartEvent::ItemAdded { sku, quantity } = CartEvent::decode(event)?.event {
            let mut totals = self.0.lock().map_err(|e| e.to_string())?;
            *totals.entry(sku).or_default() += quantity;
        }
        Ok(())
    }

    async fn reset(&self, _: &mut ()) -> Result<(), BoxError> {
        self.0.lock().map_err(|e| e.to_string())?.clear();
        Ok(())
    }
}

fn add(sku: &str, quantity: u32) -> CartCommand {
    CartCommand::Add {
        sku: sku.into(),
        quantity,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let store = InMemoryStore::new();
    let carts = Repository::<Cart, _>::new(store.clone());

    carts.execute("c-1", add("apple", 3)).await?;
    carts.execute("c-1", add("pear", 1)).await?;
    carts.execute("c-2", add("apple", 2)).await?;
    let paid =
        ExecuteOptions::from(Metadata::correlated("request-17")).idempotency_key("checkout-c-1");
    let first = carts
        .execute_with("c-1", CartCommand::CheckOut, paid.clone())
        .await?;
    let retry = carts
        .execute_with("c-1", CartCommand::CheckOut, paid)
        .await?;
    println!(
        "checkout of c-1 at version {}, retried with the same key: duplicate = {}",
        first.version, retry.duplicate
    );
    match carts.execute("c-1", add("plum", 1)).await {
        Err(error) => println!("adding to c-1 after checkout: {error}"),
        Ok(_) => return Err("a checked-out cart accepted an item".into()),
    }

    let runner = ProjectionRunner::new(store.clone(), SkuTotals::default());
    let position = runner.catch_up().await?;
    println!(
        "sku_totals at position {position}: {:?}",
        runner.projection().0.lock().map_err(|e| e.to_string())?
    );

    runner.rebuild().await?;
    runner.catch_up().await?;
    println!(
        "after a rebuild: {:?}",
        runner.projection().0.lock().map_err(|e| e.to_string())?
    );

    let c1 = carts.load("c-1").await?;
    println!(
        "c-1 holds {} items, checked out: {}",
        c1.state.items, c1.state.checked_out
    );
    Ok(())
}
