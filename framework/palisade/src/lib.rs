//! Palisade: Byzantine fault tolerant state machine replication.
//!
//! This crate is the operator CLI (`palisade`) and re-exports the layers:
//! [`core`] (the protocol) and [`wire`] (framing, keys, channels).

#![deny(missing_docs)]

pub mod keygen;

pub use palisade_core as core;
pub use palisade_wire as wire;
