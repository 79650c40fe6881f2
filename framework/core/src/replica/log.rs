//! The consensus instances between the watermarks: one slot per sequence
//! number, with what this replica knows and said there.

use crate::message::{null_digest, Batch};
use crate::types::{Digest, ReplicaId, SeqNo, ViewNo};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One consensus instance (BFT-SMaRt's consensus id).
#[derive(Clone, Debug, Default)]
pub(super) struct Slot {
    /// View the per-view fields below belong to.
    pub view: ViewNo,
    pub pre_prepare: Option<Digest>,
    pub prepares: BTreeMap<ReplicaId, Digest>,
    pub commits: BTreeMap<ReplicaId, Digest>,
    pub prepared_here: bool,
    /// P: latest view in which this replica prepared here.
    pub prepared: Option<(ViewNo, Digest)>,
    /// Q: digests pre-prepared here, with the latest view of each.
    pub preprepared: BTreeMap<Digest, ViewNo>,
    /// Contents for digests in Q and for the decision.
    pub batches: BTreeMap<Digest, Arc<Batch>>,
    pub decided: Option<Digest>,
    pub decided_notices: BTreeMap<ReplicaId, Digest>,
    /// When this replica last sent or heard something here (retransmission).
    pub touched_ms: u64,
    /// When this view's PRE-PREPARE was accepted (or sent) here: the start
    /// of the round the request timeout is measured in.
    pub accepted_ms: Option<u64>,
    pub batch_requested_ms: Option<u64>,
}

impl Slot {
    /// Records in Q that `digest` was pre-prepared here in `view` (the
    /// latest view wins). Nothing is ever evicted: a correct replica holds
    /// at most n + 1 digests per sequence number
    /// (`view_change::digests_per_seq_max`), and each one's batch stays, so
    /// a voucher the decision rule may need, and the batch a NEW-VIEW may
    /// choose, are never lost.
    pub fn add_q(&mut self, digest: Digest, view: ViewNo) {
        let e = self.preprepared.entry(digest).or_insert(view);
        if *e < view {
            *e = view;
        }
    }

    /// Whether a request for this slot's batch may go out now, and if so
    /// marks it sent: peers answer one a `period` per slot, no faster.
    pub fn batch_request_due(&mut self, now: u64, period: u64) -> bool {
        let due = self.batch_requested_ms.is_none_or(|t| now >= t + period);
        if due {
            self.batch_requested_ms = Some(now);
        }
        due
    }

    /// Whether this replica holds what `digest` names (the null batch
    /// needs no fetching).
    pub fn holds(&self, digest: Digest) -> bool {
        digest == null_digest() || self.batches.contains_key(&digest)
    }
}

/// The slots, and where the sequence of delivered batches stands.
pub(super) struct Log {
    pub slots: BTreeMap<SeqNo, Slot>,
    /// Highest sequence number delivered (executed in order).
    pub delivered: SeqNo,
    /// On the primary, the next sequence number to propose at.
    pub next_seq: SeqNo,
    /// The primary never stamps a batch earlier than the one before.
    pub last_timestamp_ms: u64,
    pub null_batch: Arc<Batch>,
    /// The batch executed tentatively at `delivered + 1`, by digest.
    pub tentative: Option<(SeqNo, Digest)>,
}

impl Log {
    pub fn new() -> Log {
        Log {
            slots: BTreeMap::new(),
            delivered: SeqNo(0),
            next_seq: SeqNo(1),
            last_timestamp_ms: 0,
            null_batch: Arc::new(Batch::null()),
            tentative: None,
        }
    }

    /// The slot for `seq`, with its per-view fields reset if they belong to
    /// a view older than `view`.
    pub fn slot_in_view(&mut self, seq: SeqNo, view: ViewNo) -> &mut Slot {
        let slot = self.slots.entry(seq).or_default();
        if slot.view < view {
            slot.view = view;
            slot.pre_prepare = None;
            slot.prepares.clear();
            slot.commits.clear();
            slot.prepared_here = false;
            slot.accepted_ms = None;
        }
        slot
    }

    /// The batch named `digest` at `seq`, if held.
    pub fn batch_for(&self, seq: SeqNo, digest: Digest) -> Option<Arc<Batch>> {
        if digest == null_digest() {
            return Some(self.null_batch.clone());
        }
        self.slots.get(&seq).and_then(|s| s.batches.get(&digest).cloned())
    }

    /// What this replica decided at `seq`, while the slot is held.
    pub fn decided(&self, seq: SeqNo) -> Option<Digest> {
        self.slots.get(&seq).and_then(|s| s.decided)
    }

    /// Forgets every slot at or below a new stable checkpoint.
    pub fn truncate_through(&mut self, stable: SeqNo) {
        self.slots = self.slots.split_off(&stable.next());
    }
}
