//! A no-op service for benchmarks: every request gets a reply of the size
//! it asks for, and nothing else happens.

use bytes::Bytes;
use palisade_core::{ExecContext, Service};

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Encodes an echo request of `request_bytes` that asks for `reply_bytes`
/// back. The first 4 bytes carry the reply size; a request shorter than 4
/// bytes asks for an empty reply, so a 0/0 workload sends empty operations.
pub fn request(request_bytes: usize, reply_bytes: u32) -> Bytes {
    if reply_bytes == 0 {
        return Bytes::from(vec![0u8; request_bytes]);
    }
    let mut v = vec![0u8; request_bytes.max(4)];
    v[..4].copy_from_slice(&reply_bytes.to_le_bytes());
    Bytes::from(v)
}

/// The echo service; stateless, so its snapshot is empty.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

fn reply(operation: &[u8]) -> Bytes {
    let size = operation
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .unwrap_or(0)
        .min(ZEROS.len());
    Bytes::from_static(&ZEROS[..size])
}

impl Service for Echo {
    fn execute(&mut self, _ctx: &ExecContext, operation: &[u8]) -> Bytes {
        reply(operation)
    }
    fn execute_unordered(&self, operation: &[u8]) -> Bytes {
        reply(operation)
    }
    fn snapshot(&self) -> Bytes {
        Bytes::new()
    }
    fn install(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_the_requested_size_without_allocating() {
        let e = Echo;
        assert_eq!(e.execute_unordered(&request(100, 1024)).len(), 1024);
        assert_eq!(e.execute_unordered(&request(0, 0)).len(), 0);
        assert_eq!(e.execute_unordered(&[1]).len(), 0);
        assert_eq!(e.execute_unordered(&request(8, u32::MAX)).len(), 64 << 10);
    }
}

/// Typed calls on a replicated [`Echo`]: the benchmark's client.
#[derive(Clone)]
pub struct EchoClient {
    client: palisade_client::Client,
}

impl EchoClient {
    /// Wraps a client.
    pub fn new(client: palisade_client::Client) -> EchoClient {
        EchoClient { client }
    }

    /// Orders a request of `request_bytes` asking for `reply_bytes` back.
    pub async fn echo(&self, request_bytes: usize, reply_bytes: u32) -> Result<Bytes, palisade_client::InvokeError> {
        self.client.invoke_ordered(request(request_bytes, reply_bytes)).await
    }
}
