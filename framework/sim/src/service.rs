//! The simulated cluster's service: a counter and a register side by side,
//! so one run checks the linearizability of both.

use bytes::{BufMut, Bytes, BytesMut};
use palisade_core::{ExecContext, Service};
use palisade_services::counter::{Counter, CounterOp};
use palisade_services::register::{Register, RegisterOp};

/// One operation on one of the two objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimOp {
    /// Counter operation.
    Counter(CounterOp),
    /// Register operation.
    Register(RegisterOp),
}

impl SimOp {
    /// Tag byte (0 counter, 1 register), then the object's encoding.
    pub fn encode(&self) -> Bytes {
        let (tag, inner) = match self {
            SimOp::Counter(op) => (0u8, op.encode()),
            SimOp::Register(op) => (1u8, op.encode()),
        };
        let mut b = BytesMut::with_capacity(1 + inner.len());
        b.put_u8(tag);
        b.put_slice(&inner);
        b.freeze()
    }

    /// Decodes [`SimOp::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Option<SimOp> {
        match bytes.split_first()? {
            (0, rest) => CounterOp::decode(rest).ok().map(SimOp::Counter),
            (1, rest) => RegisterOp::decode(rest).ok().map(SimOp::Register),
            _ => None,
        }
    }

    /// Whether it leaves state unchanged.
    pub fn is_read_only(&self) -> bool {
        match self {
            SimOp::Counter(op) => op.is_read_only(),
            SimOp::Register(op) => op.is_read_only(),
        }
    }
}

/// Counter plus register.
#[derive(Clone, Debug, Default)]
pub struct SimService {
    counter: Counter,
    register: Register,
}

impl Service for SimService {
    fn execute(&mut self, ctx: &ExecContext, operation: &[u8]) -> Bytes {
        match operation.split_first() {
            Some((0, rest)) => self.counter.execute(ctx, rest),
            Some((1, rest)) => self.register.execute(ctx, rest),
            _ => Bytes::new(),
        }
    }

    fn execute_unordered(&self, operation: &[u8]) -> Bytes {
        match operation.split_first() {
            Some((0, rest)) => self.counter.execute_unordered(rest),
            Some((1, rest)) => self.register.execute_unordered(rest),
            _ => Bytes::new(),
        }
    }

    fn snapshot(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(16);
        b.put_slice(&self.counter.snapshot());
        b.put_slice(&self.register.snapshot());
        b.freeze()
    }

    fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        if snapshot.len() != 16 {
            return Err("sim snapshot must be 16 bytes".into());
        }
        self.counter.install(&snapshot[..8])?;
        self.register.install(&snapshot[8..])
    }
}
