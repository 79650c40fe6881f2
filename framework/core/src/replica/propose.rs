//! Client requests (PBFT 4.1): backups forward them to the primary and
//! time them; the primary cuts them into batches and proposes them.

use super::{Action, Discard, DropReason, Record, Replica};
use crate::crypto::Crypto;
use crate::message::{Batch, PeerMessage, PrePrepare, Request};
use std::sync::Arc;

impl<C: Crypto> Replica<C> {
    pub(super) fn on_client_request(&mut self, req: Request) {
        if req.read_only {
            self.on_read_only(req);
            return;
        }
        let key = (req.client, req.id);
        if self.pool.is_delivered(key) {
            self.discard(Discard::AlreadyDelivered);
            return;
        }
        if req.size_bytes() > self.cfg.batch_max_bytes {
            // Backups refuse a batch over the limit, so proposing this
            // request would only change views forever.
            self.refuse(&req, DropReason::RequestTooLarge);
            return;
        }
        let now = self.clock.now_ms;
        let primary = self.primary();
        let am_primary = primary == self.id;
        let timed = !self.pool.floods(req.client, now);
        if let Some(p) = self.pool.get_mut(&key) {
            // A retransmission: the client has not heard back. Make sure the
            // primary has it (the forward may have been lost).
            if !am_primary && timed && now >= p.forwarded_ms + self.cfg.retransmit_ms {
                p.forwarded_ms = now;
                p.forwarded = true;
                let r = p.request.clone();
                self.send(primary, PeerMessage::Forward(r));
            }
            return;
        }
        if !self.add_pending(req.clone(), false) {
            return;
        }
        // A client with more pending here than are timed floods (or did a
        // moment ago): a correct primary owes it no deadline (see
        // `RequestPool::floods`), and
        // forwarding a flood sent to every replica would triple it in the
        // primary's peer queue, where it delays the forwards of correct
        // clients (whose backups then time out) and the votes. Its
        // requests are still forwarded before their timers may blame the
        // primary (see `check_request_timer`).
        // When clients send to every replica, the primary has its own copy:
        // this one goes only if the primary has not proposed it in time
        // (`forward_late`).
        if !am_primary && !self.cfg.requests_to_all && !self.pool.floods(req.client, now) {
            self.pool.mark_forwarded(&key, now);
            self.send(primary, PeerMessage::Forward(req));
        }
        self.try_propose();
    }

    fn refuse(&mut self, req: &Request, reason: DropReason) {
        self.actions.push(Action::Dropped { client: req.client, request: req.id, reason });
    }

    fn add_pending(&mut self, req: Request, verified: bool) -> bool {
        // A client past its quota waits for its earlier requests: one that
        // floods (even with valid requests) holds a bounded part of the
        // pool, and of each batch (see `take_batch`). Forwards (`verified`)
        // have twice the room (see `on_forward`).
        let quota = self.cfg.pending_per_client_max * if verified { 2 } else { 1 };
        if self.pool.len() >= self.cfg.pending_max || self.pool.pending_of(req.client) >= quota {
            self.refuse(&req, DropReason::PendingFull);
            return false;
        }
        self.pool.add(req, self.clock.now_ms, verified);
        true
    }

    pub(super) fn on_forward(&mut self, req: Request) {
        if !self.is_primary() {
            self.discard(Discard::ForwardToNonPrimary);
            return;
        }
        if req.size_bytes() > self.cfg.batch_max_bytes {
            self.discard(Discard::ForwardTooLarge);
            return;
        }
        // A copy of a checked request costs nothing; anything else is
        // checked before it takes room in the pool (a faulty peer could
        // otherwise fill the pool with requests no client sent). A good copy
        // replaces an unchecked one: a faulty client may have sent this
        // replica a badly signed copy and the backups a good one, which
        // would otherwise be lost here and blamed on this primary.
        let key = (req.client, req.id);
        if self.pool.is_delivered(key) || self.pool.is_verified(&key) {
            return;
        }
        // No room for it anyway: not worth a signature check (a client
        // flooding every replica would otherwise make the backups' forwards
        // cost the primary one check each). A forward may take a client
        // up to twice its quota: the backup that sent it times it, and a
        // client that fills its quota here and sends other requests to the
        // backups alone must not get a correct primary suspected.
        if !self.pool.contains(&key)
            && (self.pool.len() >= self.cfg.pending_max
                || self.pool.pending_of(req.client) >= 2 * self.cfg.pending_per_client_max)
        {
            self.discard(Discard::ForwardNoRoom);
            return;
        }
        if req.read_only || !self.crypto.verify_request(&req) {
            self.discard(Discard::ForwardUnauthenticated);
            return;
        }
        if self.pool.contains(&key) {
            self.pool.replace_verified(req);
            self.try_propose();
            return;
        }
        if self.add_pending(req, true) {
            self.try_propose();
        }
    }

    /// On the primary: proposes batches while the pipeline and the window
    /// have room. With nothing in flight it proposes whatever waits, so
    /// light load never waits; with batches in flight, only once enough
    /// requests wait for a batch to be worth its messages.
    pub(super) fn try_propose(&mut self) {
        if !self.normal || !self.is_primary() || self.transfer.is_some() || self.rejoining() || self.epoch_over() {
            return;
        }
        let floor = self.checkpoints.stable.seq.next().max(self.log.delivered.next());
        self.log.next_seq = self.log.next_seq.max(floor);
        while self.pool.queued() > 0 || self.must_fill() {
            let in_flight = self.log.next_seq.0 - 1 - self.log.delivered.0;
            if in_flight >= self.cfg.max_in_flight
                || !self.in_window(self.log.next_seq)
                || self.past_end(self.log.next_seq)
            {
                break;
            }
            let fill = self.must_fill();
            if in_flight > 0
                && !fill
                && self.pool.queued() < self.cfg.pipeline_min_batch.min(self.cfg.batch_max_requests)
            {
                break;
            }
            // Every signature is checked before proposing: a request whose
            // signature fails would be refused by the backups its MACs do
            // not cover, and a faulty client could change views at will.
            let unchecked = self.unchecked_proposals();
            let crypto = &self.crypto;
            let (requests, refused) =
                self.pool.take_batch(self.cfg.batch_max_requests, self.cfg.batch_max_bytes, |r| {
                    unchecked || crypto.verify_request(r)
                });
            for _ in 0..refused {
                self.discard(Discard::ClientUnauthenticated);
            }
            let batch = if !requests.is_empty() {
                // The primary-chosen non-determinism: its wall clock, never
                // earlier than the batch before.
                let timestamp_ms = self.clock.wall_ms.max(self.log.last_timestamp_ms);
                self.log.last_timestamp_ms = timestamp_ms;
                Arc::new(Batch::new(timestamp_ms, self.view, requests))
            } else if fill && self.pool.queued() == 0 {
                // Nothing waits, but the epoch must reach its end.
                self.log.null_batch.clone()
            } else {
                continue;
            };
            let seq = self.log.next_seq;
            self.log.next_seq = seq.next();
            self.metrics.proposed_batches += 1;
            let digest = batch.digest();
            let (view, now) = (self.view, self.clock.now_ms);
            let slot = self.log.slot_in_view(seq, view);
            slot.pre_prepare = Some(digest);
            slot.batches.insert(digest, batch.clone());
            slot.touched_ms = now;
            slot.accepted_ms = Some(now);
            slot.add_q(digest, view);
            self.persist(Record::PrePrepared { view, seq, digest, batch: Some(batch.clone()) });
            self.broadcast(PeerMessage::PrePrepare(PrePrepare { view, seq, batch }));
            if !self.bft() {
                self.mark_prepared(seq, digest);
            }
        }
    }
}
