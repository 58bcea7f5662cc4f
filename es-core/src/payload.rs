//! An event's payload: its JSON text, kept as text.

use std::fmt;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The JSON payload of an event, held as its text.
///
/// Events are encoded straight to text and decoded straight from it: no
/// intermediate [`Value`] tree is built on the way into or out of a store.
/// A payload always holds well-formed JSON: [`Payload::encode`] writes it,
/// [`Payload::from_json`] checks it, and a [`Value`] converts into one.
/// Cloning is cheap: the text is shared.
///
/// Two payloads are equal when they hold the same JSON value, whatever the
/// spacing or the order of object keys; a payload also compares with a
/// [`Value`].
///
/// ```
/// use es_core::Payload;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Deposited { amount: u64 }
///
/// let payload = Payload::encode(&Deposited { amount: 5 })?;
/// assert_eq!(payload.as_str(), r#"{"amount":5}"#);
/// assert_eq!(payload, serde_json::json!({"amount": 5}));
/// assert_eq!(payload.decode::<Deposited>()?, Deposited { amount: 5 });
///
/// let stored = Payload::from_json(r#"{ "amount" : 5 }"#)?;
/// assert_eq!(stored, payload);
/// assert!(Payload::from_json("{not json").is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone)]
pub struct Payload(Arc<str>);

impl Payload {
    /// Writes a value as a payload.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::to_string(value).map(Self::from_trusted_json)
    }

    /// Takes JSON text as a payload, after checking that it is well-formed.
    pub fn from_json(text: impl Into<Arc<str>>) -> serde_json::Result<Self> {
        let text = text.into();
        serde_json::from_str::<IgnoredAny>(&text)?;
        Ok(Self(text))
    }

    /// Takes JSON text the caller knows to be well-formed, without checking
    /// it again: text read from a column whose type guarantees JSON (a
    /// PostgreSQL `json` column), or written by [`Payload::encode`]. Text
    /// that is not JSON is no memory hazard: decoding it fails with a
    /// payload error, and comparisons treat it as unequal to anything.
    pub fn from_trusted_json(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// Reads the payload as a `T`.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }

    /// Parses the payload into a JSON tree.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        self.decode()
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty: never for JSON (the shortest JSON text is
    /// one byte long), only for text taken with
    /// [`Payload::from_trusted_json`] that was not JSON.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&Value> for Payload {
    fn from(value: &Value) -> Self {
        Self::from_trusted_json(value.to_string())
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || matches!((self.to_value(), other.to_value()), (Ok(a), Ok(b)) if a == b)
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.to_value().is_ok_and(|value| value == *other)
    }
}

impl PartialEq<Payload> for Value {
    fn eq(&self, other: &Payload) -> bool {
        other == self
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({})", self.0)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Payload {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_is_of_values_not_of_text() {
        let a = Payload::from_json(r#"{"a":1,"b":[true,null]}"#).unwrap();
        let b = Payload::from_json(r#"{ "b": [true, null], "a": 1 }"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, json!({"a": 1, "b": [true, null]}));
        assert_eq!(json!({"a": 1, "b": [true, null]}), b);
        assert_ne!(a, Payload::from(json!({"a": 2})));
        assert_ne!(a, json!(null));
    }

    #[test]
    fn malformed_text_is_refused() {
        for text in ["", "{", "{\"a\":}", "[1,]", "1 2", "nul"] {
            assert!(Payload::from_json(text).is_err(), "{text:?}");
        }
        for text in ["null", "0", "\"€\"", "[]", " {} "] {
            assert_eq!(Payload::from_json(text).unwrap().as_str(), text);
        }
    }

    #[test]
    fn values_convert_both_ways() {
        let value = json!({"n": "€", "list": [1, 2.5, -3]});
        let payload = Payload::from(&value);
        assert_eq!(payload.to_value().unwrap(), value);
        assert_eq!(payload.to_string(), payload.as_str());
        assert_eq!(payload.len(), payload.as_str().len());
        assert!(!payload.is_empty());
        assert_eq!(
            format!("{payload:?}"),
            format!("Payload({})", payload.as_str())
        );
    }
}
