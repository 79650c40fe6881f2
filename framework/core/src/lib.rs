//! The Palisade protocol core: a pure PBFT replica.
//!
//! A [`Replica`] is a state machine. The caller feeds it [`Input`]s (client
//! requests, authenticated peer messages, clock ticks, executor
//! completions) and carries out the [`Action`]s it returns (persist, send,
//! deliver, install a snapshot), in the order documented on [`replica`].
//! The core never touches a clock, a socket, a thread, a file or a random
//! number generator, so a whole cluster can run deterministically inside
//! one test from one seed.
//!
//! Modules follow the sub-protocols: quorum arithmetic ([`types`]),
//! checkpoints ([`checkpoint`]), the view-change decision rule
//! ([`view_change`]), exactly-once execution ([`exec`]), membership epochs
//! ([`reconfig`]) and the replica that
//! ties them together ([`replica`]).

#![deny(missing_docs)]

pub mod answers;
pub mod checkpoint;
pub mod config;
pub mod crypto;
pub mod exec;
pub mod message;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod reconfig;
pub mod replica;
pub mod state;
pub mod types;
pub mod view_change;

pub use config::Config;
pub use crypto::Crypto;
pub use exec::{ExecContext, Executor, Service};
pub use message::{Batch, PeerMessage, Reply, Request};
pub use replica::{Action, Input, LateRequest, Metrics, NextSlot, Record, Replica, ViewChangeReason};
pub use types::{ClientId, Digest, Membership, Mode, ReplicaId, RequestId, SeqNo, ViewNo};
