//! Simulated replicas: the real host driver around the real core, with a
//! simulated disk, network and crashes.

use super::network::Payload;
use super::World;
use crate::byzantine::{ByzCtx, Strategy};
use crate::checker::FreshExec;
use crate::crypto::SimCrypto;
use crate::rng::Rng;
use crate::service::SimService;
use palisade_core::exec::Executed;
use palisade_core::replica::{Record, RecordLog, Restart};
use palisade_core::{Batch, ClientId, Digest, Executor, Input, PeerMessage, Replica, ReplicaId, RequestId, SeqNo};
use palisade_host::state::Kept;
use palisade_host::{ClientMail, ConsensusHost, ConsensusIo, ExecCommand, ExecutionConfig, ExecutionHost, ExecutionIo};
use palisade_wire::envelope::RejectReason;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;

/// What survives a crash (unless the disk is lost too).
#[derive(Default)]
pub(crate) struct Disk {
    pub records: RecordLog,
    /// The newest state the replica kept.
    pub state: Option<(SeqNo, Kept)>,
}

pub(crate) struct SimReplica {
    pub id: ReplicaId,
    /// The core and the host driver; `None` while crashed.
    pub consensus: Option<ConsensusHost<SimCrypto>>,
    /// The service and its snapshots; `None` while crashed.
    pub execution: Option<ExecutionHost<SimService>>,
    pub disk: Disk,
    pub crypto: SimCrypto,
    pub strategy: Option<Box<dyn Strategy>>,
    pub rng: Rng,
    pub skew_ms: u64,
}

/// The world as one replica's consensus host sees it during one step.
struct SimIo<'w> {
    world: &'w mut World,
    r: usize,
    inputs: &'w mut VecDeque<Input>,
    crashed: bool,
}

impl ConsensusIo for SimIo<'_> {
    fn persist(&mut self, record: Record) {
        if self.world.cfg.trace {
            eprintln!("{:>6} r{} persist {record:?}", self.world.now, self.r);
        }
        self.world.replicas[self.r].disk.records.append(record);
        if self.world.torn_step(self.r) {
            // Crash right after this record became durable: the rest of the
            // step never happens.
            self.crashed = true;
        }
    }

    fn stopped(&self) -> bool {
        self.crashed
    }

    fn send(&mut self, to: ReplicaId, msg: &PeerMessage) {
        self.world.note_said(self.r, msg);
        self.world.replica_send(self.r, to, msg.clone());
    }

    fn broadcast(&mut self, to: &[ReplicaId], msg: &PeerMessage) {
        self.world.note_said(self.r, msg);
        if let (true, PeerMessage::NewView(nv)) = (self.world.cfg.trace, msg) {
            eprintln!("{:>6} r{} new-view {} chosen {:?}", self.world.now, self.r, nv.body.view, nv.body.chosen);
        }
        for &r in to {
            self.world.replica_send(self.r, r, msg.clone());
        }
    }

    fn execute(&mut self, cmd: ExecCommand) {
        self.world.execute(self.r, cmd, self.inputs);
    }

    fn refuse(&mut self, client: ClientId, request: RequestId, reason: RejectReason) {
        self.world.replica_mail(self.r, ClientMail::Refusal { client, request, reason });
    }
}

/// The world as one replica's execution host sees it.
struct SimExecIo<'w> {
    world: &'w mut World,
    r: usize,
    inputs: &'w mut VecDeque<Input>,
}

impl ExecutionIo for SimExecIo<'_> {
    fn replies(&mut self, mails: Vec<ClientMail>) {
        for mail in mails {
            self.world.replica_mail(self.r, mail);
        }
    }

    fn checkpoint(&mut self, seq: SeqNo, state: Digest) {
        if !self.world.is_byzantine(self.r) {
            self.world.checker.on_checkpoint(ReplicaId(self.r as u32), seq, state);
        }
        self.inputs.push_back(Input::CheckpointReady { seq, state });
    }

    fn state_fetched(&mut self, seq: SeqNo, state: Digest) {
        self.inputs.push_back(Input::StateFetched { seq, state });
    }

    fn send(&mut self, to: ReplicaId, msg: PeerMessage) {
        self.world.replica_send(self.r, to, msg);
    }

    fn executed(&mut self, seq: SeqNo, batch: &Batch, executed: &[Executed]) {
        let w = &mut *self.world;
        if w.cfg.trace {
            eprintln!(
                "{:>6} r{} deliver seq {seq} batch {} ({} requests)",
                w.now,
                self.r,
                batch.digest(),
                batch.requests.len()
            );
        }
        if w.is_byzantine(self.r) {
            return;
        }
        let fresh = executed
            .iter()
            .filter(|e| e.fresh)
            .map(|e| FreshExec {
                client: e.client,
                request: e.request,
                operation: batch
                    .requests
                    .iter()
                    .find(|q| q.client == e.client && q.id == e.request)
                    .map(|q| q.operation.clone())
                    .unwrap_or_default(),
                result: e.result.clone(),
            })
            .collect();
        w.checker.on_deliver(ReplicaId(self.r as u32), seq, batch.digest(), fresh);
    }
}

impl World {
    /// A new replica, or one restarted from `disk`.
    pub(crate) fn execution_host(&self, r: usize, state: Option<(SeqNo, Kept)>) -> ExecutionHost<SimService> {
        let exec = Arc::new(RwLock::new(Executor::new(SimService::default(), self.core_cfg.client_window)));
        let cfg = ExecutionConfig {
            checkpoint_interval: self.core_cfg.checkpoint_interval,
            reply_digests: true,
            // Small answers, so that fetches of larger states take several
            // questions.
            max_answer_bytes: 4096,
            fetch_window: self.core_cfg.state_fetch_window,
            ..ExecutionConfig::new(ReplicaId(r as u32), self.membership.clone())
        };
        ExecutionHost::new(exec, cfg, state).expect("a replica's own state installs")
    }

    pub(crate) fn replica_step(&mut self, r: usize, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let Some(mut host) = self.replicas[r].consensus.take() else { return };
            let before = (host.core().view(), host.core().is_normal());
            let mut io = SimIo { world: self, r, inputs: &mut inputs, crashed: false };
            host.step(input, &mut io);
            let crashed = io.crashed;
            let after = (host.core().view(), host.core().is_normal());
            if self.cfg.trace && before != after {
                let (now, (v0, n0), (v1, n1)) = (self.now, before, after);
                eprintln!("{now:>6} r{r} view {v0} normal={n0} -> view {v1} normal={n1}");
            }
            if crashed {
                if self.cfg.trace {
                    eprintln!("{:>6} r{r} crashes in the middle of a step", self.now);
                }
                self.replicas[r].consensus = Some(host);
                self.crash(r);
                let down = self.rng.range(100, 1500);
                self.schedule(self.now + down, super::Event::Restart(r));
                return;
            }
            self.replicas[r].consensus = Some(host);
        }
    }

    /// Carries out what a replica's core holds without a new input (a
    /// recovered replica's first words).
    fn drain(&mut self, r: usize) {
        let Some(mut host) = self.replicas[r].consensus.take() else { return };
        let mut inputs = VecDeque::new();
        let mut io = SimIo { world: self, r, inputs: &mut inputs, crashed: false };
        host.carry_out(&mut io);
        self.replicas[r].consensus = Some(host);
        while let Some(i) = inputs.pop_front() {
            self.replica_step(r, i);
        }
    }

    fn execute(&mut self, r: usize, cmd: ExecCommand, inputs: &mut VecDeque<Input>) {
        let Some(mut exec) = self.replicas[r].execution.take() else { return };
        let result = exec.handle(cmd, &mut SimExecIo { world: self, r, inputs });
        if let Err(e) = result {
            self.checker.violations.push(format!("replica {r}: {e}"));
        }
        self.replicas[r].execution = Some(exec);
    }

    /// Whether replica `r` crashes right after the record it just made durable.
    pub(crate) fn torn_step(&mut self, r: usize) -> bool {
        self.faulty_phase
            && self.faults.torn_steps > 0.0
            && self.victims.contains(&r)
            && self.now + 2_000 < self.heal_at
            && self.rng.chance(self.faults.torn_steps)
    }

    pub(crate) fn crash(&mut self, r: usize) {
        if self.cfg.trace {
            eprintln!("{:>6} r{r} crash", self.now);
        }
        let amnesia = self.faults.amnesia;
        let rep = &mut self.replicas[r];
        if let Some(host) = rep.consensus.take() {
            let alarms = host.core().metrics().alarms;
            if alarms > 0 && rep.strategy.is_none() {
                self.checker.on_alarm(rep.id, alarms);
            }
        }
        if let Some(exec) = rep.execution.take() {
            rep.disk.state = exec.into_store().newest().map(|(s, k)| (s, k.clone()));
        }
        if amnesia {
            // The disk goes too: the replica will restart without its votes.
            rep.disk = Disk::default();
        }
    }

    pub(crate) fn restart(&mut self, r: usize) {
        if self.replicas[r].consensus.is_some() {
            return;
        }
        let votes_lost = self.faults.amnesia && self.victims.contains(&r);
        let nonce = self.rng.next_u64();
        let exec = self.execution_host(r, self.replicas[r].disk.state.clone());
        let (executed, executed_state) = exec.restored();
        let rep = &mut self.replicas[r];
        let restart =
            Restart { records: rep.disk.records.records().to_vec(), votes_lost, executed, executed_state, nonce };
        if self.cfg.trace {
            eprintln!("{:>6} r{r} restart{}", self.now, if votes_lost { " without its votes" } else { "" });
        }
        let core = Replica::recover(self.core_cfg.clone(), rep.id, rep.crypto.clone(), self.genesis, restart);
        rep.execution = Some(exec);
        rep.consensus = Some(ConsensusHost::new(core));
        self.drain(r);
    }

    /// Hands a Byzantine replica's strategy the context it may use: its own key only.
    pub(crate) fn with_strategy<T>(&mut self, r: usize, f: impl FnOnce(&mut dyn Strategy, &mut ByzCtx<'_>) -> T) -> T {
        let (membership, cfg) = (&self.membership, &self.core_cfg);
        let rep = &mut self.replicas[r];
        let mut ctx = ByzCtx {
            me: rep.id,
            crypto: &rep.crypto,
            rng: &mut rep.rng,
            membership,
            request_timeout_ms: cfg.request_timeout_ms,
            log_window: cfg.log_window,
        };
        f(rep.strategy.as_deref_mut().expect("a Byzantine replica"), &mut ctx)
    }

    /// A correct replica said `msg`: the equivocation checker notes it.
    fn note_said(&mut self, r: usize, msg: &PeerMessage) {
        if !self.is_byzantine(r) {
            self.votes.on_send(ReplicaId(r as u32), msg);
        }
    }

    pub(crate) fn replica_send(&mut self, r: usize, to: ReplicaId, msg: PeerMessage) {
        if self.replicas[r].strategy.is_none() {
            self.send(r, to.0 as usize, Payload::Peer(msg), 0);
            return;
        }
        let outs = self.with_strategy(r, |s, ctx| s.outgoing(ctx, to, msg));
        for o in outs {
            if (o.to.0 as usize) < self.n() && o.to.0 as usize != r {
                self.send(r, o.to.0 as usize, Payload::Peer(o.msg), o.delay_ms);
            }
        }
    }

    /// Sends an answer or a refusal to its client (through the strategy
    /// of a Byzantine replica).
    pub(crate) fn replica_mail(&mut self, r: usize, mail: ClientMail) {
        let mail = if self.replicas[r].strategy.is_some() {
            match self.with_strategy(r, |s, ctx| s.reply(ctx, mail)) {
                Some(m) => m,
                None => return,
            }
        } else {
            mail
        };
        let client = match &mail {
            ClientMail::Answer { client, .. } | ClientMail::Refusal { client, .. } => *client,
        };
        if let Some(node) = self.client_node(client) {
            self.send(r, node, Payload::Mail(mail), 0);
        }
    }
}
