//! Palisade's wire: everything between bytes on a socket and a message the
//! protocol core may trust.
//!
//! - [`frame`]: length-prefixed frames, limits checked before allocation;
//! - [`envelope`]: version and cluster id, then one closed message enum per channel;
//! - [`keys`] and [`config`]: ed25519 identities and the cluster configuration;
//! - [`handshake`]: mutual authentication with fresh per-connection keys;
//! - [`channel`]: HMAC-SHA256 on every frame, over a per-direction counter;
//! - [`verify`]: client request signatures, checked in parallel batches;
//! - [`chain`]: the chain of membership epochs, checked from `cluster.toml`.
//!
//! Everything here is sans-IO: the runtime moves the bytes. docs/wire.md
//! specifies the format byte by byte and docs/security.md the threat model.

#![deny(missing_docs)]

pub mod address;
pub mod chain;
pub mod channel;
pub mod config;
pub mod envelope;
pub mod frame;
pub mod handshake;
pub mod keys;
pub mod verify;

pub use config::{ClusterConfig, ConfigError, RequestAuth};
pub use envelope::{ClientMessage, HandshakeMessage, ReplicaMessage, Role};

use std::fmt;

/// Why bytes from the network were refused. Every decoder returns one of
/// these instead of panicking; the connection that sent them is closed and
/// the refusal counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the format needs.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A length prefix above the configured maximum.
    FrameTooLarge {
        /// Claimed length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// A format version this build does not speak.
    UnknownVersion(u8),
    /// A message for another cluster.
    WrongCluster {
        /// This cluster.
        expected: u64,
        /// The message's.
        got: u64,
    },
    /// Bytes that do not decode as the channel's message type.
    Malformed(String),
    /// Bytes left after a complete message.
    TrailingBytes(usize),
    /// A frame whose MAC does not verify: forged, replayed, reordered or
    /// from another connection.
    BadMac,
}

impl WireError {
    fn from_postcard(e: postcard::Error) -> WireError {
        match e {
            postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated { needed: 1, got: 0 },
            other => WireError::Malformed(other.to_string()),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { needed, got } => {
                write!(f, "truncated: needed {needed} bytes, got {got}")
            }
            WireError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            WireError::UnknownVersion(v) => write!(f, "unknown format version {v}"),
            WireError::WrongCluster { expected, got } => {
                write!(f, "message for cluster {got}, this is cluster {expected}")
            }
            WireError::Malformed(why) => write!(f, "malformed message: {why}"),
            WireError::TrailingBytes(n) => write!(f, "{n} bytes after the message"),
            WireError::BadMac => write!(f, "frame authentication failed"),
        }
    }
}

impl std::error::Error for WireError {}
