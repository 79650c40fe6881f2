//! View changes that must always be able to finish: the vouchers the
//! decision rule needs are never lost, and timeouts grow until the network
//! is fast enough for them.

use palisade_core::{Action, Digest, Input, Mode, PeerMessage, SeqNo, ViewNo};
use palisade_testkit::fixtures::*;

fn proposed_digest(actions: &[Action], seq: u64) -> Option<Digest> {
    actions.iter().find_map(|a| match a {
        Action::Broadcast(PeerMessage::PrePrepare(pp)) if pp.seq == SeqNo(seq) => Some(pp.batch.digest()),
        _ => None,
    })
}

/// Replica `id` pre-prepares d at seq 1 in view 0 (proposed by replica 0),
/// then lives through five views whose Byzantine primary (replica 3)
/// leaves seq 1 out of its NEW-VIEW and offers a fresh batch there each
/// time. Returns d and the replica's VIEW-CHANGE for view 21.
fn churned(
    id: u32,
    cfg: &palisade_core::Config,
) -> (Digest, palisade_core::message::Signed<palisade_core::message::ViewChangeBody>) {
    let mut r = replica(id, cfg);
    let d = if id == 0 {
        r.step(Input::Request(request(1, 1)));
        proposed_digest(&r.take_actions(), 1).expect("the idle primary proposes at once")
    } else {
        let b = batch(vec![request(1, 1)]);
        peer(&mut r, 0, pre_prepare(0, 1, b.clone()));
        b.digest()
    };
    for w in [3u64, 7, 11, 15, 19] {
        let vcs = [0u32, 2, 3].iter().map(|&who| view_change_with(who, w, &[], &[])).collect();
        peer(&mut r, 3, new_view(w, 4, vcs, vec![]));
        assert!(r.is_normal() && r.view() == ViewNo(w));
        peer(&mut r, 3, pre_prepare(w, 1, batch(vec![request(2, w)])));
    }
    let others: Vec<u32> = (0..4).filter(|o| *o != id && *o != 3).collect();
    let mut out = peer(&mut r, 3, PeerMessage::ViewChange(view_change_from(3, 21)));
    out.extend(peer(&mut r, others[0], PeerMessage::ViewChange(view_change_from(others[0], 21))));
    let vc = out
        .iter()
        .find_map(|a| match a {
            Action::Broadcast(PeerMessage::ViewChange(vc)) => Some(vc.clone()),
            _ => None,
        })
        .expect("it joins view 21");
    (d, vc)
}

#[test]
fn a_replica_keeps_vouching_for_what_it_pre_prepared_however_many_views_pass() {
    let cfg = config(Mode::Bft, 4);
    let (d, vc) = churned(0, &cfg);
    assert!(
        vc.body.preprepared.iter().any(|e| e.seq == SeqNo(1) && e.digest == d),
        "the voucher for d at seq 1 was evicted: {:?}",
        vc.body.preprepared
    );
    // With the vouchers kept, the three correct replicas (replica 1
    // prepared d in view 0) can always form a NEW-VIEW without replica 3.
    let (_, vc2) = churned(2, &cfg);
    let vc1 = view_change_with(1, 21, &[(1, 0, d)], &[(1, d, 0)]);
    let bodies = [&vc.body, &vc1.body, &vc2.body];
    let plan = palisade_core::view_change::decide(&bodies, 3, 2).expect("the correct replicas can decide");
    assert_eq!(plan.chosen.first(), Some(&(SeqNo(1), d)));
}

/// The review's liveness hole, planted: Q sets that evict after four
/// digests lose the vouchers replica 1's prepared entry needs, and null
/// needs a quorum without prepared entries, so no set of the correct
/// replicas' VIEW-CHANGEs can ever decide seq 1 again.
#[cfg(feature = "planted-bugs")]
#[test]
fn with_evicting_q_sets_planted_no_new_view_can_ever_form() {
    let mut cfg = config(Mode::Bft, 4);
    cfg.planted.evicting_q = true;
    let (d, vc0) = churned(0, &cfg);
    let (_, vc2) = churned(2, &cfg);
    assert!(!vc0.body.preprepared.iter().any(|e| e.seq == SeqNo(1) && e.digest == d), "nothing was evicted");
    let vc1 = view_change_with(1, 21, &[(1, 0, d)], &[(1, d, 0)]);
    let bodies = [&vc0.body, &vc1.body, &vc2.body];
    assert_eq!(palisade_core::view_change::decide(&bodies, 3, 2), None);
}

#[test]
fn the_request_timeout_doubles_until_a_request_executes_and_then_resets() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    r2.step(tick(1_002));
    assert_eq!(r2.view(), ViewNo(1), "the first timeout is request_timeout_ms");
    let vcs = (1..4).map(|r| view_change_from(r, 1)).collect();
    peer(&mut r2, 1, new_view(1, 4, vcs, vec![]));
    assert!(r2.is_normal());
    // Entering view 1 re-timed the request from 1_002. It still has not
    // executed, so the next timeout is twice as long (PBFT 4.5.2).
    r2.step(tick(1_002 + 1_001));
    assert_eq!(r2.view(), ViewNo(1), "the timeout did not double after a view change that executed nothing");
    r2.step(tick(1_002 + 2_001));
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
    r2.step(tick(t));
    r2.step(Input::Request(request(1, 2)));
    r2.step(tick(t + 1_001));
    assert_eq!(r2.view(), ViewNo(3), "after a request executed, the timeout is back to request_timeout_ms");
}

#[test]
fn a_backup_whose_connection_from_the_primary_closed_suspects_it_after_the_shorter_timeout() {
    use palisade_core::{ReplicaId, ViewChangeReason};
    let cfg = config(Mode::Bft, 4);
    let quick = cfg.primary_down_timeout_ms;
    assert!(quick * 2 < cfg.request_timeout_ms);
    let down = |peer: u32| Input::PeerLink { peer: ReplicaId(peer), up: false };
    // A connection that comes back in time costs nothing: the request
    // waits the whole request timeout.
    let mut r = replica(2, &cfg);
    r.step(Input::Request(request(1, 1)));
    r.step(down(0));
    r.step(tick(quick - 1));
    r.step(Input::PeerLink { peer: ReplicaId(0), up: true });
    r.step(tick(quick + 10));
    r.step(tick(cfg.request_timeout_ms - 10));
    assert_eq!(r.view(), ViewNo(0), "a connection that came back made the primary suspect");
    r.step(tick(cfg.request_timeout_ms + 10));
    assert_eq!(r.view(), ViewNo(1));
    // Another backup's connection closing says nothing of the primary.
    let mut r = replica(2, &cfg);
    r.step(Input::Request(request(1, 1)));
    r.step(down(1));
    r.step(tick(2 * quick));
    assert_eq!(r.view(), ViewNo(0), "a backup's closed connection made the primary suspect");
    // The primary's closed: with nothing waiting, nothing happens; a
    // request that arrives then waits `quick`, not the request timeout.
    let mut r = replica(2, &cfg);
    r.step(tick(5));
    r.step(down(0));
    r.step(tick(quick + 100));
    assert_eq!(r.view(), ViewNo(0), "nothing waited, yet the primary was suspected");
    r.step(Input::Request(request(1, 1)));
    r.step(tick(2 * quick + 99));
    assert_eq!(r.view(), ViewNo(0), "suspected before the request waited primary_down_timeout_ms");
    r.step(tick(2 * quick + 101));
    assert_eq!(r.view(), ViewNo(1), "a request waited primary_down_timeout_ms on an unreachable primary");
    assert_eq!(r.metrics().last_view_change, Some(ViewChangeReason::PrimaryUnreachable));
    // A request that already waited longer than `quick` when the connection
    // closed: the connection must stay closed `quick` first.
    let mut r = replica(2, &cfg);
    r.step(Input::Request(request(1, 1)));
    r.step(tick(3 * quick));
    r.step(down(0));
    r.step(tick(4 * quick - 1));
    assert_eq!(r.view(), ViewNo(0), "suspected before the connection had been closed primary_down_timeout_ms");
    r.step(tick(4 * quick + 1));
    assert_eq!(r.view(), ViewNo(1));
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

/// Backup 2 of view 0 takes the PRE-PREPARE of one request at `at` and
/// decides it `round_ms` later.
fn one_round_timed(r2: &mut palisade_core::Replica<palisade_testkit::crypto::TestCrypto>, at: u64, round_ms: u64) {
    let b = batch(vec![request(1, 1)]);
    let d = b.digest();
    r2.step(tick(at));
    peer(r2, 0, pre_prepare(0, 1, b));
    r2.step(tick(at + round_ms));
    for from in [1, 3] {
        peer(r2, from, PeerMessage::Prepare(vote(0, 1, d)));
    }
    for from in [0, 1, 3] {
        peer(r2, from, PeerMessage::Commit(vote(0, 1, d)));
    }
    assert_eq!(r2.delivered(), SeqNo(1));
}

#[test]
fn once_rounds_are_timed_a_primary_that_holds_back_its_proposals_is_suspected_within_a_fraction_of_the_timeout() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    assert_eq!(r2.request_timeout_ms(), cfg.request_timeout_ms, "nothing timed yet");
    one_round_timed(&mut r2, 10, 5);
    // 16 rounds of 5 ms are 80 ms: the floor for scheduling hiccups holds.
    let timeout = r2.request_timeout_ms();
    assert_eq!(timeout, cfg.request_timeout_min_ms);
    // A request the primary never proposes (a client sent it to every
    // replica) is suspected after the adaptive timeout, not the configured one.
    r2.step(tick(100));
    r2.step(Input::Request(request(1, 2)));
    r2.step(tick(100 + timeout - 1));
    assert_eq!(r2.view(), ViewNo(0), "not before the adaptive timeout");
    r2.step(tick(100 + timeout + 1));
    assert_eq!(r2.view(), ViewNo(1), "a primary holding its proposals back is suspected");
    assert_eq!(r2.metrics().last_view_change, Some(palisade_core::ViewChangeReason::RequestTimeout));
    // The operator's log names the late request.
    let late = palisade_core::LateRequest {
        client: palisade_core::ClientId(1),
        request: palisade_core::RequestId(2),
        waited_ms: timeout + 1,
        timeout_ms: timeout,
        client_pending: 1,
        proposed: false,
        // The round that was timed delivered batch 1; nothing of batch 2
        // reached this backup.
        delivered: palisade_core::SeqNo(1),
        next: palisade_core::NextSlot::default(),
    };
    assert_eq!(r2.metrics().last_late_request, Some(late));
}

#[test]
fn the_adaptive_timeout_follows_slower_rounds_and_more_waiting_work_up_to_the_configured_one() {
    let mut cfg = config(Mode::Bft, 4);
    cfg.batch_max_requests = 3;
    let mut r2 = replica(2, &cfg);
    one_round_timed(&mut r2, 10, 20);
    assert_eq!(r2.request_timeout_ms(), 16 * 20, "16 rounds of 20 ms");
    // Six requests waiting are two full batches ahead of the last.
    for id in 2..8 {
        r2.step(Input::Request(request(1, id)));
    }
    assert_eq!(r2.request_timeout_ms(), 3 * 16 * 20);
    for id in 8..20 {
        r2.step(Input::Request(request(1, id)));
    }
    assert_eq!(r2.request_timeout_ms(), cfg.request_timeout_ms, "never above the configured timeout");
    // Turned off, the timeout is the configured one whatever was timed.
    cfg.request_timeout_rounds = 0;
    let mut fixed = replica(2, &cfg);
    one_round_timed(&mut fixed, 10, 5);
    assert_eq!(fixed.request_timeout_ms(), cfg.request_timeout_ms);
}

#[test]
fn with_leader_rotation_every_view_ends_after_its_period_and_the_next_primary_orders() {
    let mut cfg = config(Mode::Bft, 4);
    cfg.leader_rotation_ms = 500;
    let mut c = palisade_testkit::cluster::MemCluster::new(&cfg, palisade_testkit::crypto::TestCrypto, || {
        palisade_testkit::cluster::Log::default()
    });
    c.submit(0, request(1, 1));
    c.tick(400);
    assert!((0..4).all(|r| c.core(r).view() == ViewNo(0)), "no rotation before the period");
    c.tick(200);
    c.tick(10);
    for r in 0..4 {
        let core = c.core(r);
        assert!(core.is_normal() && core.view() == ViewNo(1), "replica {r} rotated to view 1");
        assert!(
            core.metrics().rotations
                + u64::from(core.metrics().last_view_change == Some(palisade_core::ViewChangeReason::Joined))
                >= 1
        );
    }
    // The new primary orders; the request timeout never had to act.
    c.submit(1, request(1, 2));
    assert!((0..4).all(|r| c.core(r).delivered() >= SeqNo(2)), "view 1's primary ordered");
    // An idle cluster does not rotate: a rotation is always followed by a
    // view that executes requests, which resets the view-change backoff.
    let mut idle = palisade_testkit::cluster::MemCluster::new(&cfg, palisade_testkit::crypto::TestCrypto, || {
        palisade_testkit::cluster::Log::default()
    });
    for _ in 0..10 {
        idle.tick(500);
    }
    assert!((0..4).all(|r| idle.core(r).view() == ViewNo(0)), "an idle cluster keeps its view");
    // Without rotation the same cluster stays in view 0.
    cfg.leader_rotation_ms = 0;
    let mut still = palisade_testkit::cluster::MemCluster::new(&cfg, palisade_testkit::crypto::TestCrypto, || {
        palisade_testkit::cluster::Log::default()
    });
    still.submit(0, request(1, 1));
    still.tick(5_000);
    assert!((0..4).all(|r| still.core(r).view() == ViewNo(0)));
}

#[test]
fn a_round_that_stalls_after_its_pre_prepare_is_named_in_the_late_request() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    one_round_timed(&mut r2, 10, 5);
    let timeout = r2.request_timeout_ms();
    // The primary proposes request 2 at 2 and one backup prepares: this
    // replica prepares, but no other COMMIT comes.
    let b = batch(vec![request(1, 2)]);
    let d = b.digest();
    r2.step(tick(100));
    r2.step(Input::Request(request(1, 2)));
    peer(&mut r2, 0, pre_prepare(0, 2, b));
    peer(&mut r2, 1, PeerMessage::Prepare(vote(0, 2, d)));
    r2.step(tick(100 + timeout + 1));
    assert_eq!(r2.view(), ViewNo(1));
    let late = r2.metrics().last_late_request.expect("a request timed out");
    assert!(late.proposed, "its PRE-PREPARE arrived: agreement was what stalled");
    assert_eq!(late.delivered, SeqNo(1));
    let next = late.next;
    assert!(next.pre_prepared && next.batch);
    assert_eq!((next.prepares, next.commits), (2, 1), "prepared here; its own COMMIT alone, short of 2f+1");
}

/// The PRE-PREPAREs `actions` send to each replica, by sequence number.
fn pre_prepares_sent(actions: &[Action]) -> Vec<(u32, u64)> {
    let mut sent: Vec<(u32, u64)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, msg: PeerMessage::PrePrepare(pp) } => Some((to.0, pp.seq.0)),
            _ => None,
        })
        .collect();
    sent.sort();
    sent
}

/// Replica 0, the primary, proposing one request at 10 ms; and the
/// batch's digest.
fn primary_proposing_one(
    cfg: &palisade_core::Config,
) -> (palisade_core::Replica<palisade_testkit::crypto::TestCrypto>, Digest) {
    let mut r0 = replica(0, cfg);
    r0.step(tick(10));
    r0.step(Input::Request(request(1, 1)));
    let d = proposed_digest(&r0.take_actions(), 1).expect("proposed at once");
    (r0, d)
}

#[test]
fn a_pre_prepare_lost_to_some_backups_is_sent_again_to_them_alone_well_before_a_request_times_out() {
    let cfg = config(Mode::Bft, 4);
    let (mut r0, d) = primary_proposing_one(&cfg);
    // Backups 2 and 3 never got it (their connections were not up yet);
    // backup 1 prepares, and its PREPARE keeps arriving.
    let resend = cfg.retransmit_ms.min(cfg.request_timeout_ms / 4);
    let mut sent = Vec::new();
    for t in (20..10 + resend).step_by(10) {
        peer(&mut r0, 1, PeerMessage::Prepare(vote(0, 1, d)));
        r0.step(tick(t));
        sent.extend(pre_prepares_sent(&r0.take_actions()));
    }
    assert!(sent.is_empty(), "not before the slot has stood still for {resend} ms: {sent:?}");
    r0.step(tick(10 + resend));
    let actions = r0.take_actions();
    assert_eq!(pre_prepares_sent(&actions), vec![(2, 1), (3, 1)], "to the backups that did not answer");
    assert_eq!(proposed_digest(&actions, 1), None, "not to everyone");
    // Their PREPAREs now arrive, and it decides.
    for from in [2, 3] {
        peer(&mut r0, from, PeerMessage::Prepare(vote(0, 1, d)));
    }
    for from in [1, 2] {
        peer(&mut r0, from, PeerMessage::Commit(vote(0, 1, d)));
    }
    assert_eq!(r0.delivered(), SeqNo(1));
}

#[test]
fn in_cft_a_backups_commit_shows_it_has_the_pre_prepare_and_the_others_get_it_again() {
    let cfg = config(Mode::Cft, 5);
    let (mut r0, d) = primary_proposing_one(&cfg);
    // Backup 1 commits (CFT has no PREPARE); with the primary that is two
    // of the three a decision needs.
    let resend = cfg.retransmit_ms.min(cfg.request_timeout_ms / 4);
    peer(&mut r0, 1, PeerMessage::Commit(vote(0, 1, d)));
    r0.step(tick(10 + resend - 1));
    assert!(pre_prepares_sent(&r0.take_actions()).is_empty(), "not yet");
    r0.step(tick(10 + resend));
    assert_eq!(pre_prepares_sent(&r0.take_actions()), vec![(2, 1), (3, 1), (4, 1)]);
    peer(&mut r0, 3, PeerMessage::Commit(vote(0, 1, d)));
    assert_eq!(r0.delivered(), SeqNo(1), "a majority committed");
}
