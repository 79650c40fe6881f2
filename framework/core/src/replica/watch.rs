//! The watch on the primary's batches (docs/protocol.md): when clients
//! send every request to every replica, a backup holds the load the
//! primary is offered, forwards only what the primary leaves waiting, and
//! suspects a primary whose batches, with room to spare, keep leaving out
//! requests it was sent. The pool's side is `RequestPool::due_forwards`
//! and `RequestPool::count_skips`.

use super::pool::Around;
use super::{Discard, Replica, ViewChangeReason};
use crate::crypto::Crypto;
use crate::message::{null_digest, Batch, PeerMessage, Request};

/// Late forwards a backup sends per tick, at most (see `forward_late`).
const FORWARDS_PER_TICK: usize = 256;

impl<C: Crypto> Replica<C> {
    /// How long a backup gives the primary before it forwards a request
    /// the primary should already have, and again before the primary's
    /// batches that leave it out count: `forward_grace_ms`, or four
    /// measured rounds for each full batch waiting here if longer (a
    /// correct primary's request waits for the batches ahead of it, as the
    /// request timeout allows), doubled with the request timeout's backoff
    /// and the watch's own (see `Timers::watch_shift`).
    pub(super) fn forward_grace_ms(&self) -> u64 {
        let batches = 1 + self.pool.len() as u64 / self.cfg.batch_max_requests.max(1) as u64;
        let rounds = self
            .timers
            .round_x16
            .filter(|_| self.bft())
            .map_or(0, |r| r.saturating_mul(4).saturating_mul(batches).div_ceil(16));
        let shift = self.timers.request_shift.max(self.timers.watch_shift);
        self.cfg.forward_grace_ms.max(rounds) << shift
    }

    /// On a backup whose clients send to every replica, at every tick: the
    /// requests the primary has not proposed within the forward grace go
    /// to it (see `RequestPool::due_forwards`).
    pub(super) fn forward_late(&mut self, now: u64) {
        if !self.cfg.requests_to_all || self.is_primary() || self.rejoining() {
            return;
        }
        let grace = self.forward_grace_ms();
        let late = self.pool.due_forwards(now, grace, FORWARDS_PER_TICK);
        self.forward_to_primary(late);
    }

    /// Sends the primary requests it should have proposed by now.
    fn forward_to_primary(&mut self, late: Vec<Request>) {
        self.metrics.late_forwards += late.len() as u64;
        let primary = self.primary();
        for r in late {
            self.send(primary, PeerMessage::Forward(r));
        }
    }

    /// The watch on the primary's batches, on a backup that has just
    /// accepted `batch` at `seq` (before anything it completes is
    /// delivered): a batch with room to spare that leaves out a request the
    /// primary has had for the forward grace counts against the primary
    /// (see `RequestPool::count_skips`); whether `batch_watch_skips` of
    /// them against one request now suspect it, for the caller to act on
    /// once it has voted. Only when clients send to every replica, in BFT
    /// mode (a crashing primary does not pick and choose), and while this
    /// replica holds every batch below `seq` (a missing one may carry the
    /// request) and is not behind its peers.
    pub(super) fn watch_batch(&mut self, seq: crate::types::SeqNo, batch: &Batch) -> bool {
        let limit = self.cfg.batch_watch_skips;
        if limit == 0 || !self.cfg.requests_to_all || !self.bft() || self.is_primary() || batch.is_null() {
            return false;
        }
        // A replica behind its peers sees PRE-PREPAREs late, formed long
        // before what it forwarded reached the primary: it catches up.
        if self.transfer.is_some() || self.rejoining() || self.lagging() {
            return false;
        }
        let delivered = self.log.delivered;
        let view = self.view;
        let pipeline = self.cfg.max_in_flight.max(1);
        let horizon = delivered.0 + 4 * pipeline;
        if seq.0 > horizon {
            return false;
        }
        let now = self.clock.now_ms;
        let grace = self.forward_grace_ms();
        // Skips count only past a pipeline beyond anything seen here when
        // the request was sent (what the primary may have proposed before
        // it got it), looking no further than the watch does: a vote for a
        // far sequence number must not put the watch off.
        let seen = self.log.slots.keys().next_back().map_or(seq.0, |s| s.0.clamp(seq.0, horizon));
        let limits = (self.cfg.batch_max_requests, self.cfg.batch_max_bytes);
        let unchecked = self.unchecked_proposals();
        let (crypto, slots) = (&self.crypto, &self.log.slots);
        // The batches of the undelivered slots around this one, which the
        // requests left out may be in (one decided elsewhere and learned
        // here by notice never marked its requests proposed): every one
        // before it must be here, and those after it that are.
        let around = || {
            let mut held = Around { earlier: Vec::new(), later: Vec::new() };
            for s in delivered.0 + 1..=horizon {
                if s == seq.0 {
                    continue;
                }
                let slot = slots.get(&crate::types::SeqNo(s));
                let digest = slot.and_then(|sl| sl.decided.or(sl.pre_prepare.filter(|_| sl.view == view)));
                let batch = match digest {
                    Some(d) if d == null_digest() => continue,
                    Some(d) => slot.and_then(|sl| sl.batches.get(&d)).cloned(),
                    None => None,
                };
                match (batch, s < seq.0) {
                    (Some(b), true) => held.earlier.push(b),
                    (Some(b), false) => held.later.push(b),
                    (None, true) => return None,
                    (None, false) => {}
                }
            }
            Some(held)
        };
        let skips = self.pool.count_skips(now, grace, (seq.0, seen + pipeline), batch, around, limits, |r| {
            unchecked || crypto.verify_request(r)
        });
        for _ in 0..skips.dropped {
            self.discard(Discard::ClientUnauthenticated);
        }
        self.forward_to_primary(skips.resend);
        skips.most.is_some_and(|n| n >= limit)
    }

    /// The batch watch's verdict: this replica suspects the primary.
    pub(super) fn suspect_skipping_primary(&mut self) {
        self.metrics.skip_suspicions += 1;
        self.timers.watch_shift = (self.timers.watch_shift + 1).min(self.cfg.view_change_backoff_max);
        self.start_view_change(self.view.next(), ViewChangeReason::SkippedRequests);
    }
}
