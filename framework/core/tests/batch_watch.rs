//! The watch on the primary's batches: when clients send every request to
//! every replica, a backup holds the load the primary is offered, forwards
//! only what the primary has not proposed in time, and suspects a primary
//! whose batches, with room to spare, keep leaving out a request it has.
//! Replicas are driven by hand, as in `rules.rs`.

use palisade_core::{Action, Input, Mode, PeerMessage, Replica, ReplicaId, ViewChangeReason, ViewNo};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

/// Backup 2 of a cluster whose clients send to every replica, with a
/// fixed request timeout (1 s) so that only the watch can suspect, and
/// `skips` skips to suspect.
fn backup(skips: u32) -> (Replica<TestCrypto>, palisade_core::Config) {
    let cfg = backup_config(skips);
    (replica(2, &cfg), cfg)
}

/// Its window holds 64 sequence numbers (the watch looks 4 pipelines of 4
/// batches ahead of the last delivered), and the pipeline is 4 batches.
fn backup_config(skips: u32) -> palisade_core::Config {
    let mut cfg = config(Mode::Bft, 4);
    cfg.requests_to_all = true;
    cfg.request_timeout_rounds = 0;
    cfg.batch_watch_skips = skips;
    cfg.log_window = 64;
    cfg
}

/// Pipeline length: skips count only at sequence numbers past what the
/// backup had seen when it sent the request, plus this.
const PIPELINE: u64 = 4;

/// Feeds the primary's PRE-PREPARE of `seq` carrying client 9's request
/// `seq` alone (a tiny batch), at `t`; returns whether replica 2 started a
/// view change, and the requests it forwarded.
fn tiny_batch_forwarding(r2: &mut Replica<TestCrypto>, seq: u64, t: u64) -> (bool, Vec<(u64, u64)>) {
    r2.step(tick(t));
    let mut forwards = forwards_of(&r2.take_actions());
    forwards.extend(forwards_of(&peer(r2, 0, pre_prepare(0, seq, batch(vec![request(9, seq)])))));
    (r2.view() != ViewNo(0), forwards)
}

/// `tiny_batch_forwarding`, whether replica 2 started a view change.
fn tiny_batch(r2: &mut Replica<TestCrypto>, seq: u64, t: u64) -> bool {
    tiny_batch_forwarding(r2, seq, t).0
}

#[test]
fn a_backup_whose_clients_send_to_all_forwards_only_what_the_primary_has_not_proposed_within_the_grace() {
    let (mut r2, cfg) = backup(8);
    let grace = cfg.forward_grace_ms;
    r2.step(Input::Request(request(1, 1)));
    r2.step(Input::Request(request(2, 1)));
    assert_eq!(forwards_of(&r2.take_actions()), vec![], "the primary has its own copies");
    peer(&mut r2, 0, pre_prepare(0, 1, batch(vec![request(1, 1)])));
    r2.step(tick(1 + grace - 1));
    assert_eq!(forwards_of(&r2.take_actions()), vec![], "not before the grace");
    r2.step(tick(1 + grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(2, 1)], "only the request the primary did not propose");
    assert_eq!(r2.metrics().late_forwards, 1);
    r2.step(tick(1 + 5 * grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![], "once");
}

#[test]
fn a_primary_whose_tiny_batches_keep_leaving_out_a_request_it_has_is_suspected() {
    let (mut r2, cfg) = backup(4);
    let grace = cfg.forward_grace_ms;
    r2.step(Input::Request(request(1, 1)));
    r2.step(tick(1 + grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 1)]);
    // Tiny batches before the primary has had the forward for the grace
    // do not count: it may have formed them before the request reached it.
    let forwarded = 1 + grace;
    assert_eq!(tiny_batch_forwarding(&mut r2, 1, forwarded + grace - 1), (false, vec![]));
    // The first one after it sends the request once more (a forward may be
    // lost with its connection); skips count from a grace later, and only
    // past a pipeline beyond what the backup had seen (seq 2).
    assert_eq!(tiny_batch_forwarding(&mut r2, 2, forwarded + grace), (false, vec![(1, 1)]));
    let resent = forwarded + grace;
    for seq in 3..=2 + PIPELINE {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, resent + grace + seq), (false, vec![]), "seq {seq}");
    }
    // Each one from then with room to spare counts (the first also sends
    // the request again: a grace has passed since the last send); the
    // fourth suspects the primary.
    let first = 3 + PIPELINE;
    assert_eq!(tiny_batch_forwarding(&mut r2, first, resent + 2 * grace), (false, vec![(1, 1)]), "skip 1 of 4");
    for seq in first + 1..first + 3 {
        assert!(!tiny_batch(&mut r2, seq, resent + 2 * grace + seq), "skip {} of 4", seq - first + 1);
    }
    assert_eq!(r2.metrics().skip_suspicions, 0);
    assert!(tiny_batch(&mut r2, first + 3, resent + 2 * grace + first + 3), "the fourth skip suspects the primary");
    assert_eq!(r2.metrics().last_view_change, Some(ViewChangeReason::SkippedRequests));
    assert_eq!(r2.metrics().skip_suspicions, 1);
}

/// Replica 2 with client 1's request sent to the primary at 21 and again
/// at `t`, with the primary's PRE-PREPAREs up to `seq` seen.
fn watching(cfg: &palisade_core::Config, seq: u64, t: u64) -> Replica<TestCrypto> {
    let mut r2 = replica(2, cfg);
    r2.step(Input::Request(request(1, 1)));
    r2.step(tick(1 + cfg.forward_grace_ms));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 1)]);
    for s in 1..seq {
        tiny_batch(&mut r2, s, 1 + cfg.forward_grace_ms);
    }
    assert_eq!(tiny_batch_forwarding(&mut r2, seq, t), (false, vec![(1, 1)]));
    r2
}

#[test]
fn a_full_batch_or_one_after_a_missing_pre_prepare_does_not_count_against_the_primary() {
    let mut cfg = backup_config(2);
    let grace = cfg.forward_grace_ms;
    let t = 1 + 2 * grace;
    // The request goes again with the PRE-PREPARE of 6: skips count past
    // 6 + PIPELINE. A gap: the PRE-PREPARE of 7 never arrived here, and it
    // may carry client 1's request.
    let mut r2 = watching(&cfg, 6, t);
    for seq in 8..=12 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, t + 2 * grace + seq), (false, vec![]), "7 is missing");
    }
    // It arrives, without the request; the next two count, and the
    // second suspects.
    assert_eq!(tiny_batch_forwarding(&mut r2, 7, t + 3 * grace), (false, vec![]));
    assert_eq!(tiny_batch_forwarding(&mut r2, 13, t + 3 * grace + 1), (false, vec![(1, 1)]));
    assert!(tiny_batch(&mut r2, 14, t + 3 * grace + 2));
    // Full batches leave out client 1's request, but have no room for it.
    cfg.batch_max_requests = 1;
    let mut full = replica(2, &cfg);
    full.step(Input::Request(request(1, 1)));
    full.step(tick(1 + grace));
    full.take_actions();
    for seq in 1..=12 {
        assert_eq!(tiny_batch_forwarding(&mut full, seq, 1 + grace * (seq + 1)), (false, vec![]), "full");
    }
}

#[test]
fn a_request_only_the_backups_got_is_forwarded_and_then_proposed_so_the_correct_primary_is_not_suspected() {
    // A faulty client sends request 1 to the backups alone; the primary's
    // batches leave it out until the forward reaches it and then propose it.
    let (mut r2, cfg) = backup(2);
    let grace = cfg.forward_grace_ms;
    r2.step(Input::Request(request(7, 1)));
    for seq in 1..=3 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, 1 + seq), (false, vec![]), "before the grace nothing is sent");
    }
    r2.step(tick(1 + grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(7, 1)]);
    for seq in 4..=5 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, 1 + grace + seq), (false, vec![]), "within the grace");
    }
    peer(&mut r2, 0, pre_prepare(0, 6, batch(vec![request(7, 1)])));
    for seq in 7..=14 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, 1 + 3 * grace + seq), (false, vec![]), "proposed: not counted");
    }
    assert_eq!(r2.view(), ViewNo(0));
}

#[test]
fn padding_a_tiny_batch_with_repeats_does_not_make_it_full() {
    // Batches hold at most 4 requests; the primary fills each with its one
    // new request and three copies of it (execution skips repeats).
    let mut cfg = backup_config(2);
    cfg.batch_max_requests = 4;
    let grace = cfg.forward_grace_ms;
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    r2.step(tick(1 + grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 1)]);
    let mut padded = |seq: u64, t: u64| {
        r2.step(tick(t));
        let mut out = r2.take_actions();
        out.extend(peer(&mut r2, 0, pre_prepare(0, seq, batch(vec![request(9, seq); 4]))));
        (r2.view() != ViewNo(0), forwards_of(&out))
    };
    assert_eq!(padded(1, 1 + 2 * grace), (false, vec![(1, 1)]), "room for three more: sent again");
    for seq in 2..=1 + PIPELINE {
        assert_eq!(padded(seq, 1 + 3 * grace + seq), (false, vec![]), "within the pipeline");
    }
    assert_eq!(padded(2 + PIPELINE, 1 + 4 * grace), (false, vec![(1, 1)]), "the first skip");
    assert_eq!(padded(3 + PIPELINE, 2 + 4 * grace), (true, vec![]), "the second skip suspects the primary");
}

#[test]
fn a_request_that_fell_below_its_clients_window_is_dropped_not_blamed_on_the_primary() {
    // A faulty client sends request 1 to the backups alone, then request
    // 1 + client_window to everyone; once that executes, request 1 is too
    // old for any replica to order, and must not stay timed here.
    let (mut r2, cfg) = backup(2);
    let grace = cfg.forward_grace_ms;
    r2.step(Input::Request(request(7, 1)));
    r2.step(tick(1 + grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(7, 1)]);
    let d = prepared(&mut r2, 1, batch(vec![request(7, 1 + cfg.client_window)]));
    peer(&mut r2, 0, PeerMessage::Commit(vote(0, 1, d)));
    peer(&mut r2, 3, PeerMessage::Commit(vote(0, 1, d)));
    assert_eq!(r2.delivered(), palisade_core::SeqNo(1));
    for seq in 2..=12 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, 1 + grace * seq), (false, vec![]), "nothing left to blame");
    }
    r2.step(tick(1 + cfg.request_timeout_ms * 2));
    assert_eq!(r2.view(), ViewNo(0), "nor to time");
}

#[test]
fn without_clients_sending_to_all_a_backup_forwards_at_once_and_the_watch_stays_off() {
    let mut cfg = backup_config(2);
    cfg.requests_to_all = false;
    let mut r2 = replica(2, &cfg);
    let grace = cfg.forward_grace_ms;
    // A retransmission reaches the backup: forwarded at once.
    r2.step(Input::Request(request(1, 1)));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 1)]);
    // The primary's tiny batches leave it out: the request timer, not the
    // watch, is what times it (the clients send to the primary alone, so
    // the backups do not hold the load the primary is offered).
    for seq in 1..=12 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, 1 + grace * seq), (false, vec![]));
    }
}

#[test]
fn a_suspicion_the_watch_raised_doubles_its_grace_in_the_next_view() {
    // Replica 2 suspects the primary of view 0 (as in the tiny-batch test,
    // with 2 skips), and view 1 starts: its requests, waiting again, are
    // forwarded to the new primary only after twice the grace.
    let (mut r2, cfg) = backup(2);
    let grace = cfg.forward_grace_ms;
    r2.step(Input::Request(request(1, 1)));
    r2.step(tick(1 + grace));
    r2.take_actions();
    let mut t = 1 + 2 * grace;
    assert_eq!(tiny_batch_forwarding(&mut r2, 1, t), (false, vec![(1, 1)]));
    t += grace;
    let mut seq = 2;
    while !tiny_batch(&mut r2, seq, t + seq) {
        seq += 1;
        assert!(seq < 16, "the primary is suspected");
    }
    assert_eq!(r2.metrics().skip_suspicions, 1);
    let vcs = (1..4).map(|r| view_change_from(r, 1)).collect();
    let start = t + seq + 1;
    r2.step(tick(start));
    peer(&mut r2, 1, new_view(1, 4, vcs, vec![]));
    assert!(r2.is_normal() && r2.view() == ViewNo(1));
    r2.take_actions();
    let to_new_primary = |out: &[Action]| {
        out.iter()
            .any(|a| matches!(a, Action::Send { to: ReplicaId(1), msg: PeerMessage::Forward(r) } if r.client.0 == 1))
    };
    r2.step(tick(start + grace));
    assert!(!to_new_primary(&r2.take_actions()), "not after one grace");
    r2.step(tick(start + 2 * grace));
    assert!(to_new_primary(&r2.take_actions()), "after two");
}
