//! What a peer's question may cost.
//!
//! Some peer messages are questions whose answers are much larger than
//! they are: a STATUS from a laggard earns a NEW-VIEW, DECIDED notices and
//! a checkpoint proof; a BATCH-REQUEST a whole batch; a STATE-FETCH a
//! frame of state. Without a limit, one Byzantine replica could keep a
//! primary's uplink full by asking the same questions over and over. Each
//! kind of answer therefore goes to each peer at most once per interval
//! (batches: once per sequence number, and a bounded number per interval),
//! which is all a correct peer ever needs: it asks again only after its
//! own retransmission timer.

use crate::types::{ReplicaId, SeqNo};
use std::collections::BTreeMap;

/// A kind of answer, limited separately per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnswerKind {
    /// The NEW-VIEW of this replica's view, to a peer behind it.
    NewView,
    /// The signed proof of the stable checkpoint, to a peer below it.
    CheckpointProof,
    /// DECIDED notices, to a peer that has delivered less.
    Decided,
    /// The batch at one sequence number.
    Batch(SeqNo),
    /// Batches of any sequence number, counted per interval.
    Batches,
    /// A piece of a checkpoint's state, for state transfer.
    StatePiece,
    /// This replica's progress, to a peer rejoining without its votes.
    Rejoin,
}

/// When each peer last got each kind of answer.
#[derive(Clone, Debug, Default)]
pub struct AnswerLimiter {
    last: BTreeMap<(ReplicaId, AnswerKind), (u64, u32)>,
}

impl AnswerLimiter {
    /// Whether `peer` may have one more answer of `kind` at `now_ms`: at
    /// most `per_interval` of them in any window of `interval_ms`
    /// starting at the first. Allowing counts it.
    pub fn allow(
        &mut self,
        peer: ReplicaId,
        kind: AnswerKind,
        now_ms: u64,
        interval_ms: u64,
        per_interval: u32,
    ) -> bool {
        let entry = self.last.entry((peer, kind)).or_insert((now_ms, 0));
        if now_ms >= entry.0.saturating_add(interval_ms) {
            *entry = (now_ms, 0);
        }
        if entry.1 >= per_interval {
            return false;
        }
        entry.1 += 1;
        true
    }

    /// Forgets windows that ended more than `horizon_ms` ago, so the table
    /// holds at most one entry per peer and kind (and per sequence number
    /// in the log window for batches).
    pub fn forget_older_than(&mut self, now_ms: u64, horizon_ms: u64) {
        self.last.retain(|_, (start, _)| start.saturating_add(horizon_ms) > now_ms);
    }

    /// Entries held; bounded by peers times kinds plus the log window.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_and_kind_gets_its_allowance_per_interval_and_no_more() {
        let mut l = AnswerLimiter::default();
        let (a, b) = (ReplicaId(1), ReplicaId(2));
        assert!(l.allow(a, AnswerKind::NewView, 0, 100, 1));
        assert!(!l.allow(a, AnswerKind::NewView, 99, 100, 1), "once per interval");
        assert!(l.allow(b, AnswerKind::NewView, 99, 100, 1), "peers are limited separately");
        assert!(l.allow(a, AnswerKind::Decided, 99, 100, 1), "kinds are limited separately");
        assert!(l.allow(a, AnswerKind::NewView, 100, 100, 1), "a new interval");
        assert!(l.allow(a, AnswerKind::Batches, 0, 100, 2) && l.allow(a, AnswerKind::Batches, 1, 100, 2));
        assert!(!l.allow(a, AnswerKind::Batches, 2, 100, 2));
        l.forget_older_than(1_000, 200);
        assert!(l.is_empty());
    }
}
