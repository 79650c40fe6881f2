//! The protocol's rules, one test each, named after the rule (PBFT's
//! sections 4.2 to 4.5 and what Palisade adds). Replicas are driven by hand
//! so that each test controls exactly which messages arrive.

use bytes::Bytes;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{Batch, CheckpointBody, NewViewBody, Signature, Status};
use palisade_core::replica::Discard;
use palisade_core::{Action, Digest, Input, Mode, PeerMessage, Replica, ReplicaId, SeqNo, ViewNo};
use palisade_testkit::cluster::{Log, MemCluster};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;
use proptest::prelude::*;
use std::sync::Arc;

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
    assert_eq!(r1.metrics().dropped(Discard::Equivocation), 1);
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
fn a_whole_cluster_orders_and_delivers_the_same_batches() {
    let cfg = config(Mode::Bft, 4);
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    for i in 1..=20 {
        c.submit(0, request(1, i));
    }
    c.tick(1);
    assert!(c.delivered.iter().all(|d| d == &c.delivered[0]));
    let total: usize = c.delivered[0].len();
    assert!(total >= 5, "expected several batches, got {total}");
    assert_eq!(c.core(3).delivered(), SeqNo(total as u64));
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
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    for i in 1..=6 {
        c.submit(0, request(1, i));
        c.tick(1);
    }
    assert!((0..4).all(|r| c.core(r).stable_checkpoint().seq == SeqNo(4)));
    assert!((0..4).all(|r| c.core(r).stable_checkpoint().proof.len() >= 3));
    assert!((0..4).all(|r| c.core(r).log_len() <= 2));
}

#[test]
fn a_checkpoint_with_one_dissenting_digest_still_becomes_stable_on_the_quorum() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let sign = |who: u32, state: Digest| {
        crypto::sign(
            &TestCrypto(ReplicaId(who)),
            Domain::Checkpoint,
            CheckpointBody { seq: SeqNo(4), state, config: palisade_core::Digest::default(), replica: ReplicaId(who) },
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
    r2.step(tick(500));
    assert!(r2.is_normal());
    r2.take_actions();
    r2.step(tick(1_002));
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
        r.step(tick(2_000));
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
    r2.step(tick(2_500));
    assert!(r2.metrics().view_changes == 0);
    // Behind without catching up: after the first restart, only progress
    // earns another, so a primary that keeps it behind is suspected anyway.
    r2.step(tick(3_000));
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
        r2.step(tick(1 + k * 1_000));
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
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
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
    assert!((1..4).all(|r| c.core(r).is_normal() && c.core(r).view() == ViewNo(1)));
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
    assert_eq!(r2.metrics().dropped(Discard::NewViewProofFails), 1);
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
fn state_transfer_fetches_the_certified_state_and_only_what_the_fetcher_reports_counts() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    let state = Digest::of(b"the state at 4");
    let mut out = Vec::new();
    for who in [0, 2, 3] {
        let vote = crypto::sign(
            &TestCrypto(ReplicaId(who)),
            Domain::Checkpoint,
            CheckpointBody { seq: SeqNo(4), state, config: palisade_core::Digest::default(), replica: ReplicaId(who) },
        );
        out.extend(peer(&mut r1, who, PeerMessage::Checkpoint(vote)));
    }
    assert!(r1.transferring());
    assert!(
        out.iter().any(|a| matches!(a, Action::FetchState { seq: SeqNo(4), state: s, .. } if *s == state)),
        "it asks its fetcher for the certified state"
    );
    // Pieces from peers go to the fetcher, whatever they say.
    let lie = PeerMessage::StateData { seq: SeqNo(4), answer: palisade_core::message::StateAnswer::Unavailable };
    assert!(matches!(&peer(&mut r1, 2, lie)[..], [Action::StateData { .. }]));
    assert_eq!(r1.delivered(), SeqNo(0));
    r1.step(Input::StateFetched { seq: SeqNo(4), state });
    assert!(!r1.transferring());
    assert_eq!(r1.delivered(), SeqNo(4));
    assert_eq!(r1.metrics().state_transfers, 1);
}

#[test]
fn a_recovered_replica_never_prepares_a_different_batch_in_the_same_view() {
    let cfg = config(Mode::Bft, 4);
    // A backup accepts a batch at (view 0, seq 1), crashes, and is rebuilt
    // from what it persisted.
    let mut persisted = Vec::new();
    let mut fresh = Replica::new(cfg.clone(), ReplicaId(1), TestCrypto(ReplicaId(1)), genesis_state());
    fresh.step(tick(1));
    fresh.take_actions();
    fresh.step(Input::Peer { from: ReplicaId(0), msg: pre_prepare(0, 1, batch(vec![request(1, 1)])) });
    for a in fresh.take_actions() {
        if let Action::Persist(r) = a {
            persisted.push(r);
        }
    }
    assert!(!persisted.is_empty());
    let mut recovered = recover(1, &cfg, persisted);
    let out = peer(&mut recovered, 0, pre_prepare(0, 1, batch(vec![request(1, 2)])));
    assert!(broadcasts(&out).is_empty(), "a different batch at (0, 1) after the crash must be refused");
}

#[test]
fn a_replica_behind_the_stable_checkpoint_learns_the_proof_from_status() {
    let cfg = config(Mode::Bft, 4);
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    for i in 1..=5 {
        c.submit(0, request(1, i));
        c.tick(1);
    }
    assert_eq!(c.core(0).stable_checkpoint().seq, SeqNo(4));
    let mut r0 = c.take_core(0);
    let mut laggard = replica(3, &cfg);
    r0.step(Input::Peer {
        from: ReplicaId(3),
        msg: PeerMessage::Status(Status { view: ViewNo(0), normal: true, delivered: SeqNo(0), stable: SeqNo(0) }),
    });
    let proof: Vec<PeerMessage> = r0
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
    assert!(!r1.take_actions().iter().any(|a| matches!(a, Action::ExecuteReadOnly { .. })));
    peer(&mut r1, 0, PeerMessage::Commit(vote(0, 1, d)));
    let out = peer(&mut r1, 2, PeerMessage::Commit(vote(0, 1, d)));
    let deliver = out.iter().position(|a| matches!(a, Action::Deliver { .. } | Action::Confirm { .. })).unwrap();
    let read_at = out.iter().position(|a| matches!(a, Action::ExecuteReadOnly { .. })).unwrap();
    assert!(deliver < read_at);
}

// ----- time ------------------------------------------------------------------------

#[test]
fn a_wall_clock_jump_fires_no_timer_and_moves_only_batch_timestamps() {
    let cfg = config(Mode::Bft, 4);
    let hour = 3_600_000;
    // A backup waiting for a request: its timer runs on the monotonic clock.
    let mut r1 = replica(1, &cfg);
    r1.step(Input::Tick { now_ms: 1, wall_ms: 1 });
    r1.step(Input::Request(request(1, 1)));
    r1.take_actions();
    for wall_ms in [1 + hour, 1, 1 + 24 * hour] {
        r1.step(Input::Tick { now_ms: 500, wall_ms });
        let out = r1.take_actions();
        assert!(
            !broadcasts(&out).iter().any(|m| matches!(m, PeerMessage::ViewChange(_))),
            "a wall clock jump to {wall_ms} fired the request timer"
        );
        assert!(r1.is_normal() && r1.view() == ViewNo(0));
    }
    r1.step(Input::Tick { now_ms: 1_002, wall_ms: 1 });
    let out = r1.take_actions();
    assert!(
        broadcasts(&out).iter().any(|m| matches!(m, PeerMessage::ViewChange(_))),
        "the monotonic clock passing the timeout fires it, whatever the wall clock says"
    );

    // The primary stamps its batch with the wall clock.
    let mut r0 = replica(0, &cfg);
    r0.step(Input::Tick { now_ms: 5, wall_ms: 7 * hour });
    r0.step(Input::Request(request(1, 1)));
    let out = r0.take_actions();
    let stamped = broadcasts(&out).iter().find_map(|m| match m {
        PeerMessage::PrePrepare(pp) => Some(pp.batch.timestamp_ms),
        _ => None,
    });
    assert_eq!(stamped, Some(7 * hour));
}

// ----- limits ---------------------------------------------------------------------

#[test]
fn a_request_larger_than_a_batch_is_refused_with_an_error_instead_of_proposed() {
    let mut cfg = config(Mode::Bft, 4);
    cfg.batch_max_bytes = 256;
    let mut r0 = replica(0, &cfg);
    let mut big = request(1, 1);
    big.operation = Bytes::from(vec![7u8; 300]);
    r0.step(Input::Request(big));
    let out = r0.take_actions();
    assert!(
        !out.iter().any(|a| matches!(a, Action::Broadcast(PeerMessage::PrePrepare(_)))),
        "backups refuse a batch over the limit, so proposing it only changes views forever"
    );
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Dropped { reason: palisade_core::replica::DropReason::RequestTooLarge, .. })));
}

#[test]
fn each_new_view_allows_its_own_catch_up_restarts() {
    // Replica 2 is behind in view 0 and uses up its restarts there, then
    // the cluster moves to view 1 where it is behind again: the new view
    // allows the full count again, not what is left of the old one.
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    let status = |view: u64| {
        PeerMessage::Status(Status { view: ViewNo(view), normal: true, delivered: SeqNo(100), stable: SeqNo(0) })
    };
    for from in 0..2 {
        peer(&mut r2, from, status(0));
    }
    r2.step(tick(1_002));
    assert_eq!(r2.metrics().timers_restarted, 1);
    // It moves to view 1 (f+1 VIEW-CHANGEs, then the NEW-VIEW) and is behind there too.
    let vcs: Vec<_> = [0u32, 1, 3].iter().map(|&r| view_change_from(r, 1)).collect();
    peer(&mut r2, 1, new_view(1, 4, vcs, vec![]));
    assert!(r2.is_normal() && r2.view() == ViewNo(1));
    for from in [0, 3] {
        peer(&mut r2, from, status(1));
    }
    let restarted_before = r2.metrics().timers_restarted;
    let mut restarts_in_view_1 = 0;
    for k in 1..=8u64 {
        r2.step(tick(1_002 + k * 1_001));
        if r2.view() != ViewNo(1) {
            break;
        }
        restarts_in_view_1 = r2.metrics().timers_restarted - restarted_before;
        // Catching up in view 1: one more batch decided and delivered each time.
        let b = batch_in(1, vec![request(9, k)]);
        let d = b.digest();
        peer(&mut r2, 1, pre_prepare(1, k, b));
        for from in [0, 3] {
            peer(&mut r2, from, PeerMessage::Prepare(vote(1, k, d)));
        }
        for from in [0, 3] {
            peer(&mut r2, from, PeerMessage::Commit(vote(1, k, d)));
        }
    }
    assert_eq!(
        restarts_in_view_1,
        u64::from(palisade_core::replica::MAX_CATCH_UP_RESTARTS),
        "view 1 allowed {restarts_in_view_1} restarts: the count carried over from view 0"
    );
}
