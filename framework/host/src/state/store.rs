//! The state at the checkpoints a replica keeps, part by part, and the
//! answers it gives a peer fetching one of them.

use bytes::Bytes;
use palisade_core::message::{StateAnswer, StateItem, StateQuery};
use palisade_core::state::{state_digest, Part};
use palisade_core::{Digest, Executor, SeqNo, Service};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a piece of an answer costs besides its payload (tags, lengths,
/// indices), counted so that an answer stays inside its budget.
const ITEM_OVERHEAD: usize = 32;

/// The state at one checkpoint: every part as it was then (parts that did
/// not change since the checkpoint before share its copy), and digests.
#[derive(Clone)]
pub struct Kept {
    /// The state's digest: what the checkpoint certifies.
    pub root: Digest,
    /// Each part's digest.
    pub digests: Arc<Vec<Digest>>,
    /// Each part.
    pub parts: Arc<Vec<Part>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").field("root", &self.root).field("parts", &self.parts.len()).finish()
    }
}

/// A record of a kept state: checkpoint, part, record.
type RecordAt = (SeqNo, u32, u32);

/// How many more stable checkpoints a state someone asked about is kept
/// after the last question: a fetch that takes longer than checkpoints
/// take to move on can still finish the state it started.
pub const PINNED_FOR: u64 = 64;

/// The checkpoints a replica keeps: from the one before its stable
/// checkpoint up, and any that a peer is still fetching.
#[derive(Default)]
pub struct PartStore {
    kept: BTreeMap<SeqNo, Kept>,
    /// The newest stable checkpoint this replica knows.
    stable: SeqNo,
    /// Stable checkpoints seen (calls to `stable`).
    stables: u64,
    /// When each state was last asked about, in `stables`.
    asked: Mutex<BTreeMap<SeqNo, u64>>,
    /// The record last encoded for an answer: a record larger than a frame
    /// goes out in several answers, and is encoded once.
    last_record: Mutex<Option<(RecordAt, Bytes)>>,
}

impl PartStore {
    /// Keeps the state at `seq`, taking from `exec` only the parts in
    /// `changed` (all of them when there is nothing to start from).
    /// Returns the state's digest.
    pub fn take<S: Service>(&mut self, seq: SeqNo, exec: &Executor<S>, changed: &[u32]) -> Digest {
        let count = exec.part_count() as usize;
        let (mut digests, mut parts) = match self.kept.values().next_back() {
            Some(k) if k.parts.len() == count => ((*k.digests).clone(), (*k.parts).clone()),
            _ => return self.take_all(seq, exec),
        };
        for &i in changed {
            let part = exec.part(i);
            digests[i as usize] = part.digest();
            parts[i as usize] = part;
        }
        self.keep(seq, digests, parts)
    }

    /// Keeps the state at `seq`, taking every part from `exec`.
    pub fn take_all<S: Service>(&mut self, seq: SeqNo, exec: &Executor<S>) -> Digest {
        let parts: Vec<Part> = (0..exec.part_count()).map(|i| exec.part(i)).collect();
        let digests = parts.iter().map(Part::digest).collect();
        self.keep(seq, digests, parts)
    }

    fn keep(&mut self, seq: SeqNo, digests: Vec<Digest>, parts: Vec<Part>) -> Digest {
        let root = state_digest(&digests);
        self.kept.insert(seq, Kept { root, digests: Arc::new(digests), parts: Arc::new(parts) });
        root
    }

    /// The state at `seq`, if kept.
    pub fn get(&self, seq: SeqNo) -> Option<&Kept> {
        self.kept.get(&seq)
    }

    /// The newest state kept.
    pub fn newest(&self) -> Option<(SeqNo, &Kept)> {
        self.kept.iter().next_back().map(|(s, k)| (*s, k))
    }

    /// Every state kept, oldest first.
    pub fn all(&self) -> impl Iterator<Item = (SeqNo, &Kept)> {
        self.kept.iter().map(|(s, k)| (*s, k))
    }

    /// The newest state kept whose checkpoint is stable: what goes to
    /// disk. A snapshot of a checkpoint not yet stable would be all a
    /// replica restarted from it could serve, and a peer fetching the
    /// stable state could then find it nowhere.
    pub fn newest_stable(&self) -> Option<(SeqNo, &Kept)> {
        self.kept.range(..=self.stable).next_back().map(|(s, k)| (*s, k))
    }

    /// Checkpoint `seq` is stable: forgets the states below `keep_from`,
    /// except those a peer asked about lately; with none left from there
    /// up (a fetch is about to bring one), keeps the newest older one, so a
    /// restart still has something to start from.
    pub fn stable(&mut self, seq: SeqNo, keep_from: SeqNo) {
        self.stable = self.stable.max(seq);
        self.stables += 1;
        let stables = self.stables;
        let mut asked = self.asked.lock();
        asked.retain(|_, at| *at + PINNED_FOR >= stables);
        let newer = self.kept.split_off(&keep_from);
        let fallback = self.kept.pop_last();
        let pinned: Vec<(SeqNo, Kept)> =
            std::mem::take(&mut self.kept).into_iter().filter(|(s, _)| asked.contains_key(s)).collect();
        self.kept = newer;
        if self.kept.is_empty() {
            self.kept.extend(fallback);
        }
        self.kept.extend(pinned);
    }

    /// The answer to `query` about the state at `seq`, at most about
    /// `budget` bytes.
    pub fn answer(&self, seq: SeqNo, query: &StateQuery, budget: usize) -> StateAnswer {
        let Some(kept) = self.kept.get(&seq) else { return StateAnswer::Unavailable };
        self.asked.lock().insert(seq, self.stables);
        match query {
            StateQuery::Manifest { from } => {
                let total = kept.digests.len();
                let from = (*from as usize).min(total);
                let n = (budget / 32).max(1).min(total - from);
                StateAnswer::Manifest {
                    from: from as u32,
                    total: total as u32,
                    digests: kept.digests[from..from + n].to_vec(),
                }
            }
            StateQuery::Parts { parts, digests_from, record, offset } => {
                if parts.iter().any(|p| *p as usize >= kept.parts.len()) {
                    return StateAnswer::Unavailable;
                }
                let mut items = Vec::new();
                let mut left = budget.max(ITEM_OVERHEAD + 1);
                for (k, &p) in parts.iter().enumerate() {
                    let cursor = if k == 0 { (*digests_from, *record, *offset) } else { (0, 0, 0) };
                    if !self.fill(seq, p, &kept.parts[p as usize], cursor, &mut left, &mut items) {
                        break;
                    }
                }
                StateAnswer::Parts(items)
            }
        }
    }

    /// Appends part `p` from `cursor` on; false when the budget ran out
    /// before the part did.
    fn fill(
        &self,
        seq: SeqNo,
        p: u32,
        part: &Part,
        (digests_from, record, offset): (u32, u32, u64),
        left: &mut usize,
        items: &mut Vec<StateItem>,
    ) -> bool {
        let digests = part.record_digests();
        let total = digests.len();
        let mut from = (digests_from as usize).min(total);
        if from < total || (total == 0 && record == 0) {
            if *left <= ITEM_OVERHEAD {
                return false;
            }
            let n = ((*left - ITEM_OVERHEAD) / 32).max(1).min(total - from);
            items.push(StateItem::Digests {
                part: p,
                from: from as u32,
                total: total as u32,
                digests: digests[from..from + n].to_vec(),
            });
            *left = left.saturating_sub(ITEM_OVERHEAD + 32 * n);
            from += n;
            if from < total {
                return false;
            }
        }
        let (mut r, mut off) = (record as usize, offset);
        while r < total {
            if *left <= ITEM_OVERHEAD {
                return false;
            }
            let bytes = self.record(seq, p, r, part);
            let len = bytes.len() as u64;
            let start = off.min(len) as usize;
            let take = (*left - ITEM_OVERHEAD).min(bytes.len() - start);
            items.push(StateItem::Bytes {
                part: p,
                record: r as u32,
                offset: start as u64,
                len,
                bytes: bytes.slice(start..start + take),
            });
            *left = left.saturating_sub(ITEM_OVERHEAD + take);
            if start + take < bytes.len() {
                return false;
            }
            r += 1;
            off = 0;
        }
        true
    }

    fn record(&self, seq: SeqNo, p: u32, r: usize, part: &Part) -> Bytes {
        let key = (seq, p, r as u32);
        let mut last = self.last_record.lock();
        if let Some((k, b)) = &*last {
            if *k == key {
                return b.clone();
            }
        }
        let bytes = part.record(r);
        *last = Some((key, bytes.clone()));
        bytes
    }
}
