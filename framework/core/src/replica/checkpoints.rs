//! Checkpoints and watermarks (PBFT 4.3): signed CHECKPOINTs, stable
//! certificates, and the log truncation they allow.

use super::{Action, Discard, Record, Replica};
use crate::checkpoint::{self, Genesis};
use crate::crypto::{self, Crypto, Domain};
use crate::message::{CheckpointBody, CheckpointCert, PeerMessage, Signed};
use crate::types::{Digest, ReplicaId, SeqNo};
use std::collections::BTreeMap;

/// Checkpoint votes kept per replica: a Byzantine replica cannot fill
/// memory with votes for far-away checkpoints.
const VOTES_PER_REPLICA: usize = 4;

pub(super) struct Checkpoints {
    /// The low watermark, with its proof.
    pub stable: CheckpointCert,
    /// The stable checkpoint before it: its snapshot is still served.
    pub prev_stable: SeqNo,
    /// Signed votes by sequence number and signer.
    votes: BTreeMap<SeqNo, BTreeMap<ReplicaId, Signed<CheckpointBody>>>,
    /// This replica's own state digests at the checkpoints it executed or
    /// installed, from the previous stable checkpoint up.
    pub own: BTreeMap<SeqNo, Digest>,
}

impl Checkpoints {
    pub fn new(genesis: Genesis) -> Checkpoints {
        Checkpoints {
            stable: genesis.cert(),
            prev_stable: genesis.seq,
            votes: BTreeMap::new(),
            own: BTreeMap::from([(genesis.seq, genesis.state)]),
        }
    }

    fn insert_vote(&mut self, vote: Signed<CheckpointBody>) {
        let (seq, replica) = (vote.body.seq, vote.body.replica);
        self.votes.entry(seq).or_default().insert(replica, vote);
        let mine: Vec<SeqNo> = self.votes.iter().filter(|(_, m)| m.contains_key(&replica)).map(|(s, _)| *s).collect();
        if mine.len() > VOTES_PER_REPLICA {
            let oldest = mine[0];
            if let Some(m) = self.votes.get_mut(&oldest) {
                m.remove(&replica);
                if m.is_empty() {
                    self.votes.remove(&oldest);
                }
            }
        }
    }

    /// `replica`'s vote at `seq`, if held.
    pub fn own_vote(&self, seq: SeqNo, replica: ReplicaId) -> Option<Signed<CheckpointBody>> {
        self.votes.get(&seq)?.get(&replica).cloned()
    }

    /// The newest checkpoint above `above` with `weak` matching votes (f+1:
    /// at least one from a correct replica, which executed committed
    /// batches to that state): its sequence number, state and
    /// configuration digests.
    pub fn weak_certificate(&self, above: SeqNo, weak: usize) -> Option<(SeqNo, Digest, Digest)> {
        self.votes.range(above.next()..).rev().find_map(|(seq, votes)| {
            tally(votes).into_iter().find(|(_, n)| *n >= weak).map(|((state, config), _)| (*seq, state, config))
        })
    }

    /// The replicas known to have signed `state` at `seq`.
    pub fn holders(&self, seq: SeqNo, state: Digest) -> Vec<ReplicaId> {
        let mut who: Vec<ReplicaId> = self
            .votes
            .get(&seq)
            .into_iter()
            .flat_map(|votes| votes.values())
            .chain(self.stable.proof.iter().filter(|_| self.stable.seq == seq))
            .filter(|v| v.body.state == state)
            .map(|v| v.body.replica)
            .collect();
        who.sort_unstable();
        who.dedup();
        who
    }

    /// The configuration digest f+1 (`weak`) votes for `state` at `seq`
    /// name, if that many match.
    pub fn vouched_config(&self, seq: SeqNo, state: Digest, weak: usize) -> Option<Digest> {
        tally(self.votes.get(&seq)?).into_iter().find(|((s, _), n)| *s == state && *n >= weak).map(|((_, c), _)| c)
    }

    /// A quorum of matching votes at `seq`, if there is one.
    fn certificate(&self, seq: SeqNo, quorum: usize) -> Option<CheckpointCert> {
        let votes = self.votes.get(&seq)?;
        let mut by_state: BTreeMap<(Digest, Digest), Vec<Signed<CheckpointBody>>> = BTreeMap::new();
        for v in votes.values() {
            by_state.entry((v.body.state, v.body.config)).or_default().push(v.clone());
        }
        let ((state, _), proof) = by_state.into_iter().find(|(_, p)| p.len() >= quorum)?;
        Some(CheckpointCert { seq, state, proof })
    }

    /// Moves the watermarks to `cert` (newer than the current one).
    fn advance(&mut self, cert: CheckpointCert) {
        let seq = cert.seq;
        self.prev_stable = self.stable.seq;
        self.stable = cert;
        self.votes = self.votes.split_off(&seq.next());
        self.own = self.own.split_off(&self.prev_stable);
    }
}

impl<C: Crypto> Replica<C> {
    /// The executor took the snapshot at `seq`: sign and send CHECKPOINT.
    pub(super) fn on_checkpoint_ready(&mut self, seq: SeqNo, state: Digest, config: Digest) {
        if seq.0 % self.cfg.checkpoint_interval != 0 {
            return;
        }
        self.checkpoints.own.insert(seq, state);
        if seq == self.checkpoints.stable.seq && state != self.checkpoints.stable.state {
            // Our state diverged from the certified one: a non-deterministic
            // service or corrupted storage. Say so; state transfer repairs it.
            self.metrics.alarms += 1;
        }
        if seq <= self.checkpoints.stable.seq {
            return;
        }
        if self.end.is_some_and(|e| e.last == seq) {
            // The end's checkpoint is computed: its votes get a whole
            // timeout to gather, however long execution took to get here.
            self.end_progress();
        }
        let vote =
            crypto::sign(&self.crypto, Domain::Checkpoint, CheckpointBody { seq, state, config, replica: self.id });
        self.checkpoints.insert_vote(vote.clone());
        self.broadcast(PeerMessage::Checkpoint(vote));
        self.check_stable(seq);
    }

    pub(super) fn on_checkpoint(&mut self, vote: Signed<CheckpointBody>) {
        let b = vote.body;
        if b.seq <= self.checkpoints.stable.seq || b.seq.0 % self.cfg.checkpoint_interval != 0 {
            return;
        }
        if !self.membership().contains(b.replica) || !checkpoint::verify_vote(&self.crypto, &vote) {
            self.discard(Discard::BadCheckpoint);
            return;
        }
        self.checkpoints.insert_vote(vote);
        self.check_stable(b.seq);
        self.check_vouched_checkpoint();
    }

    fn check_stable(&mut self, seq: SeqNo) {
        if let Some(cert) = self.checkpoints.certificate(seq, self.quorum()) {
            self.adopt_stable(cert);
            // The window moved: there may be room for new batches.
            self.try_propose();
        }
    }

    /// Makes `cert` the stable checkpoint if it is newer: persists it,
    /// truncates the log, and starts a state transfer if this replica has
    /// not executed that far.
    pub(super) fn adopt_stable(&mut self, cert: CheckpointCert) {
        if cert.seq <= self.checkpoints.stable.seq {
            return;
        }
        let seq = cert.seq;
        self.persist(Record::Stable(cert.clone()));
        self.checkpoints.advance(cert);
        // A checkpoint's worth of progress: the batch watch's backoff
        // comes down a step.
        self.timers.watch_shift = self.timers.watch_shift.saturating_sub(1);
        self.log.truncate_through(seq);
        let keep_from = self.checkpoints.prev_stable;
        self.actions.push(Action::StableCheckpoint { seq, keep_from });
        let state = self.checkpoints.stable.state;
        if self.log.delivered < seq {
            self.start_transfer(seq, state);
        } else if self.checkpoints.own.get(&seq).is_some_and(|d| *d != state) {
            self.metrics.alarms += 1;
        }
        self.check_rejoined();
        // No proposing from here: while entering a new view the primary must
        // not assign sequence numbers before it has laid out the re-proposals.
    }
}

/// How many of `votes` name each (state, configuration) pair.
fn tally(votes: &BTreeMap<ReplicaId, Signed<CheckpointBody>>) -> BTreeMap<(Digest, Digest), usize> {
    let mut count = BTreeMap::new();
    for v in votes.values() {
        *count.entry((v.body.state, v.body.config)).or_default() += 1;
    }
    count
}
