//! A small bank-account domain shared by the integration tests and benches,
//! implemented by hand against the es-core traits.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::OnceLock;

use es_core::{Aggregate, Event, EventSchema, SnapshotPolicy, UpcastError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The events of an account. `Deposited` is at schema version 2: version 1
/// stored the amount as `cents`; `Opened` was once stored as `AccountCreated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened(Opened),
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

impl Event for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened(_) => "AccountOpened",
            AccountEvent::Deposited(_) => "Deposited",
            AccountEvent::Withdrawn(_) => "Withdrawn",
        }
    }

    fn to_payload(&self) -> serde_json::Result<Value> {
        match self {
            AccountEvent::Opened(e) => serde_json::to_value(e),
            AccountEvent::Deposited(e) => serde_json::to_value(e),
            AccountEvent::Withdrawn(e) => serde_json::to_value(e),
        }
    }

    fn from_payload(event_type: &str, payload: &Value) -> serde_json::Result<Self> {
        Ok(match event_type {
            "AccountOpened" => AccountEvent::Opened(Deserialize::deserialize(payload)?),
            "Deposited" => AccountEvent::Deposited(Deserialize::deserialize(payload)?),
            "Withdrawn" => AccountEvent::Withdrawn(Deserialize::deserialize(payload)?),
            other => {
                return Err(serde::de::Error::custom(format_args!(
                    "unknown event type {other}"
                )))
            }
        })
    }

    fn schema() -> &'static EventSchema {
        static SCHEMA: OnceLock<EventSchema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            EventSchema::builder("AccountEvent")
                .event("AccountOpened", 1)
                .alias("AccountCreated")
                .field("owner", "String")
                .event("Deposited", 2)
                .field("amount", "u64")
                .field("memo", "String")
                .upcast_to_event::<DepositedV1, AccountEvent>(1)
                .event("Withdrawn", 1)
                .field("amount", "u64")
                .build()
        })
    }
}

/// A JSON-function upcaster that refuses payloads without `cents`.
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

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub owner: Option<String>,
    pub balance: u64,
    pub transactions: u64,
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
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

    fn apply(&mut self, event: &AccountEvent) {
        self.transactions += 1;
        match event {
            AccountEvent::Opened(e) => self.owner = Some(e.owner.clone()),
            AccountEvent::Deposited(e) => self.balance += e.amount,
            AccountEvent::Withdrawn(e) => self.balance -= e.amount,
        }
    }
}

impl Account {
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
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshottedAccount(pub Account);

impl Aggregate for SnapshottedAccount {
    const NAME: &'static str = "account";
    const STATE_VERSION: u32 = 2;
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        self.0.handle(command)
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.0.apply(event);
    }

    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::Every(10)
    }
}
