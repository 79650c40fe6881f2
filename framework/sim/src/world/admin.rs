//! The view manager: a client that changes the membership with signed
//! requests while the faults go on, and the spares that join when added.
//!
//! Its plan is drawn from the seed: replace every original member one by
//! one (the primary first), or grow (4 to 5 to 7, raising f to 2) and shrink
//! back (lowering f explicitly), or in CFT grow from 3 to 5. Between the
//! changes it sends a request signed with the wrong key and replays an
//! accepted one, both of which every replica must reject.
//!
//! Spares run from the start, on standby: they know only the genesis
//! configuration, ask its members for the chain of handovers, check it, and
//! join when it makes them members. Clients learn each new configuration as
//! soon as a correct replica's state enters it (standing in for the chain
//! the runtime's clients will verify).

use super::network::Payload;
use super::World;
use crate::config::CLIENT_RETRY_MS;
use crate::rng::Rng;
use palisade_core::reconfig::{AdminBody, AdminOp, AdminOutcome, Configuration, Rejection};
use palisade_core::{ClientId, Digest, Mode, ReplicaId, Request, RequestId};
use palisade_host::client::{Invocation, Verdict};
use palisade_host::ClientMail;
use std::collections::VecDeque;

/// One thing the view manager does.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// A change that must be accepted.
    Change(Vec<AdminOp>),
    /// A change signed with another key: must be rejected as such.
    Forged,
    /// The last accepted request's body again, under a new request id:
    /// must be rejected (its epoch or nonce is used up).
    Replay,
}

pub(crate) struct Call {
    step: Step,
    request: Request,
    decide: Invocation,
    epoch: u64,
    retransmit_at: u64,
    backoff: u32,
}

pub(crate) struct ViewManager {
    pub id: ClientId,
    pub plan: VecDeque<Step>,
    pub name: &'static str,
    pub current: Option<Call>,
    next_at: u64,
    nonce: u64,
    next_request: u64,
    last_accepted: Option<AdminBody>,
    /// Changes accepted, by the epoch they start.
    pub accepted: Vec<u64>,
    rng: Rng,
}

/// How many spare replicas a run with the view manager keeps ready.
pub(crate) fn spares(n: usize) -> usize {
    n.max(3)
}

impl ViewManager {
    pub(crate) fn draw(rng: &mut Rng, n: usize, f: usize, mode: Mode, id: ClientId, first_at: u64) -> ViewManager {
        let add = |i: usize| AdminOp::Add {
            id: ReplicaId(i as u32),
            address: format!("sim:{i}"),
            public_key: [0; 32], // filled in by the world with the spare's key
        };
        let remove = |i: usize| AdminOp::Remove { id: ReplicaId(i as u32) };
        let (name, changes): (&'static str, Vec<Vec<AdminOp>>) = match (mode, rng.below(2)) {
            (Mode::Cft, _) => ("grow-cft", vec![vec![add(n)], vec![add(n + 1)]]),
            (Mode::Bft, 0) => ("replace-all", (0..n).map(|i| vec![add(n + i), remove(i)]).collect()),
            (Mode::Bft, _) => (
                "grow-shrink",
                vec![
                    vec![add(n)],
                    vec![add(n + 1), add(n + 2)],
                    // Back to the f the run started with: the Byzantine
                    // replicas were placed for it.
                    vec![remove(n + 2), remove(n + 1), AdminOp::SetF { f }],
                    vec![remove(n)],
                ],
            ),
        };
        let mut plan: VecDeque<Step> = VecDeque::new();
        for (i, ops) in changes.into_iter().enumerate() {
            if i == 1 {
                plan.push_back(Step::Forged);
                plan.push_back(Step::Replay);
            }
            plan.push_back(Step::Change(ops));
        }
        ViewManager {
            id,
            plan,
            name,
            current: None,
            next_at: first_at,
            nonce: 0,
            next_request: 1,
            last_accepted: None,
            accepted: Vec::new(),
            rng: rng.fork(),
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.plan.is_empty() && self.current.is_none()
    }
}

impl World {
    /// The view manager's node: after the clients'.
    pub(crate) fn view_manager_node(&self) -> usize {
        self.n() + self.clients.len()
    }

    pub(crate) fn view_manager_tick(&mut self) {
        let now = self.now;
        let Some(vm) = &mut self.view_manager else { return };
        if let Some(call) = &mut vm.current {
            if now < call.retransmit_at {
                return;
            }
            call.backoff = (call.backoff + 1).min(3);
            call.retransmit_at = now + (CLIENT_RETRY_MS << call.backoff).min(2_400);
            if call.epoch != self.epoch_known {
                // The membership changed under it: count the new members' answers.
                call.decide = Invocation::new(&self.membership, vm.id, call.request.id, false);
                call.epoch = self.epoch_known;
            }
            let req = call.request.clone();
            self.view_manager_send(req);
            return;
        }
        if now < vm.next_at {
            return;
        }
        let Some(step) = vm.plan.front().cloned() else { return };
        let body = match &step {
            Step::Change(ops) => {
                vm.nonce += 1;
                let ops = ops
                    .iter()
                    .map(|op| match op {
                        AdminOp::Add { id, address, .. } => AdminOp::Add {
                            id: *id,
                            address: address.clone(),
                            public_key: self.keys.replica_public(id.0 as usize),
                        },
                        other => other.clone(),
                    })
                    .collect();
                AdminBody { cluster: self.cluster, epoch: self.epoch_known, nonce: vm.nonce, ops }
            }
            Step::Forged => {
                vm.nonce += 1;
                AdminBody { cluster: self.cluster, epoch: self.epoch_known, nonce: vm.nonce, ops: vec![] }
            }
            Step::Replay => match vm.last_accepted.clone() {
                Some(b) => b,
                None => {
                    vm.plan.pop_front();
                    return;
                }
            },
        };
        let mut admin = self.keys.sign_admin(body);
        if let Step::Forged = step {
            // Another key's signature over a change that would be accepted.
            admin.body.ops = vec![AdminOp::SetF { f: self.membership.f() }];
            admin.signature = Digest::of(b"not the view manager").0.to_vec().into();
        }
        let id = RequestId(vm.next_request);
        vm.next_request += 1;
        let mut request =
            Request { client: vm.id, id, read_only: false, operation: admin.encode(), auth: Default::default() };
        self.keys.sign_request(&mut request);
        vm.current = Some(Call {
            step,
            request: request.clone(),
            decide: Invocation::new(&self.membership, vm.id, id, false),
            epoch: self.epoch_known,
            retransmit_at: now + CLIENT_RETRY_MS,
            backoff: 0,
        });
        self.view_manager_send(request);
    }

    fn view_manager_send(&mut self, req: Request) {
        let node = self.view_manager_node();
        let members: Vec<usize> = self.membership.members().iter().map(|r| r.0 as usize).collect();
        for r in members {
            self.send(node, r, Payload::Request(req.clone()), 0);
        }
    }

    /// An answer for the view manager from replica `from`.
    pub(crate) fn view_manager_mail(&mut self, from: ReplicaId, mail: ClientMail) {
        let now = self.now;
        let Some(vm) = &mut self.view_manager else { return };
        let Some(call) = &mut vm.current else { return };
        let verdict = match mail {
            ClientMail::Answer { request, view, answer, .. } if request == call.request.id => {
                call.decide.on_answer(from, view, answer, true)
            }
            _ => return,
        };
        let result = match verdict {
            Some(Verdict::Done { result, .. }) => result,
            Some(Verdict::NeedFull { .. }) | Some(Verdict::NoQuorum) => {
                call.retransmit_at = now;
                return;
            }
            _ => return,
        };
        let call = vm.current.take().expect("present");
        let outcome = AdminOutcome::decode(&result);
        if self.cfg.trace {
            eprintln!("{now:>6} view manager: {:?} -> {outcome:?}", call.step);
        }
        let body = admin_body(&call.request);
        match (&call.step, outcome) {
            (Step::Change(_), Some(AdminOutcome::Accepted { next, .. })) => {
                vm.accepted.push(next.epoch);
                vm.last_accepted = body;
                vm.plan.pop_front();
                vm.next_at = now + vm.rng.range(200, 1_500);
            }
            // Sent against an epoch that ended meanwhile, or while the
            // change before was still being handed over: try again.
            (
                Step::Change(_),
                Some(AdminOutcome::Rejected(Rejection::WrongEpoch { .. } | Rejection::ChangePending { .. })),
            ) => vm.next_at = now + 100,
            (Step::Replay, Some(AdminOutcome::Rejected(Rejection::ChangePending { .. }))) => vm.next_at = now + 100,
            (Step::Forged, Some(AdminOutcome::Rejected(Rejection::BadSignature)))
            | (
                Step::Replay,
                Some(AdminOutcome::Rejected(Rejection::WrongEpoch { .. } | Rejection::NonceReused { .. })),
            ) => {
                vm.plan.pop_front();
                vm.next_at = now + vm.rng.range(50, 300);
            }
            (step, outcome) => {
                let what = format!("the view manager's {step:?} was answered {outcome:?}");
                self.checker.violations.push(what);
                vm.plan.pop_front();
            }
        }
    }

    /// A correct replica's state entered `config`'s epoch: clients learn
    /// the configuration (standing in for the chain they will verify).
    /// Spares learn it the replicas' way, from the chain of handovers.
    pub(crate) fn on_new_epoch(&mut self, config: &Configuration) {
        if config.epoch > self.epoch_known {
            self.epoch_known = config.epoch;
            self.membership = config.membership();
            self.least_f = self.least_f.min(config.f);
        }
    }
}

fn admin_body(request: &Request) -> Option<AdminBody> {
    palisade_core::reconfig::AdminRequest::decode(&request.operation).map(|a| a.body)
}
