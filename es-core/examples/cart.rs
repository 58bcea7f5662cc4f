//! A shopping cart on the in-memory store: commands, a refused command, an
//! idempotent retry, a projection that follows the log, and a rebuild.
//!
//! Run it with `cargo run -p es-core --example cart`.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use es_core::{
    Aggregate, BoxError, Envelope, Event, ExecuteOptions, Handles, InMemoryStore, Metadata,
    Projection, ProjectionRunner, Repository, ResetProjection,
};
use serde::{Deserialize, Serialize};

/// What happens to a cart.
#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CartEvent {
    ItemAdded { sku: String, quantity: u32 },
    CheckedOut,
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
#[derive(Aggregate, Debug, Default, Clone, Serialize, Deserialize)]
#[aggregate(name = "cart", event = CartEvent, command = CartCommand, error = CartError)]
struct Cart {
    items: u32,
    checked_out: bool,
}

impl Cart {
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
#[derive(Projection, Default)]
#[projection(name = "sku_totals", events(CartEvent))]
struct SkuTotals(Mutex<BTreeMap<String, u32>>);

#[async_trait]
impl Handles<CartEvent> for SkuTotals {
    async fn handle_event(&self, (): &mut (), event: Envelope<CartEvent>) -> Result<(), BoxError> {
        if let CartEvent::ItemAdded { sku, quantity } = event.event {
            let mut totals = self.0.lock().map_err(|e| e.to_string())?;
            *totals.entry(sku).or_default() += quantity;
        }
        Ok(())
    }
}

#[async_trait]
impl ResetProjection for SkuTotals {
    async fn reset_read_model(&self, (): &mut ()) -> Result<(), BoxError> {
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
