//! What a replica says after a crash: at any point between the records one
//! step persists, and after a restart that lost every record.

use palisade_core::message::{null_digest, Status};
use palisade_core::{Action, Mode, PeerMessage, ReplicaId, SeqNo, ViewNo};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

/// seq 1 was prepared with `d` in view 0 by replicas 1 and 3; replica 0 says nothing.
fn new_view_re_proposing(d: palisade_core::Digest) -> PeerMessage {
    let vcs = vec![
        view_change_with(0, 1, &[], &[]),
        view_change_with(1, 1, &[(1, 0, d)], &[(1, d, 0)]),
        view_change_with(3, 1, &[(1, 0, d)], &[(1, d, 0)]),
    ];
    new_view(1, 4, vcs, vec![(SeqNo(1), d)])
}

#[test]
fn a_crash_anywhere_while_entering_a_new_view_keeps_the_re_proposals_of_that_view() {
    let cfg = config(Mode::Bft, 4);
    let d = batch(vec![request(1, 1)]).digest();
    let mut r2 = replica(2, &cfg);
    let records = persisted(&peer(&mut r2, 1, new_view_re_proposing(d)));
    assert!(r2.is_normal() && r2.view() == ViewNo(1));
    assert!(!records.is_empty());
    for k in 0..=records.len() {
        let mut back = recover(2, &cfg, records[..k].to_vec());
        let other = batch_in(1, vec![request(1, 2)]);
        let out = peer(&mut back, 1, pre_prepare(1, 1, other.clone()));
        assert!(
            !votes_for(&out, other.digest()),
            "after a crash that kept {k} of the {} records, a Byzantine primary of view 1 got a vote for another batch at seq 1",
            records.len()
        );
    }
}

#[test]
fn a_new_primary_persists_its_new_view_before_sending_it_and_sends_the_same_one_after_a_crash() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let mut out = peer(&mut r1, 0, PeerMessage::ViewChange(view_change_from(0, 1)));
    out.extend(peer(&mut r1, 3, PeerMessage::ViewChange(view_change_from(3, 1))));
    let sent_at = out
        .iter()
        .position(|a| matches!(a, Action::Broadcast(PeerMessage::NewView(_))))
        .expect("the new primary sends NEW-VIEW once it has a quorum");
    let Action::Broadcast(PeerMessage::NewView(sent)) = &out[sent_at] else { unreachable!() };
    // A crash right after the NEW-VIEW left: the recovered primary knows it
    // is in view 1 and repeats exactly what it sent.
    let mut back = recover(1, &cfg, persisted(&out[..sent_at]));
    assert!(back.is_normal() && back.view() == ViewNo(1), "the NEW-VIEW it sent was not durable before it left");
    let status = Status { view: ViewNo(0), normal: true, delivered: SeqNo(0), stable: SeqNo(0) };
    let again = peer(&mut back, 2, PeerMessage::Status(status));
    let resent = again.iter().find_map(|a| match a {
        Action::Send { to: ReplicaId(2), msg: PeerMessage::NewView(nv) } => Some(nv.clone()),
        _ => None,
    });
    assert_eq!(resent.as_deref(), Some(&**sent), "a recovered primary must repeat its NEW-VIEW, not make another");
}

#[test]
fn a_recovered_backup_counts_its_own_prepare_again() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let b = batch(vec![request(1, 1)]);
    let records = persisted(&peer(&mut r1, 0, pre_prepare(0, 1, b.clone())));
    let mut back = recover(1, &cfg, records);
    // Its own PREPARE plus replica 3's make 2f: prepared, so it commits.
    let out = peer(&mut back, 3, PeerMessage::Prepare(vote(0, 1, b.digest())));
    assert!(
        out.iter().any(|a| matches!(a, Action::Broadcast(PeerMessage::Commit(v)) if v.digest == b.digest())),
        "the recovered backup forgot its own PREPARE"
    );
}

#[test]
fn a_replica_restarted_without_its_records_casts_no_vote_it_may_contradict() {
    // Replica 1 prepared and committed something in view 0 before it lost
    // its records; replica 0 is Byzantine and replica 3 saw nothing. If
    // replica 1 voted again, the two could replace what replica 2 delivered.
    let cfg = config(Mode::Bft, 4);
    let mut r1 = restarted_without_records(1, &cfg, 7);
    let mut out = peer(&mut r1, 0, PeerMessage::ViewChange(view_change_from(0, 1)));
    out.extend(peer(&mut r1, 3, PeerMessage::ViewChange(view_change_from(3, 1))));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Broadcast(PeerMessage::ViewChange(_) | PeerMessage::NewView(_)))),
        "an amnesiac replica's empty VIEW-CHANGE lets a Byzantine one steer the rule to null"
    );
    let mut r1 = restarted_without_records(1, &cfg, 7);
    let out = peer(&mut r1, 0, pre_prepare(0, 1, batch(vec![request(1, 9)])));
    assert!(!votes_for(&out, batch(vec![request(1, 9)]).digest()), "it may have voted for another batch at (0, 1)");
}

#[test]
fn a_replica_never_votes_for_a_new_view_choice_that_contradicts_its_own_decision() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    let b = batch(vec![request(1, 1)]);
    let d = b.digest();
    peer(&mut r2, 0, pre_prepare(0, 1, b));
    for from in [1, 3] {
        peer(&mut r2, from, PeerMessage::Prepare(vote(0, 1, d)));
    }
    for from in [0, 1] {
        peer(&mut r2, from, PeerMessage::Commit(vote(0, 1, d)));
    }
    assert_eq!(r2.delivered(), SeqNo(1));
    // Replicas 0 (Byzantine) and 1 (amnesiac) claim nothing at seq 1, and
    // replica 3 prepared something at seq 2: a valid NEW-VIEW fills seq 1
    // with null. Beyond f faults; replica 2 must not follow it there.
    let e = batch(vec![request(2, 1)]).digest();
    let vcs = vec![
        view_change_with(0, 1, &[], &[(2, e, 0)]),
        view_change_with(1, 1, &[], &[]),
        view_change_with(3, 1, &[(2, 0, e)], &[(2, e, 0)]),
    ];
    let out = peer(&mut r2, 1, new_view(1, 4, vcs, vec![(SeqNo(1), null_digest()), (SeqNo(2), e)]));
    assert!(!votes_for(&out, null_digest()), "voted for null at a sequence number it delivered");
    assert!(r2.metrics().alarms > 0, "the contradiction is evidence of more than f faults");
}

fn certificate(seq: u64, state: palisade_core::Digest) -> palisade_core::message::CheckpointCert {
    use palisade_core::crypto::{self, Domain};
    use palisade_core::message::{CheckpointBody, CheckpointCert};
    let proof = [0u32, 2, 3]
        .iter()
        .map(|&who| {
            let body = CheckpointBody {
                seq: SeqNo(seq),
                state,
                config: palisade_core::Digest::default(),
                replica: ReplicaId(who),
            };
            crypto::sign(&TestCrypto(ReplicaId(who)), Domain::Checkpoint, body)
        })
        .collect();
    CheckpointCert { seq: SeqNo(seq), state, proof }
}

#[test]
fn a_replica_asked_for_a_state_it_has_not_reached_still_answers() {
    // Silence would leave the fetcher waiting on it forever; the host
    // answers that it does not keep that state, and the fetcher moves on.
    let cfg = config(Mode::Cft, 3);
    let mut r1 = restarted_without_records(1, &cfg, 7);
    let query = palisade_core::message::StateQuery::Manifest { from: 0 };
    let out = peer(&mut r1, 0, PeerMessage::StateFetch { seq: SeqNo(8), query: query.clone() });
    assert!(out.iter().any(|a| matches!(a, Action::ServeState { seq: SeqNo(8), .. })), "{out:?}");
}

#[test]
fn a_rejoining_replica_answers_no_read_until_it_has_rejoined() {
    // It forgot what it prepared, so its answer could complete a read
    // quorum without any replica that prepared an acknowledged write.
    let cfg = config(Mode::Cft, 3);
    let mut r1 = restarted_without_records(1, &cfg, 7);
    assert!(r1.rejoining());
    let mut read = request(2, 1);
    read.read_only = true;
    r1.step(palisade_core::Input::Request(read));
    let out = r1.take_actions();
    assert!(!out.iter().any(|a| matches!(a, Action::ExecuteReadOnly { .. })), "{out:?}");
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Dropped { reason: palisade_core::replica::DropReason::Rejoining, .. })));
}

#[test]
fn a_rejoining_replica_votes_again_once_its_stable_checkpoint_passes_its_peers_high_watermark() {
    let cfg = config(Mode::Bft, 4); // checkpoint every 4, window 8
    let mut r1 = restarted_without_records(1, &cfg, 7);
    assert!(r1.rejoining());
    let genesis = palisade_core::checkpoint::genesis(genesis_state());
    let reply =
        |nonce, delivered| PeerMessage::RejoinReply { nonce, delivered: SeqNo(delivered), checkpoint: genesis.clone() };
    // An answer meant for an earlier incarnation does not count, nor does a
    // checkpoint without its proof.
    peer(&mut r1, 0, reply(6, 3));
    let mut unproven = certificate(4, palisade_core::Digest([4; 32]));
    unproven.proof.truncate(1);
    peer(&mut r1, 0, PeerMessage::RejoinReply { nonce: 7, delivered: SeqNo(900), checkpoint: unproven });
    // n - q + f + 1 = 3 peers must answer; the highest plausible delivery
    // (a window above a proven checkpoint at most) plus a window is the mark.
    peer(&mut r1, 0, reply(7, 3));
    peer(&mut r1, 2, reply(7, 900));
    assert_eq!(r1.rejoin_mark(), None, "two answers cannot include the one that proves how far it voted");
    peer(&mut r1, 3, reply(7, 5));
    assert_eq!(r1.rejoin_mark(), Some(SeqNo(16)), "replica 2 can claim at most 0 + 8 delivered");
    // Below the mark it still casts no vote; at the mark it votes again.
    for seq in [4, 8, 12] {
        for m in [0u32, 2, 3] {
            let cert = certificate(seq, palisade_core::Digest([seq as u8; 32]));
            let vote = cert.proof.iter().find(|v| v.body.replica == ReplicaId(m)).unwrap().clone();
            peer(&mut r1, m, PeerMessage::Checkpoint(vote));
        }
    }
    assert_eq!(r1.stable_checkpoint().seq, SeqNo(12));
    assert!(r1.rejoining());
    let out = peer(&mut r1, 0, pre_prepare(0, 13, batch(vec![request(1, 13)])));
    assert!(!votes_for(&out, batch(vec![request(1, 13)]).digest()));
    let cert = certificate(16, palisade_core::Digest([16; 32]));
    for v in cert.proof {
        let from = v.body.replica.0;
        peer(&mut r1, from, PeerMessage::Checkpoint(v));
    }
    assert!(!r1.rejoining());
    assert_eq!(r1.metrics().rejoined, 1);
    let b = batch(vec![request(1, 17)]);
    let out = peer(&mut r1, 0, pre_prepare(0, 17, b.clone()));
    assert!(votes_for(&out, b.digest()), "past its mark it votes like any replica");
}
