//! What a peer's question may cost: answers are verified first and rate
//! limited per peer, so one Byzantine replica cannot fill another's uplink.

use bytes::Bytes;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{CheckpointBody, Signature, StateAnswer, StateQuery, Status};
use palisade_core::replica::Discard;
use palisade_core::{Action, Input, Mode, PeerMessage, ReplicaId, SeqNo, ViewNo};
use palisade_testkit::cluster::{Log, MemCluster};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

fn sends_to(actions: &[Action], to: u32, what: fn(&PeerMessage) -> bool) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Send { to: t, msg } if *t == ReplicaId(to) && what(msg))).count()
}

/// Replica 2 in view 1, normal, holding the NEW-VIEW.
fn in_view_1() -> palisade_core::Replica<TestCrypto> {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    let vcs = [0u32, 1, 3].iter().map(|&r| view_change_from(r, 1)).collect();
    peer(&mut r2, 1, new_view(1, 4, vcs, vec![]));
    assert!(r2.is_normal() && r2.view() == ViewNo(1));
    r2
}

#[test]
fn a_flood_of_stale_status_gets_the_new_view_once_per_interval() {
    let mut r2 = in_view_1();
    let mut out = Vec::new();
    for _ in 0..50 {
        let st = Status { view: ViewNo(0), normal: true, delivered: SeqNo(0), stable: SeqNo(0) };
        out.extend(peer(&mut r2, 3, PeerMessage::Status(st)));
    }
    assert_eq!(sends_to(&out, 3, |m| matches!(m, PeerMessage::NewView(_))), 1);
}

#[test]
fn a_stale_view_change_is_answered_only_once_its_signature_checks() {
    let mut r2 = in_view_1();
    let mut forged = view_change_from(3, 1);
    forged.signature = Signature(Bytes::from_static(b"forged"));
    let out = peer(&mut r2, 3, PeerMessage::ViewChange(forged));
    assert_eq!(sends_to(&out, 3, |m| matches!(m, PeerMessage::NewView(_))), 0);
    let out = peer(&mut r2, 3, PeerMessage::ViewChange(view_change_from(3, 1)));
    assert_eq!(sends_to(&out, 3, |m| matches!(m, PeerMessage::NewView(_))), 1);
}

#[test]
fn a_flood_of_batch_requests_gets_a_bounded_number_of_batches() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let b = batch(vec![request(1, 1)]);
    peer(&mut r1, 0, pre_prepare(0, 1, b.clone()));
    let mut out = Vec::new();
    for _ in 0..100 {
        out.extend(peer(&mut r1, 3, PeerMessage::BatchRequest { seq: SeqNo(1), digest: b.digest() }));
    }
    let replies = sends_to(&out, 3, |m| matches!(m, PeerMessage::BatchReply { .. }));
    assert!((1..=4).contains(&replies), "{replies} batches for 100 identical questions");
}

/// Replica 1 with a stable checkpoint at 4, and the snapshot executed.
fn with_stable_checkpoint() -> palisade_core::Replica<TestCrypto> {
    let cfg = config(Mode::Bft, 4);
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    for i in 1..=5 {
        c.submit(0, request(1, i));
        c.tick(1);
    }
    assert_eq!(c.core(1).stable_checkpoint().seq, SeqNo(4));
    c.take_core(1)
}

#[test]
fn a_flood_of_state_fetches_is_served_at_the_allowed_rate_only() {
    let mut r1 = with_stable_checkpoint();
    let window = config(Mode::Bft, 4).state_fetch_window;
    let mut served = 0;
    for _ in 0..100 {
        let query = StateQuery::Manifest { from: 0 };
        r1.step(Input::Peer { from: ReplicaId(3), msg: PeerMessage::StateFetch { seq: SeqNo(4), query } });
        served += r1.take_actions().iter().filter(|a| matches!(a, Action::ServeState { .. })).count();
    }
    assert_eq!(served, 4 * window, "answers per retransmission period, per peer");
    assert_eq!(r1.metrics().dropped[&Discard::OverAnswerRate], 100 - 4 * window as u64);
}

#[test]
fn state_data_nobody_asked_for_is_dropped_and_costs_nothing() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let bogus = PeerMessage::StateData { seq: SeqNo(4), answer: StateAnswer::Unavailable };
    assert!(peer(&mut r1, 2, bogus.clone()).is_empty());
    // Fetching checkpoint 4: data about another checkpoint is dropped too.
    let state = palisade_core::Digest::of(b"the state at 4");
    for who in [0, 2, 3] {
        let body =
            CheckpointBody { seq: SeqNo(4), state, config: palisade_core::Digest::default(), replica: ReplicaId(who) };
        let vote = crypto::sign(&TestCrypto(ReplicaId(who)), Domain::Checkpoint, body);
        peer(&mut r1, who, PeerMessage::Checkpoint(vote));
    }
    assert!(r1.transferring());
    let other = PeerMessage::StateData { seq: SeqNo(8), answer: StateAnswer::Unavailable };
    for _ in 0..10 {
        assert!(peer(&mut r1, 2, other.clone()).is_empty());
    }
    assert_eq!(r1.metrics().dropped[&Discard::StateUnasked], 11);
    let out = peer(&mut r1, 2, bogus);
    assert!(
        matches!(&out[..], [Action::StateData { seq: SeqNo(4), .. }]),
        "data about the checkpoint being fetched goes to the fetcher, which checks it: {out:?}"
    );
}
