//! Collaborative state transfer between execution hosts: a fetching
//! replica gets only the parts it lacks, from several peers, in pieces no
//! larger than an answer's budget, checks every piece, and passes over a
//! peer that lies.

use bytes::Bytes;
use palisade_core::message::{StateAnswer, StateItem};
use palisade_core::state::{Part, PartedState};
use palisade_core::{Batch, ClientId, Digest, ExecContext, Executor, Membership, Mode, PeerMessage, ReplicaId};
use palisade_core::{Request, RequestId, SeqNo, Service, ViewNo};
use palisade_host::{ClientMail, ExecCommand, ExecEvent, ExecutionConfig, ExecutionHost, ExecutionIo};
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A map divided into parts by key; an operation `key:value` sets a key.
#[derive(Default)]
struct Buckets {
    parts: Vec<BTreeMap<u32, Bytes>>,
    changed: BTreeSet<u32>,
}

const PARTS: u32 = 16;

impl Buckets {
    fn new() -> Buckets {
        Buckets { parts: vec![BTreeMap::new(); PARTS as usize], changed: (0..PARTS).collect() }
    }

    fn record(key: u32, value: &Bytes) -> Bytes {
        let mut b = key.to_le_bytes().to_vec();
        b.extend_from_slice(value);
        Bytes::from(b)
    }
}

impl Service for Buckets {
    fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
        let key = u32::from_le_bytes(op[..4].try_into().unwrap());
        let p = key % PARTS;
        self.parts[p as usize].insert(key, Bytes::copy_from_slice(&op[4..]));
        self.changed.insert(p);
        Bytes::new()
    }
    fn execute_unordered(&self, _: &[u8]) -> Bytes {
        Bytes::new()
    }
    fn snapshot(&self) -> Bytes {
        Bytes::new()
    }
    fn install(&mut self, _: &[u8]) -> Result<(), String> {
        Err("parts only".into())
    }
    fn parted(&self) -> Option<&dyn PartedState> {
        Some(self)
    }
    fn parted_mut(&mut self) -> Option<&mut dyn PartedState> {
        Some(self)
    }
}

impl PartedState for Buckets {
    fn part_count(&self) -> u32 {
        PARTS
    }
    fn take_changed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }
    fn part(&self, i: u32) -> Part {
        Part::from_records(self.parts[i as usize].iter().map(|(k, v)| Buckets::record(*k, v)).collect())
    }
    fn install_part(&mut self, i: u32, records: Vec<Bytes>) -> Result<(), String> {
        let mut m = BTreeMap::new();
        for r in records {
            let key = u32::from_le_bytes(r.get(..4).ok_or("short record")?.try_into().unwrap());
            m.insert(key, r.slice(4..));
        }
        self.parts[i as usize] = m;
        self.changed.insert(i);
        Ok(())
    }
}

/// What a host said, by kind.
#[derive(Default)]
struct Out {
    sent: Vec<(ReplicaId, PeerMessage)>,
    checkpoints: Vec<(SeqNo, Digest)>,
    fetched: Vec<(SeqNo, Digest)>,
    events: Vec<ExecEvent>,
    /// Answers sent, and how many of them were tentative.
    answers: (usize, usize),
}

impl ExecutionIo for Out {
    fn replies(&mut self, mails: Vec<ClientMail>) {
        for m in mails {
            if let ClientMail::Answer { answer, .. } = m {
                self.answers.0 += 1;
                self.answers.1 += usize::from(answer.is_tentative());
            }
        }
    }
    fn checkpoint(&mut self, seq: SeqNo, state: Digest, _config: Digest) {
        self.checkpoints.push((seq, state));
    }
    fn state_fetched(&mut self, seq: SeqNo, state: Digest) {
        self.fetched.push((seq, state));
    }
    fn send(&mut self, to: ReplicaId, _epoch: u64, msg: PeerMessage) {
        self.sent.push((to, msg));
    }
    fn note(&mut self, e: ExecEvent) {
        self.events.push(e);
    }
}

fn host(me: u32, budget: usize) -> ExecutionHost<Buckets> {
    let exec = Arc::new(RwLock::new(Executor::new(Buckets::new(), 16)));
    let cfg = ExecutionConfig {
        checkpoint_interval: 4,
        reply_digests: false,
        max_answer_bytes: budget,
        fetch_window: 4,
        ..ExecutionConfig::new(ReplicaId(me), Membership::with_size(4, Mode::Bft).unwrap())
    };
    ExecutionHost::new(exec, cfg, None).unwrap()
}

fn put(key: u32, value_len: usize, id: u64) -> Request {
    let mut op = key.to_le_bytes().to_vec();
    op.extend(std::iter::repeat_n(key as u8, value_len));
    Request { client: ClientId(1), id: RequestId(id), read_only: false, operation: Bytes::from(op), auth: Bytes::new() }
}

/// Delivers batches 1..=4 of `ops` (a function of the sequence number).
fn run(h: &mut ExecutionHost<Buckets>, ops: impl Fn(u64) -> Vec<Request>) -> Digest {
    let mut out = Out::default();
    for seq in 1..=4 {
        let batch = Arc::new(Batch { timestamp_ms: seq, proposed_in: ViewNo(0), requests: ops(seq) });
        h.handle(ExecCommand::Deliver { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch }, &mut out).unwrap();
    }
    assert_eq!(out.checkpoints.len(), 1);
    out.checkpoints[0].1
}

/// A network of hosts; `lie` rewrites what a peer answers.
struct Net {
    hosts: Vec<ExecutionHost<Buckets>>,
    lie: Box<dyn FnMut(usize, StateAnswer) -> StateAnswer>,
    /// Answers from these peers are lost.
    silent: BTreeSet<usize>,
    events: Vec<ExecEvent>,
    fetched: Vec<(SeqNo, Digest)>,
    largest_answer: usize,
}

impl Net {
    /// Everyone but host 0.
    fn peers(&self) -> std::sync::Arc<[ReplicaId]> {
        (1..self.hosts.len() as u32).map(ReplicaId).collect()
    }

    /// Runs host 0's fetch until nothing is in flight.
    fn fetch(&mut self, seq: SeqNo, root: Digest) {
        let mut queue: VecDeque<(usize, ExecCommand)> =
            VecDeque::from([(0, ExecCommand::Fetch { epoch: 0, peers: self.peers(), holders: 0, seq, state: root })]);
        while let Some((at, cmd)) = queue.pop_front() {
            let mut out = Out::default();
            self.hosts[at].handle(cmd, &mut out).unwrap();
            self.events.extend(out.events);
            self.fetched.extend(out.fetched);
            for (to, msg) in out.sent {
                let to = to.0 as usize;
                match msg {
                    PeerMessage::StateFetch { seq, query } => {
                        queue.push_back((to, ExecCommand::Serve { epoch: 0, to: ReplicaId(at as u32), seq, query }))
                    }
                    PeerMessage::StateData { seq, answer } => {
                        if self.silent.contains(&at) {
                            continue;
                        }
                        self.largest_answer = self.largest_answer.max(answer_bytes(&answer));
                        let answer = (self.lie)(at, answer);
                        queue.push_back((to, ExecCommand::StateData { from: ReplicaId(at as u32), seq, answer }));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    fn count(&self, e: ExecEvent) -> usize {
        self.events.iter().filter(|x| **x == e).count()
    }
}

fn answer_bytes(a: &StateAnswer) -> usize {
    match a {
        StateAnswer::Parts(items) => items
            .iter()
            .map(|i| match i {
                StateItem::Digests { digests, .. } => 32 * digests.len(),
                StateItem::Bytes { bytes, .. } => bytes.len(),
            })
            .sum(),
        StateAnswer::Manifest { digests, .. } => 32 * digests.len(),
        StateAnswer::Unavailable => 0,
    }
}

fn ops(seq: u64) -> Vec<Request> {
    (0..40u32).map(|k| put(k * 7 + seq as u32, 3_000, seq * 100 + k as u64)).collect()
}

#[test]
fn an_empty_replica_fetches_everything_in_pieces_from_several_peers_past_a_liar() {
    let budget = 2_000;
    let mut hosts: Vec<_> = (0..4).map(|i| host(i, budget)).collect();
    let roots: Vec<Digest> = hosts.iter_mut().skip(1).map(|h| run(h, ops)).collect();
    assert!(roots.windows(2).all(|w| w[0] == w[1]));
    let root = roots[0];
    let mut net = Net {
        hosts,
        // Replica 3 corrupts every record piece it sends.
        lie: Box::new(|from, a| match (from, a) {
            (3, StateAnswer::Parts(items)) => StateAnswer::Parts(
                items
                    .into_iter()
                    .map(|i| match i {
                        StateItem::Bytes { part, record, offset, len, bytes } => {
                            let mut b = bytes.to_vec();
                            if let Some(x) = b.last_mut() {
                                *x ^= 1;
                            }
                            StateItem::Bytes { part, record, offset, len, bytes: Bytes::from(b) }
                        }
                        other => other,
                    })
                    .collect(),
            ),
            (_, a) => a,
        }),
        silent: BTreeSet::new(),
        events: Vec::new(),
        fetched: Vec::new(),
        largest_answer: 0,
    };
    net.fetch(SeqNo(4), root);
    assert_eq!(net.fetched, vec![(SeqNo(4), root)]);
    assert_eq!(net.hosts[0].executor().read().state_digest(), root);
    assert!(net.count(ExecEvent::BadStateData) >= 1, "the liar was caught");
    assert!(net.largest_answer <= budget, "an answer of {} bytes", net.largest_answer);
    assert_eq!(net.hosts[0].restored(), (SeqNo(4), root), "the fetched state is kept, to serve others");
}

#[test]
fn a_lagging_replica_fetches_only_the_parts_that_changed() {
    let mut hosts: Vec<_> = (0..4).map(|i| host(i, 64 << 10)).collect();
    // Everyone executed the same first checkpoint...
    for h in hosts.iter_mut() {
        run(h, ops);
    }
    // ...then the others went on, touching two parts only.
    let more = |seq: u64| vec![put(16 * seq as u32 + 3, 10, 1_000 + seq), put(16 * seq as u32 + 5, 10, 2_000 + seq)];
    let mut root = Digest::default();
    for h in hosts.iter_mut().skip(1) {
        let mut out = Out::default();
        for seq in 5..=8 {
            let batch = Arc::new(Batch { timestamp_ms: seq, proposed_in: ViewNo(0), requests: more(seq) });
            h.handle(ExecCommand::Deliver { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch }, &mut out).unwrap();
        }
        root = out.checkpoints[0].1;
    }
    let mut net = Net {
        hosts,
        lie: Box::new(|_, a| a),
        silent: BTreeSet::new(),
        events: Vec::new(),
        fetched: Vec::new(),
        largest_answer: 0,
    };
    net.fetch(SeqNo(8), root);
    assert_eq!(net.fetched, vec![(SeqNo(8), root)]);
    // The client table and the two parts that changed.
    assert_eq!(net.count(ExecEvent::PartInstalled), 3);
}

#[test]
fn questions_to_a_silent_peer_go_to_another_at_the_next_nudge() {
    let mut hosts: Vec<_> = (0..4).map(|i| host(i, 4_000)).collect();
    let root = hosts.iter_mut().skip(1).map(|h| run(h, ops)).last().unwrap();
    let mut net = Net {
        hosts,
        lie: Box::new(|_, a| a),
        silent: BTreeSet::from([1, 2]),
        events: Vec::new(),
        fetched: Vec::new(),
        largest_answer: 0,
    };
    net.fetch(SeqNo(4), root);
    let mut rounds = 0;
    while net.fetched.is_empty() {
        rounds += 1;
        assert!(rounds < 100, "no progress with one peer answering");
        // The core's transfer timeout: the same target again.
        net.fetch(SeqNo(4), root);
    }
    assert_eq!(net.fetched, vec![(SeqNo(4), root)]);
}

#[test]
fn a_peer_without_the_checkpoint_says_so_and_the_fetch_goes_elsewhere() {
    let mut hosts: Vec<_> = (0..4).map(|i| host(i, 64 << 10)).collect();
    let root = hosts.iter_mut().skip(2).map(|h| run(h, ops)).last().unwrap();
    // Host 1 never executed: it answers `Unavailable`.
    let mut net = Net {
        hosts,
        lie: Box::new(|_, a| a),
        silent: BTreeSet::new(),
        events: Vec::new(),
        fetched: Vec::new(),
        largest_answer: 0,
    };
    net.fetch(SeqNo(4), root);
    assert_eq!(net.fetched, vec![(SeqNo(4), root)]);
    assert_eq!(net.count(ExecEvent::BadStateData), 0, "lacking a checkpoint is not lying");
}

/// A tentative execution undone by the snapshot machinery: the parts it
/// changed come back from the newest checkpoint, the batches above that
/// checkpoint execute again, and the host ends where one that never
/// executed it does.
#[test]
fn a_rolled_back_tentative_execution_leaves_the_state_a_host_that_never_ran_it_has() {
    let batch =
        |seq: u64, reqs: Vec<Request>| Arc::new(Batch { timestamp_ms: seq, proposed_in: ViewNo(0), requests: reqs });
    let committed = |seq: u64| vec![put(seq as u32, 8, seq)];
    let (mut a, mut b) = (host(0, 1 << 20), host(1, 1 << 20));
    for h in [&mut a, &mut b] {
        run(h, committed);
        for seq in 5..=6 {
            let cmd =
                ExecCommand::Deliver { epoch: 0, seq: SeqNo(seq), view: ViewNo(0), batch: batch(seq, committed(seq)) };
            h.handle(cmd, &mut Out::default()).unwrap();
        }
    }
    // Host a executes at 7 tentatively what never commits: it overwrites
    // keys that batches 5 and 6 wrote, and adds one in a part of its own.
    let forged = batch(7, vec![put(5, 3, 100), put(6, 3, 101), put(11, 3, 102)]);
    let mut out = Out::default();
    let cmd = ExecCommand::Tentative { epoch: 0, seq: SeqNo(7), view: ViewNo(0), batch: forged, durable_group: 0 };
    a.handle(cmd, &mut out).unwrap();
    let lookup = |h: &ExecutionHost<Buckets>, id: u64| h.executor().read().lookup(ClientId(1), RequestId(id));
    assert!(matches!(lookup(&a, 100), palisade_core::exec::Lookup::Tentative(_)), "its reply is tentative");
    assert_ne!(a.executor().read().state_digest(), b.executor().read().state_digest());
    let replay = (5..=6).map(|s| (SeqNo(s), batch(s, committed(s)))).collect();
    a.handle(ExecCommand::RollBack { epoch: 0, seq: SeqNo(7), view: ViewNo(1), replay }, &mut out).unwrap();
    assert!(out.events.contains(&ExecEvent::RolledBack));
    assert_eq!(a.executor().read().state_digest(), b.executor().read().state_digest(), "back to after 6");
    assert_eq!(lookup(&a, 100), palisade_core::exec::Lookup::New, "the undone request can execute again");
    // What committed at 7 and 8 (a checkpoint) gives both the same state.
    let (mut ca, mut cb) = (Out::default(), Out::default());
    for seq in 7..=8 {
        for (h, o) in [(&mut a, &mut ca), (&mut b, &mut cb)] {
            let cmd =
                ExecCommand::Deliver { epoch: 0, seq: SeqNo(seq), view: ViewNo(1), batch: batch(seq, committed(seq)) };
            h.handle(cmd, o).unwrap();
        }
    }
    assert_eq!(ca.checkpoints, cb.checkpoints);
    assert_eq!(ca.checkpoints.len(), 1);
    // A tentative execution that commits is confirmed without running again.
    let t = batch(9, committed(9));
    let mut out = Out::default();
    let cmd = ExecCommand::Tentative { epoch: 0, seq: SeqNo(9), view: ViewNo(1), batch: t.clone(), durable_group: 0 };
    a.handle(cmd, &mut out).unwrap();
    a.handle(ExecCommand::Confirm { epoch: 0, seq: SeqNo(9), view: ViewNo(1), batch: t.clone() }, &mut out).unwrap();
    b.handle(ExecCommand::Deliver { epoch: 0, seq: SeqNo(9), view: ViewNo(1), batch: t }, &mut Out::default()).unwrap();
    assert_eq!(a.executor().read().state_digest(), b.executor().read().state_digest());
    assert!(matches!(lookup(&a, 9), palisade_core::exec::Lookup::Cached(_)), "committed now");
    assert_eq!(out.events.iter().filter(|e| **e == ExecEvent::BatchDelivered).count(), 1);
    assert_eq!(out.answers, (1, 1), "one tentative answer; the confirm in the same view adds none");
    // Confirmed in a later view: answered again, committed (tentative
    // answers from two views do not add up at the client).
    let t = batch(10, committed(10));
    let mut out = Out::default();
    let cmd = ExecCommand::Tentative { epoch: 0, seq: SeqNo(10), view: ViewNo(1), batch: t.clone(), durable_group: 0 };
    a.handle(cmd, &mut out).unwrap();
    a.handle(ExecCommand::Confirm { epoch: 0, seq: SeqNo(10), view: ViewNo(2), batch: t }, &mut out).unwrap();
    assert_eq!(out.answers, (2, 1));
    // A state transfer replaces a tentative execution, but its requests
    // stay tentative until the fetched state is in.
    let t = batch(11, committed(11));
    let cmd = ExecCommand::Tentative { epoch: 0, seq: SeqNo(11), view: ViewNo(2), batch: t, durable_group: 0 };
    a.handle(cmd, &mut out).unwrap();
    let peers: Arc<[ReplicaId]> = vec![ReplicaId(1)].into();
    let fetch = ExecCommand::Fetch { epoch: 0, peers, holders: 1, seq: SeqNo(16), state: Digest([3; 32]) };
    a.handle(fetch, &mut out).unwrap();
    assert!(matches!(lookup(&a, 11), palisade_core::exec::Lookup::Tentative(_)), "still the state's, not committed");
}
