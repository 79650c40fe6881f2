//! The one host of the protocol core.
//!
//! The core decides; a host does. [`ConsensusHost`] feeds a replica's core
//! and carries out its actions (persist, send, hand decisions to execution,
//! refuse a client) against [`ConsensusIo`]; [`ExecutionHost`] runs the
//! service in order, takes and serves snapshots, installs transferred ones
//! and answers clients, against [`ExecutionIo`]; [`EpochHost`] keeps one
//! consensus host per membership epoch and hands over between them. The runtime plugs in real
//! storage, sockets and queues between its stages; the simulator plugs in
//! simulated ones and calls the execution side directly; the in-memory
//! clusters of tests and benchmarks plug in queues in memory. So the code
//! the simulator checks is the code users run.
//!
//! [`client::Invocation`] is the client's side the same way: which replies
//! settle an operation, as a state machine the async client wraps and the
//! simulator drives.

#![deny(missing_docs)]

pub mod client;
mod consensus;
pub mod durable;
pub mod epochs;
mod execution;
pub mod state;

pub use consensus::{ConsensusHost, ConsensusIo, ExecCommand};
pub use durable::{Durability, RecoveryReport};
pub use epochs::{CryptoFor, EpochCounters, EpochHost};
pub use execution::{answer, ClientMail, ExecEvent, ExecutionConfig, ExecutionHost, ExecutionIo, Reconfigured};
