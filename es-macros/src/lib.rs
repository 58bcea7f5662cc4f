//! Derive macros for `es-core`.
//!
//! This crate will hold `#[derive(Event)]`, `#[derive(Aggregate)]` and
//! `#[derive(Projection)]`. Until they land, implement the `es-core` traits by
//! hand as shown in the `es-core` crate documentation.
