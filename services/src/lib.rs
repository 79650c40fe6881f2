//! Services written against Palisade's [`palisade_core::Service`] trait,
//! each with a typed client over [`palisade_client::Client`].
//!
//! Each keeps its state in deterministic structures and encodes its
//! operations and results in a small fixed binary form, so every replica
//! produces identical bytes and identical snapshots.

#![deny(missing_docs)]

pub mod counter;
pub mod echo;
pub mod fs;
pub mod kv;
pub mod register;

/// Why an operation or snapshot could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

/// A context for unit tests of services.
#[cfg(test)]
pub(crate) fn test_ctx() -> palisade_core::ExecContext {
    use palisade_core::{ClientId, RequestId, SeqNo, ViewNo};
    palisade_core::ExecContext {
        seq: SeqNo(1),
        view: ViewNo(0),
        client: ClientId(1),
        request: RequestId(1),
        timestamp_ms: 0,
        seed: 0,
    }
}

pub(crate) fn read_u64(bytes: &[u8]) -> Result<u64, DecodeError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| DecodeError("expected exactly 8 bytes"))?;
    Ok(u64::from_le_bytes(arr))
}
