//! State transfer that finishes: peers keep serving the checkpoint being
//! fetched, a laggard that learns of a newer one keeps the transfer it has
//! under way, and a replica that is transferring is not suspicious.

use bytes::Bytes;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{CheckpointBody, Status};
use palisade_core::{Action, Digest, Input, Mode, PeerMessage, ReplicaId, SeqNo, ViewNo};
use palisade_testkit::cluster::{Log, MemCluster};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

fn certify(r: &mut palisade_core::Replica<TestCrypto>, seq: u64, state: Digest) -> Vec<Action> {
    let mut out = Vec::new();
    for who in [0u32, 2, 3] {
        let body = CheckpointBody { seq: SeqNo(seq), state, replica: ReplicaId(who) };
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
    r1.step(Input::Peer { from: ReplicaId(3), msg: PeerMessage::StateRequest { seq: SeqNo(4) } });
    let out = r1.take_actions();
    assert!(
        out.iter().any(|a| matches!(a, Action::ServeSnapshot { seq: SeqNo(4), .. })),
        "a laggard fetching checkpoint 4 is abandoned as soon as 8 is stable"
    );
}

#[test]
fn a_laggard_that_learns_a_newer_checkpoint_still_takes_the_snapshot_it_asked_for() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let old = Bytes::from_static(b"the state at 4");
    certify(&mut r1, 4, Digest::of(&old));
    assert!(r1.transferring());
    certify(&mut r1, 8, Digest::of(b"the state at 8"));
    let out = peer(&mut r1, 0, PeerMessage::StateReply { seq: SeqNo(4), snapshot: old.clone() });
    assert!(
        out.iter().any(|a| matches!(a, Action::InstallSnapshot { seq: SeqNo(4), .. })),
        "the reply for the checkpoint it was fetching was dropped"
    );
    assert_eq!(r1.delivered(), SeqNo(4));
    assert!(r1.transferring(), "it goes on to checkpoint 8");
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
