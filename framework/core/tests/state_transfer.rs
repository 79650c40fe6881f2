//! State transfer that finishes: peers keep serving the checkpoint being
//! fetched, a laggard that learns of a newer one keeps what it fetched of
//! the older, and a replica that is transferring is not suspicious. The
//! fetching itself (pieces checked, several peers) is the execution
//! host's: see palisade-host's tests and the simulator.

use palisade_core::crypto::{self, Domain};
use palisade_core::message::{CheckpointBody, StateQuery, Status};
use palisade_core::{Action, Digest, Input, Mode, PeerMessage, ReplicaId, SeqNo, ViewNo};
use palisade_testkit::cluster::{Log, MemCluster};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

fn certify(r: &mut palisade_core::Replica<TestCrypto>, seq: u64, state: Digest) -> Vec<Action> {
    let mut out = Vec::new();
    for who in [0u32, 2, 3] {
        let body = CheckpointBody {
            seq: SeqNo(seq),
            state,
            config: palisade_core::Digest::default(),
            replica: ReplicaId(who),
        };
        let vote = crypto::sign(&TestCrypto(ReplicaId(who)), Domain::Checkpoint, body);
        out.extend(peer(r, who, PeerMessage::Checkpoint(vote)));
    }
    out
}

#[test]
fn a_replica_keeps_serving_the_previous_stable_checkpoint() {
    let cfg = config(Mode::Bft, 4);
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    for i in 1..=9 {
        c.submit(0, request(1, i));
        c.tick(1);
    }
    assert_eq!(c.core(1).stable_checkpoint().seq, SeqNo(8));
    let mut r1 = c.take_core(1);
    let query = StateQuery::Manifest { from: 0 };
    r1.step(Input::Peer { from: ReplicaId(3), msg: PeerMessage::StateFetch { seq: SeqNo(4), query } });
    let out = r1.take_actions();
    assert!(
        out.iter().any(|a| matches!(a, Action::ServeState { seq: SeqNo(4), .. })),
        "a laggard fetching checkpoint 4 is abandoned as soon as 8 is stable"
    );
}

#[test]
fn a_laggard_that_learns_a_newer_checkpoint_keeps_the_older_state_it_fetched_and_goes_on() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let (at4, at8) = (Digest::of(b"the state at 4"), Digest::of(b"the state at 8"));
    let out = certify(&mut r1, 4, at4);
    assert!(out.iter().any(|a| matches!(a, Action::FetchState { seq: SeqNo(4), state, .. } if *state == at4)));
    let out = certify(&mut r1, 8, at8);
    assert!(out.iter().any(|a| matches!(a, Action::FetchState { seq: SeqNo(8), .. })), "the target moves on");
    // The fetch of 4 finished before the fetcher heard of 8.
    r1.step(Input::StateFetched { seq: SeqNo(4), state: at4 });
    assert_eq!(r1.delivered(), SeqNo(4), "the state fetched for checkpoint 4 was dropped");
    assert!(r1.transferring(), "it goes on to checkpoint 8");
    r1.step(Input::StateFetched { seq: SeqNo(8), state: at8 });
    assert_eq!(r1.delivered(), SeqNo(8));
    assert!(!r1.transferring());
}

#[test]
fn a_transfer_asks_the_fetcher_again_at_every_timeout_and_delivers_nothing_until_it_is_in() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let at4 = Digest::of(b"the state at 4");
    certify(&mut r1, 4, at4);
    let mut nudges = 0;
    for k in 1..=3u64 {
        r1.step(tick(1 + k * (cfg.state_transfer_timeout_ms + 1)));
        nudges += r1.take_actions().iter().filter(|a| matches!(a, Action::FetchState { seq: SeqNo(4), .. })).count();
    }
    assert_eq!(nudges, 3);
    // A batch decided meanwhile above the checkpoint is not delivered yet.
    let b = batch(vec![request(9, 1)]);
    let d = b.digest();
    peer(&mut r1, 0, pre_prepare(0, 5, b));
    for from in [0u32, 2, 3] {
        if from != 0 {
            peer(&mut r1, from, PeerMessage::Prepare(vote(0, 5, d)));
        }
    }
    let mut out = Vec::new();
    for from in [0u32, 2, 3] {
        out.extend(peer(&mut r1, from, PeerMessage::Commit(vote(0, 5, d))));
    }
    assert!(delivered(&out).is_empty(), "delivered on top of a state it does not hold");
    r1.step(Input::StateFetched { seq: SeqNo(4), state: at4 });
    assert_eq!(delivered(&r1.take_actions()), vec![SeqNo(5)]);
}

#[test]
fn a_replica_that_is_transferring_state_does_not_suspect_the_primary() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    r1.step(Input::Request(request(1, 1)));
    for from in [0u32, 2] {
        let st = Status { view: ViewNo(0), normal: true, delivered: SeqNo(40), stable: SeqNo(32) };
        peer(&mut r1, from, PeerMessage::Status(st));
    }
    certify(&mut r1, 32, Digest::of(b"a big state"));
    assert!(r1.transferring());
    for k in 1..=10u64 {
        r1.step(tick(1 + k * 1_001));
    }
    assert_eq!(r1.view(), ViewNo(0), "a transfer slower than a few timeouts made it leave the view");
    assert!(r1.is_normal());
}
