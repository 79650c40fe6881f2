//! Handover between membership epochs on the real host drivers: a
//! reconfiguration request executes, the old members finish their epoch at
//! a checkpoint, the new members (one of them joining from nothing) start
//! the next epoch's cores there and order on, and the removed member stops.

use bytes::Bytes;
use palisade_core::message::Signature;
use palisade_core::reconfig::{AdminBody, AdminOp, AdminOutcome, AdminRequest, AdminVerify, Configuration, Member};
use palisade_core::{
    ClientId, Config, Crypto, Digest, ExecContext, Executor, Input, Membership, Mode, PeerMessage, Record, Replica,
    ReplicaId, Request, RequestId, SeqNo, Service,
};
use palisade_host::{
    ClientMail, ConsensusIo, EpochHost, ExecCommand, ExecutionConfig, ExecutionHost, ExecutionIo, Reconfigured,
};
use palisade_wire::envelope::{Answer, RejectReason};
use parking_lot::RwLock;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

const K: u64 = 4;
const VM: [u8; 32] = [9; 32];
const CLUSTER: u64 = 5;

/// Appends each operation's first byte.
#[derive(Default)]
struct Log(Vec<u8>);

impl Service for Log {
    fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
        self.0.push(op[0]);
        Bytes::copy_from_slice(&(self.0.len() as u64).to_le_bytes())
    }
    fn execute_unordered(&self, _: &[u8]) -> Bytes {
        Bytes::new()
    }
    fn snapshot(&self) -> Bytes {
        Bytes::from(self.0.clone())
    }
    fn install(&mut self, s: &[u8]) -> Result<(), String> {
        self.0 = s.to_vec();
        Ok(())
    }
}

/// Keyed hashes standing in for signatures, with the epoch.
#[derive(Clone)]
struct Keys {
    me: ReplicaId,
    epoch: u64,
}

fn tag(who: ReplicaId, payload: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Digest::of_parts(&[&who.0.to_le_bytes(), payload]).0)
}

impl Crypto for Keys {
    fn sign(&self, payload: &[u8]) -> Signature {
        Signature(tag(self.me, payload))
    }
    fn verify(&self, signer: ReplicaId, payload: &[u8], sig: &Signature) -> bool {
        sig.0 == tag(signer, payload)
    }
    fn verify_request(&self, r: &Request) -> bool {
        r.auth.as_ref() == b"ok"
    }
    fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// The view manager "signs" with the key followed by the message's digest.
struct Admin;

impl AdminVerify for Admin {
    fn signature_checks(&self, key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        signature == admin_sign(key, message).as_ref()
    }
    fn key_is_valid(&self, _: &[u8; 32]) -> bool {
        true
    }
}

fn admin_sign(key: &[u8; 32], message: &[u8]) -> Bytes {
    Bytes::from([&key[..], &Digest::of(message).0].concat())
}

fn member(id: u32) -> Member {
    Member { id: ReplicaId(id), address: format!("h{id}:1"), public_key: [id as u8; 32] }
}

fn genesis_config() -> Configuration {
    Configuration::new(0, CLUSTER, (0..4).map(member).collect(), 1, Mode::Bft, VM).unwrap()
}

fn protocol() -> Config {
    let mut c = Config::new(Membership::with_size(4, Mode::Bft).unwrap());
    c.checkpoint_interval = K;
    c.log_window = 2 * K;
    c.request_timeout_ms = 1_000;
    c.pipeline_min_batch = 1;
    c
}

struct Node {
    host: EpochHost<Keys>,
    exec: ExecutionHost<Log>,
    answers: Vec<(ClientId, RequestId, Answer)>,
}

type Wire = VecDeque<(u32, u32, u64, PeerMessage)>;

/// One node's world while it takes a step.
struct Io<'a> {
    me: u32,
    wire: &'a mut Wire,
    exec: &'a mut ExecutionHost<Log>,
    answers: &'a mut Vec<(ClientId, RequestId, Answer)>,
    inputs: &'a mut VecDeque<Input>,
    events: &'a mut VecDeque<Reconfigured>,
}

impl ConsensusIo for Io<'_> {
    fn persist(&mut self, _: Record) {}
    fn send(&mut self, to: ReplicaId, epoch: u64, msg: &PeerMessage) {
        self.wire.push_back((self.me, to.0, epoch, msg.clone()));
    }
    fn execute(&mut self, cmd: ExecCommand) {
        let mut sink = Sink {
            me: self.me,
            wire: &mut *self.wire,
            answers: &mut *self.answers,
            inputs: &mut *self.inputs,
            events: &mut *self.events,
        };
        self.exec.handle(cmd, &mut sink).unwrap();
    }
    fn refuse(&mut self, _: ClientId, _: RequestId, _: RejectReason) {}
}

struct Sink<'a> {
    me: u32,
    wire: &'a mut Wire,
    answers: &'a mut Vec<(ClientId, RequestId, Answer)>,
    inputs: &'a mut VecDeque<Input>,
    events: &'a mut VecDeque<Reconfigured>,
}

impl ExecutionIo for Sink<'_> {
    fn replies(&mut self, mails: Vec<ClientMail>) {
        for m in mails {
            if let ClientMail::Answer { client, request, answer, .. } = m {
                self.answers.push((client, request, answer));
            }
        }
    }
    fn checkpoint(&mut self, seq: SeqNo, state: Digest, config: Digest) {
        self.inputs.push_back(Input::CheckpointReady { seq, state, config });
    }
    fn state_fetched(&mut self, seq: SeqNo, state: Digest) {
        self.inputs.push_back(Input::StateFetched { seq, state });
    }
    fn send(&mut self, to: ReplicaId, epoch: u64, msg: PeerMessage) {
        self.wire.push_back((self.me, to.0, epoch, msg));
    }
    fn reconfigured(&mut self, event: Reconfigured) {
        self.events.push_back(event);
    }
}

enum Feed {
    Input(Input),
    Peer(ReplicaId, u64, PeerMessage),
    Reconfigured(Reconfigured),
}

struct Net {
    nodes: BTreeMap<u32, Node>,
    wire: Wire,
    now: u64,
    next_id: u64,
    /// Cut off: they neither hear nor are heard, and their clocks stop.
    down: std::collections::BTreeSet<u32>,
}

fn executor() -> Arc<RwLock<Executor<Log>>> {
    Arc::new(RwLock::new(Executor::new(Log::default(), 64).with_reconfiguration(genesis_config(), Arc::new(Admin), K)))
}

fn exec_host(me: u32) -> ExecutionHost<Log> {
    let cfg = ExecutionConfig {
        checkpoint_interval: K,
        reply_digests: false,
        ..ExecutionConfig::new(ReplicaId(me), genesis_config().membership())
    };
    ExecutionHost::new(executor(), cfg, None).unwrap()
}

fn crypto_for(me: u32) -> palisade_host::epochs::CryptoFor<Keys> {
    Box::new(move |c: &Configuration| Keys { me: ReplicaId(me), epoch: c.epoch })
}

impl Net {
    fn new() -> Net {
        let mut net =
            Net { nodes: BTreeMap::new(), wire: VecDeque::new(), now: 1, next_id: 1, down: Default::default() };
        for me in 0..4 {
            let exec = exec_host(me);
            let genesis = exec.restored().1;
            let core = Replica::new(protocol(), ReplicaId(me), Keys { me: ReplicaId(me), epoch: 0 }, genesis);
            let host = EpochHost::new(core, genesis_config(), protocol(), crypto_for(me));
            net.nodes.insert(me, Node { host, exec, answers: Vec::new() });
        }
        net.tick(0);
        net
    }

    /// Starts replica `me`, which knows only the genesis configuration and
    /// is not in it: it waits, asking the members which epochs followed.
    fn standby(&mut self, me: u32) {
        let exec = exec_host(me);
        let genesis = exec.restored().1;
        let core = Replica::new(protocol(), ReplicaId(me), Keys { me: ReplicaId(me), epoch: 0 }, genesis);
        let host = EpochHost::new(core, genesis_config(), protocol(), crypto_for(me));
        assert!(host.standby());
        self.nodes.insert(me, Node { host, exec, answers: Vec::new() });
        self.feed(me, Feed::Input(Input::Tick { now_ms: self.now, wall_ms: self.now }));
    }

    fn feed(&mut self, me: u32, first: Feed) {
        if self.down.contains(&me) {
            return;
        }
        let Some(node) = self.nodes.get_mut(&me) else { return };
        let mut inputs = VecDeque::new();
        let mut events = VecDeque::new();
        let mut next = Some(first);
        while let Some(feed) = next.take() {
            let mut io = Io {
                me,
                wire: &mut self.wire,
                exec: &mut node.exec,
                answers: &mut node.answers,
                inputs: &mut inputs,
                events: &mut events,
            };
            match feed {
                Feed::Input(i) => node.host.step(i, &mut io),
                Feed::Peer(from, epoch, msg) => node.host.peer(from, epoch, msg, &mut io),
                Feed::Reconfigured(e) => node.host.reconfigured(e, &mut io),
            }
            // What execution said of the membership first, then its inputs.
            next = events.pop_front().map(Feed::Reconfigured).or_else(|| inputs.pop_front().map(Feed::Input));
        }
    }

    fn run(&mut self) {
        while let Some((from, to, epoch, msg)) = self.wire.pop_front() {
            if !self.down.contains(&from) {
                self.feed(to, Feed::Peer(ReplicaId(from), epoch, msg));
            }
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for me in ids {
            self.feed(me, Feed::Input(Input::Tick { now_ms: self.now, wall_ms: self.now }));
        }
        self.run();
    }

    /// A client request sent to every replica, as a client that has not
    /// heard from the primary does.
    fn submit(&mut self, client: ClientId, operation: Bytes) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let req = Request { client, id, read_only: false, operation, auth: Bytes::from_static(b"ok") };
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for me in ids {
            self.feed(me, Feed::Input(Input::Request(req.clone())));
        }
        self.run();
        id
    }

    fn settle(&mut self) {
        for _ in 0..20 {
            self.tick(50);
        }
    }

    fn state(&self, me: u32) -> Vec<u8> {
        self.nodes[&me].exec.executor().read().service().0.clone()
    }

    fn answer(&self, me: u32, client: ClientId, id: RequestId) -> Option<&Answer> {
        self.nodes[&me].answers.iter().find(|(c, r, _)| *c == client && *r == id).map(|(_, _, a)| a)
    }
}

fn reconfiguration(epoch: u64, nonce: u64, ops: Vec<AdminOp>) -> Bytes {
    let body = AdminBody { cluster: CLUSTER, epoch, nonce, ops };
    let signature = admin_sign(&VM, &body.signing_bytes());
    AdminRequest { body, signature }.encode()
}

#[test]
fn a_replica_is_replaced_at_a_checkpoint_and_the_new_epoch_orders_on_without_the_old_primary() {
    let mut net = Net::new();
    // Replica 4 is started before it is added, and waits.
    net.standby(4);
    let user = ClientId(77);
    for op in b"ab" {
        net.submit(user, Bytes::from(vec![*op]));
    }
    net.settle();
    assert_eq!(net.state(3), b"ab");

    // The view manager replaces replica 0, the primary of view 0.
    let vm = ClientId::of_key(&VM);
    let add4 = AdminOp::Add { id: ReplicaId(4), address: "h4:1".into(), public_key: [4; 32] };
    let remove0 = AdminOp::Remove { id: ReplicaId(0) };
    let req = net.submit(vm, reconfiguration(0, 1, vec![add4, remove0]));
    net.settle();
    let Some(Answer::Full(bytes) | Answer::TentativeFull(bytes)) = net.answer(1, vm, req) else {
        panic!("no answer to the view manager")
    };
    let Some(AdminOutcome::Accepted { next, boundary }) = AdminOutcome::decode(bytes) else {
        panic!("not accepted: {bytes:?}")
    };
    assert_eq!(next.epoch, 1);
    assert_eq!(boundary.0 % K, 0);

    // Every old member finished epoch 0 at the boundary; 1, 2 and 3 run
    // epoch 1; replica 0 is out.
    for me in 0..4 {
        let prev = net.nodes[&me].host.previous().unwrap_or(net.nodes[&me].host.core());
        assert!(prev.epoch_over(), "replica {me}'s epoch 0 is over");
        assert_eq!(prev.stable_checkpoint().seq, boundary, "replica {me}");
    }
    assert_eq!(net.nodes[&0].host.removed(), Some(1));
    for me in 1..4 {
        assert_eq!(net.nodes[&me].host.epoch(), 1, "replica {me}");
        assert_eq!(net.nodes[&me].host.core().genesis().seq, boundary);
    }

    // Replica 4 learned the chain, checked it, joined at the handover
    // checkpoint and fetched the state there.
    let node4 = &net.nodes[&4].host;
    assert!(!node4.standby());
    assert_eq!((node4.epoch(), node4.core().genesis().seq), (1, boundary));
    assert_eq!(node4.chain().len(), 1);
    assert!(node4.core().delivered() >= boundary, "the joiner fetched the state at the handover");
    assert_eq!(net.state(4), net.state(1));

    // Epoch 1 orders with 1, 2, 3 and 4; replica 0 takes no part.
    for op in b"cdefg" {
        net.submit(user, Bytes::from(vec![*op]));
    }
    net.settle();
    for me in 1..5 {
        assert_eq!(net.state(me), b"abcdefg", "replica {me}");
        assert!(net.nodes[&me].host.core().delivered() > boundary);
    }
    assert_eq!(net.state(0), b"ab", "the removed replica executes nothing of epoch 1");
    // Epoch 1 has a stable checkpoint of its own, certified by its members.
    let stable = net.nodes[&4].host.core().stable_checkpoint().clone();
    assert!(stable.seq > boundary);
    assert!(stable.proof.iter().all(|v| v.body.replica != ReplicaId(0)));
}

fn change(net: &mut Net, epoch: u64, nonce: u64, ops: Vec<AdminOp>) -> Configuration {
    let vm = ClientId::of_key(&VM);
    let req = net.submit(vm, reconfiguration(epoch, nonce, ops));
    net.settle();
    let me = *net.nodes.keys().find(|m| !net.down.contains(m) && net.answer(**m, vm, req).is_some()).expect("answered");
    let Some(Answer::Full(bytes) | Answer::TentativeFull(bytes)) = net.answer(me, vm, req) else {
        panic!("no full answer")
    };
    match AdminOutcome::decode(bytes) {
        Some(AdminOutcome::Accepted { next, .. }) => next,
        other => panic!("not accepted: {other:?}"),
    }
}

fn add(id: u32) -> AdminOp {
    AdminOp::Add { id: ReplicaId(id), address: format!("h{id}:1"), public_key: [id as u8; 32] }
}

#[test]
fn a_replica_two_epochs_behind_is_shown_the_chain_checks_it_and_catches_up() {
    let mut net = Net::new();
    net.standby(4);
    net.standby(5);
    let user = ClientId(77);
    net.submit(user, Bytes::from_static(b"a"));
    net.settle();
    // Replica 3 is cut off while two changes go through.
    net.down.insert(3);
    let first = change(&mut net, 0, 1, vec![add(4)]);
    assert_eq!(first.epoch, 1);
    net.submit(user, Bytes::from_static(b"b"));
    net.settle();
    let second = change(&mut net, 1, 2, vec![add(5)]);
    assert_eq!(second.epoch, 2);
    net.submit(user, Bytes::from_static(b"c"));
    net.settle();
    assert_eq!(net.nodes[&3].host.epoch(), 0);
    // Back: its epoch-0 messages are older than any core the others keep,
    // so they answer with the links; it checks both and jumps to epoch 2.
    net.down.remove(&3);
    net.settle();
    let node3 = &net.nodes[&3].host;
    assert_eq!(node3.epoch(), 2);
    assert_eq!(node3.chain().iter().map(|h| h.config.epoch).collect::<Vec<_>>(), vec![1, 2]);
    assert!(net.nodes[&0].host.counters().stale > 0);
    net.submit(user, Bytes::from_static(b"d"));
    net.settle();
    for me in 0..6 {
        assert_eq!(net.state(me), b"abcd", "replica {me}");
    }
}

#[test]
fn a_new_epoch_starts_with_the_primary_that_led_the_last_one_not_a_crashed_lowest_id() {
    let mut net = Net::new();
    net.standby(4);
    let user = ClientId(77);
    net.submit(user, Bytes::from_static(b"a"));
    net.settle();
    // Replica 0, primary of view 0, crashes; a request times out and the
    // others move to view 1, led by replica 1.
    net.down.insert(0);
    net.submit(user, Bytes::from_static(b"b"));
    for _ in 0..60 {
        net.tick(50);
    }
    assert_eq!(net.nodes[&1].host.core().view(), palisade_core::ViewNo(1));
    assert_eq!(net.state(1), b"ab");
    // Replica 0 is still down when replica 4 is added: view 0 of epoch 1
    // is led by replica 1, which proposed the last requests of epoch 0.
    let next = change(&mut net, 0, 1, vec![add(4)]);
    assert_eq!(next.epoch, 1);
    for me in 1..5 {
        let core = net.nodes[&me].host.core();
        assert_eq!(net.nodes[&me].host.epoch(), 1, "replica {me}");
        assert_eq!(core.view(), palisade_core::ViewNo(0), "replica {me} needed no view change");
        assert_eq!(core.primary(), ReplicaId(1), "replica {me}");
    }
    // And it orders at once, without waiting out a request timeout.
    net.submit(user, Bytes::from_static(b"c"));
    net.tick(50);
    for me in 1..4 {
        assert_eq!(net.state(me), b"abc", "replica {me}");
    }
    for _ in 0..200 {
        net.tick(50);
    }
    assert_eq!(net.state(4), b"abc", "the joiner caught up");
}

#[test]
fn a_link_that_does_not_check_is_refused_and_counted() {
    let mut net = Net::new();
    net.standby(4);
    let next = change(&mut net, 0, 1, vec![add(4)]);
    let good = net.nodes[&1].host.chain()[0].clone();
    assert_eq!(good.config, next);
    // Three ways to lie to a replica that knows only epoch 0.
    let mut other_members = good.clone();
    other_members.config.members.retain(|m| m.id != ReplicaId(4));
    other_members.config.f = 0;
    let mut too_few = good.clone();
    too_few.cert.proof.truncate(2);
    let mut skipped = good.clone();
    skipped.config.epoch = 2;
    let mut probe = Net::new();
    probe.standby(4);
    for (i, bad) in [other_members, too_few, skipped].into_iter().enumerate() {
        probe.feed(4, Feed::Peer(ReplicaId(1), 0, PeerMessage::Handovers(vec![bad])));
        let host = &probe.nodes[&4].host;
        assert!(host.standby(), "lie {i} was believed");
        assert_eq!(host.counters().bad_links, i as u64 + 1);
    }
    // The true link is followed.
    probe.feed(4, Feed::Peer(ReplicaId(1), 0, PeerMessage::Handovers(vec![good])));
    assert!(!probe.nodes[&4].host.standby());
    assert_eq!(probe.nodes[&4].host.epoch(), 1);
}

#[test]
fn a_joiner_a_quorum_needs_while_a_member_is_down_catches_up_at_once_under_load() {
    let mut net = Net::new();
    net.standby(4);
    net.submit(ClientId(77), Bytes::from_static(b"a"));
    net.settle();
    // Replica 0 crashes for good; the others move to view 1.
    net.down.insert(0);
    net.submit(ClientId(77), Bytes::from_static(b"b"));
    for _ in 0..60 {
        net.tick(50);
    }
    // With replica 4 added, epoch 1 has five members and quorums of four:
    // nothing commits without replica 4, which starts from nothing while
    // the others order on. It fetches the state at the handover, then the
    // newest checkpoint the others vouch for (its own vote is what makes
    // that checkpoint stable), from the replicas that signed it rather
    // than from the dead one.
    assert_eq!(change(&mut net, 0, 1, vec![add(4)]).epoch, 1);
    for _ in 0..40 {
        for k in 0..3u64 {
            net.submit(ClientId(100 + k), Bytes::from(vec![b'x' + k as u8]));
        }
        net.tick(50);
    }
    let reference = net.nodes[&1].host.core().delivered();
    assert!(reference.0 > 3 * 40, "ordering went on: {reference:?}");
    for me in 1..5 {
        let core = net.nodes[&me].host.core();
        assert_eq!(core.metrics().view_changes, 0, "replica {me} changed views in epoch 1");
        assert!(core.delivered().0 + 6 >= reference.0, "replica {me} at {:?}", core.delivered());
    }
    assert_eq!(net.state(4), net.state(1));
}
