//! The inventory aggregate: the stock of one SKU and its reservations.

use std::collections::BTreeMap;

use es_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};

use crate::domain::order::RuleKind;

/// What happens to the stock of one SKU.
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum InventoryEvent {
    /// Units arrived.
    #[event(rename = "StockRestocked")]
    Restocked {
        /// How many.
        quantity: u32,
    },
    /// Units were set aside for an order.
    #[event(rename = "StockReserved")]
    Reserved {
        /// The order.
        order_id: String,
        /// How many.
        quantity: u32,
    },
    /// Not enough units were available for an order.
    #[event(rename = "StockReservationRejected")]
    ReservationRejected {
        /// The order.
        order_id: String,
        /// How many it asked for.
        requested: u32,
        /// How many were available.
        available: u64,
    },
    /// An order's reservation was given back.
    #[event(rename = "StockReleased")]
    Released {
        /// The order.
        order_id: String,
        /// How many.
        quantity: u32,
    },
    /// An order's reserved units left with its shipment.
    #[event(rename = "StockCommitted")]
    Committed {
        /// The order.
        order_id: String,
        /// How many.
        quantity: u32,
    },
}

/// What can be asked of a SKU's stock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InventoryCommand {
    /// Add units.
    Restock {
        /// How many; at least 1.
        quantity: u32,
    },
    /// Reserve units for an order; records a rejection when too few are
    /// available. Reserving again for the same order does nothing.
    Reserve {
        /// The order.
        order_id: String,
        /// How many; at least 1.
        quantity: u32,
    },
    /// Give an order's reservation back (nothing if it has none).
    Release {
        /// The order.
        order_id: String,
    },
    /// Take an order's reserved units out of stock (nothing if it has none).
    Commit {
        /// The order.
        order_id: String,
    },
}

/// Why the stock refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// A quantity of 0.
    #[error("the quantity must be at least 1")]
    ZeroQuantity,
    /// More units than 64 bits can count.
    #[error("the stock would be too large")]
    TooLarge,
}

impl InventoryError {
    /// The name of the rule the command broke.
    pub fn rule(&self) -> &'static str {
        match self {
            InventoryError::ZeroQuantity => "positive_quantity",
            InventoryError::TooLarge => "amount_within_limits",
        }
    }

    /// What kind of mistake it was.
    pub fn kind(&self) -> RuleKind {
        RuleKind::InvalidInput
    }
}

/// The stock of one SKU: units on hand and the orders' reservations.
#[derive(Aggregate, Default, Clone, Debug, Serialize, Deserialize)]
#[aggregate(name = "inventory", event = InventoryEvent, command = InventoryCommand,
            error = InventoryError, snapshot(every = 100, version = 1))]
pub struct Inventory {
    on_hand: u64,
    reservations: BTreeMap<String, u32>,
}

impl Inventory {
    fn handle(&self, command: InventoryCommand) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::Restock { quantity: 0 }
            | InventoryCommand::Reserve { quantity: 0, .. } => Err(InventoryError::ZeroQuantity),
            InventoryCommand::Restock { quantity } => {
                self.on_hand
                    .checked_add(u64::from(quantity))
                    .ok_or(InventoryError::TooLarge)?;
                Ok(vec![InventoryEvent::Restocked { quantity }])
            }
            InventoryCommand::Reserve { order_id, quantity } => {
                if self.reservations.contains_key(&order_id) {
                    return Ok(vec![]);
                }
                let available = self.available();
                if u64::from(quantity) <= available {
                    Ok(vec![InventoryEvent::Reserved { order_id, quantity }])
                } else {
                    Ok(vec![InventoryEvent::ReservationRejected {
                        order_id,
                        requested: quantity,
                        available,
                    }])
                }
            }
            InventoryCommand::Release { order_id } => Ok(self
                .reservations
                .get(&order_id)
                .map(|&quantity| InventoryEvent::Released { order_id, quantity })
                .into_iter()
                .collect()),
            InventoryCommand::Commit { order_id } => Ok(self
                .reservations
                .get(&order_id)
                .map(|&quantity| InventoryEvent::Committed { order_id, quantity })
                .into_iter()
                .collect()),
        }
    }

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::Restocked { quantity } => {
                self.on_hand = self.on_hand.saturating_add(u64::from(*quantity));
            }
            InventoryEvent::Reserved { order_id, quantity } => {
                self.reservations.insert(order_id.clone(), *quantity);
            }
            InventoryEvent::ReservationRejected { .. } => {}
            InventoryEvent::Released { order_id, .. } => {
                self.reservations.remove(order_id);
            }
            InventoryEvent::Committed { order_id, quantity } => {
                self.reservations.remove(order_id);
                self.on_hand = self.on_hand.saturating_sub(u64::from(*quantity));
            }
        }
    }

    /// Units in the warehouse, reserved or not.
    pub fn on_hand(&self) -> u64 {
        self.on_hand
    }

    /// Units reserved for orders.
    pub fn reserved(&self) -> u64 {
        self.reservations.values().map(|&q| u64::from(q)).sum()
    }

    /// Units free to reserve.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved())
    }

    /// The units reserved for an order.
    pub fn reservation(&self, order_id: &str) -> Option<u32> {
        self.reservations.get(order_id).copied()
    }
}
