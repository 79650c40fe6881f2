//! A replicated register: `write(v)` returns the previous value, `read` the current one.

use crate::{read_u64, DecodeError};
use bytes::Bytes;
use palisade_core::{ExecContext, Service};

/// A register operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOp {
    /// Replaces the value; the result is the previous value.
    Write(u64),
    /// Reads the value; read-only.
    Read,
}

impl RegisterOp {
    /// Encodes: tag byte, then the operand.
    pub fn encode(&self) -> Bytes {
        match self {
            RegisterOp::Write(v) => {
                let mut out = vec![0u8];
                out.extend_from_slice(&v.to_le_bytes());
                Bytes::from(out)
            }
            RegisterOp::Read => Bytes::from_static(&[1]),
        }
    }

    /// Decodes what [`RegisterOp::encode`] produced.
    pub fn decode(bytes: &[u8]) -> Result<RegisterOp, DecodeError> {
        match bytes.split_first() {
            Some((0, rest)) => Ok(RegisterOp::Write(read_u64(rest)?)),
            Some((1, [])) => Ok(RegisterOp::Read),
            _ => Err(DecodeError("not a register operation")),
        }
    }

    /// Whether the operation leaves state unchanged.
    pub fn is_read_only(&self) -> bool {
        matches!(self, RegisterOp::Read)
    }
}

/// Decodes a register result.
pub fn decode_result(bytes: &[u8]) -> Result<u64, DecodeError> {
    read_u64(bytes)
}

/// The register service; it starts at 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Register {
    value: u64,
}

impl Register {
    /// The current value.
    pub fn value(&self) -> u64 {
        self.value
    }
}

impl Service for Register {
    fn execute(&mut self, _ctx: &ExecContext, operation: &[u8]) -> Bytes {
        match RegisterOp::decode(operation) {
            Ok(RegisterOp::Write(v)) => {
                let old = std::mem::replace(&mut self.value, v);
                Bytes::copy_from_slice(&old.to_le_bytes())
            }
            Ok(RegisterOp::Read) => Bytes::copy_from_slice(&self.value.to_le_bytes()),
            Err(_) => Bytes::new(),
        }
    }

    fn execute_unordered(&self, operation: &[u8]) -> Bytes {
        match RegisterOp::decode(operation) {
            Ok(RegisterOp::Read) => Bytes::copy_from_slice(&self.value.to_le_bytes()),
            _ => Bytes::new(),
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
    fn write_returns_the_previous_value() {
        let mut r = Register::default();
        assert_eq!(decode_result(&r.execute(&ctx(), &RegisterOp::Write(9).encode())), Ok(0));
        assert_eq!(decode_result(&r.execute(&ctx(), &RegisterOp::Write(4).encode())), Ok(9));
        assert_eq!(decode_result(&r.execute_unordered(&RegisterOp::Read.encode())), Ok(4));
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut r = Register::default();
        assert!(r.execute(&ctx(), &[7]).is_empty());
        assert!(r.execute_unordered(&RegisterOp::Write(1).encode()).is_empty());
        assert!(RegisterOp::decode(&[1, 0]).is_err());
        assert!(r.install(&[]).is_err());
    }
}
