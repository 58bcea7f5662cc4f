//! Support for the code the derive macros generate. Not a public API: names
//! and shapes here change without notice.

use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, VariantAccess, Visitor};
use serde::Deserializer;
use serde_json::Value;

pub use ::async_trait::async_trait;
#[cfg(feature = "testkit")]
pub use ::insta;
pub use ::serde;
pub use ::serde_json;
pub use std::sync::OnceLock;

/// Takes the payload out of an externally tagged enum value: `{"Variant": payload}`
/// gives `payload`, and a unit variant (`"Variant"`) gives `{}`.
pub fn variant_payload(tagged: Value) -> Value {
    match tagged {
        Value::Object(map) if map.len() == 1 => map
            .into_iter()
            .next()
            .map_or(Value::Null, |(_, payload)| payload),
        Value::String(_) => Value::Object(serde_json::Map::new()),
        other => other,
    }
}

/// Deserializes one variant of an externally tagged enum from its name and
/// its payload, without building the tagged value.
pub fn from_variant<'de, T: serde::Deserialize<'de>>(
    variant: &'static str,
    payload: &'de Value,
) -> serde_json::Result<T> {
    T::deserialize(VariantPayload { variant, payload })
}

struct VariantPayload<'de> {
    variant: &'static str,
    payload: &'de Value,
}

impl<'de> Deserializer<'de> for VariantPayload<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de> EnumAccess<'de> for VariantPayload<'de> {
    type Error = serde_json::Error;
    type Variant = PayloadAccess<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> serde_json::Result<(V::Value, Self::Variant)> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, PayloadAccess(self.payload)))
    }
}

struct PayloadAccess<'de>(&'de Value);

impl<'de> VariantAccess<'de> for PayloadAccess<'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> serde_json::Result<()> {
        match self.0 {
            Value::Null => Ok(()),
            Value::Object(map) if map.is_empty() => Ok(()),
            other => Err(de::Error::invalid_type(
                de::Unexpected::Other(&other.to_string()),
                &"an empty payload",
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> serde_json::Result<T::Value> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        self.0.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        self.0.deserialize_struct("", fields, visitor)
    }
}

/// Asserts at compile time that a typed upcast source converts into the
/// next shape.
pub fn assert_upcast<Old, Next>()
where
    Old: serde::de::DeserializeOwned + Into<Next>,
{
}

/// A type without values, for the stub impls emitted next to errors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Never {}

impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for Never {}

/// What `Self::handle` resolves to when the aggregate has no `handle`.
#[derive(Debug)]
pub struct HandleIsMissing;

/// What `Self::apply` resolves to when the aggregate has no `apply`.
#[derive(Debug)]
pub struct ApplyIsMissing;

/// Found only when the aggregate has no inherent `handle`.
pub trait MissingHandle {
    /// Stands in for the missing function; it fails [`HandleFn`].
    fn handle<C>(&self, _command: C) -> HandleIsMissing {
        HandleIsMissing
    }
}

impl<T: ?Sized> MissingHandle for T {}

/// Found only when the aggregate has no inherent `apply`.
pub trait MissingApply {
    /// Stands in for the missing function; it fails [`ApplyFn`].
    fn apply<E: ?Sized>(&mut self, _event: &E) -> ApplyIsMissing {
        ApplyIsMissing
    }
}

impl<T: ?Sized> MissingApply for T {}

/// An aggregate's `handle`: `fn handle(&self, command: C) -> Result<Vec<E>, Err>`.
pub trait HandleFn<A, C, E, Err> {
    /// Calls the function.
    fn call(self, state: &A, command: C) -> Result<Vec<E>, Err>;
}

impl<A, C, E, Err, F, R> HandleFn<A, C, E, Err> for F
where
    F: Fn(&A, C) -> R,
    R: HandleReturn<A, C, E, Err>,
{
    fn call(self, state: &A, command: C) -> Result<Vec<E>, Err> {
        self(state, command).into_result()
    }
}

/// What an aggregate's `handle` must return.
#[diagnostic::on_unimplemented(
    message = "`{A}` has no `handle` function returning `Result<Vec<{E}>, {Err}>`",
    label = "derive(Aggregate) calls `{A}::handle` here",
    note = "add to your code: `impl {A} {{ fn handle(&self, command: {C}) -> Result<Vec<{E}>, {Err}> {{ … }} }}`"
)]
pub trait HandleReturn<A, C, E, Err> {
    /// The events or the refusal.
    fn into_result(self) -> Result<Vec<E>, Err>;
}

impl<A, C, E, Err> HandleReturn<A, C, E, Err> for Result<Vec<E>, Err> {
    fn into_result(self) -> Result<Vec<E>, Err> {
        self
    }
}

/// Calls the aggregate's `handle`, checking its signature.
pub fn handle_with<A, C, E, Err, F: HandleFn<A, C, E, Err>>(
    handle: F,
    state: &A,
    command: C,
) -> Result<Vec<E>, Err> {
    handle.call(state, command)
}

/// An aggregate's `apply`: `fn apply(&mut self, event: &E)`.
pub trait ApplyFn<A, E> {
    /// Calls the function.
    fn call(self, state: &mut A, event: &E);
}

impl<A, E, F, R> ApplyFn<A, E> for F
where
    F: Fn(&mut A, &E) -> R,
    R: ApplyReturn<A, E>,
{
    fn call(self, state: &mut A, event: &E) {
        self(state, event);
    }
}

/// What an aggregate's `apply` must return: nothing.
#[diagnostic::on_unimplemented(
    message = "`{A}` has no `apply` function with the signature `fn apply(&mut self, event: &{E})`",
    label = "derive(Aggregate) calls `{A}::apply` here",
    note = "add to your code: `impl {A} {{ fn apply(&mut self, event: &{E}) {{ … }} }}`"
)]
pub trait ApplyReturn<A, E> {}

impl<A, E> ApplyReturn<A, E> for () {}

/// Calls the aggregate's `apply`, checking its signature.
pub fn apply_with<A, E, F: ApplyFn<A, E>>(apply: F, state: &mut A, event: &E) {
    apply.call(state, event);
}

impl crate::Event for Never {
    fn event_type(&self) -> &'static str {
        match *self {}
    }

    fn to_payload(&self) -> serde_json::Result<Value> {
        match *self {}
    }

    fn from_payload(event_type: &str, _payload: &Value) -> serde_json::Result<Self> {
        Err(de::Error::unknown_variant(event_type, &[]))
    }

    fn schema() -> &'static crate::EventSchema {
        static SCHEMA: OnceLock<crate::EventSchema> = OnceLock::new();
        SCHEMA.get_or_init(|| crate::EventSchema::builder("Never").build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Placed { customer: String, lines: Vec<u32> },
        Paid(u64),
        Shipped,
    }

    #[test]
    fn variants_round_trip_through_their_payload() {
        let cases = [
            (
                Sample::Placed {
                    customer: "ada".into(),
                    lines: vec![1, 2],
                },
                "Placed",
                json!({"customer": "ada", "lines": [1, 2]}),
            ),
            (Sample::Paid(7), "Paid", json!(7)),
            (Sample::Shipped, "Shipped", json!({})),
        ];
        for (event, variant, payload) in cases {
            let encoded = variant_payload(serde_json::to_value(&event).unwrap());
            assert_eq!(encoded, payload);
            let decoded: Sample = from_variant(variant, &encoded).unwrap();
            assert_eq!(decoded, event);
        }
        let unit: Sample = from_variant("Shipped", &Value::Null).unwrap();
        assert_eq!(unit, Sample::Shipped);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert!(from_variant::<Sample>("Placed", &json!({"customer": 1})).is_err());
        assert!(from_variant::<Sample>("Shipped", &json!({"x": 1})).is_err());
        assert!(from_variant::<Sample>("Nope", &json!({})).is_err());
    }
}
