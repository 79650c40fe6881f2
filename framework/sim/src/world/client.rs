//! Simulated clients: closed loops of counter and register operations
//! whose decisions are the real client's ([`Invocation`]); and faulty
//! clients.

use super::network::Payload;
use super::World;
use crate::checker::OpRecord;
use crate::config::CLIENT_RETRY_MS;
use crate::crypto::Authenticity;
use crate::rng::Rng;
use crate::service::SimOp;
use palisade_core::{ClientId, ReplicaId, Request, RequestId, ViewNo};
use palisade_host::client::{Invocation, Verdict};
use palisade_host::ClientMail;
use palisade_services::counter::CounterOp;
use palisade_services::register::RegisterOp;

/// How long a client waits for the designated replier's full result once
/// the others' digests agree (the real client's grace period).
const FULL_REPLY_GRACE_MS: u64 = 20;

pub(crate) struct Current {
    /// Its entry in the history.
    record: usize,
    request: Request,
    decide: Invocation,
    retransmit_at: u64,
    backoff: u32,
    /// Waiting for the designated replica's full result until then.
    full_due: Option<u64>,
    /// The epoch whose members `decide` counts.
    epoch: u64,
}

pub(crate) struct SimClient {
    pub id: ClientId,
    /// Sends the same request id with different operations to different
    /// replicas, or requests only backups see; never waits for answers.
    pub byzantine: bool,
    pub next_request: u64,
    pub current: Option<Current>,
    pub next_op_at: u64,
    pub ops_after_heal: u32,
    pub view: ViewNo,
    pub rng: Rng,
}

impl World {
    pub(crate) fn client_tick(&mut self, c: usize) {
        let now = self.now;
        if self.clients[c].byzantine {
            self.byzantine_client_tick(c);
            return;
        }
        if let Some(cur) = &mut self.clients[c].current {
            if cur.full_due.is_some_and(|due| now >= due) {
                // The designated replica missed its grace period: ask everyone.
                cur.full_due = None;
                let req = cur.request.clone();
                self.broadcast_request(c, req);
            } else if now >= cur.retransmit_at {
                if cur.epoch != self.epoch_known {
                    // The membership changed under it: count the new
                    // members' answers from here on.
                    cur.decide =
                        Invocation::new(&self.membership, cur.request.client, cur.request.id, cur.request.read_only);
                    cur.epoch = self.epoch_known;
                }
                if cur.request.read_only {
                    self.fallback_to_ordered(c);
                } else {
                    cur.backoff = (cur.backoff + 1).min(3);
                    cur.retransmit_at = now + (CLIENT_RETRY_MS << cur.backoff).min(2_400);
                    let req = cur.request.clone();
                    self.broadcast_request(c, req);
                }
            }
            return;
        }
        let cl = &self.clients[c];
        let more = self.faulty_phase || cl.ops_after_heal > 0;
        if more && now >= cl.next_op_at {
            self.start_op(c);
        }
    }

    fn start_op(&mut self, c: usize) {
        let n = self.n();
        let cl = &mut self.clients[c];
        let op = match cl.rng.below(10) {
            0..=2 => SimOp::Counter(CounterOp::Add(cl.rng.range(1, 10))),
            3..=5 => SimOp::Register(RegisterOp::Write(((c as u64 + 1) << 32) | cl.next_request)),
            6 | 7 => SimOp::Counter(CounterOp::Get),
            _ => SimOp::Register(RegisterOp::Read),
        };
        let id = RequestId(cl.next_request);
        cl.next_request += 1;
        let read_only = op.is_read_only();
        let mut request = Request { client: cl.id, id, read_only, operation: op.encode(), auth: Default::default() };
        self.keys.sign_request(&mut request);
        self.history.push(OpRecord {
            client: cl.id,
            requests: vec![id],
            op,
            invoke_ms: self.now,
            complete_ms: None,
            result: None,
        });
        let record = self.history.len() - 1;
        let primary = self.membership.primary(cl.view);
        cl.current = Some(Current {
            record,
            request: request.clone(),
            decide: Invocation::new(&self.membership, cl.id, id, read_only),
            retransmit_at: self.now + CLIENT_RETRY_MS,
            backoff: 0,
            full_due: None,
            epoch: self.epoch_known,
        });
        if read_only || self.cfg.requests_to_all {
            self.broadcast_request(c, request);
        } else {
            self.send(n + c, primary.0 as usize, Payload::Request(request), 0);
        }
    }

    /// A faulty client: every so often it sends a request with the same id
    /// but a different operation to each replica, or to the backups of view
    /// 0 only (both properly authenticated: it is a client of the cluster,
    /// just not an honest one), or to every replica with MACs valid for
    /// some replicas only and a bad signature (Aardvark's attack on
    /// authenticators), or with every MAC valid and a bad signature, or a
    /// badly signed copy to the primary of view 0 and good ones to the
    /// others.
    fn byzantine_client_tick(&mut self, c: usize) {
        let n = self.n();
        let cl = &mut self.clients[c];
        if self.now < cl.next_op_at {
            return;
        }
        cl.next_op_at = self.now + cl.rng.range(20, 120);
        let id = RequestId(cl.next_request);
        cl.next_request += 1;
        let kind = cl.rng.range(0, 5);
        let mask = cl.rng.next_u64();
        let client = cl.id;
        let primary = self.membership.primary(ViewNo(0)).0 as usize;
        let members: Vec<usize> = self.membership.members().iter().map(|r| r.0 as usize).collect();
        for r in members {
            let (op, how) = match kind {
                0 => (SimOp::Counter(CounterOp::Add(r as u64 + 1)), Authenticity::Honest),
                1 if r == primary => continue,
                1 => (SimOp::Counter(CounterOp::Add(7)), Authenticity::Honest),
                2 => (SimOp::Counter(CounterOp::Add(11)), Authenticity::SplitMacs(mask)),
                3 => (SimOp::Counter(CounterOp::Add(13)), Authenticity::BadSignature),
                // A badly signed copy for the primary, good ones for the
                // backups: the primary must not lose the good copy the
                // backups forward, or it would be blamed for it.
                _ if r == primary => (SimOp::Counter(CounterOp::Add(17)), Authenticity::BadSignature),
                _ => (SimOp::Counter(CounterOp::Add(17)), Authenticity::Honest),
            };
            let mut request =
                Request { client, id, read_only: false, operation: op.encode(), auth: Default::default() };
            self.keys.authenticate(&mut request, how);
            self.send(n + c, r, Payload::Request(request), 0);
        }
    }

    fn broadcast_request(&mut self, c: usize, req: Request) {
        let n = self.n();
        let members: Vec<usize> = self.membership.members().iter().map(|r| r.0 as usize).collect();
        for r in members {
            self.send(n + c, r, Payload::Request(req.clone()), 0);
        }
    }

    /// A read-only request that could not gather a quorum of matching
    /// replies is retried as an ordered request under a new id.
    fn fallback_to_ordered(&mut self, c: usize) {
        let n = self.n();
        let cl = &mut self.clients[c];
        let cur = cl.current.as_mut().expect("present");
        let id = RequestId(cl.next_request);
        cl.next_request += 1;
        let mut request = Request { id, read_only: false, ..cur.request.clone() };
        self.keys.sign_request(&mut request);
        cur.request = request.clone();
        cur.decide = Invocation::new(&self.membership, cl.id, id, false);
        cur.epoch = self.epoch_known;
        cur.retransmit_at = self.now + CLIENT_RETRY_MS;
        cur.backoff = 0;
        cur.full_due = None;
        self.history[cur.record].requests.push(id);
        if self.cfg.requests_to_all {
            self.broadcast_request(c, request);
            return;
        }
        let primary = self.membership.primary(cl.view);
        self.send(n + c, primary.0 as usize, Payload::Request(request), 0);
    }

    /// An answer or a refusal from replica `from` reached client `c`.
    pub(crate) fn client_mail(&mut self, c: usize, from: ReplicaId, mail: ClientMail) {
        let cl = &mut self.clients[c];
        let Some(cur) = cl.current.as_mut() else { return };
        let verdict = match mail {
            ClientMail::Answer { client, view, request, answer } => {
                if client != cl.id || request != cur.request.id {
                    return;
                }
                cur.decide.on_answer(from, view, answer, true)
            }
            ClientMail::Refusal { client, request, reason } => {
                if client != cl.id || request != cur.request.id {
                    return;
                }
                cur.decide.on_rejection(from, reason)
            }
        };
        match verdict {
            None => {}
            Some(Verdict::Done { result, view }) => {
                let rec = &mut self.history[cur.record];
                rec.complete_ms = Some(self.now);
                rec.result = Some(result);
                cl.view = view;
                cl.current = None;
                if !self.faulty_phase {
                    cl.ops_after_heal = cl.ops_after_heal.saturating_sub(1);
                }
                cl.next_op_at = self.now + cl.rng.below(40);
            }
            Some(Verdict::NeedFull { now: false }) => cur.full_due = Some(self.now + FULL_REPLY_GRACE_MS),
            Some(Verdict::NeedFull { now: true }) => {
                cur.full_due = None;
                let req = cur.request.clone();
                self.broadcast_request(c, req);
            }
            Some(Verdict::NoQuorum) => self.fallback_to_ordered(c),
            // No correct replica says so of the simulated services' small
            // results: f colluders made a client give up on an operation.
            Some(Verdict::TooLarge { len }) => {
                self.checker.violations.push(format!("client {c} was told its result is {len} bytes, too large"));
            }
            // Honest clients' requests are never refused for good; the
            // operation stays pending and the liveness check reports it.
            Some(Verdict::Rejected(_)) => {}
        }
    }
}
