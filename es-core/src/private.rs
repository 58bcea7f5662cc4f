//! Support for the code the derive macros generate. Not a public API: names
//! and shapes here change without notice.

use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, VariantAccess, Visitor};
use serde::ser::{self, Impossible, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Payload;

pub use ::async_trait::async_trait;
#[cfg(feature = "testkit")]
pub use ::insta;
pub use ::serde;
pub use ::serde_json;
pub use std::sync::OnceLock;

/// Writes one variant of an externally tagged enum as its payload: the
/// variant's fields without the tag, `{}` for a unit variant.
pub fn variant_payload<T: Serialize + ?Sized>(event: &T) -> serde_json::Result<Payload> {
    Payload::encode(&VariantContent(event))
}

/// An enum serialized as the content of its variant.
struct VariantContent<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for VariantContent<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(VariantOnly(serializer))
    }
}

/// A serializer that writes an enum variant's content with `S` and refuses
/// anything that is not an enum variant.
struct VariantOnly<S>(S);

fn not_a_variant<E: ser::Error>() -> E {
    E::custom("an event enum must serialize as one of its variants")
}

macro_rules! refuse {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<$ret, S::Error> {
            Err(not_a_variant())
        })*
    };
}

impl<S: Serializer> Serializer for VariantOnly<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = Fields<S::SerializeTuple>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = Fields<S::SerializeStruct>;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_map(Some(0))?.end()
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(self.0)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0.serialize_tuple(len).map(Fields)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        _index: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.0.serialize_struct(name, len).map(Fields)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(not_a_variant())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(not_a_variant())
    }

    refuse! {
        serialize_bool(bool) -> S::Ok;
        serialize_i8(i8) -> S::Ok;
        serialize_i16(i16) -> S::Ok;
        serialize_i32(i32) -> S::Ok;
        serialize_i64(i64) -> S::Ok;
        serialize_u8(u8) -> S::Ok;
        serialize_u16(u16) -> S::Ok;
        serialize_u32(u32) -> S::Ok;
        serialize_u64(u64) -> S::Ok;
        serialize_f32(f32) -> S::Ok;
        serialize_f64(f64) -> S::Ok;
        serialize_char(char) -> S::Ok;
        serialize_str(&str) -> S::Ok;
        serialize_bytes(&[u8]) -> S::Ok;
        serialize_none() -> S::Ok;
        serialize_unit() -> S::Ok;
        serialize_unit_struct(&'static str) -> S::Ok;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
    }
}

/// The fields of a tuple or struct variant, written as a tuple or a struct.
struct Fields<S>(S);

impl<S: ser::SerializeTuple> ser::SerializeTupleVariant for Fields<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), S::Error> {
        self.0.serialize_element(value)
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

impl<S: ser::SerializeStruct> ser::SerializeStructVariant for Fields<S> {
    type Ok = S::Ok;
    type Error = S::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), S::Error> {
        self.0.serialize_field(key, value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

type JsonText<'de> = serde_json::Deserializer<serde_json::de::StrRead<'de>>;

/// Deserializes one variant of an externally tagged enum from its name and
/// its payload's JSON text, without building the tagged value.
pub fn from_variant<'de, T: Deserialize<'de>>(
    variant: &'static str,
    json: &'de str,
) -> serde_json::Result<T> {
    let mut text = serde_json::Deserializer::from_str(json);
    let event = T::deserialize(VariantPayload {
        variant,
        text: &mut text,
    })?;
    text.end()?;
    Ok(event)
}

struct VariantPayload<'a, 'de> {
    variant: &'static str,
    text: &'a mut JsonText<'de>,
}

impl<'de> Deserializer<'de> for VariantPayload<'_, 'de> {
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

impl<'a, 'de> EnumAccess<'de> for VariantPayload<'a, 'de> {
    type Error = serde_json::Error;
    type Variant = PayloadAccess<'a, 'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> serde_json::Result<(V::Value, Self::Variant)> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, PayloadAccess(self.text)))
    }
}

struct PayloadAccess<'a, 'de>(&'a mut JsonText<'de>);

impl<'de> VariantAccess<'de> for PayloadAccess<'_, 'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> serde_json::Result<()> {
        self.0.deserialize_any(EmptyPayload)
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

/// The payload of a unit variant: `{}` or `null`.
struct EmptyPayload;

impl<'de> Visitor<'de> for EmptyPayload {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an empty payload")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match map.next_key::<de::IgnoredAny>()? {
            None => Ok(()),
            Some(_) => Err(de::Error::invalid_length(1, &self)),
        }
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

    fn to_payload(&self) -> serde_json::Result<Payload> {
        match *self {}
    }

    fn from_payload(event_type: &str, _payload: &Payload) -> serde_json::Result<Self> {
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
            let encoded = variant_payload(&event).unwrap();
            assert_eq!(encoded, payload);
            let decoded: Sample = from_variant(variant, encoded.as_str()).unwrap();
            assert_eq!(decoded, event);
        }
        assert_eq!(variant_payload(&Sample::Shipped).unwrap().as_str(), "{}");
        let unit: Sample = from_variant("Shipped", "null").unwrap();
        assert_eq!(unit, Sample::Shipped);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let bad = |variant, payload: serde_json::Value| {
            from_variant::<Sample>(variant, Payload::from(payload).as_str()).map(|_| ())
        };
        assert!(bad("Placed", json!({"customer": 1})).is_err());
        assert!(bad("Shipped", json!({"x": 1})).is_err());
        assert!(bad("Shipped", json!([])).is_err());
        assert!(bad("Nope", json!({})).is_err());
        let trailing = Payload::from_json("7 ").unwrap();
        assert_eq!(
            from_variant::<Sample>("Paid", trailing.as_str()).unwrap(),
            Sample::Paid(7)
        );
    }

    #[test]
    fn only_enum_variants_are_payloads() {
        assert!(variant_payload(&7).is_err());
        assert!(variant_payload(&json!({"Placed": {}})).is_err());
        assert!(variant_payload(&Some(Sample::Shipped)).is_err());
    }
}
