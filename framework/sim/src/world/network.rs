//! The simulated network: loss, duplication and late replay, delays and
//! reordering, partitions and clogged links; and what arrives where.

use super::replica::Feed;
use super::{Event, World};
use crate::config::REQUEST_TIMEOUT_MS;
use palisade_core::exec::Lookup;
use palisade_core::{ClientId, Input, PeerMessage, ReplicaId, Request};
use palisade_host::ClientMail;
use palisade_wire::envelope::{Answer, RejectReason};

/// What travels between nodes (replicas are nodes 0..n, clients n..).
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    /// A replica's message, from its core of that epoch.
    Peer(u64, PeerMessage),
    Request(Request),
    /// An answer or a refusal, for a client.
    Mail(ClientMail),
}

impl World {
    pub(crate) fn send(&mut self, from: usize, to: usize, payload: Payload, extra_delay_ms: u64) {
        self.messages += 1;
        let (loss, dup, jitter) = if self.faulty_phase {
            (self.faults.loss, self.faults.duplicate, self.faults.delay_max_ms)
        } else {
            (0.0, 0.0, 3)
        };
        if self.faulty_phase && self.blocked.contains(&(from, to)) {
            return;
        }
        if self.rng.chance(loss) {
            return;
        }
        let mut delay = 1 + self.rng.below(jitter + 1) + extra_delay_ms;
        if self.clogged.contains(&(from, to)) {
            delay += 150;
        }
        if self.faulty_phase && self.slow_windows.iter().any(|(a, b)| (*a..*b).contains(&self.now)) {
            // Slow enough to trip request timers, and view-change timers too.
            delay += self.rng.below(3 * REQUEST_TIMEOUT_MS);
        }
        if !self.faulty_phase {
            delay += self.cfg.slow_network_ms;
        }
        if self.rng.chance(dup) {
            // A duplicate that may arrive much later: a replay.
            let later = delay + self.rng.below(500);
            self.schedule(self.now + later, Event::Deliver { from, to, payload: payload.clone() });
        }
        self.schedule(self.now + delay, Event::Deliver { from, to, payload });
    }

    pub(crate) fn deliver(&mut self, from: usize, to: usize, payload: Payload) {
        let n = self.n();
        if to >= n {
            if let (Payload::Mail(mail), true) = (payload, from < n) {
                if to == self.view_manager_node() {
                    self.view_manager_mail(ReplicaId(from as u32), mail);
                } else {
                    self.client_mail(to - n, ReplicaId(from as u32), mail);
                }
            }
            return;
        }
        if self.replicas[to].consensus.is_none() {
            return;
        }
        match payload {
            Payload::Peer(epoch, msg) if from < n => {
                if self.replicas[to].strategy.is_some() {
                    let from = ReplicaId(from as u32);
                    self.with_strategy(to, |s, ctx| s.observe(ctx, from, &msg));
                    if let PeerMessage::Forward(r) = &msg {
                        if !self.with_strategy(to, |s, _| s.admits(r)) {
                            return;
                        }
                    }
                }
                self.replica_feed(to, Feed::Peer(ReplicaId(from as u32), epoch, msg));
            }
            Payload::Request(req) if from >= n => {
                if self.replicas[to].strategy.is_some() && !self.with_strategy(to, |s, _| s.admits(&req)) {
                    return;
                }
                self.on_request(to, req)
            }
            _ => {}
        }
    }

    /// A replica's request filter: the reply cache answers what already
    /// executed, ids below the window are refused, the rest reaches the core.
    fn on_request(&mut self, r: usize, req: Request) {
        if !req.read_only {
            let lookup = match &self.replicas[r].execution {
                Some(exec) => exec.executor().read().lookup(req.client, req.id),
                None => return,
            };
            let view = self.replicas[r].consensus.as_ref().map(|c| c.core().view()).unwrap_or_default();
            match lookup {
                Lookup::Cached(result) => {
                    let answer = Answer::Full(result);
                    self.replica_mail(r, ClientMail::Answer { client: req.client, view, request: req.id, answer });
                    return;
                }
                // As the runtime does: not answered until it commits, but
                // timed by the core.
                Lookup::Tentative(_) => {}
                Lookup::Stale => {
                    let reason = RejectReason::Stale;
                    self.replica_mail(r, ClientMail::Refusal { client: req.client, request: req.id, reason });
                    return;
                }
                Lookup::New => {}
            }
        }
        self.replica_step(r, Input::Request(req));
    }

    pub(crate) fn client_node(&self, client: ClientId) -> Option<usize> {
        if self.view_manager.as_ref().is_some_and(|vm| vm.id == client) {
            return Some(self.view_manager_node());
        }
        let i = client.0.checked_sub(1)? as usize;
        (i < self.clients.len()).then_some(self.n() + i)
    }
}
