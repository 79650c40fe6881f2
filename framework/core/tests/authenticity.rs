//! Client authenticity (docs/protocol.md, *Client authenticity*): the
//! primary proposes only requests whose signatures check, a backup treats
//! a proposed request it cannot authenticate as proof against the primary,
//! and a faulty client cannot get a correct primary blamed.

use bytes::Bytes;
use palisade_core::message::Batch;
use palisade_core::replica::Discard;
use palisade_core::{Input, Mode, PeerMessage};
use palisade_testkit::fixtures::*;
use std::sync::Arc;

#[test]
fn a_pre_prepare_with_an_unsigned_request_or_a_wild_timestamp_is_refused() {
    let cfg = config(Mode::Bft, 4);
    // A request no client sent is refused, and is proof against the
    // primary: the backup asks for a view change at once.
    let mut r1 = replica(1, &cfg);
    let mut forged = request(1, 1);
    forged.auth = Bytes::from_static(b"forged");
    let actions = peer(&mut r1, 0, pre_prepare(0, 1, batch(vec![forged])));
    let out = broadcasts(&actions);
    assert!(!out.iter().any(|m| matches!(m, PeerMessage::Prepare(_))), "no PREPARE for it");
    assert!(out.iter().any(|m| matches!(m, PeerMessage::ViewChange(_))), "{out:?}");
    assert_eq!(r1.metrics().primary_evidence, 1);
    // A wild timestamp is refused, but is no proof: clocks differ.
    let mut r2 = replica(2, &cfg);
    let late = Arc::new(Batch {
        timestamp_ms: cfg.timestamp_tolerance_ms + 10,
        proposed_in: palisade_core::ViewNo(0),
        requests: vec![request(1, 1)],
    });
    assert!(broadcasts(&peer(&mut r2, 0, pre_prepare(0, 1, late))).is_empty());
}

#[test]
fn a_primary_never_proposes_a_request_whose_signature_fails() {
    let cfg = config(Mode::Bft, 4);
    let mut r0 = replica(0, &cfg);
    r0.step(Input::Tick { now_ms: 1, wall_ms: 1 });
    let mut bad = request(1, 1);
    bad.auth = Bytes::from_static(b"not a signature");
    r0.step(Input::Request(bad));
    r0.step(Input::Request(request(2, 1)));
    let out = r0.take_actions();
    let proposed: Vec<_> = broadcasts(&out)
        .iter()
        .filter_map(|m| match m {
            PeerMessage::PrePrepare(pp) => Some(pp.batch.requests.iter().map(|r| r.client.0).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(proposed, vec![2], "only the signed request is proposed");
    assert_eq!(r0.metrics().dropped(Discard::ClientUnauthenticated), 1);
}

/// A faulty client sends a backup a request with a bad signature, which the
/// primary rightly never orders: when the backup's timer expires it checks
/// the signature and drops the request instead of blaming the primary.
#[test]
fn a_backup_does_not_blame_the_primary_for_refusing_a_badly_signed_request() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    r1.step(Input::Tick { now_ms: 1, wall_ms: 1 });
    let mut bad = request(1, 1);
    bad.auth = Bytes::from_static(b"not a signature");
    r1.step(Input::Request(bad));
    r1.take_actions();
    r1.step(Input::Tick { now_ms: 5_000, wall_ms: 1 });
    let out = r1.take_actions();
    assert!(!broadcasts(&out).iter().any(|m| matches!(m, PeerMessage::ViewChange(_))), "{out:?}");
    assert_eq!(r1.metrics().dropped(Discard::ClientUnauthenticated), 1);
    // A well-signed request the primary ignores still costs it the view.
    r1.step(Input::Request(request(2, 1)));
    r1.take_actions();
    r1.step(Input::Tick { now_ms: 10_000, wall_ms: 1 });
    let out = r1.take_actions();
    assert!(broadcasts(&out).iter().any(|m| matches!(m, PeerMessage::ViewChange(_))));
}

/// A faulty client sends the primary a badly signed copy of a request and
/// the backups a good one: the good copy a backup forwards takes the bad
/// one's place, so the primary proposes it instead of losing it (and then
/// being blamed for it).
#[test]
fn a_good_copy_forwarded_by_a_backup_replaces_a_badly_signed_one() {
    let mut cfg = config(Mode::Bft, 4);
    // One batch in flight, so that later requests wait in the queue.
    cfg.max_in_flight = 1;
    let mut r0 = replica(0, &cfg);
    r0.step(Input::Tick { now_ms: 1, wall_ms: 1 });
    r0.step(Input::Request(request(9, 1)));
    let mut bad = request(1, 1);
    bad.auth = Bytes::from_static(b"not a signature");
    r0.step(Input::Request(bad));
    r0.take_actions();
    let out = peer(&mut r0, 2, PeerMessage::Forward(request(1, 1)));
    assert!(broadcasts(&out).is_empty(), "still waiting for the batch in flight");
    // Deliver the first batch so the queued request goes out.
    let first = batch(vec![request(9, 1)]);
    let d = first.digest();
    let mut out = Vec::new();
    for from in [1, 2, 3] {
        out.extend(peer(&mut r0, from, PeerMessage::Prepare(vote(0, 1, d))));
    }
    for from in [1, 2, 3] {
        out.extend(peer(&mut r0, from, PeerMessage::Commit(vote(0, 1, d))));
    }
    let proposed: Vec<_> = broadcasts(&out)
        .iter()
        .filter_map(|m| match m {
            PeerMessage::PrePrepare(pp) => Some(pp.batch.requests.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(proposed, vec![request(1, 1)], "the good copy is proposed");
    assert_eq!(r0.metrics().dropped(Discard::ClientUnauthenticated), 0);
}
