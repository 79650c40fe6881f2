//! A replicated key-value map: put, get, remove, size, keys.

use crate::DecodeError;
use bytes::Bytes;
use palisade_client::{Client, InvokeError};
use palisade_core::{ExecContext, Service};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A key-value operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Sets `key` to `value`; the result is the previous value.
    Put(Bytes, Bytes),
    /// Reads `key` (read-only).
    Get(Bytes),
    /// Removes `key`; the result is the removed value.
    Remove(Bytes),
    /// Number of keys (read-only).
    Size,
    /// Every key, in order (read-only).
    Keys,
}

/// A key-value result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// A value, or none.
    Value(Option<Bytes>),
    /// A count.
    Size(u64),
    /// Keys.
    Keys(Vec<Bytes>),
    /// The operation did not decode.
    BadOperation,
}

impl KvOp {
    /// Encodes the operation.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("kv operations encode"))
    }

    /// Decodes an operation.
    pub fn decode(bytes: &[u8]) -> Result<KvOp, DecodeError> {
        postcard::from_bytes(bytes).map_err(|_| DecodeError("not a key-value operation"))
    }

    /// Whether it leaves state unchanged.
    pub fn is_read_only(&self) -> bool {
        matches!(self, KvOp::Get(_) | KvOp::Size | KvOp::Keys)
    }
}

impl KvResult {
    fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("kv results encode"))
    }

    /// Decodes a result.
    pub fn decode(bytes: &[u8]) -> Result<KvResult, DecodeError> {
        postcard::from_bytes(bytes).map_err(|_| DecodeError("not a key-value result"))
    }
}

/// The key-value service. A `BTreeMap`, so iteration (and so snapshots and
/// `keys`) is ordered the same way on every replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Bytes, Bytes>,
}

impl KvStore {
    fn read(&self, op: &KvOp) -> KvResult {
        match op {
            KvOp::Get(k) => KvResult::Value(self.map.get(k).cloned()),
            KvOp::Size => KvResult::Size(self.map.len() as u64),
            KvOp::Keys => KvResult::Keys(self.map.keys().cloned().collect()),
            _ => KvResult::BadOperation,
        }
    }
}

impl Service for KvStore {
    fn execute(&mut self, _ctx: &ExecContext, operation: &[u8]) -> Bytes {
        let result = match KvOp::decode(operation) {
            Ok(KvOp::Put(k, v)) => KvResult::Value(self.map.insert(k, v)),
            Ok(KvOp::Remove(k)) => KvResult::Value(self.map.remove(&k)),
            Ok(op) => self.read(&op),
            Err(_) => KvResult::BadOperation,
        };
        result.encode()
    }

    fn execute_unordered(&self, operation: &[u8]) -> Bytes {
        match KvOp::decode(operation) {
            Ok(op) if op.is_read_only() => self.read(&op),
            _ => KvResult::BadOperation,
        }
        .encode()
    }

    fn snapshot(&self) -> Bytes {
        let entries: Vec<(&Bytes, &Bytes)> = self.map.iter().collect();
        Bytes::from(postcard::to_allocvec(&entries).expect("snapshots encode"))
    }

    fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let entries: Vec<(Bytes, Bytes)> = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        self.map = entries.into_iter().collect();
        Ok(())
    }
}

/// Why a typed key-value call failed.
#[derive(Debug)]
pub enum KvError {
    /// The cluster did not answer or refused.
    Invoke(InvokeError),
    /// The cluster's answer did not decode as expected.
    Unexpected(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Invoke(e) => e.fmt(f),
            KvError::Unexpected(what) => write!(f, "unexpected answer from the cluster: {what}"),
        }
    }
}

impl std::error::Error for KvError {}

/// Typed calls on a replicated [`KvStore`].
#[derive(Clone)]
pub struct KvClient {
    client: Client,
}

impl KvClient {
    /// Wraps a client.
    pub fn new(client: Client) -> KvClient {
        KvClient { client }
    }

    async fn call(&self, op: KvOp) -> Result<KvResult, KvError> {
        let bytes = if op.is_read_only() {
            self.client.invoke_unordered(op.encode()).await
        } else {
            self.client.invoke_ordered(op.encode()).await
        }
        .map_err(KvError::Invoke)?;
        KvResult::decode(&bytes).map_err(|e| KvError::Unexpected(e.to_string()))
    }

    async fn value(&self, op: KvOp) -> Result<Option<Bytes>, KvError> {
        match self.call(op).await? {
            KvResult::Value(v) => Ok(v),
            other => Err(KvError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sets `key`; returns the previous value.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<Option<Bytes>, KvError> {
        self.value(KvOp::Put(key.into(), value.into())).await
    }

    /// Reads `key`.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, KvError> {
        self.value(KvOp::Get(key.into())).await
    }

    /// Removes `key`; returns the removed value.
    pub async fn remove(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, KvError> {
        self.value(KvOp::Remove(key.into())).await
    }

    /// Number of keys.
    pub async fn size(&self) -> Result<u64, KvError> {
        match self.call(KvOp::Size).await? {
            KvResult::Size(n) => Ok(n),
            other => Err(KvError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Every key, in order.
    pub async fn keys(&self) -> Result<Vec<Bytes>, KvError> {
        match self.call(KvOp::Keys).await? {
            KvResult::Keys(k) => Ok(k),
            other => Err(KvError::Unexpected(format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ExecContext {
        crate::test_ctx()
    }

    fn run(s: &mut KvStore, op: KvOp) -> KvResult {
        KvResult::decode(&s.execute(&ctx(), &op.encode())).unwrap()
    }

    #[test]
    fn put_get_remove_size_keys() {
        let mut s = KvStore::default();
        assert_eq!(run(&mut s, KvOp::Put("b".into(), "1".into())), KvResult::Value(None));
        assert_eq!(run(&mut s, KvOp::Put("a".into(), "2".into())), KvResult::Value(None));
        assert_eq!(run(&mut s, KvOp::Put("b".into(), "3".into())), KvResult::Value(Some("1".into())));
        assert_eq!(run(&mut s, KvOp::Get("b".into())), KvResult::Value(Some("3".into())));
        assert_eq!(run(&mut s, KvOp::Size), KvResult::Size(2));
        assert_eq!(run(&mut s, KvOp::Keys), KvResult::Keys(vec!["a".into(), "b".into()]));
        assert_eq!(run(&mut s, KvOp::Remove("a".into())), KvResult::Value(Some("2".into())));
        assert_eq!(run(&mut s, KvOp::Remove("a".into())), KvResult::Value(None));
    }

    #[test]
    fn the_unordered_path_refuses_writes_and_garbage_is_an_error() {
        let s = KvStore::default();
        let r = KvResult::decode(&s.execute_unordered(&KvOp::Put("k".into(), "v".into()).encode())).unwrap();
        assert_eq!(r, KvResult::BadOperation);
        let mut s = KvStore::default();
        assert_eq!(KvResult::decode(&s.execute(&ctx(), b"\xff\xff")).unwrap(), KvResult::BadOperation);
    }

    #[test]
    fn snapshots_are_deterministic_and_round_trip() {
        let mut a = KvStore::default();
        let mut b = KvStore::default();
        for k in ["x", "y", "z"] {
            run(&mut a, KvOp::Put(k.into(), k.into()));
        }
        for k in ["z", "x", "y"] {
            run(&mut b, KvOp::Put(k.into(), k.into()));
        }
        assert_eq!(a.snapshot(), b.snapshot(), "insertion order must not leak into the state digest");
        let mut c = KvStore::default();
        c.install(&a.snapshot()).unwrap();
        assert_eq!(c, a);
        assert!(c.install(b"\xff").is_err());
    }
}
