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
    /// Set when the target is vouched for by f+1 votes but not yet stable:
    /// the configuration digest this replica's own vote names once the
    /// state is in (the quorum that makes it stable may need that vote).
    vouched: Option<Digest>,
}

impl<C: Crypto> Replica<C> {
    pub(super) fn start_transfer(&mut self, seq: SeqNo, state: Digest) {
        self.start_transfer_of(seq, state, None);
    }

    fn start_transfer_of(&mut self, seq: SeqNo, state: Digest, vouched: Option<Digest>) {
        if self.transfer.as_ref().is_some_and(|t| t.seq >= seq) {
            return;
        }
        self.transfer = Some(Transfer { seq, state, vouched });
        // The fetched state replaces whatever executed tentatively.
        self.log.tentative = None;
        self.ask_for_state();
    }

    /// A replica that cannot get further by itself fetches the newest
    /// checkpoint f+1 replicas vouch for, stable or not. f+1 matching
    /// CHECKPOINT votes include a correct replica's, which executed
    /// committed batches to that state, so the state is the right one; and
    /// the replicas that voted hold it. This breaks a deadlock the stable
    /// checkpoint alone cannot: when no peer still holds the stable state
    /// (restarted from a newer snapshot) and the next checkpoint needs this
    /// replica's vote to become stable (f peers silent). "Cannot get
    /// further": it is fetching already, or nothing was delivered for a
    /// quarter of a request timeout while f+1 replicas are past it (a
    /// joiner whose vote a quorum needs holds the whole cluster back for as
    /// long as it waits here).
    pub(super) fn check_vouched_checkpoint(&mut self) {
        let stalled = self.transfer.is_some()
            || self.clock.now_ms >= self.timers.delivered_at_ms + self.cfg.request_timeout_ms / 4;
        if !stalled {
            return;
        }
        let above = self.log.delivered.max(self.transfer.as_ref().map_or(SeqNo(0), |t| t.seq));
        let weak = self.membership().weak_quorum();
        if let Some((seq, state, config)) = self.checkpoints.weak_certificate(above, weak) {
            self.start_transfer_of(seq, state, Some(config));
        }
    }

    /// Tells the fetcher what to fetch; again after every timeout, so that
    /// it re-asks whatever went unanswered.
    fn ask_for_state(&mut self) {
        let Some(t) = &self.transfer else { return };
        let (seq, state) = (t.seq, t.state);
        self.timers.transfer_at_ms = Some(self.clock.now_ms + self.cfg.state_transfer_timeout_ms);
        let holders = self.checkpoints.holders(seq, state);
        self.actions.push(Action::FetchState { seq, state, holders });
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
        self.timers.delivered_at_ms = self.clock.now_ms;
        self.checkpoints.own.insert(seq, state);
        // Requests executed inside the transferred range would wait here
        // forever; clients retransmit whatever still needs ordering.
        self.pool.clear();
        // A state f+1 replicas vouch for, and not yet stable: its vote may
        // be the one the checkpoint needs to become stable, even when the
        // transfer has a newer target by now (a joiner needed for a quorum
        // while a member is down must not wait for a checkpoint that can
        // only become stable with its own vote).
        let done = self.transfer.as_ref().is_some_and(|t| t.seq <= seq);
        let target_vouched = self.transfer.as_ref().filter(|t| t.seq == seq).and_then(|t| t.vouched);
        if done {
            self.transfer = None;
            self.timers.transfer_at_ms = None;
        }
        let weak = self.membership().weak_quorum();
        let vouched = target_vouched.or_else(|| {
            (seq > self.checkpoints.stable.seq).then(|| self.checkpoints.vouched_config(seq, state, weak)).flatten()
        });
        if let Some(config) = vouched {
            self.on_checkpoint_ready(seq, state, config);
        }
        if done {
            self.try_deliver();
        }
    }
}
