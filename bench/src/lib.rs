//! Benchmark support: an in-memory cluster of protocol cores with no network
//! and no cryptography, to measure what the core itself costs per request.

#![deny(missing_docs)]

pub mod baseline;
pub mod procstat;
pub mod svg;

use bytes::Bytes;
use palisade_core::message::Signature;
use palisade_core::{
    Action, ClientId, Config, Crypto, Digest, Input, Membership, Mode, PeerMessage, Replica, ReplicaId, Request,
    RequestId,
};
use std::collections::VecDeque;

/// Signs nothing and accepts everything: the core's own cost only.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCrypto;

impl Crypto for NoCrypto {
    fn sign(&self, _: &[u8]) -> Signature {
        Signature(Bytes::new())
    }
    fn verify(&self, _: ReplicaId, _: &[u8], _: &Signature) -> bool {
        true
    }
    fn verify_request(&self, _: &Request) -> bool {
        true
    }
}

/// n cores wired by in-memory queues, delivering every message in order.
pub struct MemCluster {
    replicas: Vec<Replica<NoCrypto>>,
    queue: VecDeque<(ReplicaId, ReplicaId, PeerMessage)>,
    delivered_requests: Vec<u64>,
    next_id: u64,
    now_ms: u64,
}

impl MemCluster {
    /// A fresh cluster of `n` replicas in `mode` with the given batch size.
    pub fn new(n: usize, mode: Mode, batch_max_requests: usize) -> MemCluster {
        let membership = Membership::with_size(n, mode).expect("valid size");
        let mut cfg = Config::new(membership);
        cfg.batch_max_requests = batch_max_requests;
        cfg.max_in_flight = 8;
        let genesis = Digest::of(b"genesis");
        let replicas = (0..n as u32).map(|i| Replica::new(cfg.clone(), ReplicaId(i), NoCrypto, genesis)).collect();
        MemCluster { replicas, queue: VecDeque::new(), delivered_requests: vec![0; n], next_id: 1, now_ms: 1 }
    }

    /// Submits `count` fresh requests with `payload` bytes each to the
    /// primary, runs until every replica has delivered them, and returns how
    /// many the slowest replica delivered in total.
    pub fn order(&mut self, count: usize, payload: &Bytes) -> u64 {
        let target = self.delivered_requests.iter().copied().min().unwrap_or(0) + count as u64;
        for _ in 0..count {
            let req = Request {
                client: ClientId(1),
                id: RequestId(self.next_id),
                read_only: false,
                operation: payload.clone(),
                auth: Bytes::new(),
            };
            self.next_id += 1;
            self.step(0, Input::Request(req));
        }
        let mut idle_rounds = 0;
        while self.delivered_requests.iter().copied().min().unwrap_or(0) < target {
            if let Some((from, to, msg)) = self.queue.pop_front() {
                self.step(to.0 as usize, Input::Peer { from, msg });
                idle_rounds = 0;
            } else {
                // Nothing in flight: let time pass so the primary proposes.
                self.now_ms += 1;
                for r in 0..self.replicas.len() {
                    self.step(r, Input::Tick { now_ms: self.now_ms, wall_ms: self.now_ms });
                }
                idle_rounds += 1;
                assert!(idle_rounds < 10_000, "the in-memory cluster stopped making progress");
            }
        }
        target
    }

    fn step(&mut self, r: usize, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            self.step_one(r, input, &mut inputs);
        }
    }

    fn step_one(&mut self, r: usize, input: Input, inputs: &mut VecDeque<Input>) {
        self.replicas[r].step(input);
        let interval = self.replicas[r].config().checkpoint_interval;
        for action in self.replicas[r].take_actions() {
            let from = ReplicaId(r as u32);
            match action {
                Action::Send { to, msg } => self.queue.push_back((from, to, msg)),
                Action::Broadcast(msg) => {
                    for to in 0..self.replicas.len() as u32 {
                        if to != r as u32 {
                            self.queue.push_back((from, ReplicaId(to), msg.clone()));
                        }
                    }
                }
                Action::Deliver { seq, batch, .. } => {
                    self.delivered_requests[r] += batch.requests.len() as u64;
                    if seq.0 % interval == 0 {
                        // Every replica reports the same made-up state, so checkpoints become stable.
                        let state = Digest::of(&seq.0.to_le_bytes());
                        inputs.push_back(Input::CheckpointReady { seq, state });
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_memory_cluster_orders_everything_it_is_given() {
        for mode in [Mode::Bft, Mode::Cft] {
            let mut c = MemCluster::new(4, mode, 64);
            let payload = Bytes::from_static(b"x");
            assert_eq!(c.order(500, &payload), 500);
            assert_eq!(c.order(10, &payload), 510);
        }
    }
}
