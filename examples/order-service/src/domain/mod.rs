//! The domain: pure aggregates and their events, with no I/O, clock or async.

mod inventory;
mod money;
mod order;

pub use inventory::{Inventory, InventoryCommand, InventoryError, InventoryEvent};
pub use money::{is_valid_sku, Currency, InvalidCurrency, Line, Money};
pub use order::{
    LineV1, Order, OrderCommand, OrderError, OrderEvent, OrderLine, OrderPlacedV1, OrderStatus,
    RuleKind,
};
