//! Tentative execution (PBFT 5.1): a batch prepared here, with every
//! earlier one delivered, executes before it commits; what commits decides
//! whether that execution stands (`Confirm`) or is undone (`RollBack`).

use palisade_core::message::null_digest;
use palisade_core::{Action, Mode, PeerMessage, Replica, SeqNo, ViewNo};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

/// The test configuration with tentative execution on (it is off by default).
fn on() -> palisade_core::Config {
    let mut c = config(Mode::Bft, 4);
    c.tentative_execution = true;
    c
}

fn tentative(actions: &[Action]) -> Vec<SeqNo> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ExecuteTentative { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn confirmed(actions: &[Action]) -> Vec<SeqNo> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Confirm { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn commit_all(r: &mut Replica<TestCrypto>, view: u64, seq: u64, d: palisade_core::Digest, from: &[u32]) -> Vec<Action> {
    let mut out = Vec::new();
    for &f in from {
        out.extend(peer(r, f, PeerMessage::Commit(vote(view, seq, d))));
    }
    out
}

#[test]
fn a_prepared_batch_executes_tentatively_one_at_a_time_and_is_confirmed_when_it_commits() {
    let cfg = on();
    let mut r1 = replica(1, &cfg);
    let b1 = batch(vec![request(1, 1)]);
    let d1 = b1.digest();
    peer(&mut r1, 0, pre_prepare(0, 1, b1));
    let out = peer(&mut r1, 3, PeerMessage::Prepare(vote(0, 1, d1)));
    assert_eq!(tentative(&out), vec![SeqNo(1)], "prepared with nothing before it: executes at once");
    // A second prepared batch waits: its prefix has not committed.
    let b2 = batch(vec![request(1, 2)]);
    let d2 = b2.digest();
    peer(&mut r1, 0, pre_prepare(0, 2, b2));
    let out = peer(&mut r1, 3, PeerMessage::Prepare(vote(0, 2, d2)));
    assert!(tentative(&out).is_empty(), "one tentative execution at a time");
    // Seq 1 commits as executed: confirmed, not executed again, and seq 2
    // follows tentatively in the same step.
    let out = commit_all(&mut r1, 0, 1, d1, &[0, 2]);
    assert_eq!(confirmed(&out), vec![SeqNo(1)]);
    assert!(delivered(&out).iter().all(|s| *s == SeqNo(1)));
    assert!(!out.iter().any(|a| matches!(a, Action::Deliver { .. } | Action::RollBack { .. })));
    assert_eq!(tentative(&out), vec![SeqNo(2)]);
    let c = out.iter().position(|a| matches!(a, Action::Confirm { .. })).unwrap();
    let t = out.iter().position(|a| matches!(a, Action::ExecuteTentative { .. })).unwrap();
    assert!(c < t, "the prefix is delivered before the next tentative execution");
    assert_eq!(r1.delivered(), SeqNo(1));
    assert_eq!(r1.metrics().tentative_batches, 2);
}

#[test]
fn a_checkpoint_never_executes_tentatively_and_neither_does_anything_with_it_off() {
    let cfg = on();
    let mut r1 = replica(1, &cfg);
    // Deliver 1..=3 through the normal path, then prepare 4 (K = 4).
    for seq in 1..=4u64 {
        let b = batch(vec![request(1, seq)]);
        let d = b.digest();
        peer(&mut r1, 0, pre_prepare(0, seq, b));
        let out = peer(&mut r1, 3, PeerMessage::Prepare(vote(0, seq, d)));
        if seq == 4 {
            assert!(tentative(&out).is_empty(), "the state at a checkpoint must be committed");
        }
        let out = commit_all(&mut r1, 0, seq, d, &[0, 2]);
        assert_eq!(delivered(&out), vec![SeqNo(seq)]);
    }
    let mut off = cfg.clone();
    off.tentative_execution = false;
    let mut r2 = replica(2, &off);
    let b = batch(vec![request(1, 1)]);
    let d = b.digest();
    peer(&mut r2, 0, pre_prepare(0, 1, b));
    let out = peer(&mut r2, 3, PeerMessage::Prepare(vote(0, 1, d)));
    assert!(tentative(&out).is_empty());
    let out = commit_all(&mut r2, 0, 1, d, &[0, 1]);
    assert!(out.iter().any(|a| matches!(a, Action::Deliver { seq: SeqNo(1), .. })));
}

/// Replica 2 prepares `b` at seq 1 in view 0 and executes it tentatively;
/// then view 1 starts with `chosen` from the view changes `vcs`.
fn tentative_then_view_change(
    vcs: Vec<palisade_core::message::Signed<palisade_core::message::ViewChangeBody>>,
    chosen: Vec<(SeqNo, palisade_core::Digest)>,
) -> (Replica<TestCrypto>, Vec<Action>) {
    let cfg = on();
    let mut r2 = replica(2, &cfg);
    let b = batch(vec![request(1, 1)]);
    let d = b.digest();
    peer(&mut r2, 0, pre_prepare(0, 1, b));
    let out = peer(&mut r2, 3, PeerMessage::Prepare(vote(0, 1, d)));
    assert_eq!(tentative(&out), vec![SeqNo(1)]);
    let out = peer(&mut r2, 1, new_view(1, 4, vcs, chosen));
    assert_eq!(r2.view(), ViewNo(1));
    (r2, out)
}

#[test]
fn a_view_change_that_commits_something_else_rolls_the_tentative_execution_back_first() {
    // Replicas 0, 1 and 3 claim nothing prepared at seq 1, and replica 3
    // prepared `e` at seq 2: the NEW-VIEW fills seq 1 with null. Replica
    // 2's tentative execution there never committed, and must be undone.
    let e = batch(vec![request(2, 1)]).digest();
    let vcs = vec![
        view_change_with(0, 1, &[], &[(2, e, 0)]),
        view_change_with(1, 1, &[], &[]),
        view_change_with(3, 1, &[(2, 0, e)], &[(2, e, 0)]),
    ];
    let (mut r2, out) = tentative_then_view_change(vcs, vec![(SeqNo(1), null_digest()), (SeqNo(2), e)]);
    assert!(tentative(&out).is_empty());
    let n = null_digest();
    peer(&mut r2, 0, PeerMessage::Prepare(vote(1, 1, n)));
    let mut out = peer(&mut r2, 3, PeerMessage::Prepare(vote(1, 1, n)));
    out.extend(commit_all(&mut r2, 1, 1, n, &[0, 1, 3]));
    let back = out.iter().position(|a| matches!(a, Action::RollBack { seq: SeqNo(1), .. }));
    let deliver = out.iter().position(|a| matches!(a, Action::Deliver { seq: SeqNo(1), .. }));
    assert!(back.is_some() && back < deliver, "undone before what committed executes: {out:?}");
    assert!(confirmed(&out).is_empty());
    let Some(Action::RollBack { replay, .. }) = back.map(|i| &out[i]) else { unreachable!() };
    assert!(replay.is_empty(), "nothing was delivered above the genesis checkpoint");
    assert_eq!(r2.metrics().rollbacks, 1);
    assert_eq!(r2.delivered(), SeqNo(1));
}

#[test]
fn a_view_change_that_re_proposes_the_same_batch_confirms_the_tentative_execution() {
    // Replica 3 prepared the same batch at seq 1: the NEW-VIEW re-proposes
    // it, and replica 2's tentative execution stands.
    let d = batch(vec![request(1, 1)]).digest();
    let vcs = vec![
        view_change_with(0, 1, &[], &[(1, d, 0)]),
        view_change_with(1, 1, &[], &[]),
        view_change_with(3, 1, &[(1, 0, d)], &[(1, d, 0)]),
    ];
    let (mut r2, _) = tentative_then_view_change(vcs, vec![(SeqNo(1), d)]);
    peer(&mut r2, 0, PeerMessage::Prepare(vote(1, 1, d)));
    let mut out = peer(&mut r2, 3, PeerMessage::Prepare(vote(1, 1, d)));
    assert!(tentative(&out).is_empty(), "already executed: not again");
    out.extend(commit_all(&mut r2, 1, 1, d, &[0, 1, 3]));
    assert_eq!(confirmed(&out), vec![SeqNo(1)]);
    assert!(!out.iter().any(|a| matches!(a, Action::RollBack { .. } | Action::Deliver { .. })));
    assert_eq!(r2.metrics().rollbacks, 0);
}

#[test]
fn a_read_never_sees_a_tentative_execution_it_waits_for_the_commit() {
    let cfg = on();
    let mut r1 = replica(1, &cfg);
    let b = batch(vec![request(1, 1)]);
    let d = b.digest();
    peer(&mut r1, 0, pre_prepare(0, 1, b));
    assert_eq!(tentative(&peer(&mut r1, 3, PeerMessage::Prepare(vote(0, 1, d)))), vec![SeqNo(1)]);
    let mut read = request(2, 1);
    read.read_only = true;
    r1.step(palisade_core::Input::Request(read));
    assert!(!r1.take_actions().iter().any(|a| matches!(a, Action::ExecuteReadOnly { .. })), "held");
    // Seq 2 prepares meanwhile: it executes tentatively once 1 commits,
    // and the read must be answered in between, from committed state.
    let b2 = batch(vec![request(1, 2)]);
    let d2 = b2.digest();
    peer(&mut r1, 0, pre_prepare(0, 2, b2));
    peer(&mut r1, 3, PeerMessage::Prepare(vote(0, 2, d2)));
    let out = commit_all(&mut r1, 0, 1, d, &[0, 2]);
    let c = out.iter().position(|a| matches!(a, Action::Confirm { .. })).unwrap();
    let read_at = out.iter().position(|a| matches!(a, Action::ExecuteReadOnly { .. })).expect("answered now");
    let next = out.iter().position(|a| matches!(a, Action::ExecuteTentative { .. })).expect("seq 2 executes");
    assert!(c < read_at && read_at < next, "{out:?}");
}

#[test]
fn an_epoch_end_learned_late_forgets_a_tentative_execution_past_it() {
    let cfg = on();
    let mut r1 = replica(1, &cfg);
    for seq in 1..=5u64 {
        let b = batch(vec![request(1, seq)]);
        let d = b.digest();
        peer(&mut r1, 0, pre_prepare(0, seq, b));
        peer(&mut r1, 3, PeerMessage::Prepare(vote(0, seq, d)));
        if seq < 5 {
            commit_all(&mut r1, 0, seq, d, &[0, 2]);
        }
    }
    assert_eq!(r1.tentative(), Some(SeqNo(5)));
    r1.step(palisade_core::Input::EpochEnds { last: SeqNo(4) });
    assert_eq!(r1.tentative(), None, "the host took seq 5 for void: nothing to undo or confirm");
}
