//! State transfer: which certified checkpoint to fetch, and when it is in.
//!
//! The fetching itself (which parts differ, which peer to ask for which
//! piece, checking each piece against the certified digest) is the
//! execution host's, because it needs the state; the core decides what to
//! fetch, routes the pieces, and limits what it serves each peer.

use super::{Action, Discard, Replica};
use crate::answers::AnswerKind;
use crate::crypto::Crypto;
use crate::message::{StateAnswer, StateQuery};
use crate::types::{Digest, ReplicaId, SeqNo};

/// A transfer under way (its deadline is in the tick table).
#[derive(Clone, Debug)]
pub(super) struct Transfer {
    seq: SeqNo,
    state: Digest,
}

impl<C: Crypto> Replica<C> {
    pub(super) fn start_transfer(&mut self, seq: SeqNo, state: Digest) {
        if self.transfer.as_ref().is_some_and(|t| t.seq >= seq) {
            return;
        }
        self.transfer = Some(Transfer { seq, state });
        self.ask_for_state();
    }

    /// Tells the fetcher what to fetch; again after every timeout, so that
    /// it re-asks whatever went unanswered.
    fn ask_for_state(&mut self) {
        let Some(t) = &self.transfer else { return };
        let (seq, state) = (t.seq, t.state);
        self.timers.transfer_at_ms = Some(self.clock.now_ms + self.cfg.state_transfer_timeout_ms);
        self.actions.push(Action::FetchState { seq, state });
    }

    /// The transfer's timeout expired.
    pub(super) fn on_transfer_timeout(&mut self) {
        if self.transfer.is_some() {
            self.ask_for_state();
        } else {
            self.timers.transfer_at_ms = None;
        }
    }

    /// Questions about a checkpoint go to the execution host, within the
    /// answer rate: it keeps the states from the one before the stable
    /// checkpoint up, and any a peer is still fetching (so a long fetch can
    /// finish while checkpoints move on), and says which it lacks. One
    /// holding a certificate this replica has not seen yet is served too:
    /// the fetcher checks every piece.
    pub(super) fn on_state_fetch(&mut self, from: ReplicaId, seq: SeqNo, query: StateQuery) {
        // Even a state this replica has not reached gets an answer (the
        // host says it does not keep it): a fetcher that heard nothing
        // would wait on this replica forever instead of moving on to a
        // peer, or to a newer checkpoint, that can serve it.
        if self.may_answer(from, AnswerKind::StatePiece) {
            self.actions.push(Action::ServeState { to: from, seq, query });
        }
    }

    /// Hands a peer's answer to the fetcher, if it is about a checkpoint
    /// between what this replica holds and what it fetches (the fetcher
    /// may still be finishing an older target).
    pub(super) fn on_state_data(&mut self, from: ReplicaId, seq: SeqNo, answer: StateAnswer) {
        if self.transfer.as_ref().is_some_and(|t| seq <= t.seq) && seq > self.log.delivered {
            self.actions.push(Action::StateData { from, seq, answer });
        } else {
            self.discard(Discard::StateUnasked);
        }
    }

    /// The executor holds the state of checkpoint `seq`. If that is an
    /// older target than the one now wanted (the target moved while the
    /// fetch finished), it counts as progress and the transfer goes on.
    pub(super) fn on_state_fetched(&mut self, seq: SeqNo, state: Digest) {
        if seq <= self.log.delivered {
            return;
        }
        self.metrics.state_transfers += 1;
        self.log.delivered = seq;
        self.checkpoints.own.insert(seq, state);
        // Requests executed inside the transferred range would wait here
        // forever; clients retransmit whatever still needs ordering.
        self.pool.clear();
        if self.transfer.as_ref().is_some_and(|t| t.seq <= seq) {
            self.transfer = None;
            self.timers.transfer_at_ms = None;
            self.try_deliver();
        }
    }
}
