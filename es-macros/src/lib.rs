//! Derive macros for `es-core`: `#[derive(Event)]`, `#[derive(Aggregate)]`
//! and `#[derive(Projection)]`.
//!
//! Use them through `es-core`, which re-exports them with its default
//! `derive` feature; the `es-core` crate documentation shows each one with
//! its attributes. Every mistake is a compile error at the offending token,
//! and all mistakes of one derive are reported together.

mod aggregate;
mod attr;
mod ctxt;
mod event;
#[cfg(test)]
mod expand_tests;
mod projection;
mod symbol;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `es_core::Event` for an enum (one event type per variant) or a
/// struct (a family of one type). See `es_core::Event` for the attributes.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::derive(&input).into()
}

/// Implements `es_core::Aggregate` for a struct whose inherent `handle` and
/// `apply` functions hold the domain logic. See `es_core::Aggregate`.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    aggregate::derive(&input).into()
}

/// Implements `es_core::Projection`, dispatching each event family to the
/// projection's `Handles<Family>` impl. See `es_core::Projection`.
#[proc_macro_derive(Projection, attributes(projection))]
pub fn derive_projection(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    projection::derive(&input).into()
}
