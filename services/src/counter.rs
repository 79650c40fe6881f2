//! A replicated counter: `add(n)` returns the new total, `get` reads it.

use crate::{read_u64, DecodeError};
use bytes::Bytes;
use palisade_core::{ExecContext, Service};

/// A counter operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterOp {
    /// Adds to the counter (wrapping); the result is the new value.
    Add(u64),
    /// Reads the counter; read-only, so it may run unordered.
    Get,
}

impl CounterOp {
    /// Encodes: tag byte, then the operand.
    pub fn encode(&self) -> Bytes {
        match self {
            CounterOp::Add(n) => {
                let mut v = vec![0u8];
                v.extend_from_slice(&n.to_le_bytes());
                Bytes::from(v)
            }
            CounterOp::Get => Bytes::from_static(&[1]),
        }
    }

    /// Decodes what [`CounterOp::encode`] produced.
    pub fn decode(bytes: &[u8]) -> Result<CounterOp, DecodeError> {
        match bytes.split_first() {
            Some((0, rest)) => Ok(CounterOp::Add(read_u64(rest)?)),
            Some((1, [])) => Ok(CounterOp::Get),
            _ => Err(DecodeError("not a counter operation")),
        }
    }

    /// Whether the operation leaves state unchanged.
    pub fn is_read_only(&self) -> bool {
        matches!(self, CounterOp::Get)
    }
}

/// Decodes a counter result (the value after the operation).
pub fn decode_result(bytes: &[u8]) -> Result<u64, DecodeError> {
    read_u64(bytes)
}

/// Result bytes of a malformed operation: empty, so clients see an error.
const BAD_OP: Bytes = Bytes::new();

/// The counter service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    value: u64,
}

impl Counter {
    /// The current value.
    pub fn value(&self) -> u64 {
        self.value
    }

    fn apply(&mut self, op: &[u8]) -> Bytes {
        match CounterOp::decode(op) {
            Ok(CounterOp::Add(n)) => {
                self.value = self.value.wrapping_add(n);
                Bytes::copy_from_slice(&self.value.to_le_bytes())
            }
            Ok(CounterOp::Get) => Bytes::copy_from_slice(&self.value.to_le_bytes()),
            Err(_) => BAD_OP,
        }
    }
}

impl Service for Counter {
    fn execute(&mut self, _ctx: &ExecContext, operation: &[u8]) -> Bytes {
        self.apply(operation)
    }

    fn execute_unordered(&self, operation: &[u8]) -> Bytes {
        match CounterOp::decode(operation) {
            Ok(CounterOp::Get) => Bytes::copy_from_slice(&self.value.to_le_bytes()),
            _ => BAD_OP,
        }
    }

    fn snapshot(&self) -> Bytes {
        Bytes::copy_from_slice(&self.value.to_le_bytes())
    }

    fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.value = read_u64(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ExecContext {
        crate::test_ctx()
    }

    #[test]
    fn add_returns_the_new_total_and_get_reads_it() {
        let mut c = Counter::default();
        assert_eq!(decode_result(&c.execute(&ctx(), &CounterOp::Add(5).encode())), Ok(5));
        assert_eq!(decode_result(&c.execute(&ctx(), &CounterOp::Add(2).encode())), Ok(7));
        assert_eq!(decode_result(&c.execute_unordered(&CounterOp::Get.encode())), Ok(7));
    }

    #[test]
    fn writes_are_refused_on_the_unordered_path() {
        let c = Counter::default();
        assert!(c.execute_unordered(&CounterOp::Add(1).encode()).is_empty());
    }

    #[test]
    fn malformed_operations_and_snapshots_are_errors_not_panics() {
        let mut c = Counter::default();
        assert!(c.execute(&ctx(), &[0, 1, 2]).is_empty());
        assert!(c.execute(&ctx(), &[]).is_empty());
        assert!(c.install(&[1, 2, 3]).is_err());
        assert_eq!(c.value(), 0);
    }

    #[test]
    fn snapshots_round_trip() {
        let mut c = Counter::default();
        c.execute(&ctx(), &CounterOp::Add(41).encode());
        let mut d = Counter::default();
        d.install(&c.snapshot()).unwrap();
        assert_eq!(c, d);
    }
}

/// Typed calls on a replicated [`Counter`].
#[derive(Clone)]
pub struct CounterClient {
    client: palisade_client::Client,
}

impl CounterClient {
    /// Wraps a client.
    pub fn new(client: palisade_client::Client) -> CounterClient {
        CounterClient { client }
    }

    /// Adds `n`; returns the new value.
    pub async fn add(&self, n: u64) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let r = self.client.invoke_ordered(CounterOp::Add(n).encode()).await?;
        Ok(decode_result(&r)?)
    }

    /// Reads the value (read-only, ordered only if the replicas disagree).
    pub async fn get(&self) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let r = self.client.invoke_unordered(CounterOp::Get.encode()).await?;
        Ok(decode_result(&r)?)
    }
}
