//! A replicated key-value map: put, get, remove, size, keys (paged), with
//! its state in parts so that it can grow to gigabytes.

use crate::DecodeError;
use bytes::Bytes;
use palisade_client::{Client, InvokeError};
use palisade_core::state::{Part, PartedState, RecordSource};
use palisade_core::{Digest, ExecContext, Service};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A key-value operation.
///
/// Variants are only ever appended, so that encoded operations keep their meaning.
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
    /// Every key, in order (read-only). A large map's listing may not fit
    /// one answer: [`KvOp::KeysAfter`] pages through it.
    Keys,
    /// Keys in order, from the first one after `after` (from the start when
    /// `None`), at most `limit` of them and about `max_bytes` of keys (read-only).
    KeysAfter {
        /// Where the previous page ended.
        after: Option<Bytes>,
        /// Keys in the page, at most.
        limit: u32,
        /// Bytes of keys in the page, about (at least one key is given).
        max_bytes: u32,
    },
}

/// A key-value result.
///
/// Variants are only ever appended.
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
    /// A page of keys, and whether more follow.
    KeyPage {
        /// The keys.
        keys: Vec<Bytes>,
        /// Whether keys follow the last one.
        more: bool,
    },
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
        matches!(self, KvOp::Get(_) | KvOp::Size | KvOp::Keys | KvOp::KeysAfter { .. })
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

/// Parts a [`KvStore`] divides its keys into, unless told otherwise: at a
/// gigabyte of values, about 16 KiB each, so a checkpoint re-hashes little
/// and a laggard fetches little more than what changed.
pub const DEFAULT_PARTS: u32 = 1 << 16;

/// A value and the digest of its record (`postcard((key, value))`), computed
/// once, when the value is set.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: Bytes,
    digest: Digest,
}

fn record(key: &Bytes, value: &Bytes) -> Bytes {
    Bytes::from(postcard::to_allocvec(&(key, value)).expect("records encode"))
}

/// The key-value service. Keys are spread over a fixed number of parts by
/// a hash of the key (see `palisade_core::state`): a checkpoint re-hashes
/// only the parts that changed, from digests computed when each value was
/// set, and copies no value. An ordered index of every key serves `keys`.
#[derive(Clone)]
pub struct KvStore {
    parts: Vec<BTreeMap<Bytes, Entry>>,
    index: BTreeSet<Bytes>,
    changed: BTreeSet<u32>,
}

/// Equal contents; which parts changed since the last checkpoint is
/// bookkeeping, not state.
impl PartialEq for KvStore {
    fn eq(&self, other: &KvStore) -> bool {
        self.parts == other.parts
    }
}

impl Eq for KvStore {}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore").field("keys", &self.index.len()).field("parts", &self.parts.len()).finish()
    }
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::with_parts(DEFAULT_PARTS)
    }
}

impl KvStore {
    /// A store whose keys are spread over `parts` parts (at least one).
    /// Every replica of a cluster must use the same number.
    pub fn with_parts(parts: u32) -> KvStore {
        let parts = parts.max(1);
        KvStore { parts: vec![BTreeMap::new(); parts as usize], index: BTreeSet::new(), changed: BTreeSet::new() }
    }

    fn part_of(&self, key: &[u8]) -> usize {
        let d = Digest::of(key);
        (u64::from_le_bytes(d.0[..8].try_into().expect("8 bytes")) % self.parts.len() as u64) as usize
    }

    pub(crate) fn get(&self, key: &Bytes) -> Option<Bytes> {
        self.parts[self.part_of(key)].get(key).map(|e| e.value.clone())
    }

    pub(crate) fn put(&mut self, key: Bytes, value: Bytes) -> Option<Bytes> {
        let p = self.part_of(&key);
        let digest = Digest::of(&record(&key, &value));
        self.changed.insert(p as u32);
        self.index.insert(key.clone());
        self.parts[p].insert(key, Entry { value, digest }).map(|e| e.value)
    }

    pub(crate) fn remove(&mut self, key: &Bytes) -> Option<Bytes> {
        let p = self.part_of(key);
        let old = self.parts[p].remove(key)?;
        self.changed.insert(p as u32);
        self.index.remove(key);
        Some(old.value)
    }

    /// The keys from `start` on, in order (for services built on the store).
    pub(crate) fn keys_from<'a>(&'a self, start: &[u8]) -> impl Iterator<Item = &'a Bytes> + 'a {
        use std::ops::Bound;
        self.index.range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
    }

    fn read(&self, op: &KvOp) -> KvResult {
        match op {
            KvOp::Get(k) => KvResult::Value(self.get(k)),
            KvOp::Size => KvResult::Size(self.index.len() as u64),
            KvOp::Keys => KvResult::Keys(self.index.iter().cloned().collect()),
            KvOp::KeysAfter { after, limit, max_bytes } => self.page(after.as_ref(), *limit, *max_bytes),
            _ => KvResult::BadOperation,
        }
    }

    fn page(&self, after: Option<&Bytes>, limit: u32, max_bytes: u32) -> KvResult {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut keys = Vec::new();
        let mut bytes = 0usize;
        let mut it = self.index.range::<Bytes, _>((start, Bound::Unbounded)).peekable();
        while let Some(k) = it.peek() {
            if keys.len() >= limit.max(1) as usize || (!keys.is_empty() && bytes + k.len() > max_bytes as usize) {
                break;
            }
            bytes += k.len() + 2;
            keys.push((*k).clone());
            it.next();
        }
        KvResult::KeyPage { keys, more: it.peek().is_some() }
    }
}

/// A part as it was at a checkpoint: its entries, shared with the store
/// (values are reference-counted), encoded only when asked for.
struct Frozen(Vec<(Bytes, Bytes)>);

impl RecordSource for Frozen {
    fn record(&self, j: usize) -> Bytes {
        let (k, v) = &self.0[j];
        record(k, v)
    }
}

impl PartedState for KvStore {
    fn part_count(&self) -> u32 {
        self.parts.len() as u32
    }

    fn take_changed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }

    fn part(&self, i: u32) -> Part {
        let part = &self.parts[i as usize];
        let digests = part.values().map(|e| e.digest).collect();
        let entries = part.iter().map(|(k, e)| (k.clone(), e.value.clone())).collect();
        Part::new(digests, Arc::new(Frozen(entries)))
    }

    fn part_digest(&self, i: u32) -> Digest {
        let digests: Vec<Digest> = self.parts[i as usize].values().map(|e| e.digest).collect();
        palisade_core::state::part_digest(&digests)
    }

    fn install_part(&mut self, i: u32, records: Vec<Bytes>) -> Result<(), String> {
        let i = i as usize;
        if i >= self.parts.len() {
            return Err(format!("part {i} of {}", self.parts.len()));
        }
        let mut part = BTreeMap::new();
        for r in records {
            let (key, value): (Bytes, Bytes) = postcard::from_bytes(&r).map_err(|e| format!("record: {e}"))?;
            if self.part_of(&key) != i {
                return Err(format!("a key of part {} in part {i}", self.part_of(&key)));
            }
            part.insert(key, Entry { value, digest: Digest::of(&r) });
        }
        for k in self.parts[i].keys() {
            self.index.remove(k);
        }
        self.index.extend(part.keys().cloned());
        self.parts[i] = part;
        self.changed.insert(i as u32);
        Ok(())
    }
}

impl Service for KvStore {
    fn execute(&mut self, _ctx: &ExecContext, operation: &[u8]) -> Bytes {
        let result = match KvOp::decode(operation) {
            Ok(KvOp::Put(k, v)) => KvResult::Value(self.put(k, v)),
            Ok(KvOp::Remove(k)) => KvResult::Value(self.remove(&k)),
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

    /// Every entry in key order: for tests and tools; checkpoints use the parts.
    fn snapshot(&self) -> Bytes {
        let entries: Vec<(&Bytes, Bytes)> = self.index.iter().map(|k| (k, self.get(k).unwrap_or_default())).collect();
        Bytes::from(postcard::to_allocvec(&entries).expect("snapshots encode"))
    }

    fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let entries: Vec<(Bytes, Bytes)> = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        let mut fresh = KvStore::with_parts(self.parts.len() as u32);
        for (k, v) in entries {
            fresh.put(k, v);
        }
        fresh.changed = (0..fresh.parts.len() as u32).collect();
        *self = fresh;
        Ok(())
    }

    fn parted(&self) -> Option<&dyn PartedState> {
        Some(self)
    }

    fn parted_mut(&mut self) -> Option<&mut dyn PartedState> {
        Some(self)
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

/// Bytes of keys per page when listing: well inside the smallest frame
/// limit a cluster accepts.
pub const PAGE_BYTES: u32 = 32 << 10;

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

    /// One page of keys, in order, after `after`: at most `limit` keys and
    /// about `max_bytes` of them. Returns the keys and whether more follow.
    pub async fn keys_after(
        &self,
        after: Option<Bytes>,
        limit: u32,
        max_bytes: u32,
    ) -> Result<(Vec<Bytes>, bool), KvError> {
        match self.call(KvOp::KeysAfter { after, limit, max_bytes }).await? {
            KvResult::KeyPage { keys, more } => Ok((keys, more)),
            other => Err(KvError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Every key, in order, a page at a time (so that no answer outgrows a
    /// frame however many keys there are). A cluster with frames smaller
    /// than a page says the page is too large; the page then shrinks.
    pub async fn keys(&self) -> Result<Vec<Bytes>, KvError> {
        let mut all = Vec::new();
        let mut page_bytes = PAGE_BYTES;
        loop {
            match self.keys_after(all.last().cloned(), 10_000, page_bytes).await {
                Ok((page, more)) => {
                    all.extend(page);
                    if !more {
                        return Ok(all);
                    }
                }
                Err(KvError::Invoke(InvokeError::ResultTooLarge { .. })) if page_bytes > 256 => page_bytes /= 2,
                Err(e) => return Err(e),
            }
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

    #[test]
    fn keys_page_in_order_within_their_byte_budget() {
        let mut s = KvStore::with_parts(8);
        for i in 0..500u32 {
            run(&mut s, KvOp::Put(format!("key{i:05}").into(), "v".into()));
        }
        let mut all: Vec<Bytes> = Vec::new();
        let mut pages = 0;
        loop {
            let op = KvOp::KeysAfter { after: all.last().cloned(), limit: 1000, max_bytes: 400 };
            let KvResult::KeyPage { keys, more } = run(&mut s, op) else { panic!("not a page") };
            assert!(keys.iter().map(|k| k.len() + 2).sum::<usize>() <= 400 + 10);
            all.extend(keys);
            pages += 1;
            if !more {
                break;
            }
        }
        assert!(pages > 10);
        let expected: Vec<Bytes> = (0..500u32).map(|i| Bytes::from(format!("key{i:05}"))).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_part_holds_only_its_own_keys_and_installing_one_keeps_the_index_true() {
        let mut a = KvStore::with_parts(4);
        for i in 0..40u32 {
            run(&mut a, KvOp::Put(format!("k{i}").into(), format!("v{i}").into()));
        }
        let mut b = KvStore::with_parts(4);
        run(&mut b, KvOp::Put("stale".into(), "x".into()));
        for p in 0..4 {
            let part = a.part(p);
            b.install_part(p, (0..part.len()).map(|j| part.record(j)).collect()).unwrap();
        }
        assert_eq!(b, a);
        assert_eq!(run(&mut b, KvOp::Size), KvResult::Size(40));
        assert_eq!(run(&mut b, KvOp::Get("stale".into())), KvResult::Value(None));
        // A record put in the wrong part is refused.
        let wrong = (0..4).find(|p| *p != a.part_of(b"k1") as u32).unwrap();
        assert!(b.install_part(wrong, vec![record(&"k1".into(), &"v".into())]).is_err());
    }
}
