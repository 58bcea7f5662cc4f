//! Values shared by the aggregates: currencies, amounts of money, order lines.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A currency: three upper-case ASCII letters, as in ISO 4217 (`EUR`, `USD`).
///
/// ```
/// use order_service::Currency;
///
/// assert_eq!(Currency::new("EUR").unwrap().as_str(), "EUR");
/// assert!(Currency::new("euro").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "EUR", pattern = "^[A-Z]{3}$")]
pub struct Currency(String);

impl Currency {
    /// A currency from its code; `Err` unless the code is three upper-case letters.
    pub fn new(code: impl Into<String>) -> Result<Self, InvalidCurrency> {
        let code = code.into();
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(code))
        } else {
            Err(InvalidCurrency(code))
        }
    }

    /// The euro, the currency of orders stored before currencies existed.
    pub fn eur() -> Self {
        Self("EUR".to_owned())
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidCurrency;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

/// A currency code that is not three upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a currency code: use three upper-case letters such as EUR")]
pub struct InvalidCurrency(String);

/// An amount of money in minor units (cents) of a currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// The amount in minor units: `1250` is 12.50.
    #[schema(example = 1250)]
    pub amount: u64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// An amount in minor units of a currency.
    pub fn new(amount: u64, currency: Currency) -> Self {
        Self { amount, currency }
    }

    /// Nothing, in a currency.
    pub fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:02} {}",
            self.amount / 100,
            self.amount % 100,
            self.currency
        )
    }
}

/// A line of an order: so many units of one SKU at a unit price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The stock keeping unit: 1 to 64 letters, digits, `-`, `_` or `.`.
    #[schema(example = "mug-blue")]
    pub sku: String,
    /// How many units; at least 1.
    #[schema(example = 2, minimum = 1)]
    pub quantity: u32,
    /// The price of one unit.
    pub unit_price: Money,
}

impl Line {
    /// The line's total, or `None` if it does not fit in 64 bits.
    pub fn total(&self) -> Option<u64> {
        self.unit_price.amount.checked_mul(u64::from(self.quantity))
    }
}

/// Whether a SKU is 1 to 64 letters, digits, `-`, `_` or `.`: it is part of
/// stream ids and URLs.
pub fn is_valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_are_checked() {
        assert!(Currency::new("USD").is_ok());
        for bad in ["usd", "EURO", "", "E1R"] {
            assert!(Currency::new(bad).is_err(), "{bad}");
        }
        let parsed: Result<Currency, _> = serde_json::from_str("\"eur\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn money_displays_in_major_units() {
        assert_eq!(Money::new(1205, Currency::eur()).to_string(), "12.05 EUR");
    }

    #[test]
    fn skus_are_checked() {
        assert!(is_valid_sku("mug-blue_2.0"));
        assert!(!is_valid_sku(""));
        assert!(!is_valid_sku("a/b"));
        assert!(!is_valid_sku(&"x".repeat(65)));
    }

    #[test]
    fn line_totals_do_not_overflow() {
        let line = Line {
            sku: "a".into(),
            quantity: 3,
            unit_price: Money::new(u64::MAX / 2, Currency::eur()),
        };
        assert_eq!(line.total(), None);
    }
}
