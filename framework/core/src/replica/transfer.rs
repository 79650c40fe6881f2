//! State transfer: fetching a certified checkpoint's snapshot from one
//! peer at a time, and serving snapshots to others.

use super::{Action, Discard, Replica};
use crate::answers::AnswerKind;
use crate::crypto::Crypto;
use crate::message::PeerMessage;
use crate::types::{Digest, ReplicaId, SeqNo};
use bytes::Bytes;

/// A transfer under way (its deadline is in the tick table).
#[derive(Clone, Debug)]
pub(super) struct Transfer {
    seq: SeqNo,
    state: Digest,
    attempt: usize,
    /// Who was asked last; only its wrong answer moves the transfer on.
    asked: Option<ReplicaId>,
    /// An older checkpoint asked for before this one was certified: its
    /// snapshot may still be on its way and is installed if it comes.
    earlier: Option<(SeqNo, Digest)>,
}

impl<C: Crypto> Replica<C> {
    pub(super) fn start_transfer(&mut self, seq: SeqNo, state: Digest) {
        if self.transfer.as_ref().is_some_and(|t| t.seq >= seq) {
            return;
        }
        // A snapshot already asked for may still arrive: keep accepting it.
        let delivered = self.log.delivered;
        let earlier = self.transfer.as_ref().map(|t| (t.seq, t.state)).filter(|(s, _)| *s > delivered);
        let attempt = self.transfer.as_ref().map_or(0, |t| t.attempt + 1);
        self.transfer = Some(Transfer { seq, state, attempt, asked: None, earlier });
        self.send_state_request();
    }

    /// Asks the next peer in turn; the tick table re-asks after the timeout.
    pub(super) fn send_state_request(&mut self) {
        let me = self.id;
        let members: Vec<ReplicaId> = self.membership().members().iter().copied().filter(|r| *r != me).collect();
        let offset = self.membership().index_of(me).unwrap_or(0);
        self.timers.transfer_at_ms = Some(self.clock.now_ms + self.cfg.state_transfer_timeout_ms);
        let Some(t) = &mut self.transfer else { return };
        let to = members[(t.attempt + offset) % members.len()];
        t.asked = Some(to);
        let seq = t.seq;
        self.send(to, PeerMessage::StateRequest { seq });
    }

    /// The transfer's timeout expired: ask the next peer.
    pub(super) fn on_transfer_timeout(&mut self) {
        if let Some(t) = &mut self.transfer {
            t.attempt += 1;
            self.send_state_request();
        } else {
            self.timers.transfer_at_ms = None;
        }
    }

    /// Serves any checkpoint this replica executed from the one before its
    /// stable checkpoint up: a laggard that asked for that one just before
    /// this became stable can still finish, and one holding a certificate
    /// this replica has not seen yet is served too (it checks the digest).
    pub(super) fn on_state_request(&mut self, from: ReplicaId, seq: SeqNo) {
        let held =
            seq >= self.checkpoints.prev_stable && self.log.delivered >= seq && self.checkpoints.own.contains_key(&seq);
        if held && self.may_answer(from, AnswerKind::Snapshot) {
            self.actions.push(Action::ServeSnapshot { to: from, seq });
        }
    }

    pub(super) fn on_state_reply(&mut self, from: ReplicaId, seq: SeqNo, snapshot: Bytes) {
        let Some(t) = &self.transfer else { return };
        let target = if t.seq == seq { Some(t.state) } else { t.earlier.filter(|(s, _)| *s == seq).map(|(_, d)| d) };
        let Some(state) = target else {
            self.discard(Discard::SnapshotUnasked);
            return;
        };
        if Digest::of(&snapshot) != state {
            // Poisoned or stale. Only the peer asked last moves the
            // transfer on to the next one; replies nobody asked for cost
            // nothing, so a Byzantine peer cannot make this replica ask
            // everyone for snapshots.
            let asked_this = t.asked == Some(from) && t.seq == seq;
            self.discard(Discard::SnapshotMismatch);
            if asked_this {
                self.on_transfer_timeout();
            }
            return;
        }
        self.metrics.state_transfers += 1;
        self.actions.push(Action::InstallSnapshot { seq, snapshot });
        self.log.delivered = self.log.delivered.max(seq);
        self.checkpoints.own.insert(seq, state);
        // Requests executed inside the transferred range would wait here
        // forever; clients retransmit whatever still needs ordering.
        self.pool.clear();
        let done = self.transfer.as_ref().is_some_and(|t| t.seq <= seq);
        if done {
            self.transfer = None;
            self.timers.transfer_at_ms = None;
            self.try_deliver();
        } else if let Some(t) = &mut self.transfer {
            // The older snapshot arrived; the newer one is still on its way.
            t.earlier = None;
        }
    }
}
