//! Replicas in memory on the real host drivers: the consensus host and the
//! execution host the runtime and the simulator run, wired by one queue
//! that delivers every message in order unless a replica is down. For
//! rule tests that need several replicas, and for measuring what the core
//! costs without a network.

use bytes::Bytes;
use palisade_core::exec::Executed;
use palisade_core::{
    Batch, ClientId, Config, Crypto, Digest, ExecContext, Executor, Input, PeerMessage, Record, Replica, ReplicaId,
    Request, RequestId, SeqNo, Service,
};
use palisade_host::{ClientMail, ConsensusHost, ConsensusIo, ExecCommand, ExecutionConfig, ExecutionHost, ExecutionIo};
use palisade_wire::envelope::RejectReason;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;

/// A service that appends each operation's first byte to a log and answers
/// with the log's length: cheap, and every replica's state shows the order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log(pub Vec<u8>);

impl Service for Log {
    fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
        self.0.push(op.first().copied().unwrap_or(0));
        Bytes::copy_from_slice(&(self.0.len() as u64).to_le_bytes())
    }
    fn execute_unordered(&self, _: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&(self.0.len() as u64).to_le_bytes())
    }
    fn snapshot(&self) -> Bytes {
        Bytes::from(self.0.clone())
    }
    fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = snapshot.to_vec();
        Ok(())
    }
}

/// A service that does nothing: what ordering costs on its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Service for Noop {
    fn execute(&mut self, _: &ExecContext, _: &[u8]) -> Bytes {
        Bytes::new()
    }
    fn execute_unordered(&self, _: &[u8]) -> Bytes {
        Bytes::new()
    }
    fn snapshot(&self) -> Bytes {
        Bytes::new()
    }
    fn install(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// n replicas in memory.
pub struct MemCluster<C, S> {
    consensus: Vec<Option<ConsensusHost<C>>>,
    execution: Vec<Option<ExecutionHost<S>>>,
    queue: VecDeque<(u32, u32, PeerMessage)>,
    /// What each replica persisted, in order.
    pub records: Vec<Vec<Record>>,
    /// What each replica delivered: sequence numbers and batch digests.
    pub delivered: Vec<Vec<(SeqNo, Digest)>>,
    /// Requests each replica delivered (in batches).
    pub delivered_requests: Vec<u64>,
    /// Replicas cut off: they neither receive nor send.
    pub down: Vec<bool>,
    /// The clock of every replica.
    pub now: u64,
    /// Keep every answer to clients in `answers` (off: they are counted only).
    pub keep_answers: bool,
    /// Answers to clients, by replica, when kept.
    pub answers: Vec<(ReplicaId, ClientMail)>,
    next_request: u64,
}

/// One replica's world while the cluster carries out its step.
struct Step<'a, S> {
    r: usize,
    queue: &'a mut VecDeque<(u32, u32, PeerMessage)>,
    records: &'a mut Vec<Record>,
    exec: &'a mut ExecutionHost<S>,
    delivered: &'a mut Vec<(SeqNo, Digest)>,
    delivered_requests: &'a mut u64,
    answers: Option<&'a mut Vec<(ReplicaId, ClientMail)>>,
    inputs: &'a mut VecDeque<Input>,
}

/// Where the execution host's actions land during one command.
struct Sink<'a> {
    r: usize,
    queue: &'a mut VecDeque<(u32, u32, PeerMessage)>,
    delivered: &'a mut Vec<(SeqNo, Digest)>,
    delivered_requests: &'a mut u64,
    answers: Option<&'a mut Vec<(ReplicaId, ClientMail)>>,
    inputs: &'a mut VecDeque<Input>,
}

impl ExecutionIo for Sink<'_> {
    fn replies(&mut self, mails: Vec<ClientMail>) {
        if let Some(answers) = &mut self.answers {
            answers.extend(mails.into_iter().map(|m| (ReplicaId(self.r as u32), m)));
        }
    }
    fn checkpoint(&mut self, seq: SeqNo, state: Digest, config: Digest) {
        self.inputs.push_back(Input::CheckpointReady { seq, state, config });
    }
    fn state_fetched(&mut self, seq: SeqNo, state: Digest) {
        self.inputs.push_back(Input::StateFetched { seq, state });
    }
    fn send(&mut self, to: ReplicaId, _epoch: u64, msg: PeerMessage) {
        self.queue.push_back((self.r as u32, to.0, msg));
    }
    fn executed(&mut self, seq: SeqNo, batch: &Batch, _: &[Executed]) {
        self.delivered.push((seq, batch.digest()));
        *self.delivered_requests += batch.requests.len() as u64;
    }
}

impl<S: Service> ConsensusIo for Step<'_, S> {
    fn persist(&mut self, record: Record) {
        self.records.push(record);
    }
    fn send(&mut self, to: ReplicaId, _epoch: u64, msg: &PeerMessage) {
        self.queue.push_back((self.r as u32, to.0, msg.clone()));
    }
    fn execute(&mut self, cmd: ExecCommand) {
        let mut sink = Sink {
            r: self.r,
            queue: &mut *self.queue,
            delivered: &mut *self.delivered,
            delivered_requests: &mut *self.delivered_requests,
            answers: self.answers.as_deref_mut(),
            inputs: &mut *self.inputs,
        };
        self.exec.handle(cmd, &mut sink).expect("certified states install");
    }
    fn refuse(&mut self, _: ClientId, _: RequestId, _: RejectReason) {}
}

impl<C: Crypto, S: Service> MemCluster<C, S> {
    /// A cluster of `cfg.membership`, each replica with its own `crypto`
    /// and a fresh `service`, ticked once at 1 ms.
    pub fn new(cfg: &Config, crypto: impl Fn(ReplicaId) -> C, service: impl Fn() -> S) -> Self {
        let n = cfg.membership.n();
        let mut execution = Vec::new();
        let mut consensus = Vec::new();
        for i in 0..n as u32 {
            let exec = Arc::new(RwLock::new(Executor::new(service(), cfg.client_window)));
            let ecfg = ExecutionConfig {
                checkpoint_interval: cfg.checkpoint_interval,
                reply_digests: false,
                ..ExecutionConfig::new(ReplicaId(i), cfg.membership.clone())
            };
            let host = ExecutionHost::new(exec, ecfg, None).expect("a fresh service");
            let (_, genesis) = host.restored();
            consensus.push(Some(ConsensusHost::new(Replica::new(
                cfg.clone(),
                ReplicaId(i),
                crypto(ReplicaId(i)),
                genesis,
            ))));
            execution.push(Some(host));
        }
        let mut c = MemCluster {
            consensus,
            execution,
            queue: VecDeque::new(),
            records: vec![Vec::new(); n],
            delivered: vec![Vec::new(); n],
            delivered_requests: vec![0; n],
            down: vec![false; n],
            now: 1,
            keep_answers: false,
            answers: Vec::new(),
            next_request: 1,
        };
        for r in 0..n {
            c.input(r, Input::Tick { now_ms: 1, wall_ms: 1 });
        }
        c.queue.clear();
        c
    }

    /// Replica `r`'s core.
    pub fn core(&self, r: usize) -> &Replica<C> {
        self.consensus[r].as_ref().expect("replica present").core()
    }

    /// Takes replica `r`'s core out of the cluster, to drive it by hand.
    pub fn take_core(&mut self, r: usize) -> Replica<C> {
        let host = self.consensus[r].take().expect("replica present");
        self.execution[r] = None;
        self.down[r] = true;
        host.into_core()
    }

    /// Feeds `input` to replica `r` and carries out everything that follows
    /// on that replica (its messages to others wait in the queue).
    pub fn input(&mut self, r: usize, input: Input) {
        if self.down[r] {
            return;
        }
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let (Some(consensus), Some(exec)) = (self.consensus[r].as_mut(), self.execution[r].as_mut()) else {
                return;
            };
            let mut step = Step {
                r,
                queue: &mut self.queue,
                records: &mut self.records[r],
                exec,
                delivered: &mut self.delivered[r],
                delivered_requests: &mut self.delivered_requests[r],
                answers: self.keep_answers.then_some(&mut self.answers),
                inputs: &mut inputs,
            };
            consensus.step(input, &mut step);
        }
    }

    /// Delivers queued messages, in order, until none is left.
    pub fn run(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if !self.down[from as usize] {
                self.input(to as usize, Input::Peer { from: ReplicaId(from), msg });
            }
        }
    }

    /// Advances every replica's clock by `ms`, then delivers what follows.
    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        for r in 0..self.consensus.len() {
            let now = self.now;
            self.input(r, Input::Tick { now_ms: now, wall_ms: now });
        }
        self.run();
    }

    /// Hands `req` to replica `to`, then delivers what follows.
    pub fn submit(&mut self, to: usize, req: Request) {
        self.input(to, Input::Request(req));
        self.run();
    }

    /// Orders `count` fresh requests of `payload` bytes each through the
    /// primary of view 0, runs until every replica has delivered them, and
    /// returns how many requests the slowest replica has delivered in all.
    pub fn order(&mut self, count: usize, payload: &Bytes) -> u64 {
        let target = self.delivered_requests.iter().copied().min().unwrap_or(0) + count as u64;
        for _ in 0..count {
            let req = Request {
                client: ClientId(1),
                id: RequestId(self.next_request),
                read_only: false,
                operation: payload.clone(),
                auth: Bytes::from_static(b"signed"),
            };
            self.next_request += 1;
            self.input(0, Input::Request(req));
        }
        let mut idle_rounds = 0;
        while self.delivered_requests.iter().copied().min().unwrap_or(0) < target {
            if let Some((from, to, msg)) = self.queue.pop_front() {
                self.input(to as usize, Input::Peer { from: ReplicaId(from), msg });
                idle_rounds = 0;
            } else {
                // Nothing in flight: let time pass so the primary proposes.
                self.now += 1;
                for r in 0..self.consensus.len() {
                    let now = self.now;
                    self.input(r, Input::Tick { now_ms: now, wall_ms: now });
                }
                idle_rounds += 1;
                assert!(idle_rounds < 10_000, "the in-memory cluster stopped making progress");
            }
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NoCrypto;
    use palisade_core::{Membership, Mode};

    #[test]
    fn the_in_memory_cluster_orders_everything_it_is_given() {
        for mode in [Mode::Bft, Mode::Cft] {
            let mut cfg = Config::new(Membership::with_size(4, mode).unwrap());
            cfg.batch_max_requests = 64;
            let mut c = MemCluster::new(&cfg, |_| NoCrypto, Log::default);
            let payload = Bytes::from_static(b"x");
            assert_eq!(c.order(500, &payload), 500);
            assert_eq!(c.order(10, &payload), 510);
            assert!(c.delivered.windows(2).all(|w| w[0] == w[1]), "every replica delivered the same batches");
        }
    }
}
