//! The view-change driver, second half: the new primary's NEW-VIEW, a
//! backup's check of it, and entering the new view (PBFT 4.4 with the
//! MAC-variant decision rule of `crate::view_change`).

use super::{Discard, Record, Replica};
use crate::crypto::{self, Crypto, Domain};
use crate::message::{null_digest, NewViewBody, PeerMessage, Signed, ViewChangeBody};
use crate::types::{Digest, SeqNo, ViewNo};
use crate::view_change::{self as rule, NewViewPlan};
use std::sync::Arc;

impl<C: Crypto> Replica<C> {
    /// On the new primary: once the VIEW-CHANGEs it holds decide every
    /// sequence number, it makes, writes and sends the NEW-VIEW.
    pub(super) fn try_new_view(&mut self) {
        if self.normal || !self.is_primary() || self.rejoining() {
            return;
        }
        let view = self.view;
        let set: Vec<Signed<ViewChangeBody>> =
            self.changes.received.values().filter(|vc| vc.body.new_view == view).cloned().collect();
        let bodies: Vec<&ViewChangeBody> = set.iter().map(|vc| &vc.body).collect();
        let vouchers = self.membership().voucher_quorum();
        let Some(plan) = rule::decide_up_to(&bodies, self.quorum(), vouchers, self.cover_q()) else {
            return;
        };
        let body = NewViewBody { view, replica: self.id, view_changes: set, chosen: plan.chosen.clone() };
        let nv = Arc::new(crypto::sign(&self.crypto, Domain::NewView, body));
        // enter_new_view persists the NEW-VIEW before it is sent, so a
        // primary that crashes can only ever repeat this one.
        self.enter_new_view(nv, plan);
    }

    pub(super) fn on_new_view(&mut self, nv: Arc<Signed<NewViewBody>>) {
        let b = &nv.body;
        let v = b.view;
        if v < self.view || (v == self.view && self.normal) {
            return;
        }
        if b.replica != self.membership().primary(v) || !crypto::verify(&self.crypto, Domain::NewView, b.replica, &nv) {
            self.discard(Discard::NewViewBadSignature);
            return;
        }
        let Some(plan) = self.check_new_view(b) else {
            self.discard(Discard::NewViewProofFails);
            return;
        };
        self.enter_new_view(nv, plan);
    }

    /// Recomputes the NEW-VIEW's decisions from its signed VIEW-CHANGEs; the
    /// primary's choices must match exactly.
    fn check_new_view(&self, b: &NewViewBody) -> Option<NewViewPlan> {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.skip_new_view_check {
            let checkpoint = b
                .view_changes
                .iter()
                .map(|vc| vc.body.checkpoint.clone())
                .max_by_key(|c| c.seq)
                .unwrap_or_else(|| self.checkpoints.stable.clone());
            return Some(NewViewPlan { checkpoint, chosen: b.chosen.clone() });
        }
        let m = self.membership();
        let q = self.quorum();
        let authors = rule::distinct_authors(&b.view_changes)?;
        if authors.len() < q || authors.len() > m.n() {
            return None;
        }
        for vc in &b.view_changes {
            if vc.body.new_view != b.view {
                return None;
            }
            rule::verify_view_change(&self.crypto, m, q, self.limits(), self.genesis, vc).ok()?;
        }
        let bodies: Vec<&ViewChangeBody> = b.view_changes.iter().map(|vc| &vc.body).collect();
        let plan = rule::decide_up_to(&bodies, q, m.voucher_quorum(), self.cover_q())?;
        (plan.chosen == b.chosen).then_some(plan)
    }

    /// Whether NEW-VIEWs cover every sequence number with a Q entry (always,
    /// but for the planted bug).
    fn cover_q(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.evicting_q {
            return false;
        }
        true
    }

    /// Enters the NEW-VIEW's view. The view and its re-proposals are one
    /// durable record, written before anything is sent in the view (the
    /// primary's NEW-VIEW included): after a crash the replica is either
    /// still changing views, or in the view with every re-proposal.
    fn enter_new_view(&mut self, nv: Arc<Signed<NewViewBody>>, plan: NewViewPlan) {
        if self.contradicted_decision(&plan).is_some() {
            // A valid NEW-VIEW that replaces what this replica decided can
            // only exist with more than f faulty replicas. Never vote for it:
            // keep the decision, say so, and let the view change move on.
            self.metrics.alarms += 1;
            self.discard(Discard::NewViewContradictsDecision);
            return;
        }
        let v = nv.body.view;
        self.view = v;
        self.normal = true;
        // The view-change backoff stays until a request executes in this
        // view (PBFT 4.5.2); only the running timer stops.
        self.timers.view_change.deadline_ms = None;
        // The new primary gets the whole (backed-off) timeout to reach the
        // epoch's end: measured from the last delivery, a replica that
        // only joined the view change would abandon the view at once.
        self.end_progress();
        self.metrics.new_views += 1;
        self.adopt_stable(plan.checkpoint);
        self.persist_new_view(&nv);
        if nv.body.replica == self.id {
            self.broadcast(PeerMessage::NewView(nv.clone()));
        }
        self.changes.new_view = Some(nv);
        self.changes.received.retain(|_, vc| vc.body.new_view > v);
        let top = self.install_re_proposals(v, &plan.chosen);
        if self.is_primary() {
            self.log.next_seq = top.next();
        }
        self.restart_request_timers();
        self.try_deliver();
        self.try_propose();
    }

    fn persist_new_view(&mut self, nv: &Arc<Signed<NewViewBody>>) {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.torn_new_view {
            // The planted bug: the view goes to disk on its own (after the
            // primary's NEW-VIEW went out), each re-proposal after it.
            let view = nv.body.view;
            if nv.body.replica == self.id {
                self.broadcast(PeerMessage::NewView(nv.clone()));
            }
            let mut bare = (**nv).clone();
            bare.body.chosen.clear();
            self.persist(Record::NewView(Arc::new(bare)));
            for &(seq, digest) in &nv.body.chosen {
                if seq > self.checkpoints.stable.seq {
                    self.persist(Record::PrePrepared { view, seq, digest, batch: None });
                }
            }
            return;
        }
        self.persist(Record::NewView(nv.clone()));
    }

    /// The first sequence number at which `plan` chooses something other
    /// than what this replica decided there.
    fn contradicted_decision(&self, plan: &NewViewPlan) -> Option<SeqNo> {
        plan.chosen.iter().find_map(|&(seq, digest)| {
            let decided = self.log.decided(seq);
            (seq > self.checkpoints.stable.seq && decided.is_some_and(|d| d != digest)).then_some(seq)
        })
    }

    /// Treats every choice of a NEW-VIEW as a PRE-PREPARE of view `v`
    /// (already durable in the NEW-VIEW record), voting for those whose
    /// batch this replica holds and fetching the others; returns the
    /// highest sequence number the view has now used.
    fn install_re_proposals(&mut self, v: ViewNo, chosen: &[(SeqNo, Digest)]) -> SeqNo {
        let now = self.clock.now_ms;
        let (_, q_cap) = self.planted_q_eviction();
        let mut top = self.checkpoints.stable.seq.max(self.log.delivered);
        for &(seq, digest) in chosen {
            top = top.max(seq);
            if seq <= self.checkpoints.stable.seq {
                continue;
            }
            let null = self.log.null_batch.clone();
            let slot = self.log.slot_in_view(seq, v);
            slot.pre_prepare = Some(digest);
            slot.touched_ms = now;
            if digest == null_digest() {
                slot.batches.insert(digest, null);
            }
            slot.add_q(digest, v);
            if let Some(cap) = q_cap {
                super::normal::planted_evict_q(&mut slot.preprepared, digest, cap);
            }
            let batch = slot.batches.get(&digest).cloned();
            if let Some(b) = &batch {
                self.pool.mark_proposed(b);
            }
            self.vote_when_held(seq);
            if batch.is_none() {
                self.broadcast(PeerMessage::BatchRequest { seq, digest });
            }
        }
        top
    }

    /// Gives the new primary a fresh request-timer window and makes sure it
    /// has every request this replica waits for but a flood's; requests an
    /// older view proposed go back in the queue unless the new view
    /// re-proposes them. On a backup too, only this view's proposals count
    /// as proposed: one an older view proposed and this one did not is owed
    /// a forward before its timer may blame the new primary.
    fn restart_request_timers(&mut self) {
        let primary = self.is_primary();
        let to = self.primary();
        for r in self.pool.restart_view(self.clock.now_ms, primary, self.cfg.requests_to_all) {
            self.send(to, PeerMessage::Forward(r));
        }
        let v = self.view;
        let in_view: Vec<_> = self
            .log
            .slots
            .range(self.checkpoints.stable.seq.next()..)
            .filter(|(_, s)| s.view == v)
            .filter_map(|(_, s)| s.pre_prepare.and_then(|d| s.batches.get(&d)).cloned())
            .collect();
        for b in in_view {
            self.pool.mark_proposed(&b);
        }
    }
}
