//! The protocol's rules, one test each, named after the rule (PBFT's
//! sections 4.2 to 4.5 and what Palisade adds). Replicas are driven by hand
//! so that each test controls exactly which messages arrive.

use bytes::Bytes;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{
    Batch, CheckpointBody, NewViewBody, PrePrepare, Signature, Signed, Status, ViewChangeBody, Vote,
};
use palisade_core::{
    Action, ClientId, Config, Crypto, Digest, Input, Membership, Mode, PeerMessage, Record, Replica, ReplicaId,
    Request, RequestId, SeqNo, ViewNo,
};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;

/// Signatures are a keyed hash of the signer's id: enough to tell signers apart.
#[derive(Clone)]
struct TestCrypto(ReplicaId);

fn tag(who: ReplicaId, payload: &[u8]) -> Bytes {
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

const GENESIS: Digest = Digest([9; 32]);

fn config(mode: Mode, n: usize) -> Config {
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

fn replica(id: u32, cfg: &Config) -> Replica<TestCrypto> {
    let mut r = Replica::new(cfg.clone(), ReplicaId(id), TestCrypto(ReplicaId(id)), GENESIS);
    // The first tick sends STATUS and arms timers; drop those actions.
    r.step(Input::Tick { now_ms: 1 });
    r.take_actions();
    r
}

fn request(client: u64, id: u64) -> Request {
    Request {
        client: ClientId(client),
        id: RequestId(id),
        read_only: false,
        operation: Bytes::from(vec![id as u8]),
        auth: Bytes::from_static(b"signed"),
    }
}

fn batch(reqs: Vec<Request>) -> Arc<Batch> {
    Arc::new(Batch { timestamp_ms: 1, requests: reqs })
}

fn peer(r: &mut Replica<TestCrypto>, from: u32, msg: PeerMessage) -> Vec<Action> {
    r.step(Input::Peer { from: ReplicaId(from), msg });
    r.take_actions()
}

fn broadcasts(actions: &[Action]) -> Vec<&PeerMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn delivered(actions: &[Action]) -> Vec<SeqNo> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn vote(view: u64, seq: u64, d: Digest) -> Vote {
    Vote { view: ViewNo(view), seq: SeqNo(seq), digest: d }
}

/// Replica 1 accepts `b` at (view 0, `seq`) and gets replica 3's PREPARE:
/// with its own, that is prepared (2f = 2), so it has sent its COMMIT.
fn prepared(r1: &mut Replica<TestCrypto>, seq: u64, b: Arc<Batch>) -> Digest {
    let d = b.digest();
    peer(r1, 0, pre_prepare(0, seq, b));
    peer(r1, 3, PeerMessage::Prepare(vote(0, seq, d)));
    d
}

fn pre_prepare(view: u64, seq: u64, b: Arc<Batch>) -> PeerMessage {
    PeerMessage::PrePrepare(PrePrepare { view: ViewNo(view), seq: SeqNo(seq), batch: b })
}

/// An in-memory cluster that delivers every message, in order, unless cut off.
struct Cluster {
    replicas: Vec<Replica<TestCrypto>>,
    records: Vec<Vec<Record>>,
    delivered: Vec<Vec<(SeqNo, Digest)>>,
    queue: VecDeque<(u32, u32, PeerMessage)>,
    down: Vec<bool>,
    now: u64,
}

impl Cluster {
    fn new(cfg: &Config) -> Cluster {
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

    fn input(&mut self, r: usize, input: Input) {
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

    fn run(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if !self.down[from as usize] {
                self.input(to as usize, Input::Peer { from: ReplicaId(from), msg });
            }
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += ms;
        for r in 0..self.replicas.len() {
            self.input(r, Input::Tick { now_ms: self.now });
        }
        self.run();
    }

    fn submit(&mut self, to: usize, req: Request) {
        self.input(to, Input::Request(req));
        self.run();
    }
}

// ----- normal case (PBFT 4.2) ---------------------------------------------------

#[test]
fn a_backup_accepts_a_pre_prepare_only_from_the_primary_of_its_view() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let b = batch(vec![request(1, 1)]);
    assert!(broadcasts(&peer(&mut r1, 2, pre_prepare(0, 1, b.clone()))).is_empty());
    assert!(broadcasts(&peer(&mut r1, 0, pre_prepare(1, 1, b.clone()))).is_empty());
    let out = peer(&mut r1, 0, pre_prepare(0, 1, b.clone()));
    assert!(matches!(broadcasts(&out)[..], [PeerMessage::Prepare(v)] if v.digest == b.digest()));
    assert!(
        out.iter().position(|a| matches!(a, Action::Persist(_)))
            < out.iter().position(|a| matches!(a, Action::Broadcast(_))),
        "the pre-prepare must be persisted before the prepare is sent"
    );
}

#[test]
fn a_backup_never_accepts_two_batches_for_one_view_and_sequence_number() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    peer(&mut r1, 0, pre_prepare(0, 1, batch(vec![request(1, 1)])));
    let out = peer(&mut r1, 0, pre_prepare(0, 1, batch(vec![request(1, 2)])));
    assert!(broadcasts(&out).is_empty());
    assert_eq!(r1.metrics().dropped.get("equivocating pre-prepare"), Some(&1));
}

#[test]
fn prepared_needs_the_pre_prepare_and_2f_matching_prepares_from_backups() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let b = batch(vec![request(1, 1)]);
    let d = b.digest();
    peer(&mut r1, 0, pre_prepare(0, 1, b));
    // A prepare from the primary does not count, nor one for another digest.
    assert!(broadcasts(&peer(&mut r1, 0, PeerMessage::Prepare(vote(0, 1, d)))).is_empty());
    assert!(broadcasts(&peer(&mut r1, 2, PeerMessage::Prepare(vote(0, 1, Digest([1; 32]))))).is_empty());
    // Own prepare plus replica 3's: 2f = 2.
    let out = peer(&mut r1, 3, PeerMessage::Prepare(vote(0, 1, d)));
    assert!(matches!(broadcasts(&out)[..], [PeerMessage::Commit(v)] if v.digest == d));
}

#[test]
fn committed_local_needs_2f_plus_1_commits_and_then_delivers() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let d = prepared(&mut r1, 1, batch(vec![request(1, 1)]));
    // Own commit plus one: 2 < 3.
    assert!(delivered(&peer(&mut r1, 0, PeerMessage::Commit(vote(0, 1, d)))).is_empty());
    assert_eq!(delivered(&peer(&mut r1, 2, PeerMessage::Commit(vote(0, 1, d)))), vec![SeqNo(1)]);
}

#[test]
fn execution_follows_sequence_order_even_when_decisions_arrive_out_of_order() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let b1 = batch(vec![request(1, 1)]);
    let b2 = batch(vec![request(1, 2)]);
    let commit_all = |r: &mut Replica<TestCrypto>, seq: u64, d: Digest| {
        let mut out = peer(r, 3, PeerMessage::Prepare(vote(0, seq, d)));
        out.extend(peer(r, 0, PeerMessage::Commit(vote(0, seq, d))));
        out.extend(peer(r, 2, PeerMessage::Commit(vote(0, seq, d))));
        out
    };
    peer(&mut r1, 0, pre_prepare(0, 2, b2.clone()));
    assert!(delivered(&commit_all(&mut r1, 2, b2.digest())).is_empty());
    peer(&mut r1, 0, pre_prepare(0, 1, b1.clone()));
    assert_eq!(delivered(&commit_all(&mut r1, 1, b1.digest())), vec![SeqNo(1), SeqNo(2)]);
}

#[test]
fn cft_mode_skips_prepare_and_commits_with_a_majority() {
    let cfg = config(Mode::Cft, 3);
    let mut r1 = replica(1, &cfg);
    let b = batch(vec![request(1, 1)]);
    let out = peer(&mut r1, 0, pre_prepare(0, 1, b.clone()));
    assert!(matches!(broadcasts(&out)[..], [PeerMessage::Commit(_)]));
    assert_eq!(delivered(&peer(&mut r1, 0, PeerMessage::Commit(vote(0, 1, b.digest())))), vec![SeqNo(1)]);
}

#[test]
fn a_pre_prepare_with_an_unsigned_request_or_a_wild_timestamp_is_refused() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let mut forged = request(1, 1);
    forged.auth = Bytes::from_static(b"forged");
    assert!(broadcasts(&peer(&mut r1, 0, pre_prepare(0, 1, batch(vec![forged])))).is_empty());
    let late = Arc::new(Batch { timestamp_ms: cfg.timestamp_tolerance_ms + 10, requests: vec![request(1, 1)] });
    assert!(broadcasts(&peer(&mut r1, 0, pre_prepare(0, 1, late))).is_empty());
}

#[test]
fn a_backup_forwards_a_client_request_to_the_primary() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    let out = r2.take_actions();
    assert!(out.iter().any(|a| matches!(a, Action::Send { to: ReplicaId(0), msg: PeerMessage::Forward(_) })));
}

#[test]
fn a_whole_cluster_orders_and_delivers_the_same_batches() {
    let cfg = config(Mode::Bft, 4);
    let mut c = Cluster::new(&cfg);
    for i in 1..=20 {
        c.submit(0, request(1, i));
    }
    c.tick(1);
    assert!(c.delivered.iter().all(|d| d == &c.delivered[0]));
    let total: usize = c.delivered[0].len();
    assert!(total >= 5, "expected several batches, got {total}");
    assert_eq!(c.replicas[3].delivered(), SeqNo(total as u64));
}

fn proposed(actions: &[Action]) -> Vec<(SeqNo, usize)> {
    broadcasts(actions)
        .into_iter()
        .filter_map(|m| match m {
            PeerMessage::PrePrepare(pp) => Some((pp.seq, pp.batch.requests.len())),
            _ => None,
        })
        .collect()
}

#[test]
fn the_primary_proposes_at_once_when_idle_and_pipelines_only_batches_worth_their_messages() {
    let mut cfg = config(Mode::Bft, 4);
    cfg.pipeline_min_batch = 3;
    let mut r0 = replica(0, &cfg);
    r0.step(Input::Request(request(1, 1)));
    assert_eq!(proposed(&r0.take_actions()), vec![(SeqNo(1), 1)], "nothing in flight: no waiting");
    for id in 2..=3 {
        r0.step(Input::Request(request(1, id)));
        assert_eq!(proposed(&r0.take_actions()), vec![], "a batch in flight: two requests wait");
    }
    r0.step(Input::Request(request(1, 4)));
    assert_eq!(proposed(&r0.take_actions()), vec![(SeqNo(2), 3)], "three are worth a second batch in flight");
}

// ----- checkpoints and watermarks (PBFT 4.3) --------------------------------------

#[test]
fn a_checkpoint_becomes_stable_with_2f_plus_1_matching_messages_and_truncates_the_log() {
    let cfg = config(Mode::Bft, 4);
    let mut c = Cluster::new(&cfg);
    for i in 1..=6 {
        c.submit(0, request(1, i));
        c.tick(1);
    }
    assert!(c.replicas.iter().all(|r| r.stable_checkpoint().seq == SeqNo(4)));
    assert!(c.replicas.iter().all(|r| r.stable_checkpoint().proof.len() >= 3));
    assert!(c.replicas.iter().all(|r| r.log_len() <= 2));
}

#[test]
fn a_checkpoint_with_one_dissenting_digest_still_becomes_stable_on_the_quorum() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let sign = |who: u32, state: Digest| {
        crypto::sign(
            &TestCrypto(ReplicaId(who)),
            Domain::Checkpoint,
            CheckpointBody { seq: SeqNo(4), state, replica: ReplicaId(who) },
        )
    };
    let good = Digest([4; 32]);
    peer(&mut r1, 3, PeerMessage::Checkpoint(sign(3, Digest([66; 32]))));
    peer(&mut r1, 0, PeerMessage::Checkpoint(sign(0, good)));
    peer(&mut r1, 2, PeerMessage::Checkpoint(sign(2, good)));
    assert_eq!(r1.stable_checkpoint().seq, SeqNo(0), "two votes are not a quorum");
    // A vote relayed with a forged signature is refused.
    let mut forged = sign(3, good);
    forged.signature = Signature(Bytes::from_static(b"nope"));
    peer(&mut r1, 0, PeerMessage::Checkpoint(forged));
    assert_eq!(r1.stable_checkpoint().seq, SeqNo(0));
    peer(&mut r1, 3, PeerMessage::Checkpoint(sign(1, good)));
    assert_eq!(r1.stable_checkpoint().seq, SeqNo(4));
    assert_eq!(r1.stable_checkpoint().state, good);
    // This replica had not executed up to 4: it must fetch the state.
    assert!(r1.transferring());
}

#[test]
fn messages_outside_the_watermarks_are_dropped() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let b = batch(vec![request(1, 1)]);
    assert!(broadcasts(&peer(&mut r1, 0, pre_prepare(0, cfg.log_window + 1, b.clone()))).is_empty());
    assert!(broadcasts(&peer(&mut r1, 0, pre_prepare(0, 0, b))).is_empty());
    assert_eq!(r1.log_len(), 0);
}

proptest! {
    // Whatever a flood of peer traffic contains, the log holds only slots
    // inside the watermarks and delivery never skips or repeats.
    #[test]
    fn random_peer_traffic_keeps_the_log_within_the_window(
        msgs in proptest::collection::vec((0u32..4, 0u8..3, 0u64..3, 0u64..40, 0u8..3), 1..300)
    ) {
        let cfg = config(Mode::Bft, 4);
        let mut r1 = replica(1, &cfg);
        let digests: Vec<Arc<Batch>> = (0..3).map(|i| batch(vec![request(1, i + 1)])).collect();
        let mut last = SeqNo(0);
        for (from, kind, view, seq, which) in msgs {
            if from == 1 { continue; }
            let b = digests[which as usize].clone();
            let msg = match kind {
                0 => pre_prepare(view, seq, b),
                1 => PeerMessage::Prepare(vote(view, seq, b.digest())),
                _ => PeerMessage::Commit(vote(view, seq, b.digest())),
            };
            for s in delivered(&peer(&mut r1, from, msg)) {
                prop_assert_eq!(s, last.next());
                last = s;
            }
            prop_assert!(r1.log_len() as u64 <= cfg.log_window);
        }
    }
}

// ----- view change (PBFT 4.4) ----------------------------------------------------

#[test]
fn an_expired_request_timer_starts_a_view_change() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    r2.step(Input::Tick { now_ms: 500 });
    assert!(r2.is_normal());
    r2.take_actions();
    r2.step(Input::Tick { now_ms: 1_002 });
    let out = r2.take_actions();
    assert!(!r2.is_normal() && r2.view() == ViewNo(1));
    assert!(matches!(broadcasts(&out)[..], [PeerMessage::ViewChange(vc)] if vc.body.new_view == ViewNo(1)));
}

#[test]
fn a_replica_that_is_only_behind_restarts_its_timers_instead_of_changing_view() {
    let cfg = config(Mode::Bft, 4);
    let status = |delivered: u64| {
        PeerMessage::Status(Status { view: ViewNo(0), normal: true, delivered: SeqNo(delivered), stable: SeqNo(0) })
    };
    let starts_view_change = |r: &mut Replica<TestCrypto>| {
        r.step(Input::Tick { now_ms: 2_000 });
        broadcasts(&r.take_actions()).iter().any(|m| matches!(m, PeerMessage::ViewChange(_)))
    };
    // f+1 peers report deliveries far past replica 2's: it is behind, so the
    // expired timer restarts, and expires again a full timeout later.
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    peer(&mut r2, 0, status(50));
    peer(&mut r2, 1, status(50));
    assert!(!starts_view_change(&mut r2), "behind f+1 peers: catch up, do not suspect the primary");
    assert_eq!(r2.metrics().timers_restarted, 1);
    r2.step(Input::Tick { now_ms: 2_500 });
    assert!(r2.metrics().view_changes == 0);
    // Behind without catching up: after the first restart, only progress
    // earns another, so a primary that keeps it behind is suspected anyway.
    r2.step(Input::Tick { now_ms: 3_000 });
    let out = r2.take_actions();
    assert!(broadcasts(&out).iter().any(|m| matches!(m, PeerMessage::ViewChange(_))), "no progress: suspect");
    // One peer (possibly faulty) claiming progress is not enough.
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    peer(&mut r2, 0, status(1_000));
    peer(&mut r2, 1, status(0));
    assert!(starts_view_change(&mut r2), "one report proves nothing");
    // Peers a pipeline's worth ahead are just the normal case.
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    peer(&mut r2, 0, status(cfg.max_in_flight));
    peer(&mut r2, 1, status(cfg.max_in_flight));
    assert!(starts_view_change(&mut r2), "peers within the pipeline's depth do not count as ahead");
}

#[test]
fn a_replica_catching_up_restarts_its_timers_a_bounded_number_of_times() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    for from in 0..2 {
        let st = Status { view: ViewNo(0), normal: true, delivered: SeqNo(100), stable: SeqNo(0) };
        peer(&mut r2, from, PeerMessage::Status(st));
    }
    // Each timeout after which it delivered something restarts the timers,
    // up to the bound; then it suspects the primary all the same.
    let mut suspected_after = None;
    for k in 1..=8u64 {
        r2.step(Input::Tick { now_ms: 1 + k * 1_000 });
        if broadcasts(&r2.take_actions()).iter().any(|m| matches!(m, PeerMessage::ViewChange(_))) {
            suspected_after = Some(r2.metrics().timers_restarted);
            break;
        }
        // Catching up: one more batch decided and delivered.
        let b = batch(vec![request(9, k)]);
        let d = b.digest();
        peer(&mut r2, 0, pre_prepare(0, k, b));
        for from in [1, 3] {
            peer(&mut r2, from, PeerMessage::Prepare(vote(0, k, d)));
        }
        for from in [1, 3] {
            peer(&mut r2, from, PeerMessage::Commit(vote(0, k, d)));
        }
        assert_eq!(r2.delivered(), SeqNo(k));
    }
    assert_eq!(suspected_after, Some(u64::from(palisade_core::replica::MAX_CATCH_UP_RESTARTS)));
}

fn view_change_from(who: u32, new_view: u64) -> Signed<ViewChangeBody> {
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

#[test]
fn f_plus_1_view_changes_for_higher_views_make_a_replica_join_and_f_do_not() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    peer(&mut r1, 2, PeerMessage::ViewChange(view_change_from(2, 7)));
    assert!(r1.is_normal(), "one replica alone must not move anyone");
    peer(&mut r1, 3, PeerMessage::ViewChange(view_change_from(3, 5)));
    assert!(!r1.is_normal());
    assert_eq!(r1.view(), ViewNo(5), "join the lowest of the f+1 highest requests");
}

#[test]
fn a_view_change_with_a_forged_signature_or_relayed_by_another_replica_is_refused() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let mut forged = view_change_from(2, 3);
    forged.body.prepared.clear();
    forged.signature = Signature(Bytes::from_static(b"forged"));
    peer(&mut r1, 2, PeerMessage::ViewChange(forged));
    peer(&mut r1, 2, PeerMessage::ViewChange(view_change_from(3, 3)));
    peer(&mut r1, 3, PeerMessage::ViewChange(view_change_from(2, 3)));
    assert!(r1.is_normal());
}

#[test]
fn the_new_primary_re_proposes_what_committed_and_the_cluster_carries_on() {
    let cfg = config(Mode::Bft, 4);
    let mut c = Cluster::new(&cfg);
    for i in 1..=3 {
        c.submit(0, request(1, i));
    }
    c.tick(1);
    let before = c.delivered[1].clone();
    assert!(!before.is_empty());
    // The primary dies; a client's request reaches the backups, times out.
    c.down[0] = true;
    for r in 1..4 {
        c.input(r, Input::Request(request(2, 1)));
    }
    c.run();
    c.tick(1_100);
    c.tick(10);
    assert!(c.replicas[1..].iter().all(|r| r.is_normal() && r.view() == ViewNo(1)));
    // Everything delivered before is still the prefix, and the new request made it.
    for r in 1..4 {
        assert_eq!(&c.delivered[r][..before.len()], &before[..]);
        assert!(c.delivered[r].len() > before.len(), "replica {r} delivered nothing in view 1");
        assert_eq!(c.delivered[r], c.delivered[1]);
    }
}

#[test]
fn a_new_view_whose_choices_differ_from_the_recomputed_rule_is_rejected() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    let vcs: Vec<_> = (1..4).map(|i| view_change_from(i, 1)).collect();
    let make = |chosen: Vec<(SeqNo, Digest)>| {
        let body = NewViewBody { view: ViewNo(1), replica: ReplicaId(1), view_changes: vcs.clone(), chosen };
        PeerMessage::NewView(Arc::new(crypto::sign(&TestCrypto(ReplicaId(1)), Domain::NewView, body)))
    };
    // Nothing was prepared anywhere, so the only valid NEW-VIEW chooses nothing.
    peer(&mut r2, 1, make(vec![(SeqNo(1), Digest([5; 32]))]));
    assert!(r2.view() == ViewNo(0) && r2.is_normal());
    assert_eq!(r2.metrics().dropped.get("new-view whose proof does not hold"), Some(&1));
    // Too few view-changes is refused too.
    let short = NewViewBody { view: ViewNo(1), replica: ReplicaId(1), view_changes: vcs[..2].to_vec(), chosen: vec![] };
    peer(&mut r2, 1, PeerMessage::NewView(Arc::new(crypto::sign(&TestCrypto(ReplicaId(1)), Domain::NewView, short))));
    assert_eq!(r2.view(), ViewNo(0));
    // The honest one is accepted, even relayed by another replica.
    peer(&mut r2, 3, make(vec![]));
    assert!(r2.view() == ViewNo(1) && r2.is_normal());
}

// ----- state transfer and recovery ---------------------------------------------------

#[test]
fn state_transfer_accepts_only_the_snapshot_whose_digest_is_certified() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let snapshot = Bytes::from_static(b"the state at 4");
    let state = Digest::of(&snapshot);
    for who in [0, 2, 3] {
        let vote = crypto::sign(
            &TestCrypto(ReplicaId(who)),
            Domain::Checkpoint,
            CheckpointBody { seq: SeqNo(4), state, replica: ReplicaId(who) },
        );
        peer(&mut r1, who, PeerMessage::Checkpoint(vote));
    }
    assert!(r1.transferring());
    let poisoned = peer(&mut r1, 0, PeerMessage::StateReply { seq: SeqNo(4), snapshot: Bytes::from_static(b"lies") });
    assert!(!poisoned.iter().any(|a| matches!(a, Action::InstallSnapshot { .. })));
    assert!(
        poisoned.iter().any(|a| matches!(a, Action::Send { msg: PeerMessage::StateRequest { .. }, .. })),
        "asks the next peer at once"
    );
    let out = peer(&mut r1, 2, PeerMessage::StateReply { seq: SeqNo(4), snapshot: snapshot.clone() });
    assert!(out.iter().any(|a| matches!(a, Action::InstallSnapshot { seq: SeqNo(4), snapshot: s } if *s == snapshot)));
    assert!(!r1.transferring());
    assert_eq!(r1.delivered(), SeqNo(4));
}

#[test]
fn a_recovered_replica_never_prepares_a_different_batch_in_the_same_view() {
    let cfg = config(Mode::Bft, 4);
    // A backup accepts a batch at (view 0, seq 1), crashes, and is rebuilt
    // from what it persisted.
    let mut persisted = Vec::new();
    let mut fresh = Replica::new(cfg.clone(), ReplicaId(1), TestCrypto(ReplicaId(1)), GENESIS);
    fresh.step(Input::Tick { now_ms: 1 });
    fresh.take_actions();
    fresh.step(Input::Peer { from: ReplicaId(0), msg: pre_prepare(0, 1, batch(vec![request(1, 1)])) });
    for a in fresh.take_actions() {
        if let Action::Persist(r) = a {
            persisted.push(r);
        }
    }
    assert!(!persisted.is_empty());
    let mut recovered =
        Replica::recover(cfg.clone(), ReplicaId(1), TestCrypto(ReplicaId(1)), GENESIS, persisted, SeqNo(0), GENESIS);
    recovered.take_actions();
    let out = peer(&mut recovered, 0, pre_prepare(0, 1, batch(vec![request(1, 2)])));
    assert!(broadcasts(&out).is_empty(), "a different batch at (0, 1) after the crash must be refused");
}

#[test]
fn a_replica_behind_the_stable_checkpoint_learns_the_proof_from_status() {
    let cfg = config(Mode::Bft, 4);
    let mut c = Cluster::new(&cfg);
    for i in 1..=5 {
        c.submit(0, request(1, i));
        c.tick(1);
    }
    assert_eq!(c.replicas[0].stable_checkpoint().seq, SeqNo(4));
    let mut laggard = replica(3, &cfg);
    c.replicas[0].step(Input::Peer {
        from: ReplicaId(3),
        msg: PeerMessage::Status(Status { view: ViewNo(0), normal: true, delivered: SeqNo(0), stable: SeqNo(0) }),
    });
    let proof: Vec<PeerMessage> = c.replicas[0]
        .take_actions()
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { to: ReplicaId(3), msg: m @ PeerMessage::Checkpoint(_) } => Some(m),
            _ => None,
        })
        .collect();
    assert!(proof.len() >= 3);
    for m in proof {
        peer(&mut laggard, 0, m);
    }
    assert_eq!(laggard.stable_checkpoint().seq, SeqNo(4));
    assert!(laggard.transferring());
}

// ----- read-only requests ---------------------------------------------------------

#[test]
fn a_read_waits_until_everything_this_replica_prepared_is_delivered() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let d = prepared(&mut r1, 1, batch(vec![request(1, 1)]));
    let mut read = request(2, 1);
    read.read_only = true;
    r1.step(Input::Request(read));
    assert!(!r1.take_actions().iter().any(|a| matches!(a, Action::ExecuteReadOnly(_))));
    peer(&mut r1, 0, PeerMessage::Commit(vote(0, 1, d)));
    let out = peer(&mut r1, 2, PeerMessage::Commit(vote(0, 1, d)));
    let deliver = out.iter().position(|a| matches!(a, Action::Deliver { .. })).unwrap();
    let read_at = out.iter().position(|a| matches!(a, Action::ExecuteReadOnly(_))).unwrap();
    assert!(deliver < read_at);
}
