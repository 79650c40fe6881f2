//! Catching up without a view change: STATUS, DECIDED notices, relayed
//! proofs and NEW-VIEWs, and the rule that a replica that is merely
//! behind waits on itself, not on the primary.

use super::Replica;
use crate::answers::AnswerKind;
use crate::crypto::Crypto;
use crate::message::{PeerMessage, Status};
use crate::types::{Digest, ReplicaId, SeqNo, ViewNo};
use std::collections::BTreeMap;

/// Request timeouts a replica that is behind may wait out per view before
/// it suspects the primary anyway.
pub const MAX_CATCH_UP_RESTARTS: u32 = 4;

/// The request-timer restarts of one view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Restarts {
    /// The view they count in.
    view: ViewNo,
    /// How many, in that view.
    count: u32,
    /// What this replica had delivered at the last one.
    delivered_then: SeqNo,
}

impl Restarts {
    /// Counts one more restart in `view`; a new view starts a new count.
    pub fn record(&mut self, view: ViewNo, delivered: SeqNo) {
        let count = if self.view == view { self.count + 1 } else { 1 };
        *self = Restarts { view, count, delivered_then: delivered };
    }

    /// Restarts so far in `view`, and whether this replica delivered
    /// something since the last (a new view counts as progress).
    fn in_view(&self, view: ViewNo, delivered: SeqNo) -> (u32, bool) {
        if self.view == view {
            (self.count, delivered > self.delivered_then)
        } else {
            (0, true)
        }
    }
}

#[derive(Default)]
pub(super) struct CatchUp {
    /// The view and delivered sequence number each peer last reported in
    /// STATUS: how far behind this replica is.
    peer_progress: BTreeMap<ReplicaId, (ViewNo, SeqNo)>,
    /// Request timers count from here at the earliest: moved to now when
    /// a timer expires while this replica is catching up.
    pub restarted_ms: u64,
    pub restarts: Restarts,
}

impl<C: Crypto> Replica<C> {
    pub(super) fn on_status(&mut self, from: ReplicaId, st: Status) {
        if st.normal {
            self.catch_up.peer_progress.insert(from, (st.view, st.delivered));
        } else {
            self.catch_up.peer_progress.remove(&from);
        }
        let stable = self.checkpoints.stable.seq;
        if st.stable < stable && stable > self.genesis.seq && self.may_answer(from, AnswerKind::CheckpointProof) {
            // Their stable checkpoint is below ours (CHECKPOINT messages are
            // not retransmitted, so a lost one leaves a peer behind): give
            // them its proof; each vote is signed by its author, so relaying
            // is safe. It moves their watermarks, or starts their transfer.
            for vote in self.checkpoints.stable.proof.clone() {
                self.send(from, PeerMessage::Checkpoint(vote));
            }
        }
        let delivered = self.log.delivered;
        if st.delivered < delivered {
            let start = st.delivered.max(stable).0 + 1;
            let end = delivered.0.min(st.delivered.0 + self.cfg.catch_up_max);
            if start <= end && self.may_answer(from, AnswerKind::Decided) {
                for s in start..=end {
                    if let Some(d) = self.log.decided(SeqNo(s)) {
                        self.send(from, PeerMessage::Decided { seq: SeqNo(s), digest: d });
                    }
                }
            }
        }
        let behind = st.view < self.view || (st.view == self.view && !st.normal);
        if self.normal && behind {
            self.relay_new_view(from);
        }
    }

    /// Sends this view's NEW-VIEW to a peer behind it, at most once per
    /// retransmission period: it is the largest message a replica sends.
    pub(super) fn relay_new_view(&mut self, to: ReplicaId) {
        if self.changes.new_view.is_some() && self.may_answer(to, AnswerKind::NewView) {
            let nv = self.changes.new_view.clone().expect("checked");
            self.send(to, PeerMessage::NewView(nv));
        }
    }

    /// f+1 replicas say `seq` committed with `digest`: at least one is
    /// correct, and a correct replica only decides what committed.
    pub(super) fn on_decided(&mut self, from: ReplicaId, seq: SeqNo, digest: Digest) {
        if seq <= self.log.delivered || !self.in_window(seq) {
            return;
        }
        let need = self.membership().voucher_quorum();
        let slot = self.log.slots.entry(seq).or_default();
        slot.decided_notices.insert(from, digest);
        if slot.decided.is_none() && slot.decided_notices.values().filter(|d| **d == digest).count() >= need {
            self.metrics.decisions_learned += 1;
            self.decide(seq, digest);
        }
    }

    /// Whether an expired request timer may restart because this replica
    /// is behind: at most `MAX_CATCH_UP_RESTARTS` times per view, and after
    /// the first only if it delivered something since the last. A faulty
    /// primary that keeps a correct replica behind on purpose (withholding
    /// what it needs to deliver, while f+1 others report progress) thus
    /// delays that replica's suspicion by a few timeouts, never forever.
    ///
    /// A replica fetching a certified checkpoint is behind by definition (a
    /// quorum signed a state it lacks), and nobody can withhold the state
    /// from it: any correct peer serves it. So while a transfer runs, the
    /// timers restart without limit.
    pub(super) fn may_wait_to_catch_up(&self) -> bool {
        if self.transfer.is_some() {
            return true;
        }
        let (count, progressed) = self.catch_up.restarts.in_view(self.view, self.log.delivered);
        count < MAX_CATCH_UP_RESTARTS && (count == 0 || progressed) && self.lagging()
    }

    /// Whether f+1 peers in this replica's view have delivered more than a
    /// pipeline's worth past it.
    pub(super) fn lagging(&self) -> bool {
        let mut ahead: Vec<SeqNo> =
            self.catch_up.peer_progress.values().filter(|(v, _)| *v == self.view).map(|(_, d)| *d).collect();
        ahead.sort_unstable_by(|a, b| b.cmp(a));
        let f_plus_1 = self.membership().weak_quorum();
        ahead.get(f_plus_1 - 1).is_some_and(|d| d.0 > self.log.delivered.0 + self.cfg.max_in_flight)
    }
}
