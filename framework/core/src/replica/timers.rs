//! Every timer of the replica, in one table, and what each does when it
//! expires. Time comes only from ticks: the monotonic clock drives all of
//! them.

use super::{Discard, Replica, ViewChangeReason};
use crate::crypto::Crypto;
use crate::message::{null_digest, Batch, PeerMessage, PrePrepare, Status, Vote};
use crate::types::{ReplicaId, ViewNo};

/// A deadline with exponential backoff.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Backoff {
    pub deadline_ms: Option<u64>,
    /// Failed waits since requests last executed: the next wait is the
    /// base shifted by this (capped).
    pub attempts: u32,
}

/// The tick table.
#[derive(Clone, Debug, Default)]
pub(super) struct Timers {
    /// Waiting for a NEW-VIEW.
    pub view_change: Backoff,
    /// Doublings of the request timeout (PBFT 4.5.2); the request timer
    /// itself runs from each pending request's arrival (see `pool`).
    pub request_shift: u32,
    /// Doublings of the batch watch's grace: one more per suspicion it
    /// raised, one fewer per stable checkpoint, so that a backup that
    /// suspects wrongly (its link from the primary slower than the grace)
    /// soon stops doing so; not reset by the next delivery, as the request
    /// timeout's are.
    pub watch_shift: u32,
    /// Next retransmission of VIEW-CHANGEs, rejoin questions and end votes
    /// (slots are looked at every tick).
    pub retransmit_at_ms: u64,
    /// Next STATUS.
    pub status_at_ms: u64,
    /// When to ask the next peer for the snapshot being fetched.
    pub transfer_at_ms: Option<u64>,
    /// When delivery last moved (or the core started).
    pub delivered_at_ms: u64,
    /// Peers whose connection to this replica is closed, and since when.
    pub links_down: std::collections::BTreeMap<crate::types::ReplicaId, u64>,
    /// Agreement's measured pace: a moving average of rounds (PRE-PREPARE
    /// accepted here to commit decided here), in sixteenths of a
    /// millisecond. The primary's delay before proposing is not in it.
    pub round_x16: Option<u64>,
    /// The view this replica last saw in normal operation, since when,
    /// and how many requests it had executed then.
    pub view_since: Option<(ViewNo, u64, u64)>,
}

impl Timers {
    /// One more round, of `ms`, measured.
    pub fn time_round(&mut self, ms: u64) {
        let sample = ms.saturating_mul(16);
        self.round_x16 = Some(match self.round_x16 {
            None => sample,
            Some(avg) => (avg.saturating_mul(7).saturating_add(sample)) / 8,
        });
    }
}

impl<C: Crypto> Replica<C> {
    pub(super) fn on_tick(&mut self) {
        let now = self.clock.now_ms;
        if self.epoch_over() {
            // Only laggards' questions are answered now (see `epoch`).
            if self.timers.transfer_at_ms.is_some_and(|t| now >= t) {
                self.on_transfer_timeout();
            }
            self.answers.forget_older_than(now, self.cfg.retransmit_ms.max(self.cfg.status_interval_ms));
            return;
        }
        self.pool.forget_floods(now);
        if self.normal {
            if !self.end_reached() {
                self.check_request_timer(now);
            }
            self.check_end_timer(now);
            self.check_rotation(now);
        } else if self.timers.view_change.deadline_ms.is_some_and(|d| now >= d) {
            self.start_view_change(self.view.next(), ViewChangeReason::ViewChangeTimeout);
        }
        if now >= self.timers.retransmit_at_ms {
            self.timers.retransmit_at_ms = now + self.cfg.retransmit_ms;
            self.retransmit();
        }
        if self.normal {
            self.retransmit_slots(now);
            self.forward_late(now);
        }
        if now >= self.timers.status_at_ms {
            self.timers.status_at_ms = now + self.cfg.status_interval_ms;
            self.broadcast(PeerMessage::Status(Status {
                view: self.view,
                normal: self.normal,
                delivered: self.log.delivered,
                stable: self.checkpoints.stable.seq,
            }));
        }
        if self.timers.transfer_at_ms.is_some_and(|t| now >= t) {
            self.on_transfer_timeout();
        }
        self.check_vouched_checkpoint();
        let horizon = self.cfg.retransmit_ms.max(self.cfg.status_interval_ms).max(self.cfg.state_transfer_timeout_ms);
        self.answers.forget_older_than(now, horizon);
        self.try_propose();
    }

    /// The request timer: a replica that has waited too long for some
    /// request suspects the primary (PBFT 4.4). Each request carries its
    /// own start time, so constant load never keeps a timer from expiring,
    /// and a busy but correct primary never trips it. The primary times its
    /// own requests too: when its proposals cannot commit (too few replicas
    /// left in its view) it is the one that must move on.
    ///
    /// A replica that is merely behind (f+1 peers in its view report
    /// deliveries well past its own) waits on itself, not on the primary:
    /// it restarts its timers and catches up instead of starting a view
    /// change nobody else would join. f+1 reports include a correct
    /// replica's, so faulty peers cannot hold off a view change this way;
    /// and one a primary deserves is still started by the replicas that are
    /// not behind.
    ///
    /// The timeout doubles with every view change that executed nothing
    /// since the last (PBFT 4.5.2), so a network slower than the configured
    /// timeout still lets some view finish its work.
    fn check_request_timer(&mut self, now: u64) {
        let mut timeout = self.request_timeout() << self.timers.request_shift;
        let mut reason = ViewChangeReason::RequestTimeout;
        // The primary's connection closed: once it has stayed closed for the
        // shorter timeout, requests wait only that long.
        let quick = self.cfg.primary_down_timeout_ms << self.timers.request_shift;
        let primary = self.primary();
        if primary != self.id
            && quick < timeout
            && self.timers.links_down.get(&primary).is_some_and(|since| now >= since + quick)
        {
            timeout = quick;
            reason = ViewChangeReason::PrimaryUnreachable;
        }
        let Some(oldest) = self.pool.oldest_arrival_ms() else { return };
        if now < oldest.max(self.catch_up.restarted_ms) + timeout {
            return;
        }
        if self.may_wait_to_catch_up() {
            self.catch_up.restarted_ms = now;
            self.catch_up.restarts.record(self.view, self.log.delivered);
            self.metrics.timers_restarted += 1;
        } else if self.rejoining() {
            // It casts no vote, a VIEW-CHANGE included; the replicas that
            // vote decide whether the primary is slow.
            self.catch_up.restarted_ms = now;
        } else {
            // Before blaming the primary, check the signatures of what it
            // did not order: it was right to refuse a request whose
            // signature fails (a backup got it straight from a faulty
            // client), and only then does this cost a signature check.
            let unchecked = self.unchecked_proposals();
            let crypto = &self.crypto;
            let dropped = self.pool.drop_unauthentic(|r| unchecked || crypto.verify_request(r));
            for _ in 0..dropped {
                self.discard(Discard::ClientUnauthenticated);
            }
            let still_late =
                |pool: &super::pool::RequestPool| pool.oldest_arrival_ms().is_some_and(|o| now >= o + timeout);
            if dropped > 0 && !still_late(&self.pool) {
                return;
            }
            // Then make sure it was sent what it did not order: a request
            // that arrived here while its client flooded was not forwarded,
            // and the primary may have dropped its own copy over the
            // client's quota. It goes now (its signature checked above),
            // with one more timeout to be ordered in. Forwarding such
            // requests as they became timed would send the primary a
            // flood's worth.
            if primary != self.id {
                let late = self.pool.retime_unforwarded(now.saturating_sub(timeout), now);
                if !late.is_empty() {
                    for r in late {
                        self.send(primary, PeerMessage::Forward(r));
                    }
                    if !still_late(&self.pool) {
                        return;
                    }
                }
            }
            if let Some((since, (client, request))) = self.pool.oldest_timed() {
                self.metrics.last_late_request = Some(super::LateRequest {
                    client,
                    request,
                    waited_ms: now.saturating_sub(since),
                    timeout_ms: timeout,
                    client_pending: self.pool.pending_of(client),
                    proposed: self.pool.is_proposed(&(client, request)),
                    delivered: self.log.delivered,
                    next: self.next_slot(),
                });
            }
            self.timers.request_shift = (self.timers.request_shift + 1).min(self.cfg.view_change_backoff_max);
            #[cfg(feature = "planted-bugs")]
            if self.cfg.planted.fixed_request_timeout {
                self.timers.request_shift = 0;
            }
            self.start_view_change(self.view.next(), reason);
        }
    }

    /// Where agreement on the first undelivered batch stands here.
    fn next_slot(&self) -> super::NextSlot {
        let seq = self.log.delivered.next();
        match self.log.slots.get(&seq).filter(|s| s.view == self.view) {
            Some(s) => super::NextSlot {
                pre_prepared: s.pre_prepare.is_some(),
                batch: s.pre_prepare.is_some_and(|d| s.batches.contains_key(&d)),
                prepares: s.prepares.len(),
                commits: s.commits.len(),
            },
            None => super::NextSlot::default(),
        }
    }

    /// A connection from `peer` closed or opened (see [`crate::Input::PeerLink`]).
    pub(super) fn on_peer_link(&mut self, peer: crate::types::ReplicaId, up: bool) {
        if up {
            self.timers.links_down.remove(&peer);
        } else if peer != self.id && self.membership().contains(peer) {
            let now = self.clock.now_ms;
            self.timers.links_down.entry(peer).or_insert(now);
        }
    }

    /// The epoch's end is known but not reached (or its checkpoint not
    /// stable) in time: the primary is suspected as for a late request
    /// (with the same backoff), because no client request may be waiting
    /// to time it.
    fn check_end_timer(&mut self, now: u64) {
        // Checkpoints and snapshots, not rounds, are what it waits for: the
        // configured timeout, not the adaptive one.
        let timeout = self.cfg.request_timeout_ms << self.timers.request_shift;
        if !self.end_overdue(now, timeout) || self.rejoining() {
            return;
        }
        self.end_progress();
        self.timers.request_shift = (self.timers.request_shift + 1).min(self.cfg.view_change_backoff_max);
        self.start_view_change(self.view.next(), ViewChangeReason::EndTimeout);
    }

    /// The request timeout before backoff: the configured one until rounds
    /// have been timed here, then `request_timeout_rounds` rounds for
    /// each full batch waiting (a correct primary's requests wait for the
    /// batches in flight and those ahead of them, each a round), within
    /// `request_timeout_min_ms..=request_timeout_ms`. Only a slower
    /// network, or more work waiting, lengthens it; a primary that holds
    /// its proposals back does neither.
    pub(super) fn request_timeout(&self) -> u64 {
        let configured = self.cfg.request_timeout_ms;
        let rounds = self.cfg.request_timeout_rounds;
        // In CFT mode a backup decides on the PRE-PREPARE that carries the
        // primary's COMMIT: its rounds do not measure the network.
        let Some(round_x16) = self.timers.round_x16.filter(|_| rounds > 0 && self.bft()) else {
            return configured;
        };
        let batches = 1 + self.pool.len() as u64 / self.cfg.batch_max_requests.max(1) as u64;
        let adaptive = round_x16.saturating_mul(rounds).saturating_mul(batches).div_ceil(16);
        adaptive.max(self.cfg.request_timeout_min_ms).min(configured)
    }

    /// Periodic leader change (BFT-SMaRt): a view that has lasted
    /// `leader_rotation_ms` ends, whatever its primary does. Every correct
    /// replica's clock runs from its own entry into the view, so they ask
    /// for the next one within a message delay of each other; a replica
    /// that is late joins once f+1 have asked.
    ///
    /// Only a view that executed requests rotates: an idle cluster keeps
    /// its view, and every rotation is followed by a view that executes
    /// requests, which resets the view-change backoff (PBFT 4.5.2), so
    /// rotations never lengthen the wait after a real failure.
    fn check_rotation(&mut self, now: u64) {
        let executed = self.metrics.delivered_requests;
        let (since, executed_then) = match self.timers.view_since {
            Some((view, since, then)) if view == self.view => (since, then),
            _ => {
                self.timers.view_since = Some((self.view, now, executed));
                (now, executed)
            }
        };
        let period = self.cfg.leader_rotation_ms;
        if period == 0
            || now < since + period
            || executed == executed_then
            || !self.normal
            || self.end_reached()
            || self.rejoining()
        {
            return;
        }
        self.metrics.rotations += 1;
        self.start_view_change(self.view.next(), ViewChangeReason::Rotation);
    }

    /// Requests execute again: the request timeout comes back down, as
    /// far as the time they took allows. Within the unshifted timeout it is
    /// back to it; well inside the current one, one doubling less; slower
    /// than that it stays, so a network slower than the timeout does not
    /// make every request after a success trip it again.
    pub(super) fn adapt_request_timeout(&mut self, batch: &Batch) {
        let now = self.clock.now_ms;
        let waited = batch
            .requests
            .iter()
            .filter_map(|r| self.pool.arrival_ms(&(r.client, r.id)))
            .map(|arrival| now.saturating_sub(arrival))
            .max();
        let Some(waited) = waited else { return };
        let base = self.request_timeout();
        let shift = &mut self.timers.request_shift;
        if waited <= base {
            *shift = 0;
        } else if waited < (base << *shift) / 2 {
            *shift = shift.saturating_sub(1);
        }
    }

    /// Every `retransmit_ms`: while changing views, this replica's
    /// VIEW-CHANGE; while rejoining, its question to the peers; its vote
    /// on the epoch's end.
    fn retransmit(&mut self) {
        self.retransmit_end_vote();
        if let Some(r) = &self.rejoin {
            if r.until.is_none() {
                let nonce = r.nonce;
                self.broadcast(PeerMessage::RejoinQuery { nonce });
            }
        }
        if !self.normal && !self.rejoining() {
            if let Some(vc) = self.changes.received.get(&self.id).cloned() {
                if vc.body.new_view == self.view {
                    self.broadcast(PeerMessage::ViewChange(vc));
                }
            }
        }
    }

    /// At every tick, for each undecided slot of the current view that has
    /// not moved here for `retransmit_ms` (or a quarter of the request
    /// timeout, if shorter: a lost message must be sent again well before
    /// a request waiting on it times out), this replica's messages go out
    /// again: the primary's PRE-PREPARE to the backups that have not
    /// answered it, a backup's PREPARE, everyone's COMMIT; with requests for
    /// batches this replica lacks. Measured per slot, not on one periodic
    /// timer, so that a slot waits no longer than that before its resend.
    fn retransmit_slots(&mut self, now: u64) {
        let voting = !self.rejoining();
        // The timeout with its backoff: after a view change for slowness
        // the resends slow down with it.
        let resend_ms = self.cfg.retransmit_ms.min(self.request_timeout_ms() / 4).max(1);
        let ask_every = self.cfg.retransmit_ms;
        let primary = self.is_primary() && voting;
        let bft = self.bft() && voting;
        let (view, me, delivered) = (self.view, self.id, self.log.delivered);
        let backups: Vec<ReplicaId> = if primary {
            self.membership().members().iter().copied().filter(|r| *r != me).collect()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        let mut to_some = Vec::new();
        let mut fetch = Vec::new();
        for (&seq, slot) in self.log.slots.iter_mut() {
            if let Some(d) = slot.decided {
                if seq > delivered
                    && d != null_digest()
                    && !slot.batches.contains_key(&d)
                    && slot.batch_request_due(now, ask_every)
                {
                    fetch.push((seq, d));
                }
                continue;
            }
            if slot.view != view || now < slot.touched_ms + resend_ms {
                continue;
            }
            let Some(d) = slot.pre_prepare else { continue };
            slot.touched_ms = now;
            if primary {
                if let Some(b) = slot.batches.get(&d) {
                    // A backup's PREPARE (in CFT its COMMIT) shows that
                    // the PRE-PREPARE reached it.
                    let answered = if bft { &slot.prepares } else { &slot.commits };
                    let missing: Vec<ReplicaId> =
                        backups.iter().copied().filter(|r| answered.get(r) != Some(&d)).collect();
                    if !missing.is_empty() {
                        to_some.push((missing, PeerMessage::PrePrepare(PrePrepare { view, seq, batch: b.clone() })));
                    }
                }
            } else if bft && slot.prepares.get(&me) == Some(&d) {
                out.push(PeerMessage::Prepare(Vote { view, seq, digest: d }));
            }
            if slot.prepared_here && voting {
                out.push(PeerMessage::Commit(Vote { view, seq, digest: d }));
            }
            if d != null_digest() && !slot.batches.contains_key(&d) && slot.batch_request_due(now, ask_every) {
                fetch.push((seq, d));
            }
        }
        for m in out {
            self.broadcast(m);
        }
        for (to, m) in to_some {
            for r in to {
                self.send(r, m.clone());
            }
        }
        for (seq, digest) in fetch {
            self.broadcast(PeerMessage::BatchRequest { seq, digest });
        }
    }
}
