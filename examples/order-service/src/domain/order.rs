//! The order aggregate: placing, changing, paying, shipping and cancelling.

use es_core::{Aggregate, Event};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::money::{is_valid_sku, Currency, Line, Money};

/// What happens to an order.
///
/// `Placed` is at schema version 2: version 1 had no currency (every order
/// was in euros) and stored prices as `unit_price_cents`. Stored version 1
/// payloads are upcast on read by [`OrderPlacedV1`].
#[derive(Event, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum OrderEvent {
    /// A customer placed an order with its first lines.
    #[event(rename = "OrderPlaced", version = 2, upcast_from = OrderPlacedV1)]
    Placed {
        /// Who ordered.
        customer: String,
        /// The order's currency; every price is in it.
        currency: Currency,
        /// The lines.
        lines: Vec<Line>,
    },
    /// A line was added.
    #[event(rename = "OrderLineAdded")]
    LineAdded {
        /// The new line.
        line: Line,
    },
    /// The customer removed a line.
    #[event(rename = "OrderLineRemoved")]
    LineRemoved {
        /// The line's SKU.
        sku: String,
    },
    /// A line was dropped because its stock could not be reserved.
    #[event(rename = "OrderLineRejected")]
    LineRejected {
        /// The line's SKU.
        sku: String,
        /// Why.
        reason: String,
    },
    /// Stock is reserved for these lines.
    #[event(rename = "OrderStockConfirmed")]
    StockConfirmed {
        /// The SKUs of the lines now reserved.
        skus: Vec<String>,
    },
    /// The customer paid the order's total.
    #[event(rename = "OrderPaid")]
    Paid {
        /// The amount paid.
        amount: Money,
    },
    /// The order left the warehouse.
    #[event(rename = "OrderShipped")]
    Shipped,
    /// The order was cancelled, by the customer or for lack of stock.
    #[event(rename = "OrderCancelled")]
    Cancelled {
        /// Why.
        reason: String,
        /// What is paid back, if the order was paid.
        refund: Option<Money>,
    },
}

/// `OrderPlaced` as stored at schema version 1, before orders had a currency.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderPlacedV1 {
    /// Who ordered.
    pub customer: String,
    /// The lines, priced in euro cents.
    pub lines: Vec<LineV1>,
}

/// A line of [`OrderPlacedV1`].
#[derive(Debug, Clone, Deserialize)]
pub struct LineV1 {
    /// The SKU.
    pub sku: String,
    /// How many units.
    pub quantity: u32,
    /// The unit price in euro cents.
    pub unit_price_cents: u64,
}

impl From<OrderPlacedV1> for OrderEvent {
    fn from(v1: OrderPlacedV1) -> Self {
        let currency = Currency::eur();
        OrderEvent::Placed {
            customer: v1.customer,
            lines: v1
                .lines
                .into_iter()
                .map(|line| Line {
                    sku: line.sku,
                    quantity: line.quantity,
                    unit_price: Money::new(line.unit_price_cents, currency.clone()),
                })
                .collect(),
            currency,
        }
    }
}

/// What can be asked of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place a new order with at least one line.
    Place {
        /// Who orders.
        customer: String,
        /// The order's currency.
        currency: Currency,
        /// The lines.
        lines: Vec<Line>,
    },
    /// Add a line (until the order is paid).
    AddLine(Line),
    /// Remove a line (until the order is paid; not the last one).
    RemoveLine {
        /// The line's SKU.
        sku: String,
    },
    /// Mark lines as reserved in stock (the checkout saga).
    ConfirmStock {
        /// The SKUs reserved.
        skus: Vec<String>,
    },
    /// Drop a line whose stock could not be reserved (the checkout saga); an
    /// order without lines left is cancelled.
    RejectLine {
        /// The line's SKU.
        sku: String,
        /// Why.
        reason: String,
    },
    /// Pay the order's total.
    Pay {
        /// The amount offered.
        amount: Money,
    },
    /// Ship the paid order.
    Ship,
    /// Cancel the order; a paid order is refunded.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// Why an order refuses a command. Each variant names a rule
/// ([`OrderError::rule`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order was never placed.
    #[error("the order does not exist")]
    NotFound,
    /// `Place` on an existing order.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// The customer id is empty or too long.
    #[error("a customer id is 1 to 64 characters")]
    InvalidCustomer,
    /// `Place` without lines.
    #[error("an order needs at least one line")]
    NoLines,
    /// A SKU that is not 1 to 64 letters, digits, `-`, `_` or `.`.
    #[error("`{sku}` is not a SKU: use 1 to 64 letters, digits, `-`, `_` or `.`")]
    InvalidSku {
        /// The SKU given.
        sku: String,
    },
    /// A line with quantity 0.
    #[error("the quantity of `{sku}` must be at least 1")]
    ZeroQuantity {
        /// The line's SKU.
        sku: String,
    },
    /// A price or payment in another currency than the order's.
    #[error("the order is in {expected}, not in {found}")]
    CurrencyMismatch {
        /// The order's currency.
        expected: Currency,
        /// The currency given.
        found: Currency,
    },
    /// A second line for the same SKU.
    #[error("the order already has a line for `{sku}`; remove it first")]
    DuplicateSku {
        /// The SKU.
        sku: String,
    },
    /// Removing a line the order does not have.
    #[error("the order has no line for `{sku}`")]
    UnknownLine {
        /// The SKU.
        sku: String,
    },
    /// Removing the only line.
    #[error("the last line cannot be removed; cancel the order instead")]
    LastLine,
    /// A total that does not fit in 64 bits.
    #[error("the order total is too large")]
    TooLarge,
    /// Changing lines of a paid order.
    #[error("the order is paid; its lines can no longer change")]
    LinesLocked,
    /// Anything after shipping.
    #[error("the order has shipped; it can no longer change")]
    AlreadyShipped,
    /// Anything after cancelling.
    #[error("the order is cancelled; it can no longer change")]
    Cancelled,
    /// Paying before stock is reserved for every line.
    #[error("stock is not yet reserved for every line; pay once the order is confirmed")]
    AwaitingStock,
    /// Paying twice.
    #[error("the order is already paid")]
    AlreadyPaid,
    /// Paying another amount than the total.
    #[error("a payment of {offered} does not match the order total of {expected}")]
    WrongAmount {
        /// The order's total.
        expected: Money,
        /// The amount offered.
        offered: Money,
    },
    /// Shipping an unpaid order.
    #[error("the order is not paid; it cannot ship before payment")]
    NotPaid,
}

/// How a refused command is reported: what kind of mistake it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// The thing does not exist (HTTP 404).
    NotFound,
    /// The command's values are invalid whatever the state (HTTP 422).
    InvalidInput,
    /// The command conflicts with the current state (HTTP 409).
    Conflict,
}

impl OrderError {
    /// The name of the rule the command broke, stable for clients.
    pub fn rule(&self) -> &'static str {
        match self {
            OrderError::NotFound => "order_must_exist",
            OrderError::AlreadyPlaced => "order_placed_once",
            OrderError::InvalidCustomer => "customer_required",
            OrderError::NoLines => "order_needs_lines",
            OrderError::InvalidSku { .. } => "valid_sku",
            OrderError::ZeroQuantity { .. } => "positive_quantity",
            OrderError::CurrencyMismatch { .. } => "currency_consistency",
            OrderError::DuplicateSku { .. } => "one_line_per_sku",
            OrderError::UnknownLine { .. } => "line_must_exist",
            OrderError::LastLine => "order_keeps_a_line",
            OrderError::TooLarge => "amount_within_limits",
            OrderError::LinesLocked => "no_line_change_after_payment",
            OrderError::AlreadyShipped => "no_change_after_shipping",
            OrderError::Cancelled => "no_change_after_cancellation",
            OrderError::AwaitingStock => "stock_reserved_before_payment",
            OrderError::AlreadyPaid => "pay_once",
            OrderError::WrongAmount { .. } => "exact_payment",
            OrderError::NotPaid => "no_shipping_before_payment",
        }
    }

    /// What kind of mistake it was.
    pub fn kind(&self) -> RuleKind {
        match self {
            OrderError::NotFound | OrderError::UnknownLine { .. } => RuleKind::NotFound,
            OrderError::InvalidCustomer
            | OrderError::NoLines
            | OrderError::InvalidSku { .. }
            | OrderError::ZeroQuantity { .. }
            | OrderError::CurrencyMismatch { .. }
            | OrderError::TooLarge
            | OrderError::WrongAmount { .. } => RuleKind::InvalidInput,
            OrderError::AlreadyPlaced
            | OrderError::DuplicateSku { .. }
            | OrderError::LastLine
            | OrderError::LinesLocked
            | OrderError::AlreadyShipped
            | OrderError::Cancelled
            | OrderError::AwaitingStock
            | OrderError::AlreadyPaid
            | OrderError::NotPaid => RuleKind::Conflict,
        }
    }
}

/// Where an order is in its life.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed; the checkout is reserving stock for some of its lines.
    AwaitingStock,
    /// Stock is reserved for every line: ready to be paid.
    Confirmed,
    /// Paid: ready to ship.
    Paid,
    /// Shipped. Final.
    Shipped,
    /// Cancelled. Final.
    Cancelled,
}

impl OrderStatus {
    /// The status as its snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::AwaitingStock => "awaiting_stock",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the order can still change.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Shipped | OrderStatus::Cancelled)
    }
}

/// The phase the aggregate keeps; [`Order::status`] refines `Open`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    #[default]
    New,
    Open,
    Paid,
    Shipped,
    Cancelled,
}

/// A line of an order with whether its stock is reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The line.
    pub line: Line,
    /// Whether the checkout reserved its stock.
    pub reserved: bool,
}

/// An order: its customer, currency, lines and payment.
#[derive(Aggregate, Default, Clone, Debug, Serialize, Deserialize)]
#[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError,
            snapshot(every = 50, version = 1))]
pub struct Order {
    phase: Phase,
    customer: String,
    currency: Option<Currency>,
    lines: Vec<OrderLine>,
    paid: u64,
}

impl Order {
    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        if let OrderCommand::Place {
            customer,
            currency,
            lines,
        } = command
        {
            return self.place(customer, currency, lines);
        }
        match self.phase {
            Phase::New => return Err(OrderError::NotFound),
            Phase::Shipped => return Err(OrderError::AlreadyShipped),
            Phase::Cancelled => return Err(OrderError::Cancelled),
            Phase::Open | Phase::Paid => {}
        }
        let currency = self.currency.clone().unwrap_or_else(Currency::eur);
        match command {
            OrderCommand::Place { .. } => Err(OrderError::AlreadyPlaced),
            OrderCommand::AddLine(line) => {
                self.unpaid()?;
                check_line(&currency, &line)?;
                if self.line(&line.sku).is_some() {
                    return Err(OrderError::DuplicateSku { sku: line.sku });
                }
                self.total()
                    .checked_add(line.total().ok_or(OrderError::TooLarge)?)
                    .ok_or(OrderError::TooLarge)?;
                Ok(vec![OrderEvent::LineAdded { line }])
            }
            OrderCommand::RemoveLine { sku } => {
                self.unpaid()?;
                if self.line(&sku).is_none() {
                    return Err(OrderError::UnknownLine { sku });
                }
                if self.lines.len() == 1 {
                    return Err(OrderError::LastLine);
                }
                Ok(vec![OrderEvent::LineRemoved { sku }])
            }
            OrderCommand::ConfirmStock { skus } => {
                let skus: Vec<String> = skus
                    .into_iter()
                    .filter(|sku| self.line(sku).is_some_and(|l| !l.reserved))
                    .collect();
                if skus.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![OrderEvent::StockConfirmed { skus }])
            }
            OrderCommand::RejectLine { sku, reason } => match self.line(&sku) {
                None => Ok(vec![]),
                Some(line) if line.reserved => Ok(vec![]),
                Some(_) if self.lines.len() == 1 => Ok(vec![OrderEvent::Cancelled {
                    reason,
                    refund: self.refund(),
                }]),
                Some(_) => Ok(vec![OrderEvent::LineRejected { sku, reason }]),
            },
            OrderCommand::Pay { amount } => {
                if self.phase == Phase::Paid {
                    return Err(OrderError::AlreadyPaid);
                }
                if self.lines.iter().any(|l| !l.reserved) {
                    return Err(OrderError::AwaitingStock);
                }
                if amount.currency != currency {
                    return Err(OrderError::CurrencyMismatch {
                        expected: currency,
                        found: amount.currency,
                    });
                }
                if amount.amount != self.total() {
                    return Err(OrderError::WrongAmount {
                        expected: Money::new(self.total(), currency),
                        offered: amount,
                    });
                }
                Ok(vec![OrderEvent::Paid { amount }])
            }
            OrderCommand::Ship => {
                if self.phase != Phase::Paid {
                    return Err(OrderError::NotPaid);
                }
                Ok(vec![OrderEvent::Shipped])
            }
            OrderCommand::Cancel { reason } => {
                let reason = if reason.trim().is_empty() {
                    "cancelled by the customer".to_owned()
                } else {
                    reason
                };
                Ok(vec![OrderEvent::Cancelled {
                    reason,
                    refund: self.refund(),
                }])
            }
        }
    }

    fn place(
        &self,
        customer: String,
        currency: Currency,
        lines: Vec<Line>,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        if self.phase != Phase::New {
            return Err(OrderError::AlreadyPlaced);
        }
        if customer.trim().is_empty() || customer.len() > 64 {
            return Err(OrderError::InvalidCustomer);
        }
        if lines.is_empty() {
            return Err(OrderError::NoLines);
        }
        let mut total: u64 = 0;
        for (i, line) in lines.iter().enumerate() {
            check_line(&currency, line)?;
            if lines[..i].iter().any(|earlier| earlier.sku == line.sku) {
                return Err(OrderError::DuplicateSku {
                    sku: line.sku.clone(),
                });
            }
            total = line
                .total()
                .and_then(|t| total.checked_add(t))
                .ok_or(OrderError::TooLarge)?;
        }
        Ok(vec![OrderEvent::Placed {
            customer,
            currency,
            lines,
        }])
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed {
                customer,
                currency,
                lines,
            } => {
                self.phase = Phase::Open;
                self.customer.clone_from(customer);
                self.currency = Some(currency.clone());
                self.lines = lines
                    .iter()
                    .map(|line| OrderLine {
                        line: line.clone(),
                        reserved: false,
                    })
                    .collect();
            }
            OrderEvent::LineAdded { line } => self.lines.push(OrderLine {
                line: line.clone(),
                reserved: false,
            }),
            OrderEvent::LineRemoved { sku } | OrderEvent::LineRejected { sku, .. } => {
                self.lines.retain(|l| &l.line.sku != sku);
            }
            OrderEvent::StockConfirmed { skus } => {
                for line in &mut self.lines {
                    if skus.contains(&line.line.sku) {
                        line.reserved = true;
                    }
                }
            }
            OrderEvent::Paid { amount } => {
                self.paid = self.paid.saturating_add(amount.amount);
                self.phase = Phase::Paid;
            }
            OrderEvent::Shipped => self.phase = Phase::Shipped,
            OrderEvent::Cancelled { .. } => self.phase = Phase::Cancelled,
        }
    }

    fn unpaid(&self) -> Result<(), OrderError> {
        if self.phase == Phase::Paid {
            Err(OrderError::LinesLocked)
        } else {
            Ok(())
        }
    }

    fn line(&self, sku: &str) -> Option<&OrderLine> {
        self.lines.iter().find(|l| l.line.sku == sku)
    }

    fn refund(&self) -> Option<Money> {
        (self.paid > 0).then(|| Money::new(self.paid, self.currency()))
    }

    /// Whether the order was placed.
    pub fn exists(&self) -> bool {
        self.phase != Phase::New
    }

    /// Where the order is in its life; `None` before it is placed.
    pub fn status(&self) -> Option<OrderStatus> {
        Some(match self.phase {
            Phase::New => return None,
            Phase::Open if self.lines.iter().all(|l| l.reserved) => OrderStatus::Confirmed,
            Phase::Open => OrderStatus::AwaitingStock,
            Phase::Paid => OrderStatus::Paid,
            Phase::Shipped => OrderStatus::Shipped,
            Phase::Cancelled => OrderStatus::Cancelled,
        })
    }

    /// Who ordered.
    pub fn customer(&self) -> &str {
        &self.customer
    }

    /// The order's currency (euros before it is placed).
    pub fn currency(&self) -> Currency {
        self.currency.clone().unwrap_or_else(Currency::eur)
    }

    /// The lines.
    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }

    /// The sum of the lines, in minor units.
    pub fn total(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.line.total().unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add)
    }

    /// What was paid, in minor units.
    pub fn paid(&self) -> u64 {
        self.paid
    }
}

/// Checks one line against the order's currency.
fn check_line(currency: &Currency, line: &Line) -> Result<(), OrderError> {
    if !is_valid_sku(&line.sku) {
        return Err(OrderError::InvalidSku {
            sku: line.sku.clone(),
        });
    }
    if line.quantity == 0 {
        return Err(OrderError::ZeroQuantity {
            sku: line.sku.clone(),
        });
    }
    if &line.unit_price.currency != currency {
        return Err(OrderError::CurrencyMismatch {
            expected: currency.clone(),
            found: line.unit_price.currency.clone(),
        });
    }
    Ok(())
}
