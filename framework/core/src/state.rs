//! The replicated state as parts and records, and the digest a checkpoint
//! certifies.
//!
//! A service whose state is small snapshots it whole at every checkpoint
//! ([`crate::Service::snapshot`]). A service whose state is large divides
//! it into a fixed number of *parts* ([`PartedState`]), each a list of
//! *records* (for a key-value map: one record per key). Then:
//!
//! - a record's digest is computed once, when the record changes;
//! - a part's digest is the hash of its records' digests ([`part_digest`]);
//! - the state's digest, the one checkpoints certify, is the hash of every
//!   part's digest ([`state_digest`]).
//!
//! A checkpoint re-hashes only the parts that changed since the last one,
//! and encodes nothing: a [`Part`] keeps its records' digests and produces
//! their bytes only when asked (to write a snapshot file or to serve a
//! laggard). State transfer fetches only the parts whose digests differ,
//! record by record, each record checked against its digest, so no frame
//! ever needs to hold more than one piece of one record.

use crate::types::Digest;
use bytes::Bytes;
use std::sync::Arc;

/// Domain prefixes, so that a part's digest can never be taken for a
/// record's or the state's.
const PART_DOMAIN: &[u8] = b"palisade part v1";
const STATE_DOMAIN: &[u8] = b"palisade state v1";

/// A part's digest from its records' digests, in order.
pub fn part_digest(records: &[Digest]) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(PART_DOMAIN);
    h.update((records.len() as u64).to_le_bytes());
    for r in records {
        h.update(r.0);
    }
    Digest(h.finalize().into())
}

/// The state's digest from its parts' digests, in order: what a checkpoint
/// certifies.
pub fn state_digest(parts: &[Digest]) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(STATE_DOMAIN);
    h.update((parts.len() as u64).to_le_bytes());
    for p in parts {
        h.update(p.0);
    }
    Digest(h.finalize().into())
}

/// Produces a frozen part's records on demand.
pub trait RecordSource: Send + Sync {
    /// The bytes of record `j`; their SHA-256 is the part's `digests[j]`.
    fn record(&self, j: usize) -> Bytes;
}

/// Records already encoded.
struct Encoded(Vec<Bytes>);

impl RecordSource for Encoded {
    fn record(&self, j: usize) -> Bytes {
        self.0[j].clone()
    }
}

/// One part of the state as it was when taken: its records' digests, and
/// a way to produce their bytes later (on another thread, or never).
#[derive(Clone)]
pub struct Part {
    digests: Arc<[Digest]>,
    source: Arc<dyn RecordSource>,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part").field("records", &self.digests.len()).field("digest", &self.digest()).finish()
    }
}

impl Part {
    /// A part whose records are produced by `source`; `digests[j]` must be
    /// the SHA-256 of `source.record(j)`.
    pub fn new(digests: Vec<Digest>, source: Arc<dyn RecordSource>) -> Part {
        Part { digests: digests.into(), source }
    }

    /// A part of records already encoded (hashes them).
    pub fn from_records(records: Vec<Bytes>) -> Part {
        let digests = records.iter().map(|r| Digest::of(r)).collect();
        Part::new(digests, Arc::new(Encoded(records)))
    }

    /// An empty part.
    pub fn empty() -> Part {
        Part::from_records(Vec::new())
    }

    /// Its records' digests.
    pub fn record_digests(&self) -> &[Digest] {
        &self.digests
    }

    /// How many records it has.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether it has no records.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Record `j`'s bytes.
    pub fn record(&self, j: usize) -> Bytes {
        self.source.record(j)
    }

    /// Every record's bytes, produced now.
    pub fn records(&self) -> Vec<Bytes> {
        (0..self.len()).map(|j| self.record(j)).collect()
    }

    /// Its digest.
    pub fn digest(&self) -> Digest {
        part_digest(&self.digests)
    }
}

/// A large state divided into parts (see the module documentation).
///
/// Every method must be deterministic: replicas with equal states return
/// equal part counts, parts and digests.
pub trait PartedState {
    /// How many parts the state has: the same on every replica, for the
    /// service's whole life.
    fn part_count(&self) -> u32;
    /// The parts changed since the last call (each at most once, in any
    /// order). The first call after creation or after an install may
    /// return every part.
    fn take_changed(&mut self) -> Vec<u32>;
    /// Part `i` as it is now. Should be cheap: no record needs encoding
    /// until someone asks for its bytes.
    fn part(&self, i: u32) -> Part;
    /// Part `i`'s digest; override when it is cheaper than [`Self::part`].
    fn part_digest(&self, i: u32) -> Digest {
        self.part(i).digest()
    }
    /// Replaces part `i` with `records` (each already checked against a
    /// certified digest).
    fn install_part(&mut self, i: u32, records: Vec<Bytes>) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_every_record_and_part_and_on_their_order() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_ne!(part_digest(&[a, b]), part_digest(&[b, a]));
        assert_ne!(part_digest(&[a]), part_digest(&[a, a]));
        assert_ne!(part_digest(&[]), state_digest(&[]), "a part is never taken for a state");
        let p = Part::from_records(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert_eq!(p.digest(), part_digest(&[a, b]));
        assert_eq!(p.record(1), Bytes::from_static(b"b"));
        assert_ne!(state_digest(&[p.digest()]), state_digest(&[p.digest(), Part::empty().digest()]));
    }
}
