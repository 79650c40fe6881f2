//! The end of an epoch (docs/reconfiguration.md).
//!
//! A core serves one epoch. When the executor accepts a reconfiguration it
//! tells the core the epoch's last sequence number (the first checkpoint at
//! or after the request). From then on the core orders nothing past it: the
//! primary fills the rest of the epoch with whatever requests wait, or null
//! batches, backups refuse PRE-PREPAREs past it, and nothing past it is
//! delivered. A backup that sees the end not reached in time suspects the
//! primary as it would for a late request. Once the checkpoint at the end is
//! stable, the epoch is over: the core still answers laggards (checkpoint
//! proofs, batches, state) but proposes, times and votes no more, and the
//! host starts the next epoch's core at that checkpoint.
//!
//! A replica may learn the end after it has voted for, or even delivered,
//! sequence numbers past it (execution runs behind ordering). Those
//! decisions are void: the host executes nothing an epoch's core delivers
//! past its end, so what is executed there is decided in the next epoch.

use super::Replica;
use crate::crypto::Crypto;
use crate::message::PeerMessage;
use crate::types::SeqNo;

/// The end of this core's epoch, once known.
#[derive(Clone, Copy, Debug)]
pub(super) struct EpochEnd {
    /// The last sequence number of the epoch (a checkpoint).
    pub last: SeqNo,
    /// When delivery last moved towards it: the primary has the request
    /// timeout from here to reach the end.
    pub progress_ms: u64,
}

impl<C: Crypto> Replica<C> {
    /// The executor accepted a change of membership: this epoch ends at
    /// `last`.
    pub(super) fn on_epoch_ends(&mut self, last: SeqNo) {
        if last.0 % self.cfg.checkpoint_interval != 0 || self.end.is_some_and(|e| e.last <= last) {
            return;
        }
        self.end = Some(EpochEnd { last, progress_ms: self.clock.now_ms });
        // A batch executed tentatively past the end never commits in this
        // epoch; the host took it for void (its state had moved to the next
        // epoch at `last`), so nothing is left to undo.
        if self.log.tentative.is_some_and(|(s, _)| s > last) {
            self.log.tentative = None;
        }
        self.try_propose();
    }

    /// The last sequence number of this core's epoch, once known.
    pub fn epoch_end(&self) -> Option<SeqNo> {
        self.end.map(|e| e.last)
    }

    /// Whether this core's epoch is over: its last checkpoint is stable.
    pub fn epoch_over(&self) -> bool {
        self.end.is_some_and(|e| self.checkpoints.stable.seq >= e.last)
    }

    /// Whether `seq` lies past the end of the epoch.
    pub(super) fn past_end(&self, seq: SeqNo) -> bool {
        self.end.is_some_and(|e| seq > e.last)
    }

    /// Whether the primary must propose even with nothing waiting: the
    /// epoch ends at a checkpoint, which must be reached.
    pub(super) fn must_fill(&self) -> bool {
        self.end.is_some_and(|e| self.log.next_seq <= e.last)
    }

    /// Delivery moved: the primary gets a fresh deadline for the rest.
    pub(super) fn end_progress(&mut self) {
        let now = self.clock.now_ms;
        if let Some(e) = &mut self.end {
            e.progress_ms = now;
        }
    }

    /// Whether every sequence number of the epoch is delivered here: its
    /// requests still waiting belong to the next epoch, and time nobody.
    pub(super) fn end_reached(&self) -> bool {
        self.end.is_some_and(|e| self.log.delivered >= e.last)
    }

    /// The CHECKPOINT at the end goes out again until it is stable: no
    /// later checkpoint of this epoch will ever make up for lost votes.
    pub(super) fn retransmit_end_vote(&mut self) {
        let Some(e) = self.end else { return };
        if self.checkpoints.stable.seq >= e.last {
            return;
        }
        if let Some(vote) = self.checkpoints.own_vote(e.last, self.id) {
            self.broadcast(PeerMessage::Checkpoint(vote));
        }
    }

    /// Whether the epoch has taken too long to end: the boundary not
    /// reached, or reached here but its checkpoint still not stable. The
    /// second happens when this replica delivered the last batches with a
    /// quorum that included faulty replicas, and the other correct ones,
    /// which missed them (a crash), cannot learn them from one correct
    /// replica's word; no client request times them, since clients have
    /// moved to the next epoch. A view change re-proposes what was
    /// prepared, and they catch up.
    pub(super) fn end_overdue(&self, now: u64, timeout: u64) -> bool {
        self.end.is_some_and(|e| self.checkpoints.stable.seq < e.last && now >= e.progress_ms + timeout)
    }
}
