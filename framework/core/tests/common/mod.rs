//! Fixtures shared by the core's rule tests: a crypto stand-in that tells
//! signers apart, a small configuration, message builders, and an in-memory
//! cluster that delivers every message in order unless a replica is down.

#![allow(dead_code)]

use bytes::Bytes;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{Batch, PrePrepare, Signature, Signed, ViewChangeBody, Vote};
use palisade_core::replica::Restart;
use palisade_core::{
    Action, ClientId, Config, Crypto, Digest, Input, Membership, Mode, PeerMessage, Record, Replica, ReplicaId,
    Request, RequestId, SeqNo, ViewNo,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// Signatures are a keyed hash of the signer's id: enough to tell signers apart.
#[derive(Clone)]
pub struct TestCrypto(pub ReplicaId);

pub fn tag(who: ReplicaId, payload: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Digest::of_parts(&[b"k", &who.0.to_le_bytes(), payload]).0)
}

impl Crypto for TestCrypto {
    fn sign(&self, payload: &[u8]) -> Signature {
        Signature(tag(self.0, payload))
    }
    fn verify(&self, signer: ReplicaId, payload: &[u8], sig: &Signature) -> bool {
        sig.0 == tag(signer, payload)
    }
    fn verify_request(&self, r: &Request) -> bool {
        r.auth.as_ref() == b"signed"
    }
}

pub const GENESIS: Digest = Digest([9; 32]);

pub fn config(mode: Mode, n: usize) -> Config {
    let mut c = Config::new(Membership::with_size(n, mode).unwrap());
    c.checkpoint_interval = 4;
    c.log_window = 8;
    c.request_timeout_ms = 1_000;
    c.view_change_timeout_ms = 1_000;
    c.retransmit_ms = 100_000;
    c.status_interval_ms = 100_000;
    c.pipeline_min_batch = 1;
    c
}

/// A tick at `ms` on both clocks (the tests keep them equal).
pub fn tick(ms: u64) -> Input {
    Input::Tick { now_ms: ms, wall_ms: ms }
}

pub fn replica(id: u32, cfg: &Config) -> Replica<TestCrypto> {
    let mut r = Replica::new(cfg.clone(), ReplicaId(id), TestCrypto(ReplicaId(id)), GENESIS);
    // The first tick sends STATUS and arms timers; drop those actions.
    r.step(tick(1));
    r.take_actions();
    r
}

pub fn request(client: u64, id: u64) -> Request {
    Request {
        client: ClientId(client),
        id: RequestId(id),
        read_only: false,
        operation: Bytes::from(vec![id as u8]),
        auth: Bytes::from_static(b"signed"),
    }
}

pub fn batch(reqs: Vec<Request>) -> Arc<Batch> {
    Arc::new(Batch { timestamp_ms: 1, requests: reqs })
}

pub fn peer(r: &mut Replica<TestCrypto>, from: u32, msg: PeerMessage) -> Vec<Action> {
    r.step(Input::Peer { from: ReplicaId(from), msg });
    r.take_actions()
}

pub fn broadcasts(actions: &[Action]) -> Vec<&PeerMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(m) => Some(m),
            _ => None,
        })
        .collect()
}

pub fn delivered(actions: &[Action]) -> Vec<SeqNo> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

pub fn vote(view: u64, seq: u64, d: Digest) -> Vote {
    Vote { view: ViewNo(view), seq: SeqNo(seq), digest: d }
}

/// Replica 1 accepts `b` at (view 0, `seq`) and gets replica 3's PREPARE:
/// with its own, that is prepared (2f = 2), so it has sent its COMMIT.
pub fn prepared(r1: &mut Replica<TestCrypto>, seq: u64, b: Arc<Batch>) -> Digest {
    let d = b.digest();
    peer(r1, 0, pre_prepare(0, seq, b));
    peer(r1, 3, PeerMessage::Prepare(vote(0, seq, d)));
    d
}

pub fn pre_prepare(view: u64, seq: u64, b: Arc<Batch>) -> PeerMessage {
    PeerMessage::PrePrepare(PrePrepare { view: ViewNo(view), seq: SeqNo(seq), batch: b })
}

/// An in-memory cluster that delivers every message, in order, unless cut off.
pub struct Cluster {
    pub replicas: Vec<Replica<TestCrypto>>,
    pub records: Vec<Vec<Record>>,
    pub delivered: Vec<Vec<(SeqNo, Digest)>>,
    pub queue: VecDeque<(u32, u32, PeerMessage)>,
    pub down: Vec<bool>,
    pub now: u64,
}

impl Cluster {
    pub fn new(cfg: &Config) -> Cluster {
        let n = cfg.membership.n();
        Cluster {
            replicas: (0..n as u32).map(|i| replica(i, cfg)).collect(),
            records: vec![Vec::new(); n],
            delivered: vec![Vec::new(); n],
            queue: VecDeque::new(),
            down: vec![false; n],
            now: 1,
        }
    }

    pub fn input(&mut self, r: usize, input: Input) {
        if self.down[r] {
            return;
        }
        let mut inputs = VecDeque::from([input]);
        while let Some(i) = inputs.pop_front() {
            self.replicas[r].step(i);
            let interval = self.replicas[r].config().checkpoint_interval;
            for a in self.replicas[r].take_actions() {
                match a {
                    Action::Persist(rec) => self.records[r].push(rec),
                    Action::Send { to, msg } => self.queue.push_back((r as u32, to.0, msg)),
                    Action::Broadcast(msg) => {
                        for to in 0..self.replicas.len() as u32 {
                            if to != r as u32 {
                                self.queue.push_back((r as u32, to, msg.clone()));
                            }
                        }
                    }
                    Action::Deliver { seq, batch, .. } => {
                        self.delivered[r].push((seq, batch.digest()));
                        if seq.0 % interval == 0 {
                            let state = Digest::of(&seq.0.to_le_bytes());
                            inputs.push_back(Input::CheckpointReady { seq, state });
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub fn run(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if !self.down[from as usize] {
                self.input(to as usize, Input::Peer { from: ReplicaId(from), msg });
            }
        }
    }

    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        for r in 0..self.replicas.len() {
            self.input(r, tick(self.now));
        }
        self.run();
    }

    pub fn submit(&mut self, to: usize, req: Request) {
        self.input(to, Input::Request(req));
        self.run();
    }
}

pub fn view_change_from(who: u32, new_view: u64) -> Signed<ViewChangeBody> {
    crypto::sign(
        &TestCrypto(ReplicaId(who)),
        Domain::ViewChange,
        ViewChangeBody {
            new_view: ViewNo(new_view),
            replica: ReplicaId(who),
            checkpoint: palisade_core::checkpoint::genesis(GENESIS),
            prepared: vec![],
            preprepared: vec![],
        },
    )
}

/// A signed VIEW-CHANGE from `who` for `new_view` from genesis, with P
/// entries `(seq, view, digest)` and Q entries `(seq, digest, view)`.
pub fn view_change_with(
    who: u32,
    new_view: u64,
    prepared: &[(u64, u64, Digest)],
    preprepared: &[(u64, Digest, u64)],
) -> Signed<ViewChangeBody> {
    use palisade_core::message::{PrePreparedEntry, PreparedEntry};
    let mut body = view_change_from(who, new_view).body;
    body.prepared =
        prepared.iter().map(|&(s, v, d)| PreparedEntry { seq: SeqNo(s), view: ViewNo(v), digest: d }).collect();
    let mut q: Vec<PrePreparedEntry> =
        preprepared.iter().map(|&(s, d, v)| PrePreparedEntry { seq: SeqNo(s), digest: d, view: ViewNo(v) }).collect();
    q.sort();
    body.preprepared = q;
    crypto::sign(&TestCrypto(ReplicaId(who)), Domain::ViewChange, body)
}

/// A NEW-VIEW for `view` signed by its primary.
pub fn new_view(
    view: u64,
    n: usize,
    view_changes: Vec<Signed<ViewChangeBody>>,
    chosen: Vec<(SeqNo, Digest)>,
) -> PeerMessage {
    use palisade_core::message::NewViewBody;
    let primary = ReplicaId((view % n as u64) as u32);
    let body = NewViewBody { view: ViewNo(view), replica: primary, view_changes, chosen };
    PeerMessage::NewView(Arc::new(crypto::sign(&TestCrypto(primary), Domain::NewView, body)))
}

/// The records among `actions`, in order.
pub fn persisted(actions: &[Action]) -> Vec<Record> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// Replica `id` rebuilt after a crash from `records`, its executor at genesis.
pub fn recover(id: u32, cfg: &Config, records: Vec<Record>) -> Replica<TestCrypto> {
    let restart = Restart { records, executed: SeqNo(0), executed_state: GENESIS, ..Restart::default() };
    let mut r = Replica::recover(cfg.clone(), ReplicaId(id), TestCrypto(ReplicaId(id)), GENESIS, restart);
    r.step(tick(1));
    r.take_actions();
    r
}

/// Replica `id` restarted with none of its records (its executor at
/// genesis), asking its peers with `nonce` how far they got.
pub fn restarted_without_records(id: u32, cfg: &Config, nonce: u64) -> Replica<TestCrypto> {
    let restart =
        Restart { votes_lost: true, executed: SeqNo(0), executed_state: GENESIS, nonce, ..Restart::default() };
    let mut r = Replica::recover(cfg.clone(), ReplicaId(id), TestCrypto(ReplicaId(id)), GENESIS, restart);
    r.step(tick(1));
    r.take_actions();
    r
}

/// Whether `actions` send a PREPARE (or, in CFT, a COMMIT) for `digest`.
pub fn votes_for(actions: &[Action], digest: Digest) -> bool {
    actions.iter().any(|a| match a {
        Action::Broadcast(PeerMessage::Prepare(v) | PeerMessage::Commit(v)) => v.digest == digest,
        Action::Send { msg: PeerMessage::Prepare(v) | PeerMessage::Commit(v), .. } => v.digest == digest,
        _ => false,
    })
}
