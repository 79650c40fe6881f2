//! The watch on the primary's batches: when clients send every request to
//! every replica, a backup holds the load the primary is offered, forwards
//! only what the primary has not proposed in time, and suspects a primary
//! whose batches, with room to spare, keep leaving out a request it has.
//! Replicas are driven by hand, as in `rules.rs`.

use palisade_core::{Action, Input, Mode, PeerMessage, Replica, ReplicaId, ViewChangeReason, ViewNo};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

/// The requests (client, id) forwarded to replica 0 among `out`.
fn forwards_of(out: &[Action]) -> Vec<(u64, u64)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to: ReplicaId(0), msg: PeerMessage::Forward(r) } => Some((r.client.0, r.id.0)),
            _ => None,
        })
        .collect()
}

/// Backup 2 of a cluster whose clients send to every replica, with a
/// fixed request timeout (1 s) so that only the watch can suspect, and
/// `skips` skips to suspect.
fn backup(skips: u32) -> (Replica<TestCrypto>, palisade_core::Config) {
    let cfg = backup_config(skips);
    (replica(2, &cfg), cfg)
}

fn backup_config(skips: u32) -> palisade_core::Config {
    let mut cfg = config(Mode::Bft, 4);
    cfg.requests_to_all = true;
    cfg.request_timeout_rounds = 0;
    cfg.batch_watch_skips = skips;
    cfg
}

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
    // lost with its connection), and counting starts a grace later.
    assert_eq!(tiny_batch_forwarding(&mut r2, 2, forwarded + grace), (false, vec![(1, 1)]));
    let resent = forwarded + grace;
    assert_eq!(tiny_batch_forwarding(&mut r2, 3, resent + grace - 1), (false, vec![]));
    // From then on each one with room to spare counts; the fourth
    // suspects the primary.
    for seq in 4..7 {
        assert!(!tiny_batch(&mut r2, seq, resent + grace + seq), "skip {} of 4", seq - 3);
    }
    assert_eq!(r2.metrics().skip_suspicions, 0);
    assert!(tiny_batch(&mut r2, 7, resent + grace + 7), "the fourth skip suspects the primary");
    assert_eq!(r2.metrics().last_view_change, Some(ViewChangeReason::SkippedRequests));
    assert_eq!(r2.metrics().skip_suspicions, 1);
}

#[test]
fn a_full_batch_or_one_after_a_missing_pre_prepare_does_not_count_against_the_primary() {
    let (mut r2, mut cfg) = backup(2);
    cfg.batch_max_requests = 1;
    let mut r2_full = replica(2, &cfg);
    let grace = cfg.forward_grace_ms;
    for r in [&mut r2, &mut r2_full] {
        r.step(Input::Request(request(1, 1)));
        r.step(tick(1 + grace));
        r.take_actions();
    }
    // Full batches leave out client 1's request, but have no room for it.
    for seq in 1..=6 {
        assert_eq!(tiny_batch_forwarding(&mut r2_full, seq, 100 + grace * seq), (false, vec![]), "full");
    }
    // A gap: the PRE-PREPARE of 1 never arrived here, and it may carry
    // client 1's request.
    for seq in 2..=4 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, 100 + grace * seq), (false, vec![]), "1 is missing here");
    }
    // It arrives, without the request: sent again; then two skips.
    assert_eq!(tiny_batch_forwarding(&mut r2, 1, 200), (false, vec![(1, 1)]));
    assert!(!tiny_batch(&mut r2, 5, 200 + grace));
    assert!(tiny_batch(&mut r2, 6, 201 + grace));
}

#[test]
fn a_request_only_the_backups_got_is_forwarded_and_then_proposed_so_the_correct_primary_is_not_suspected() {
    // A faulty client sends request 1 to the backups alone; the primary's
    // batches leave it out until the forward reaches it and then propose it.
    let (mut r2, cfg) = backup(2);
    let grace = cfg.forward_grace_ms;
    r2.step(Input::Request(request(7, 1)));
    for seq in 1..=3 {
        assert!(!tiny_batch(&mut r2, seq, 1 + seq), "before the forward nothing counts");
    }
    r2.step(tick(1 + grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(7, 1)]);
    for seq in 4..=5 {
        assert!(!tiny_batch(&mut r2, seq, 1 + grace + seq), "within the grace of the forward");
    }
    peer(&mut r2, 0, pre_prepare(0, 6, batch(vec![request(7, 1)])));
    assert!(!tiny_batch(&mut r2, 7, 1 + 3 * grace), "proposed: no longer counted");
    assert!(!tiny_batch(&mut r2, 8, 1 + 3 * grace));
    assert_eq!(r2.view(), ViewNo(0));
}

#[test]
fn without_clients_sending_to_all_a_backup_forwards_at_once_and_the_watch_still_counts_what_it_was_sent() {
    let mut cfg = config(Mode::Bft, 4);
    cfg.request_timeout_rounds = 0;
    cfg.batch_watch_skips = 2;
    let mut r2 = replica(2, &cfg);
    let grace = cfg.forward_grace_ms;
    // A retransmission reaches the backup: forwarded at once.
    r2.step(Input::Request(request(1, 1)));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 1)]);
    assert_eq!(tiny_batch_forwarding(&mut r2, 1, 1 + grace), (false, vec![(1, 1)]));
    assert!(!tiny_batch(&mut r2, 2, 1 + 2 * grace));
    assert!(tiny_batch(&mut r2, 3, 2 + 2 * grace));
}

#[test]
fn padding_a_tiny_batch_with_repeats_does_not_make_it_full() {
    // Batches hold at most 4 requests; the primary fills each with its one
    // new request and three copies of it (execution skips repeats).
    let mut cfg = backup_config(2);
    cfg.batch_max_requests = 4;
    let mut r2 = replica(2, &cfg);
    let grace = cfg.forward_grace_ms;
    r2.step(Input::Request(request(1, 1)));
    r2.step(tick(1 + grace));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 1)]);
    let padded = |seq: u64| batch(vec![request(9, seq); 4]);
    let step = |r2: &mut Replica<TestCrypto>, seq: u64, t: u64| {
        r2.step(tick(t));
        let mut out = r2.take_actions();
        out.extend(peer(r2, 0, pre_prepare(0, seq, padded(seq))));
        (r2.view() != ViewNo(0), forwards_of(&out))
    };
    assert_eq!(step(&mut r2, 1, 1 + 2 * grace), (false, vec![(1, 1)]), "room for three more: sent again");
    assert_eq!(step(&mut r2, 2, 1 + 3 * grace), (false, vec![]));
    assert_eq!(step(&mut r2, 3, 2 + 3 * grace), (true, vec![]), "the second skip suspects the primary");
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
    for seq in 2..=5 {
        assert_eq!(tiny_batch_forwarding(&mut r2, seq, 1 + grace * seq), (false, vec![]), "nothing left to blame");
    }
    r2.step(tick(1 + cfg.request_timeout_ms * 2));
    assert_eq!(r2.view(), ViewNo(0), "nor to time");
}
