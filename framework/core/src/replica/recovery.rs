//! Rebuilding a replica after a crash from what survived it.

use super::rejoin::Rejoin;
use super::{Record, Replica, Restart};
use crate::checkpoint::Genesis;
use crate::config::Config;
use crate::crypto::Crypto;
use crate::message::{null_digest, PeerMessage};
use crate::types::{Digest, ReplicaId, SeqNo, ViewNo};

impl<C: Crypto> Replica<C> {
    /// Rebuilds a replica after a crash from what survived it: its durable
    /// records, and its executor restored from its own snapshot at
    /// `restart.executed`. If that is older than the recovered stable
    /// checkpoint the replica fetches the newer state itself.
    ///
    /// A replica whose votes were lost (`restart.votes_lost`) comes back
    /// *rejoining*: it learns decisions, follows views and executes, but
    /// sends no PRE-PREPARE, PREPARE, COMMIT, VIEW-CHANGE or NEW-VIEW until
    /// its stable checkpoint passes anything it may have voted on before
    /// (see docs/protocol.md, "Recovery"). Until then it counts as one of
    /// the f faulty replicas, but it cannot make anyone decide anything.
    pub fn recover(cfg: Config, id: ReplicaId, crypto: C, genesis_state: Digest, restart: Restart) -> Self {
        Self::recover_at(cfg, id, crypto, Genesis::new(genesis_state), restart)
    }

    /// [`Self::recover`] for a core of a later epoch, which started at the
    /// handover checkpoint `genesis`; its records are that core's own.
    pub fn recover_at(cfg: Config, id: ReplicaId, crypto: C, genesis: Genesis, restart: Restart) -> Self {
        let mut r = Replica::starting_at(cfg, id, crypto, genesis);
        let mut preprepared_in: Vec<(ViewNo, SeqNo, Digest)> = Vec::new();
        let mut rejoin_until = restart.votes_lost.then_some(None);
        for record in restart.records {
            let stable = r.checkpoints.stable.seq;
            match record {
                Record::ViewChange { view } => {
                    r.view = view;
                    r.normal = false;
                    r.changes.new_view = None;
                }
                Record::NewView(nv) => {
                    let view = nv.body.view;
                    r.view = view;
                    r.normal = true;
                    for &(seq, digest) in nv.body.chosen.iter().filter(|(seq, _)| *seq > stable) {
                        let null = r.log.null_batch.clone();
                        let slot = r.log.slots.entry(seq).or_default();
                        slot.add_q(digest, view);
                        if digest == null_digest() {
                            slot.batches.insert(digest, null);
                        }
                        preprepared_in.push((view, seq, digest));
                    }
                    r.changes.new_view = Some(nv);
                }
                Record::PrePrepared { view, seq, digest, batch } => {
                    if seq > stable {
                        let slot = r.log.slots.entry(seq).or_default();
                        slot.add_q(digest, view);
                        if let Some(b) = batch {
                            slot.batches.insert(digest, b);
                        }
                        preprepared_in.push((view, seq, digest));
                    }
                }
                Record::Prepared { view, seq, digest } => {
                    if seq > stable {
                        let slot = r.log.slots.entry(seq).or_default();
                        if slot.prepared.is_none_or(|(v, _)| v <= view) {
                            slot.prepared = Some((view, digest));
                        }
                    }
                }
                Record::Stable(cert) => {
                    if cert.seq > stable {
                        r.log.truncate_through(cert.seq);
                        r.checkpoints.prev_stable = stable;
                        r.checkpoints.stable = cert;
                    }
                }
                Record::Rejoin { until } => rejoin_until = Some(until),
            }
        }
        r.restore_current_view(preprepared_in);
        r.log.next_seq = r.log.next_seq.max(r.checkpoints.stable.seq.next());
        r.log.delivered = restart.executed;
        r.checkpoints.own.insert(restart.executed, restart.executed_state);
        if let Some(until) = rejoin_until {
            r.rejoin = Some(Rejoin::new(restart.nonce, until));
            r.persist(Record::Rejoin { until });
            if until.is_none() {
                r.broadcast(PeerMessage::RejoinQuery { nonce: restart.nonce });
            }
            r.check_rejoined();
        }
        if restart.executed < r.checkpoints.stable.seq {
            let (seq, state) = (r.checkpoints.stable.seq, r.checkpoints.stable.state);
            r.start_transfer(seq, state);
        }
        if !r.normal && !r.rejoining() {
            // Still changing views: say so again (same content as before the crash).
            r.send_own_view_change();
        }
        r
    }

    /// Re-establishes what this replica said in its current view, so that
    /// it can never say something different after the crash: the digest it
    /// pre-prepared at each sequence number, its own PREPARE where it held
    /// the batch, and, where it prepared, its own COMMIT.
    fn restore_current_view(&mut self, preprepared_in: Vec<(ViewNo, SeqNo, Digest)>) {
        let view = self.view;
        let (me, bft) = (self.id, self.bft());
        let primary = self.membership().primary(view) == me;
        let stable = self.checkpoints.stable.seq;
        for (v, seq, digest) in preprepared_in {
            if v != view || seq <= stable {
                continue;
            }
            let slot = self.log.slots.entry(seq).or_default();
            slot.view = view;
            slot.pre_prepare = Some(digest);
            // It voted for what it held; a re-proposal whose batch it never
            // got, it never voted for.
            if bft && !primary && slot.holds(digest) {
                slot.prepares.insert(me, digest);
            }
            if let Some((pv, pd)) = slot.prepared {
                if pv == view && pd == digest {
                    slot.prepared_here = true;
                    slot.commits.insert(me, digest);
                }
            }
            if primary && seq >= self.log.next_seq {
                self.log.next_seq = seq.next();
            }
        }
    }
}
