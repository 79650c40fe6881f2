//! The view-change driver (PBFT 4.4), first half: suspecting the primary,
//! sending and collecting VIEW-CHANGEs, the join rule and the view-change
//! timer. The decision rule is `crate::view_change`; entering the new view
//! is `new_view`.

use super::{Discard, Record, Replica, ViewChangeReason};
use crate::crypto::{self, Crypto, Domain};
use crate::message::{NewViewBody, PeerMessage, PrePreparedEntry, PreparedEntry, Signed, ViewChangeBody};
use crate::types::{ReplicaId, ViewNo};
use crate::view_change as rule;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct ViewChanges {
    /// The highest VIEW-CHANGE of each replica (its own included), verified.
    pub received: BTreeMap<ReplicaId, Signed<ViewChangeBody>>,
    /// The NEW-VIEW of the current view, relayed to replicas behind it.
    pub new_view: Option<Arc<Signed<NewViewBody>>>,
}

impl<C: Crypto> Replica<C> {
    /// This replica's P and Q sets above its stable checkpoint, signed.
    pub(super) fn build_view_change(&self) -> Signed<ViewChangeBody> {
        let mut prepared = Vec::new();
        let mut preprepared = Vec::new();
        for (&seq, slot) in self.log.slots.range(self.checkpoints.stable.seq.next()..) {
            if !self.in_window(seq) {
                continue;
            }
            if let Some((view, digest)) = slot.prepared {
                prepared.push(PreparedEntry { seq, view, digest });
            }
            for (&digest, &view) in &slot.preprepared {
                preprepared.push(PrePreparedEntry { seq, digest, view });
            }
        }
        let body = ViewChangeBody {
            new_view: self.view,
            replica: self.id,
            checkpoint: self.checkpoints.stable.clone(),
            prepared,
            preprepared,
        };
        crypto::sign(&self.crypto, Domain::ViewChange, body)
    }

    /// Moves to `target`, changing views: persists it, and (unless
    /// rejoining) sends this replica's VIEW-CHANGE.
    pub(super) fn start_view_change(&mut self, target: ViewNo, why: ViewChangeReason) {
        if target <= self.view {
            return;
        }
        self.view = target;
        self.normal = false;
        self.metrics.view_changes += 1;
        self.metrics.last_view_change = Some(why);
        self.persist(Record::ViewChange { view: target });
        if !self.rejoining() {
            self.send_own_view_change();
        }
        // PBFT: the timer for the next view starts only once a quorum asks
        // for this one, so a replica cut off from the rest does not race
        // ahead through views on its own.
        self.timers.view_change.deadline_ms = None;
        self.arm_view_change_timer();
        self.try_new_view();
    }

    pub(super) fn send_own_view_change(&mut self) {
        let vc = self.build_view_change();
        self.changes.received.insert(self.id, vc.clone());
        self.broadcast(PeerMessage::ViewChange(vc));
    }

    fn arm_view_change_timer(&mut self) {
        if self.normal || self.timers.view_change.deadline_ms.is_some() {
            return;
        }
        // A VIEW-CHANGE for a later view also shows its author has given up
        // on every view before it, so it counts. Without this, a replica
        // whose peers' requests for this view were lost (and replaced by
        // requests for later views) would wait here forever.
        let view = self.view;
        let count = self.changes.received.values().filter(|vc| vc.body.new_view >= view).count();
        if count >= self.quorum() {
            let t = &mut self.timers.view_change;
            let shift = t.attempts.min(self.cfg.view_change_backoff_max);
            t.deadline_ms = Some(self.clock.now_ms + (self.cfg.view_change_timeout_ms << shift));
            t.attempts += 1;
        }
    }

    pub(super) fn on_view_change(&mut self, from: ReplicaId, vc: Signed<ViewChangeBody>) {
        if vc.body.replica != from {
            self.discard(Discard::ViewChangeRelayed);
            return;
        }
        let v = vc.body.new_view;
        if v < self.view || (v == self.view && self.normal) {
            // The sender is behind or missed our NEW-VIEW. Its own signed
            // word that it is behind, checked before answering, costs it
            // its allowance of NEW-VIEWs; nobody else's.
            if self.normal && self.changes.new_view.is_some() {
                if !crypto::verify(&self.crypto, Domain::ViewChange, from, &vc) {
                    self.discard(Discard::InvalidViewChange);
                    return;
                }
                self.relay_new_view(from);
            }
            return;
        }
        if self.changes.received.get(&from).is_some_and(|old| old.body.new_view >= v) {
            return;
        }
        let q = self.quorum();
        let (limits, genesis) = (self.limits(), self.genesis);
        if rule::verify_view_change(&self.crypto, self.membership(), q, limits, genesis, &vc).is_err() {
            self.discard(Discard::InvalidViewChange);
            return;
        }
        self.changes.received.insert(from, vc);
        // Join rule: f+1 replicas ask for views above ours, so at least one
        // correct replica has timed out; join the lowest view among the f+1
        // highest requests.
        let mut higher: Vec<ViewNo> = self
            .changes
            .received
            .iter()
            .filter(|(r, vc)| **r != self.id && vc.body.new_view > self.view)
            .map(|(_, vc)| vc.body.new_view)
            .collect();
        let weak = self.membership().weak_quorum();
        if higher.len() >= weak {
            higher.sort_by(|a, b| b.cmp(a));
            self.start_view_change(higher[weak - 1], ViewChangeReason::Joined);
        }
        self.arm_view_change_timer();
        self.try_new_view();
    }
}
