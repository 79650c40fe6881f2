//! The normal case (PBFT 4.2): PRE-PREPARE, PREPARE, COMMIT, decisions,
//! and delivery in sequence order; fetching and serving batches.

use super::{Action, Discard, Record, Replica, ViewChangeReason};
use crate::answers::AnswerKind;
use crate::crypto::Crypto;
use crate::message::{Batch, PeerMessage, PrePrepare, Vote};
use crate::types::{Digest, ReplicaId, SeqNo};
use std::sync::Arc;

impl<C: Crypto> Replica<C> {
    pub(super) fn on_pre_prepare(&mut self, from: ReplicaId, pp: PrePrepare) {
        if self.rejoining() {
            self.discard(Discard::Rejoining);
            return;
        }
        if !self.normal || pp.view != self.view {
            self.discard(Discard::PrePrepareOtherView);
            return;
        }
        if from != self.primary() {
            self.discard(Discard::PrePrepareNotPrimary);
            return;
        }
        if !self.in_window(pp.seq) {
            self.discard(Discard::PrePrepareOutsideWindow);
            return;
        }
        if self.past_end(pp.seq) {
            self.discard(Discard::PrePreparePastEnd);
            return;
        }
        if pp.batch.requests.len() > self.cfg.batch_max_requests || pp.batch.size_bytes() > self.cfg.batch_max_bytes {
            self.discard(Discard::BatchOverLimits);
            return;
        }
        let digest = pp.batch.digest();
        if pp.batch.proposed_in > pp.view {
            // A batch names the view that first proposed it (a re-proposal
            // after a view change keeps its older one); a later view is a
            // lie about who leads the end of the epoch.
            self.discard(Discard::PrePrepareOtherView);
            return;
        }
        let (view, seq) = (pp.view, pp.seq);
        let bft = self.bft();
        let (second_fresh_allowed, q_cap) = self.planted_q_eviction();
        let slot = self.log.slot_in_view(seq, view);
        if let Some(existing) = slot.pre_prepare {
            if existing != digest {
                self.discard(Discard::Equivocation);
            } else if !slot.batches.contains_key(&digest) {
                // A NEW-VIEW's re-proposal, now with its batch: vote.
                self.on_batch_reply(seq, pp.batch);
            } else if bft && slot.prepares.contains_key(&self.id) {
                // The primary retransmits because it misses our vote.
                self.send(from, PeerMessage::Prepare(Vote { view, seq, digest }));
            }
            return;
        }
        if slot.decided.is_some_and(|d| d != digest) {
            self.discard(Discard::ContradictsDecision);
            return;
        }
        if !second_fresh_allowed && !slot.preprepared.is_empty() && !slot.preprepared.contains_key(&digest) {
            // A second fresh digest at this sequence number: a correct
            // replica accepts one, so its Q set stays bounded and never
            // evicts a voucher (see `view_change::digests_per_seq_max`).
            // A NEW-VIEW covers every sequence number some replica in its
            // proof pre-prepared, so only a primary that skipped this
            // replica's VIEW-CHANGE can offer one.
            self.discard(Discard::SecondFreshDigest);
            return;
        }
        if !pp.batch.is_null() {
            let skew = pp.batch.timestamp_ms.abs_diff(self.clock.wall_ms);
            if skew > self.cfg.timestamp_tolerance_ms {
                self.discard(Discard::TimestampOutOfTolerance);
                return;
            }
            let trusted = self.trusts_proposed_requests();
            if pp.batch.requests.iter().any(|r| r.read_only || !(trusted || self.crypto.accept_proposed(r))) {
                self.discard(Discard::UnauthenticatedRequest);
                // A correct primary checks every signature before proposing,
                // and this request has neither a MAC for this replica nor a
                // valid signature: the primary invented or altered it.
                if bft {
                    self.metrics.primary_evidence += 1;
                    self.start_view_change(self.view.next(), ViewChangeReason::PrimaryEvidence);
                }
                return;
            }
        }
        let now = self.clock.now_ms;
        let me = self.id;
        let slot = self.log.slot_in_view(seq, view);
        slot.pre_prepare = Some(digest);
        slot.batches.insert(digest, pp.batch.clone());
        slot.touched_ms = now;
        slot.accepted_ms = Some(now);
        slot.add_q(digest, view);
        if let Some(cap) = q_cap {
            planted_evict_q(&mut slot.preprepared, digest, cap);
        }
        if bft {
            slot.prepares.insert(me, digest);
        }
        self.pool.mark_proposed(&pp.batch);
        // Before anything this PRE-PREPARE completes is delivered (its
        // requests would no longer count as room used); acted on once voted.
        let suspect = self.watch_batch(seq, &pp.batch);
        self.persist(Record::PrePrepared { view, seq, digest, batch: Some(pp.batch) });
        if bft {
            self.broadcast(PeerMessage::Prepare(Vote { view, seq, digest }));
            self.check_prepared(seq);
        } else {
            self.mark_prepared(seq, digest);
        }
        if suspect && self.normal && self.view == view {
            self.suspect_skipping_primary();
        }
    }

    pub(super) fn on_prepare(&mut self, from: ReplicaId, v: Vote) {
        if self.rejoining() {
            self.discard(Discard::Rejoining);
            return;
        }
        if !self.bft() {
            self.discard(Discard::PrepareInCft);
            return;
        }
        if v.view != self.view || !self.in_window(v.seq) {
            self.discard(Discard::PrepareOutOfPlace);
            return;
        }
        if from == self.membership().primary(v.view) {
            self.discard(Discard::PrepareFromPrimary);
            return;
        }
        let slot = self.log.slot_in_view(v.seq, v.view);
        if *slot.prepares.entry(from).or_insert(v.digest) != v.digest {
            self.discard(Discard::ConflictingPrepare);
        }
        self.check_prepared(v.seq);
    }

    pub(super) fn check_prepared(&mut self, seq: SeqNo) {
        if !self.normal {
            return;
        }
        let need = self.quorum().saturating_sub(1);
        let Some(slot) = self.log.slots.get(&seq) else {
            return;
        };
        if slot.prepared_here || slot.view != self.view {
            return;
        }
        let Some(d) = slot.pre_prepare else { return };
        if !slot.holds(d) {
            // Never vote for a batch this replica cannot produce (see `vote_when_held`).
            return;
        }
        if slot.prepares.values().filter(|x| **x == d).count() >= need {
            self.mark_prepared(seq, d);
        }
    }

    /// Votes for what this view pre-prepared at `seq` (a NEW-VIEW's
    /// re-proposal), once this replica holds its batch. A replica that
    /// voted for a digest it cannot produce would give it a P entry in the
    /// next view change, and if nobody holds the batch (its only holder
    /// lost its disk), every later view would re-propose it and nobody
    /// could ever execute it. Without the votes, the next view change fills
    /// the sequence number with null instead, which is safe: a batch that
    /// committed is held by a quorum.
    pub(super) fn vote_when_held(&mut self, seq: SeqNo) {
        if self.rejoining() || !self.normal {
            return;
        }
        let (view, me, bft, primary) = (self.view, self.id, self.bft(), self.is_primary());
        let Some(slot) = self.log.slots.get_mut(&seq) else { return };
        let Some(d) = slot.pre_prepare else { return };
        if slot.view != view || !slot.holds(d) {
            return;
        }
        if bft {
            if !primary && !slot.prepares.contains_key(&me) {
                slot.prepares.insert(me, d);
                self.broadcast(PeerMessage::Prepare(Vote { view, seq, digest: d }));
            }
            self.check_prepared(seq);
        } else if !slot.prepared_here {
            self.mark_prepared(seq, d);
        }
    }

    /// prepared(m, v, n) holds: record it, then send COMMIT.
    pub(super) fn mark_prepared(&mut self, seq: SeqNo, digest: Digest) {
        let (view, me, now) = (self.view, self.id, self.clock.now_ms);
        let slot = self.log.slot_in_view(seq, view);
        slot.prepared_here = true;
        slot.prepared = Some((view, digest));
        slot.commits.insert(me, digest);
        slot.touched_ms = now;
        self.persist(Record::Prepared { view, seq, digest });
        self.broadcast(PeerMessage::Commit(Vote { view, seq, digest }));
        self.try_tentative();
        self.check_committed(seq);
    }

    pub(super) fn on_commit(&mut self, from: ReplicaId, v: Vote) {
        if self.rejoining() {
            self.discard(Discard::Rejoining);
            return;
        }
        if v.view != self.view || !self.in_window(v.seq) {
            self.discard(Discard::CommitOutOfPlace);
            return;
        }
        let slot = self.log.slot_in_view(v.seq, v.view);
        if *slot.commits.entry(from).or_insert(v.digest) != v.digest {
            self.discard(Discard::ConflictingCommit);
        }
        self.check_committed(v.seq);
    }

    fn check_committed(&mut self, seq: SeqNo) {
        let q = self.quorum();
        let Some(slot) = self.log.slots.get(&seq) else {
            return;
        };
        if !slot.prepared_here || slot.view != self.view || slot.decided.is_some() {
            return;
        }
        let Some(d) = slot.pre_prepare else { return };
        if slot.commits.values().filter(|x| **x == d).count() >= q {
            if let Some(accepted) = slot.accepted_ms {
                self.timers.time_round(self.clock.now_ms.saturating_sub(accepted));
            }
            self.decide(seq, d);
        }
    }

    pub(super) fn decide(&mut self, seq: SeqNo, digest: Digest) {
        let Some(slot) = self.log.slots.get_mut(&seq) else {
            return;
        };
        match slot.decided {
            None => slot.decided = Some(digest),
            Some(d) if d == digest => return,
            Some(_) => {
                self.metrics.alarms += 1;
                return;
            }
        }
        self.try_deliver();
    }

    /// Delivers decided batches in sequence order; fetches a missing batch.
    pub(super) fn try_deliver(&mut self) {
        if self.transfer.is_some() {
            return;
        }
        let now = self.clock.now_ms;
        loop {
            let seq = self.log.delivered.next();
            if self.past_end(seq) {
                break;
            }
            let Some(slot) = self.log.slots.get(&seq) else {
                break;
            };
            let Some(digest) = slot.decided else { break };
            let Some(batch) = self.log.batch_for(seq, digest) else {
                let slot = self.log.slots.get_mut(&seq).expect("present");
                if slot.batch_request_due(now, self.cfg.retransmit_ms) {
                    self.broadcast(PeerMessage::BatchRequest { seq, digest });
                }
                break;
            };
            // A tentative execution here either was what committed, or is
            // undone before what committed executes.
            let confirmed = match self.log.tentative {
                Some((t, executed)) if t == seq => {
                    self.log.tentative = None;
                    if executed != digest {
                        self.metrics.rollbacks += 1;
                        let replay = self.replay_list();
                        self.actions.push(Action::RollBack { seq, view: self.view, replay });
                    }
                    executed == digest
                }
                _ => false,
            };
            self.log.delivered = seq;
            self.timers.delivered_at_ms = now;
            self.end_progress();
            self.metrics.delivered_batches += 1;
            self.metrics.delivered_requests += batch.requests.len() as u64;
            if !batch.is_null() {
                self.timers.view_change.attempts = 0;
                self.adapt_request_timeout(&batch);
            }
            self.pool.delivered(&batch);
            let view = self.view;
            self.actions.push(if confirmed {
                Action::Confirm { seq, view, batch }
            } else {
                Action::Deliver { seq, view, batch }
            });
        }
        // Reads first: they answer from committed state, before the next
        // tentative execution changes it.
        self.flush_reads();
        self.try_tentative();
        self.try_propose();
    }

    /// Executes the next batch tentatively if it is prepared in this view
    /// and every earlier one is delivered (PBFT 5.1). Never at a checkpoint
    /// (the state taken there must be committed) or past the epoch's end,
    /// and only when a roll-back could replay every delivered batch above
    /// the newest checkpoint.
    pub(super) fn try_tentative(&mut self) {
        if !self.cfg.tentative_execution
            || self.log.tentative.is_some()
            || self.transfer.is_some()
            || !self.normal
            || self.rejoining()
        {
            return;
        }
        let seq = self.log.delivered.next();
        if seq.0 % self.cfg.checkpoint_interval == 0 || self.past_end(seq) {
            return;
        }
        let Some(slot) = self.log.slots.get(&seq) else { return };
        if slot.decided.is_some() || !slot.prepared_here || slot.view != self.view {
            return;
        }
        let Some(digest) = slot.pre_prepare else { return };
        let Some(batch) = self.log.batch_for(seq, digest) else { return };
        if batch.is_null() || !self.replayable() {
            return;
        }
        self.log.tentative = Some((seq, digest));
        self.metrics.tentative_batches += 1;
        self.actions.push(Action::ExecuteTentative { seq, view: self.view, batch });
    }

    /// The delivered sequence numbers above the newest checkpoint: what a
    /// roll-back executes again.
    fn since_checkpoint(&self) -> impl Iterator<Item = SeqNo> {
        let k = self.cfg.checkpoint_interval;
        let delivered = self.log.delivered.0;
        (delivered / k * k + 1..=delivered).map(SeqNo)
    }

    /// The batch decided at `seq`, while the log holds it.
    fn decided_batch(&self, seq: SeqNo) -> Option<Arc<Batch>> {
        self.log.batch_for(seq, self.log.decided(seq)?)
    }

    /// Whether the log holds every batch a roll-back executes again.
    fn replayable(&self) -> bool {
        self.since_checkpoint().all(|s| self.decided_batch(s).is_some())
    }

    /// The batches a roll-back executes again, in order.
    fn replay_list(&self) -> Vec<(SeqNo, Arc<Batch>)> {
        self.since_checkpoint().filter_map(|s| Some((s, self.decided_batch(s)?))).collect()
    }

    pub(super) fn on_batch_request(&mut self, from: ReplicaId, seq: SeqNo, digest: Digest) {
        let Some(b) = self.log.batch_for(seq, digest) else { return };
        if b.is_null() || !self.may_answer(from, AnswerKind::Batch(seq)) || !self.may_answer(from, AnswerKind::Batches)
        {
            return;
        }
        self.send(from, PeerMessage::BatchReply { seq, batch: b });
    }

    pub(super) fn on_batch_reply(&mut self, seq: SeqNo, batch: Arc<Batch>) {
        let digest = batch.digest();
        let Some(slot) = self.log.slots.get_mut(&seq) else {
            return;
        };
        let wanted = slot.pre_prepare == Some(digest) || slot.decided == Some(digest);
        if !wanted || slot.batches.contains_key(&digest) {
            self.discard(Discard::UnwantedBatch);
            return;
        }
        slot.batches.insert(digest, batch.clone());
        let view = slot.view;
        // A re-proposal of this view whose batch came late: its requests
        // are in a PRE-PREPARE of this view, as `proposed` says.
        let current = view == self.view && slot.pre_prepare == Some(digest);
        if slot.preprepared.contains_key(&digest) {
            self.persist(Record::PrePrepared { view, seq, digest, batch: Some(batch.clone()) });
        }
        if current {
            self.pool.mark_proposed(&batch);
        }
        if view == self.view {
            self.vote_when_held(seq);
        }
        self.try_deliver();
    }

    /// The planted Q-eviction bug: whether a second fresh digest is
    /// accepted, and the Q cap (none but for the bug).
    pub(super) fn planted_q_eviction(&self) -> (bool, Option<usize>) {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.evicting_q {
            return (true, Some(4));
        }
        (false, None)
    }
}

/// Only the planted bug ever evicts.
#[cfg(feature = "planted-bugs")]
pub(super) use crate::planted::evict_q as planted_evict_q;

#[cfg(not(feature = "planted-bugs"))]
pub(super) fn planted_evict_q(_: &mut std::collections::BTreeMap<Digest, crate::types::ViewNo>, _: Digest, _: usize) {}
