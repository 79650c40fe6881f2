//! The core's side of membership epochs (docs/reconfiguration.md): an epoch
//! ends at a checkpoint and orders nothing past it, its primary is replaced
//! if it does not get there, and the next epoch's core starts at that
//! checkpoint with certificates and signatures of its own.

use palisade_core::checkpoint::Genesis;
use palisade_core::crypto::{self, Domain};
use palisade_core::message::{Signature, ViewChangeBody};
use palisade_core::replica::Discard;
use palisade_core::{Action, Crypto, Digest, Input, Mode, PeerMessage, Replica, ReplicaId, Request, SeqNo, ViewNo};
use palisade_testkit::cluster::{Log, MemCluster};
use palisade_testkit::crypto::TestCrypto;
use palisade_testkit::fixtures::*;

fn ends_at(c: &mut MemCluster<TestCrypto, Log>, replicas: &[usize], last: u64) {
    for &r in replicas {
        c.input(r, Input::EpochEnds { last: SeqNo(last) });
    }
    c.run();
}

fn dropped(r: &Replica<TestCrypto>, why: Discard) -> u64 {
    r.metrics().dropped.get(&why).copied().unwrap_or(0)
}

#[test]
fn an_epoch_is_filled_with_null_batches_up_to_its_end_and_then_orders_nothing() {
    let cfg = config(Mode::Bft, 4);
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    c.submit(0, request(1, 1));
    c.tick(1);
    assert_eq!(c.core(2).delivered(), SeqNo(1));
    ends_at(&mut c, &[0, 1, 2, 3], 4);
    c.tick(1);
    for r in 0..4 {
        let core = c.core(r);
        assert_eq!((core.delivered(), core.stable_checkpoint().seq), (SeqNo(4), SeqNo(4)), "replica {r}");
        assert!(core.epoch_over(), "replica {r}");
    }
    let last: Vec<SeqNo> = c.delivered[1].iter().map(|(s, _)| *s).collect();
    assert_eq!(last, vec![SeqNo(1), SeqNo(2), SeqNo(3), SeqNo(4)], "2 to 4 were filled");
    // A request now goes nowhere in this epoch, and is counted.
    c.submit(0, request(1, 2));
    c.tick(5_000);
    assert_eq!(c.core(0).delivered(), SeqNo(4));
    assert_eq!(c.core(0).view(), ViewNo(0), "an epoch that is over never changes view");
    assert_eq!(dropped(c.core(0), Discard::EpochOver), 1);
}

#[test]
fn requests_waiting_when_the_end_is_known_fill_the_epoch_before_null_batches_do() {
    let mut cfg = config(Mode::Bft, 4);
    cfg.max_in_flight = 1;
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    for r in 1..4 {
        c.input(r, Input::EpochEnds { last: SeqNo(4) });
    }
    // The primary proposes a null batch at 1 at once; the request that
    // arrives while it is in flight takes 2, and nulls fill 3 and 4.
    c.input(0, Input::EpochEnds { last: SeqNo(4) });
    c.input(0, Input::Request(request(1, 1)));
    c.run();
    c.tick(1);
    assert_eq!(c.core(3).delivered(), SeqNo(4));
    let with_requests: Vec<SeqNo> =
        c.delivered[3].iter().filter(|(_, d)| *d != palisade_core::message::null_digest()).map(|(s, _)| *s).collect();
    assert_eq!(with_requests, vec![SeqNo(2)]);
    assert_eq!(c.delivered_requests[3], 1, "the request executed inside the epoch");
}

#[test]
fn a_backup_refuses_pre_prepares_past_the_end_and_delivers_nothing_past_it() {
    let cfg = config(Mode::Bft, 4);
    let mut r1 = replica(1, &cfg);
    r1.step(Input::EpochEnds { last: SeqNo(4) });
    r1.take_actions();
    let out = peer(&mut r1, 0, pre_prepare(0, 5, batch(vec![request(1, 1)])));
    assert!(broadcasts(&out).is_empty(), "no vote past the end: {out:?}");
    assert_eq!(dropped(&r1, Discard::PrePreparePastEnd), 1);
    // Inside the epoch it votes as ever.
    let b = batch(vec![request(1, 2)]);
    let out = peer(&mut r1, 0, pre_prepare(0, 1, b.clone()));
    assert!(votes_for(&out, b.digest()));
}

#[test]
fn a_primary_that_does_not_reach_the_end_is_replaced_and_the_next_one_fills_it() {
    let cfg = config(Mode::Bft, 4);
    let mut c = MemCluster::new(&cfg, TestCrypto, Log::default);
    c.submit(0, request(1, 1));
    c.tick(1);
    // The primary stops before it is told; the others learn the end.
    c.down[0] = true;
    ends_at(&mut c, &[1, 2, 3], 4);
    // The request timeout, adapted to the rounds timed so far.
    let timeout = c.core(1).request_timeout_ms();
    assert!(timeout < cfg.request_timeout_ms, "one round timed: {timeout} ms");
    c.tick(timeout - 10);
    assert_eq!(c.core(1).view(), ViewNo(0), "not before the timeout");
    c.tick(20);
    for _ in 0..10 {
        c.tick(100);
    }
    for r in 1..4 {
        let core = c.core(r);
        assert!(core.view() >= ViewNo(1), "replica {r} left the silent primary's view");
        assert_eq!(core.delivered(), SeqNo(4), "replica {r}");
        assert!(core.epoch_over(), "replica {r}");
    }
}

#[test]
fn the_next_epoch_starts_at_its_handover_checkpoint_and_takes_no_certificate_below_it() {
    let cfg = config(Mode::Bft, 4);
    let handover = Genesis { seq: SeqNo(8), state: Digest::of(b"the state at 8") };
    let mut r1 = Replica::starting_at(cfg.clone(), ReplicaId(1), TestCrypto(ReplicaId(1)), handover);
    r1.step(tick(1));
    r1.take_actions();
    assert_eq!((r1.delivered(), r1.stable_checkpoint().seq, r1.view()), (SeqNo(8), SeqNo(8), ViewNo(0)));
    let b = batch(vec![request(1, 1)]);
    assert!(votes_for(&peer(&mut r1, 0, pre_prepare(0, 9, b.clone())), b.digest()), "ordering goes on at 9");
    let old = batch(vec![request(1, 2)]);
    assert!(!votes_for(&peer(&mut r1, 0, pre_prepare(0, 4, old.clone())), old.digest()), "4 is below the log");

    // A VIEW-CHANGE from the handover checkpoint is good; one from the
    // first epoch's genesis is not: that certificate is not this epoch's.
    let vc = |who: u32, checkpoint| {
        let body = ViewChangeBody {
            new_view: ViewNo(1),
            replica: ReplicaId(who),
            checkpoint,
            prepared: vec![],
            preprepared: vec![],
        };
        PeerMessage::ViewChange(crypto::sign(&TestCrypto(ReplicaId(who)), Domain::ViewChange, body))
    };
    let before = dropped(&r1, Discard::InvalidViewChange);
    peer(&mut r1, 2, vc(2, palisade_core::checkpoint::genesis(genesis_state())));
    assert_eq!(dropped(&r1, Discard::InvalidViewChange), before + 1);
    peer(&mut r1, 3, vc(3, handover.cert()));
    assert_eq!(dropped(&r1, Discard::InvalidViewChange), before + 1);
}

/// [`TestCrypto`] for a given epoch.
struct InEpoch(TestCrypto, u64);

impl Crypto for InEpoch {
    fn sign(&self, payload: &[u8]) -> Signature {
        self.0.sign(payload)
    }
    fn verify(&self, signer: ReplicaId, payload: &[u8], sig: &Signature) -> bool {
        self.0.verify(signer, payload, sig)
    }
    fn verify_request(&self, r: &Request) -> bool {
        self.0.verify_request(r)
    }
    fn epoch(&self) -> u64 {
        self.1
    }
}

#[test]
fn a_statement_signed_in_one_epoch_does_not_verify_in_another() {
    let body = ViewChangeBody {
        new_view: ViewNo(1),
        replica: ReplicaId(2),
        checkpoint: palisade_core::checkpoint::genesis(genesis_state()),
        prepared: vec![],
        preprepared: vec![],
    };
    let in_1 = crypto::sign(&InEpoch(TestCrypto(ReplicaId(2)), 1), Domain::ViewChange, body.clone());
    assert!(crypto::verify(&InEpoch(TestCrypto(ReplicaId(0)), 1), Domain::ViewChange, ReplicaId(2), &in_1));
    assert!(!crypto::verify(&InEpoch(TestCrypto(ReplicaId(0)), 2), Domain::ViewChange, ReplicaId(2), &in_1));
    // Epoch 0 signs exactly as a cluster that was never reconfigured.
    let in_0 = crypto::sign(&InEpoch(TestCrypto(ReplicaId(2)), 0), Domain::ViewChange, body.clone());
    assert_eq!(in_0, crypto::sign(&TestCrypto(ReplicaId(2)), Domain::ViewChange, body));
}

#[test]
fn a_replica_joining_at_a_handover_fetches_that_state_before_anything_else() {
    let cfg = config(Mode::Bft, 4);
    let handover = Genesis { seq: SeqNo(8), state: Digest::of(b"the state at 8") };
    let mut r = Replica::joining(cfg, ReplicaId(3), TestCrypto(ReplicaId(3)), handover, SeqNo(0));
    let out = r.take_actions();
    assert!(
        out.iter().any(|a| matches!(a, Action::FetchState { seq: SeqNo(8), state, .. } if *state == handover.state)),
        "{out:?}"
    );
    assert!(r.transferring());
    r.step(Input::StateFetched { seq: SeqNo(8), state: handover.state });
    assert_eq!(r.delivered(), SeqNo(8));
    assert!(!r.transferring());
}
