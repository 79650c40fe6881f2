//! Rejoining after a restart that lost the replica's votes (see
//! docs/protocol.md, "Recovery without votes: rejoining").

use super::{Discard, Record, Replica};
use crate::answers::AnswerKind;
use crate::checkpoint;
use crate::crypto::Crypto;
use crate::message::{CheckpointCert, PeerMessage};
use crate::types::{Mode, ReplicaId, SeqNo};
use std::collections::BTreeMap;

/// What a replica without its votes has learned of how far it may have
/// voted before.
#[derive(Clone, Debug)]
pub(super) struct Rejoin {
    /// Fresh per restart: answers meant for an earlier incarnation never count.
    pub nonce: u64,
    /// Each answering peer's delivered sequence number, capped by what its
    /// certified checkpoint makes plausible.
    answers: BTreeMap<ReplicaId, SeqNo>,
    /// The mark its stable checkpoint must reach, once enough peers answered.
    pub until: Option<SeqNo>,
}

impl Rejoin {
    pub fn new(nonce: u64, until: Option<SeqNo>) -> Rejoin {
        Rejoin { nonce, answers: BTreeMap::new(), until }
    }
}

impl<C: Crypto> Replica<C> {
    /// How many peers must say how far they got before a rejoining replica
    /// trusts the highest answer: enough that one of them is a correct
    /// replica that signed the last checkpoint this replica saw become
    /// stable before it lost its votes, even with f Byzantine peers among
    /// them (n - q + f + 1; 2f + 1 when n = 3f + 1). In CFT mode a quorum
    /// may hold only one other signer, so every peer must answer.
    fn rejoin_answers_needed(&self) -> usize {
        let m = self.membership();
        match m.mode() {
            Mode::Bft => (m.n() - m.quorum() + m.f() + 1).min(m.n() - 1),
            Mode::Cft => m.n() - 1,
        }
    }

    pub(super) fn on_rejoin_query(&mut self, from: ReplicaId, nonce: u64) {
        if self.may_answer(from, AnswerKind::Rejoin) {
            let (delivered, checkpoint) = (self.log.delivered, self.checkpoints.stable.clone());
            self.send(from, PeerMessage::RejoinReply { nonce, delivered, checkpoint });
        }
    }

    /// A peer's answer: its delivered sequence number, which is never more
    /// than a log window above its stable checkpoint, so a Byzantine peer
    /// can raise the rejoin mark at most to a real checkpoint plus two windows.
    pub(super) fn on_rejoin_reply(
        &mut self,
        from: ReplicaId,
        nonce: u64,
        delivered: SeqNo,
        checkpoint: CheckpointCert,
    ) {
        let Some(rejoin) = &self.rejoin else { return };
        if rejoin.nonce != nonce || rejoin.until.is_some() || rejoin.answers.contains_key(&from) {
            return;
        }
        let (q, k, genesis) = (self.quorum(), self.cfg.checkpoint_interval, self.genesis);
        if checkpoint::verify_cert(&self.crypto, self.membership(), q, k, genesis, &checkpoint).is_err() {
            self.discard(Discard::InvalidRejoinReply);
            return;
        }
        let window = self.cfg.log_window;
        let plausible = SeqNo(delivered.0.min(checkpoint.seq.0.saturating_add(window)));
        let needed = self.rejoin_answers_needed();
        let rejoin = self.rejoin.as_mut().expect("checked");
        rejoin.answers.insert(from, plausible);
        if rejoin.answers.len() >= needed {
            let highest = rejoin.answers.values().max().copied().unwrap_or_default();
            let until = SeqNo(highest.0.saturating_add(window));
            rejoin.until = Some(until);
            self.persist(Record::Rejoin { until: Some(until) });
        }
        self.adopt_stable(checkpoint);
        self.check_rejoined();
    }

    /// A rejoining replica whose stable checkpoint reached its mark holds
    /// a certificate past everything it may have voted on before: it votes
    /// again.
    pub(super) fn check_rejoined(&mut self) {
        let stable = self.checkpoints.stable.seq;
        if self.rejoin.as_ref().and_then(|r| r.until).is_none_or(|until| stable < until) {
            return;
        }
        self.rejoin = None;
        self.metrics.rejoined += 1;
        if self.normal {
            self.try_propose();
        } else {
            self.send_own_view_change();
        }
    }
}
