//! View changes that must always be able to finish: the vouchers the
//! decision rule needs are never lost, and timeouts grow until the network
//! is fast enough for them.

mod common;

use common::*;
use palisade_core::{Action, Digest, Input, Mode, PeerMessage, SeqNo, ViewNo};

fn proposed_digest(actions: &[Action], seq: u64) -> Option<Digest> {
    actions.iter().find_map(|a| match a {
        Action::Broadcast(PeerMessage::PrePrepare(pp)) if pp.seq == SeqNo(seq) => Some(pp.batch.digest()),
        _ => None,
    })
}

#[test]
fn a_replica_keeps_vouching_for_what_it_pre_prepared_however_many_views_pass() {
    let cfg = config(Mode::Bft, 4);
    // As primary of view 0, replica 0 proposes d at seq 1; nobody else hears of it.
    let mut r0 = replica(0, &cfg);
    r0.step(Input::Request(request(1, 1)));
    let d = proposed_digest(&r0.take_actions(), 1).expect("the idle primary proposes at once");
    // Six views pass whose NEW-VIEWs re-propose nothing, and each new primary
    // offers a fresh batch at seq 1.
    for w in [1u64, 2, 3, 5, 6, 7] {
        let vcs = (1..4).map(|r| view_change_with(r, w, &[], &[])).collect();
        peer(&mut r0, (w % 4) as u32, new_view(w, 4, vcs, vec![]));
        assert!(r0.is_normal() && r0.view() == ViewNo(w));
        peer(&mut r0, (w % 4) as u32, pre_prepare(w, 1, batch(vec![request(2, w)])));
    }
    // Its next VIEW-CHANGE still says it pre-prepared d at seq 1 in view 0:
    // had it dropped that, a later view change could need it as a voucher
    // and never find f+1.
    let mut out = peer(&mut r0, 2, PeerMessage::ViewChange(view_change_from(2, 9)));
    out.extend(peer(&mut r0, 3, PeerMessage::ViewChange(view_change_from(3, 9))));
    let vc = out
        .iter()
        .find_map(|a| match a {
            Action::Broadcast(PeerMessage::ViewChange(vc)) => Some(vc.clone()),
            _ => None,
        })
        .expect("it joins view 9");
    assert!(
        vc.body.preprepared.iter().any(|e| e.seq == SeqNo(1) && e.digest == d),
        "the voucher for d at seq 1 was evicted: {:?}",
        vc.body.preprepared
    );
}

#[test]
fn the_request_timeout_doubles_until_a_request_executes_and_then_resets() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    r2.step(Input::Tick { now_ms: 1_002 });
    assert_eq!(r2.view(), ViewNo(1), "the first timeout is request_timeout_ms");
    let vcs = (1..4).map(|r| view_change_from(r, 1)).collect();
    peer(&mut r2, 1, new_view(1, 4, vcs, vec![]));
    assert!(r2.is_normal());
    // Entering view 1 re-timed the request from 1_002. It still has not
    // executed, so the next timeout is twice as long (PBFT 4.5.2).
    r2.step(Input::Tick { now_ms: 1_002 + 1_001 });
    assert_eq!(r2.view(), ViewNo(1), "the timeout did not double after a view change that executed nothing");
    r2.step(Input::Tick { now_ms: 1_002 + 2_001 });
    assert_eq!(r2.view(), ViewNo(2));
    // Replica 2 is the primary of view 2: with the VIEW-CHANGEs of 0 and 3
    // it starts the view and proposes the pending request, which commits.
    let mut out = peer(&mut r2, 0, PeerMessage::ViewChange(view_change_from(0, 2)));
    out.extend(peer(&mut r2, 3, PeerMessage::ViewChange(view_change_from(3, 2))));
    assert!(r2.is_normal() && r2.is_primary());
    let proposed = proposed_digest(&out, 1).expect("the new primary proposes the pending request");
    for from in [0, 3] {
        peer(&mut r2, from, PeerMessage::Prepare(vote(2, 1, proposed)));
    }
    for from in [0, 3] {
        peer(&mut r2, from, PeerMessage::Commit(vote(2, 1, proposed)));
    }
    assert_eq!(r2.delivered(), SeqNo(1));
    // A request executed: the next one that nobody answers is suspected
    // after one base timeout.
    let t = 3_100;
    r2.step(Input::Tick { now_ms: t });
    r2.step(Input::Request(request(1, 2)));
    r2.step(Input::Tick { now_ms: t + 1_001 });
    assert_eq!(r2.view(), ViewNo(3), "after a request executed, the timeout is back to request_timeout_ms");
}

#[test]
fn a_re_proposal_gets_this_replicas_vote_only_once_it_holds_the_batch() {
    // In CFT one replica's word is enough to re-propose a batch; if that
    // replica then lost its disk, nobody could ever execute the batch. A
    // replica that never votes for what it cannot produce lets the next
    // view change fill the gap with null instead.
    let cfg = config(Mode::Bft, 4);
    let b = batch(vec![request(1, 1)]);
    let d = b.digest();
    let vcs = vec![
        view_change_with(0, 1, &[], &[]),
        view_change_with(1, 1, &[(1, 0, d)], &[(1, d, 0)]),
        view_change_with(3, 1, &[(1, 0, d)], &[(1, d, 0)]),
    ];
    let mut r2 = replica(2, &cfg);
    let out = peer(&mut r2, 1, new_view(1, 4, vcs, vec![(SeqNo(1), d)]));
    assert!(r2.is_normal() && r2.view() == ViewNo(1));
    assert!(!votes_for(&out, d), "voted for a batch it does not hold");
    assert!(out.iter().any(|a| matches!(a, Action::Broadcast(PeerMessage::BatchRequest { .. }))));
    let out = peer(&mut r2, 3, PeerMessage::BatchReply { seq: SeqNo(1), batch: b });
    assert!(votes_for(&out, d), "once it holds the batch it votes");
}
