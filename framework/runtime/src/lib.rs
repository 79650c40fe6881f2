//! Palisade's replica runtime: the staged pipeline around the protocol core.
//!
//! ```text
//!  clients ──► [network: actix connection actors] ─────────► [verification: rayon batches]
//!                     │                                              │
//!                     │ peer messages                                 ▼
//!                     └──────────────────────────────────────► [request filter: reply cache, stale ids]
//!                                                                     │
//!  [ticker: clocks] ─────────────────────────────────────────────────►▼
//!                                                          [consensus: the pure core, hosted]
//!                          peers ◄── connection mailboxes ◄──┤        │ decisions
//!                                                                     ▼
//!                                         [delivery: service, snapshots] ──► [reply sending] ──► clients
//! ```
//!
//! [`spawn_replica`] ([`pipeline`]) wires it, top to bottom. Every arrow is
//! a bounded queue ([`queue`]) whose capacity and overload policy are in
//! [`RuntimeConfig`]; each stage ([`stages`]) is an actor that never blocks,
//! reaches the network only through [`egress::Egress`], and runs on the
//! threads [`StageThreads`] chooses ([`runner`]). Consensus and delivery
//! carry out the core's actions through the same host driver the
//! simulator runs (`palisade_host`).

#![deny(missing_docs)]

#[cfg(feature = "byzantine")]
pub mod byzantine;
pub mod config;
pub mod crypto;
pub mod egress;
pub mod events;
pub mod exporter;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod queue;
pub mod runner;
pub mod shared;
pub mod stages;
pub mod storage;

pub use config::{RuntimeConfig, Start};
pub use metrics::{CoreSnapshot, RuntimeMetrics};
pub use pipeline::{spawn_replica, ReplicaHandle};
pub use runner::StageThreads;
