//! Fixtures shared by the workspace's tests and benchmarks, so that no
//! test file grows its own copy:
//!
//! - [`crypto`]: stand-ins for signatures that still tell signers apart
//!   ([`crypto::TestCrypto`]), or cost nothing ([`crypto::NoCrypto`]);
//! - [`fixtures`]: a small protocol configuration and builders for
//!   requests, batches and the protocol's messages;
//! - [`cluster`]: replicas in memory, on the same host drivers the runtime
//!   and the simulator use, delivering every message in order;
//! - [`loopback`]: cluster configurations and keys for replicas on 127.0.0.1;
//! - [`conformance`]: what every service must satisfy (determinism across
//!   replicas, snapshots that round-trip, reads that change nothing);
//! - [`scrape`]: one sample from a replica's metrics endpoint;
//! - [`wait`]: waiting for a condition under a deadline, never for a time.

#![deny(missing_docs)]

pub mod cluster;
pub mod conformance;
pub mod crypto;
pub mod fixtures;
pub mod loopback;
pub mod scrape;
pub mod wait;
