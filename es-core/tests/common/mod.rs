//! A small bank-account domain shared by the integration tests and benches,
//! written with the derives.
#![allow(dead_code, unreachable_pub, missing_docs)]

use es_core::{Aggregate, Event, UpcastError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The events of an account. `Deposited` is at schema version 2: version 1
/// stored the amount as `cents`; `Opened` was once stored as `AccountCreated`.
#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[event(family = "AccountEvent")]
pub enum AccountEvent {
    #[event(rename = "AccountOpened", alias = "AccountCreated")]
    Opened(Opened),
    #[event(version = 2, upcast_from = DepositedV1)]
    Deposited(Deposited),
    Withdrawn(Withdrawn),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deposited {
    pub amount: u64,
    pub memo: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawn {
    pub amount: u64,
}

/// `Deposited` as stored at schema version 1.
#[derive(Debug, Deserialize)]
pub struct DepositedV1 {
    pub cents: u64,
}

impl From<DepositedV1> for AccountEvent {
    fn from(v1: DepositedV1) -> Self {
        AccountEvent::Deposited(Deposited {
            amount: v1.cents,
            memo: String::new(),
        })
    }
}

/// A JSON-function upcaster that refuses payloads without `cents`.
// Upcasters receive the payload by value (`Fn(Value) -> …`).
#[allow(clippy::needless_pass_by_value)]
pub fn strict_cents(value: Value) -> Result<Value, UpcastError> {
    let cents = value
        .get("cents")
        .and_then(Value::as_u64)
        .ok_or_else(|| UpcastError::msg("no `cents`"))?;
    Ok(serde_json::json!({ "amount": cents, "memo": "" }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
    Withdraw { amount: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("amounts must be positive")]
    ZeroAmount,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: u64, asked: u64 },
}

#[derive(Aggregate, Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: u64,
    pub transactions: u64,
}

impl Account {
    pub fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { owner } => {
                if self.owner.is_some() {
                    return Err(AccountError::AlreadyOpen);
                }
                Ok(vec![AccountEvent::Opened(Opened { owner })])
            }
            AccountCommand::Deposit { amount } => {
                self.check_open(amount)?;
                Ok(vec![AccountEvent::Deposited(Deposited {
                    amount,
                    memo: String::new(),
                })])
            }
            AccountCommand::Withdraw { amount } => {
                self.check_open(amount)?;
                if amount > self.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: self.balance,
                        asked: amount,
                    });
                }
                Ok(vec![AccountEvent::Withdrawn(Withdrawn { amount })])
            }
        }
    }

    pub fn apply(&mut self, event: &AccountEvent) {
        self.transactions += 1;
        match event {
            AccountEvent::Opened(e) => self.owner = Some(e.owner.clone()),
            AccountEvent::Deposited(e) => self.balance += e.amount,
            AccountEvent::Withdrawn(e) => self.balance -= e.amount,
        }
    }

    fn check_open(&self, amount: u64) -> Result<(), AccountError> {
        if self.owner.is_none() {
            return Err(AccountError::NotOpen);
        }
        if amount == 0 {
            return Err(AccountError::ZeroAmount);
        }
        Ok(())
    }
}

/// The same account, snapshotted every 10 events.
#[derive(Aggregate, Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError,
            snapshot(every = 10, version = 2))]
pub struct SnapshottedAccount(pub Account);

impl SnapshottedAccount {
    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        self.0.handle(command)
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.0.apply(event);
    }
}

/// `AccountCommand::Open`.
pub fn open(owner: &str) -> AccountCommand {
    AccountCommand::Open {
        owner: owner.to_owned(),
    }
}

/// `AccountCommand::Deposit`.
pub fn deposit(amount: u64) -> AccountCommand {
    AccountCommand::Deposit { amount }
}

/// `AccountCommand::Withdraw`.
pub fn withdraw(amount: u64) -> AccountCommand {
    AccountCommand::Withdraw { amount }
}

/// An `Opened` event.
pub fn opened(owner: &str) -> AccountEvent {
    AccountEvent::Opened(Opened {
        owner: owner.to_owned(),
    })
}

/// A `Deposited` event without a memo.
pub fn deposited(amount: u64) -> AccountEvent {
    AccountEvent::Deposited(Deposited {
        amount,
        memo: String::new(),
    })
}
