//! Client requests a backup receives (PBFT 4.1): forwarded to the primary,
//! timed, and when a client floods, forwarded before their timers may
//! blame the primary. Replicas are driven by hand, as in `rules.rs`.

use palisade_core::{Action, Input, Mode, PeerMessage, Replica, ReplicaId, SeqNo, ViewNo};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

fn starts_view_change(out: &[Action]) -> bool {
    broadcasts(out).iter().any(|m| matches!(m, PeerMessage::ViewChange(_)))
}

/// Replica 2 with `client_timed_max` 4 and a fixed request timeout. It
/// forgets a flood as soon as the client is back within `client_timed_max`,
/// so that what follows a flood can be tested.
fn backup() -> (Replica<TestCrypto>, palisade_core::Config) {
    let mut cfg = config(Mode::Bft, 4);
    cfg.client_timed_max = 4;
    cfg.client_flood_memory_ms = 0;
    cfg.request_timeout_rounds = 0;
    (replica(2, &cfg), cfg)
}

/// Client 1 sends replica 2 requests 1-10; returns those forwarded.
fn flood(r2: &mut Replica<TestCrypto>) -> Vec<(u64, u64)> {
    let mut sent = Vec::new();
    for id in 1..=10 {
        r2.step(Input::Request(request(1, id)));
        sent.extend(forwards_of(&r2.take_actions()));
    }
    sent
}

/// Replica 2 with client 1 flooding: it sent requests 1-10, of which 1-4
/// were forwarded, and the primary ordered 1-7 at sequence number 1, so
/// request 8, never forwarded, is timed from its arrival at 0. Returns the
/// replica, the request timeout and what the deciding COMMIT produced.
fn backup_after_a_flood() -> (Replica<TestCrypto>, u64, Vec<Action>) {
    let (mut r2, cfg) = backup();
    assert_eq!(flood(&mut r2), vec![(1, 1), (1, 2), (1, 3), (1, 4)], "a flood is not forwarded as it comes");
    let d = prepared(&mut r2, 1, batch((1..=7).map(|id| request(1, id)).collect()));
    peer(&mut r2, 0, PeerMessage::Commit(vote(0, 1, d)));
    let out = peer(&mut r2, 3, PeerMessage::Commit(vote(0, 1, d)));
    (r2, cfg.request_timeout_ms, out)
}

#[test]
fn a_backup_forwards_a_client_request_to_the_primary() {
    let cfg = config(Mode::Bft, 4);
    let mut r2 = replica(2, &cfg);
    r2.step(Input::Request(request(1, 1)));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 1)]);
}

#[test]
fn a_backup_forwards_no_more_of_a_clients_requests_than_it_times() {
    let (mut r2, _) = backup();
    // A client sending every replica more than is timed floods: the
    // primary owes it no deadline, and forwarding the flood would triple it
    // at the primary.
    assert_eq!(flood(&mut r2).len(), 4);
    // Another client, with few pending, is still forwarded.
    r2.step(Input::Request(request(2, 1)));
    assert_eq!(forwards_of(&r2.take_actions()).len(), 1);
}

#[test]
fn a_request_never_forwarded_is_forwarded_when_its_timer_expires_and_blames_the_primary_only_after_that() {
    // The primary orders the client's first seven: three are left, few
    // enough to be timed, the oldest of them never sent to the primary
    // (which may have dropped its own copy over the client's quota).
    let (mut r2, timeout, out) = backup_after_a_flood();
    assert_eq!(delivered(&out), vec![SeqNo(1)]);
    assert!(forwards_of(&out).is_empty(), "becoming timed sends nothing: a flood would follow");
    // Its timer expires: it goes to the primary, with one more timeout.
    r2.step(Input::Tick { now_ms: timeout + 1, wall_ms: 0 });
    let out = r2.take_actions();
    assert_eq!(forwards_of(&out), vec![(1, 8)]);
    assert!(!starts_view_change(&out), "the primary never had it");
    r2.step(Input::Tick { now_ms: 2 * timeout, wall_ms: 0 });
    assert!(!starts_view_change(&r2.take_actions()));
    // Forwarded and still not ordered a timeout later: now the primary is
    // to blame.
    r2.step(Input::Tick { now_ms: 2 * timeout + 2, wall_ms: 0 });
    let out = r2.take_actions();
    assert!(forwards_of(&out).is_empty());
    assert!(starts_view_change(&out));
}

#[test]
fn a_late_forward_does_not_excuse_a_forwarded_request_late_at_the_same_time() {
    let (mut r2, timeout, _) = backup_after_a_flood();
    // Another client's request, forwarded on arrival, waits as long.
    r2.step(Input::Request(request(2, 1)));
    assert_eq!(forwards_of(&r2.take_actions()), vec![(2, 1)]);
    r2.step(Input::Tick { now_ms: timeout + 1, wall_ms: 0 });
    let out = r2.take_actions();
    assert_eq!(forwards_of(&out), vec![(1, 8)]);
    assert!(starts_view_change(&out), "the primary had client 2's request all along");
}

#[test]
fn a_late_forward_keeps_its_new_start_when_its_timer_stops_and_starts_again() {
    let (mut r2, timeout, _) = backup_after_a_flood();
    let forwarded_at = timeout + 1;
    r2.step(Input::Tick { now_ms: forwarded_at, wall_ms: 0 });
    assert_eq!(forwards_of(&r2.take_actions()), vec![(1, 8)]);
    // The client floods again (its timer stops), then its backlog shrinks
    // (the primary orders 11 and 12) and request 8 is timed once more: from
    // its forward, not from its arrival.
    for id in 11..=13 {
        r2.step(Input::Request(request(1, id)));
    }
    let d = prepared(&mut r2, 2, batch(vec![request(1, 11), request(1, 12)]));
    peer(&mut r2, 0, PeerMessage::Commit(vote(0, 2, d)));
    peer(&mut r2, 3, PeerMessage::Commit(vote(0, 2, d)));
    r2.step(Input::Tick { now_ms: forwarded_at + 1, wall_ms: 0 });
    assert!(!starts_view_change(&r2.take_actions()), "the primary has had it for a millisecond");
    r2.step(Input::Tick { now_ms: forwarded_at + timeout, wall_ms: 0 });
    let out = r2.take_actions();
    assert!(starts_view_change(&out));
    assert!(forwards_of(&out).is_empty(), "forwarded once");
}

/// Replica 2 enters view 1 (primary: replica 1) with nothing re-proposed;
/// returns what it sent.
fn enter_view_1(r2: &mut Replica<TestCrypto>) -> Vec<Action> {
    let vcs: Vec<_> = [0u32, 1, 3].iter().map(|&r| view_change_from(r, 1)).collect();
    let out = peer(r2, 1, new_view(1, 4, vcs, vec![]));
    assert!(r2.is_normal() && r2.view() == ViewNo(1));
    out
}

/// View 1's primary orders `requests` at sequence number 1, and replica 2
/// sees it prepared and committed.
fn order_in_view_1(r2: &mut Replica<TestCrypto>, requests: Vec<palisade_core::Request>) {
    let b = batch_in(1, requests);
    let d = b.digest();
    peer(r2, 1, pre_prepare(1, 1, b));
    for from in [0, 3] {
        peer(r2, from, PeerMessage::Prepare(vote(1, 1, d)));
    }
    for from in [0, 3] {
        peer(r2, from, PeerMessage::Commit(vote(1, 1, d)));
    }
    r2.take_actions();
}

/// The requests (client, id) forwarded to replica 1 among `out`.
fn forwards_to_1(out: &[Action]) -> Vec<(u64, u64)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to: ReplicaId(1), msg: PeerMessage::Forward(r) } => Some((r.client.0, r.id.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn after_a_view_change_every_pending_request_but_a_flood_counts_as_forwarded_to_the_new_primary() {
    let (mut r2, cfg) = backup();
    for id in 1..=3 {
        r2.step(Input::Request(request(2, id)));
    }
    flood(&mut r2);
    r2.take_actions();
    // View 1 starts: client 2's three go to its primary, replica 1; client
    // 1's flood does not (the primary has its own copy, or owes it nothing).
    let out = enter_view_1(&mut r2);
    assert_eq!(forwards_to_1(&out), vec![(2, 1), (2, 2), (2, 3)]);
    // It orders 1 and 2, and all of the flood but one; request 3 is timed,
    // and when it expires the new primary, which was sent it, is to blame
    // at once.
    let mut ordered = vec![request(2, 1), request(2, 2)];
    ordered.extend((1..=9).map(|id| request(1, id)));
    order_in_view_1(&mut r2, ordered);
    r2.step(Input::Tick { now_ms: cfg.request_timeout_ms + 1, wall_ms: 0 });
    let out = r2.take_actions();
    assert!(starts_view_change(&out));
    assert_eq!(forwards_to_1(&out), vec![(1, 10)], "the flood's last request goes late");
}

#[test]
fn a_client_that_flooded_stays_untimed_for_a_while_after_its_backlog_here_shrinks() {
    // The default memory of a flood.
    let mut cfg = config(Mode::Bft, 4);
    cfg.client_timed_max = 4;
    cfg.request_timeout_rounds = 0;
    let mut r2 = replica(2, &cfg);
    flood(&mut r2);
    // The primary orders 1-7: three are left, few enough to be timed, but
    // the primary may hold a longer backlog of this client than this
    // replica does, with request 8 deep in it.
    let d = prepared(&mut r2, 1, batch((1..=7).map(|id| request(1, id)).collect()));
    peer(&mut r2, 0, PeerMessage::Commit(vote(0, 1, d)));
    let out = peer(&mut r2, 3, PeerMessage::Commit(vote(0, 1, d)));
    assert_eq!(delivered(&out), vec![SeqNo(1)]);
    let timeout = cfg.request_timeout_ms;
    r2.step(Input::Tick { now_ms: 3 * timeout, wall_ms: 0 });
    let out = r2.take_actions();
    assert!(!starts_view_change(&out) && forwards_of(&out).is_empty(), "untimed: the client flooded a moment ago");
    // Its requests arriving now are not forwarded either.
    r2.step(Input::Request(request(1, 11)));
    assert!(forwards_of(&r2.take_actions()).is_empty());
    // Once the flood is forgotten, request 8 is timed from then, forwarded
    // at its first expiry, and blames the primary only at its second.
    // (The fixture's replica starts at 1 ms, when the flood came.)
    let forgotten = 1 + cfg.client_flood_memory_ms;
    r2.step(Input::Tick { now_ms: forgotten, wall_ms: 0 });
    assert!(!starts_view_change(&r2.take_actions()));
    r2.step(Input::Tick { now_ms: forgotten + timeout + 1, wall_ms: 0 });
    let out = r2.take_actions();
    assert_eq!(forwards_of(&out), vec![(1, 8)]);
    assert!(!starts_view_change(&out));
    r2.step(Input::Tick { now_ms: forgotten + 2 * timeout + 2, wall_ms: 0 });
    assert!(starts_view_change(&r2.take_actions()));
}

#[test]
fn a_forwarded_request_that_times_out_blames_the_primary_at_once() {
    let (mut r2, cfg) = backup();
    r2.step(Input::Request(request(1, 1)));
    r2.take_actions();
    r2.step(Input::Tick { now_ms: cfg.request_timeout_ms + 1, wall_ms: 0 });
    assert!(starts_view_change(&r2.take_actions()));
}

#[test]
fn a_flooding_clients_request_an_older_view_proposed_is_forwarded_before_it_blames_the_new_primary() {
    let (mut r2, cfg) = backup();
    flood(&mut r2);
    // View 0's primary proposes request 1 (at sequence number 2); it never
    // prepares.
    peer(&mut r2, 0, pre_prepare(0, 2, batch_in(0, vec![request(1, 1)])));
    r2.take_actions();
    // View 1 starts without it. The flood is not forwarded to replica 1.
    let out = enter_view_1(&mut r2);
    assert!(forwards_to_1(&out).is_empty());
    // The new primary orders 2-10; request 1, left alone, is timed. It was
    // an older view's proposal, not this one's: the new primary may never
    // have had it, so it is forwarded at its first expiry, not blamed.
    order_in_view_1(&mut r2, (2..=10).map(|id| request(1, id)).collect());
    r2.step(Input::Tick { now_ms: cfg.request_timeout_ms + 1, wall_ms: 0 });
    let out = r2.take_actions();
    assert_eq!(forwards_to_1(&out), vec![(1, 1)]);
    assert!(!starts_view_change(&out));
    r2.step(Input::Tick { now_ms: 2 * cfg.request_timeout_ms + 2, wall_ms: 0 });
    assert!(starts_view_change(&r2.take_actions()), "a timeout after the forward, the new primary is to blame");
}
