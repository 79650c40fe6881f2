//! Builders for the protocol's messages and a small configuration, so that
//! a rule test states only what it is about.

use crate::crypto::TestCrypto;
use bytes::Bytes;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{Batch, PrePrepare, Signed, ViewChangeBody, Vote};
use palisade_core::replica::Restart;
use palisade_core::{
    Action, ClientId, Config, Digest, Input, Membership, Mode, PeerMessage, Record, Replica, ReplicaId, Request,
    RequestId, SeqNo, ViewNo,
};
use std::sync::Arc;

/// The state digest every test replica starts from: the genesis snapshot
/// of [`crate::cluster::Log`] under [`config`]'s client window.
pub fn genesis_state() -> Digest {
    let window = Config::new(Membership::with_size(4, Mode::Bft).expect("four replicas")).client_window;
    Digest::of(&palisade_core::Executor::new(crate::cluster::Log::default(), window).snapshot())
}

/// A small configuration: checkpoints every 4, a window of 8, timeouts of
/// a second, and retransmission and STATUS periods so long that tests
/// control every message.
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

/// Replica `id` at genesis, ticked once (its first STATUS dropped).
pub fn replica(id: u32, cfg: &Config) -> Replica<TestCrypto> {
    let mut r = Replica::new(cfg.clone(), ReplicaId(id), TestCrypto(ReplicaId(id)), genesis_state());
    // The first tick sends STATUS and arms timers; drop those actions.
    r.step(tick(1));
    r.take_actions();
    r
}

/// An authentic ordered request of `client` numbered `id`.
pub fn request(client: u64, id: u64) -> Request {
    Request {
        client: ClientId(client),
        id: RequestId(id),
        read_only: false,
        operation: Bytes::from(vec![id as u8]),
        auth: Bytes::from_static(b"signed"),
    }
}

/// A batch of `reqs`, stamped at 1 ms.
pub fn batch(reqs: Vec<Request>) -> Arc<Batch> {
    batch_in(0, reqs)
}

/// A batch as the primary of `view` proposes it.
pub fn batch_in(view: u64, reqs: Vec<Request>) -> Arc<Batch> {
    Arc::new(Batch { timestamp_ms: 1, proposed_in: ViewNo(view), requests: reqs })
}

/// Feeds `msg` from replica `from` to `r`; returns what it did.
pub fn peer(r: &mut Replica<TestCrypto>, from: u32, msg: PeerMessage) -> Vec<Action> {
    r.step(Input::Peer { from: ReplicaId(from), msg });
    r.take_actions()
}

/// The messages `actions` broadcast.
pub fn broadcasts(actions: &[Action]) -> Vec<&PeerMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// The sequence numbers `actions` deliver (a tentative execution
/// confirmed is delivered too).
pub fn delivered(actions: &[Action]) -> Vec<SeqNo> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { seq, .. } | Action::Confirm { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// A PREPARE or COMMIT vote.
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

/// A PRE-PREPARE of `b` at (`view`, `seq`).
pub fn pre_prepare(view: u64, seq: u64, b: Arc<Batch>) -> PeerMessage {
    PeerMessage::PrePrepare(PrePrepare { view: ViewNo(view), seq: SeqNo(seq), batch: b })
}

/// An empty signed VIEW-CHANGE from `who` for `new_view`, at genesis.
pub fn view_change_from(who: u32, new_view: u64) -> Signed<ViewChangeBody> {
    crypto::sign(
        &TestCrypto(ReplicaId(who)),
        Domain::ViewChange,
        ViewChangeBody {
            new_view: ViewNo(new_view),
            replica: ReplicaId(who),
            checkpoint: palisade_core::checkpoint::genesis(genesis_state()),
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
    let restart = Restart { records, executed: SeqNo(0), executed_state: genesis_state(), ..Restart::default() };
    let mut r = Replica::recover(cfg.clone(), ReplicaId(id), TestCrypto(ReplicaId(id)), genesis_state(), restart);
    r.step(tick(1));
    r.take_actions();
    r
}

/// Replica `id` restarted with none of its records (its executor at
/// genesis), asking its peers with `nonce` how far they got.
pub fn restarted_without_records(id: u32, cfg: &Config, nonce: u64) -> Replica<TestCrypto> {
    let restart =
        Restart { votes_lost: true, executed: SeqNo(0), executed_state: genesis_state(), nonce, ..Restart::default() };
    let mut r = Replica::recover(cfg.clone(), ReplicaId(id), TestCrypto(ReplicaId(id)), genesis_state(), restart);
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

/// The requests (client, id) `actions` forward to replica 0, the primary
/// of view 0.
pub fn forwards_of(actions: &[Action]) -> Vec<(u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to: ReplicaId(0), msg: PeerMessage::Forward(r) } => Some((r.client.0, r.id.0)),
            _ => None,
        })
        .collect()
}
