//! Read-only requests (PBFT 5.1.3, made linearizable): answered without
//! ordering, once this replica has executed everything it prepared.

use super::{Action, DropReason, Replica};
use crate::crypto::Crypto;
use crate::message::Request;
use crate::types::SeqNo;
use std::collections::VecDeque;

/// Reads waiting for execution to reach what this replica had prepared
/// when they arrived.
#[derive(Default)]
pub(super) struct ReadQueue {
    waiting: VecDeque<(SeqNo, Request)>,
}

impl<C: Crypto> Replica<C> {
    /// Read-only requests run without ordering, but only once this replica
    /// has executed everything it has prepared. A write acknowledged to a
    /// client was prepared by a quorum before any replica executed it, and
    /// any quorum of read replies includes a correct replica of that
    /// quorum, so a read that gathers a quorum of matching replies sees
    /// every acknowledged write: reads stay linearizable.
    ///
    /// A replica that is rejoining forgot what it prepared, so it is no such
    /// correct replica: it answers no read until it has rejoined. (In CFT
    /// mode, where a read quorum is f+1, its stale answer and one from a
    /// replica that had not prepared the write yet made a quorum; the
    /// simulator found it.)
    pub(super) fn on_read_only(&mut self, req: Request) {
        if self.rejoining() {
            self.actions.push(Action::Dropped { client: req.client, request: req.id, reason: DropReason::Rejoining });
            return;
        }
        let target = self
            .log
            .slots
            .iter()
            .rev()
            .find(|(_, s)| s.prepared.is_some())
            .map(|(&seq, _)| seq)
            .unwrap_or(SeqNo(0))
            .max(self.checkpoints.stable.seq);
        // A tentative execution is prepared here, so `target` covers it:
        // a read waits for that batch to commit (or be undone).
        if self.log.delivered >= target && self.transfer.is_none() {
            self.actions.push(Action::ExecuteReadOnly { request: req, view: self.view });
        } else if self.reads.waiting.len() < self.cfg.read_queue_max {
            self.reads.waiting.push_back((target, req));
        } else {
            self.actions.push(Action::Dropped {
                client: req.client,
                request: req.id,
                reason: DropReason::ReadQueueFull,
            });
        }
    }

    pub(super) fn flush_reads(&mut self) {
        // Reads answer from committed state only (try_deliver flushes them
        // before the next tentative execution).
        if self.transfer.is_some() || self.reads.waiting.is_empty() || self.log.tentative.is_some() {
            return;
        }
        let delivered = self.log.delivered;
        let mut keep = VecDeque::with_capacity(self.reads.waiting.len());
        for (target, req) in std::mem::take(&mut self.reads.waiting) {
            if target <= delivered {
                self.actions.push(Action::ExecuteReadOnly { request: req, view: self.view });
            } else {
                keep.push_back((target, req));
            }
        }
        self.reads.waiting = keep;
    }
}
