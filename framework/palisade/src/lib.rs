//! Palisade: Byzantine fault tolerant state machine replication.
//!
//! This crate is the operator CLI (`palisade`) and re-exports the layers:
//! [`core`] (the protocol), [`wire`] (framing, keys, channels), [`runtime`]
//! (replicas), [`client`] (`invoke`) and [`services`].

#![deny(missing_docs)]

pub mod admin;
pub mod commands;
pub mod fsmount;
pub mod keygen;
pub mod registry;

pub use palisade_client as client;
pub use palisade_core as core;
pub use palisade_runtime as runtime;
pub use palisade_services as services;
pub use palisade_wire as wire;
