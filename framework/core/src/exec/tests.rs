//! The executor's tests: exactly-once execution, windows, snapshots and
//! reconfiguration requests.

use super::*;

/// Appends each operation's first byte; replies with the length so far.
#[derive(Default)]
pub(super) struct Log(Vec<u8>);

impl Service for Log {
    fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
        self.0.push(op[0]);
        Bytes::from(vec![self.0.len() as u8])
    }
    fn execute_unordered(&self, _: &[u8]) -> Bytes {
        Bytes::from(self.0.clone())
    }
    fn snapshot(&self) -> Bytes {
        Bytes::from(self.0.clone())
    }
    fn install(&mut self, s: &[u8]) -> Result<(), String> {
        self.0 = s.to_vec();
        Ok(())
    }
}

pub(super) fn req(client: u64, id: u64, op: u8) -> Request {
    Request {
        client: ClientId(client),
        id: RequestId(id),
        read_only: false,
        operation: Bytes::from(vec![op]),
        auth: Bytes::new(),
    }
}

pub(super) fn batch(reqs: Vec<Request>) -> Batch {
    Batch { timestamp_ms: 1, proposed_in: ViewNo(0), requests: reqs }
}

fn reconfigurable() -> Executor<Log> {
    use crate::reconfig::tests::{genesis, TestVerify};
    Executor::new(Log::default(), 4).with_reconfiguration(
        genesis(4, crate::Mode::Bft),
        std::sync::Arc::new(TestVerify),
        8,
    )
}

fn admin_req(id: u64, operation: Bytes) -> Request {
    let client = ClientId::of_key(&crate::reconfig::tests::VM);
    Request { client, id: RequestId(id), read_only: false, operation, auth: Bytes::new() }
}

#[test]
fn the_view_managers_requests_change_the_membership_not_the_service_and_only_at_the_boundary() {
    use crate::reconfig::tests::{add, signed};
    use crate::reconfig::AdminOutcome;
    let mut ex = reconfigurable();
    let genesis_digest = ex.state_digest();
    let out =
        ex.execute_batch(SeqNo(3), ViewNo(0), &batch(vec![req(1, 1, b'a'), admin_req(1, signed(0, 1, vec![add(4)]))]));
    assert_eq!(ex.service().0, b"a", "the admin request never reached the service");
    let Some(AdminOutcome::Accepted { next, boundary }) = AdminOutcome::decode(&out[1].result) else {
        panic!("not accepted: {:?}", out[1])
    };
    assert_eq!((next.epoch, boundary), (1, SeqNo(8)));
    assert_eq!(ex.pending_configuration().map(|(c, s)| (c.epoch, s)), Some((1, SeqNo(8))));
    // The retransmitted request gets the same answer, and is not judged
    // again (which would now say a change is pending).
    let again = ex.execute_batch(SeqNo(4), ViewNo(0), &batch(vec![admin_req(1, signed(0, 1, vec![add(4)]))]));
    assert!(!again[0].fresh);
    assert_eq!(again[0].result, out[1].result);
    for seq in 5..8 {
        ex.execute_batch(SeqNo(seq), ViewNo(0), &Batch { timestamp_ms: 1, proposed_in: ViewNo(0), requests: vec![] });
        assert_eq!(ex.configuration().unwrap().epoch, 0);
    }
    // A null batch at the boundary hands over all the same.
    ex.execute_batch(SeqNo(8), ViewNo(0), &Batch { timestamp_ms: 1, proposed_in: ViewNo(0), requests: vec![] });
    assert_eq!(ex.configuration().unwrap().members.len(), 5);
    assert!(ex.pending_configuration().is_none());
    assert_ne!(ex.state_digest(), genesis_digest);
}

#[test]
fn the_membership_travels_in_snapshots_and_parts_and_is_covered_by_the_digest() {
    use crate::reconfig::tests::{add, signed};
    let mut a = reconfigurable();
    a.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![admin_req(1, signed(0, 1, vec![add(4)]))]));
    let mut b = reconfigurable();
    b.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'x')]));
    b.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![]));
    assert_ne!(a.state_digest(), reconfigurable().state_digest(), "a pending change is in the digest");
    // Install by parts: same digest, same pending change.
    for i in 0..a.part_count() {
        b.install_part(i, a.part(i).records()).unwrap();
    }
    assert_eq!(b.state_digest(), a.state_digest());
    assert_eq!(b.pending_configuration().map(|(c, s)| (c.epoch, s)), Some((1, SeqNo(8))));
    // And by whole snapshot.
    let mut c = reconfigurable();
    c.install(&a.snapshot()).unwrap();
    assert_eq!(c.state_digest(), a.state_digest());
    // Without reconfiguration the settings hash as they always did.
    assert_eq!(Executor::new(Log::default(), 4).part(0).records()[0].len(), 2);
}

#[test]
fn a_request_from_any_other_client_is_the_services_even_if_it_looks_like_an_admin_request() {
    use crate::reconfig::tests::{add, signed};
    let mut ex = reconfigurable();
    let mut r = admin_req(1, signed(0, 1, vec![add(4)]));
    r.client = ClientId(99);
    ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![r]));
    assert!(ex.pending_configuration().is_none());
    assert_eq!(ex.service().0.len(), 1);
}

#[test]
fn a_retransmitted_request_gets_the_cached_reply_and_does_not_execute_again() {
    let mut ex = Executor::new(Log::default(), 4);
    let first = ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'a')]));
    let again = ex.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(1, 1, b'a')]));
    assert!(first[0].fresh && !again[0].fresh);
    assert_eq!(first[0].result, again[0].result);
    assert_eq!(ex.service().0, b"a");
    assert_eq!(ex.lookup(ClientId(1), RequestId(1)), Lookup::Cached(first[0].result.clone()));
}

#[test]
fn requests_inside_the_window_may_execute_out_of_order_but_once() {
    let mut ex = Executor::new(Log::default(), 4);
    ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 5, b'a'), req(1, 3, b'b'), req(1, 3, b'c')]));
    assert_eq!(ex.service().0, b"ab");
    // 1 is at the window's edge (5 - 4): stale, neither executed nor cached.
    assert_eq!(ex.lookup(ClientId(1), RequestId(1)), Lookup::Stale);
    assert_eq!(ex.lookup(ClientId(1), RequestId(2)), Lookup::New);
    let out = ex.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(1, 1, b'z')]));
    assert!(out.is_empty());
    assert_eq!(ex.service().0, b"ab");
}

#[test]
fn a_snapshot_restores_the_client_table_and_the_service() {
    let mut ex = Executor::new(Log::default(), 4);
    ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'a'), req(2, 9, b'b')]));
    let snap = ex.snapshot();
    let mut other = Executor::new(Log::default(), 4);
    other.install(&snap).unwrap();
    assert_eq!(other.snapshot(), snap);
    let out = other.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(2, 9, b'b')]));
    assert!(!out[0].fresh);
    assert!(other.install(b"\xff\xff\xff").is_err());
}

#[test]
fn the_per_batch_seed_cannot_be_ground_by_the_primary_through_timestamp_or_order() {
    let a = Batch { timestamp_ms: 100, proposed_in: ViewNo(0), requests: vec![req(1, 1, 0), req(2, 1, 0)] };
    let later = Batch { timestamp_ms: 101, ..a.clone() };
    let swapped = Batch { timestamp_ms: 100, proposed_in: ViewNo(0), requests: vec![req(2, 1, 0), req(1, 1, 0)] };
    assert_eq!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(3), &later));
    assert_eq!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(3), &swapped));
    assert_ne!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(4), &a));
    let other = Batch { timestamp_ms: 100, proposed_in: ViewNo(0), requests: vec![req(1, 2, 0), req(2, 1, 0)] };
    assert_ne!(batch_seed(SeqNo(3), &a), batch_seed(SeqNo(3), &other));
}

#[test]
fn timestamps_seen_by_the_service_never_go_backwards() {
    struct Ts(Vec<u64>);
    impl Service for Ts {
        fn execute(&mut self, ctx: &ExecContext, _: &[u8]) -> Bytes {
            self.0.push(ctx.timestamp_ms);
            Bytes::new()
        }
        fn execute_unordered(&self, _: &[u8]) -> Bytes {
            Bytes::new()
        }
        fn snapshot(&self) -> Bytes {
            Bytes::new()
        }
        fn install(&mut self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }
    let mut ex = Executor::new(Ts(vec![]), 4);
    let b = |ts, id| Batch { timestamp_ms: ts, proposed_in: ViewNo(0), requests: vec![req(1, id, 0)] };
    ex.execute_batch(SeqNo(1), ViewNo(0), &b(100, 1));
    ex.execute_batch(SeqNo(2), ViewNo(0), &b(50, 2));
    ex.execute_batch(SeqNo(3), ViewNo(0), &b(200, 3));
    assert_eq!(ex.service().0, vec![100, 100, 200]);
}

/// Counts how often the batch entry point is used.
#[derive(Default)]
struct Batched {
    calls: usize,
    log: Vec<u8>,
}

impl Service for Batched {
    fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
        self.log.push(op[0]);
        Bytes::from(vec![op[0]])
    }
    fn execute_batch(&mut self, requests: &[(ExecContext, &[u8])]) -> Vec<Bytes> {
        self.calls += 1;
        requests.iter().map(|(c, op)| self.execute(c, op)).collect()
    }
    fn execute_unordered(&self, _: &[u8]) -> Bytes {
        Bytes::new()
    }
    fn snapshot(&self) -> Bytes {
        Bytes::new()
    }
    fn install(&mut self, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn a_batch_reaches_the_service_in_one_call_with_in_batch_duplicates_executed_once() {
    let mut ex = Executor::new(Batched::default(), 16);
    let b = Batch {
        timestamp_ms: 1,
        proposed_in: ViewNo(0),
        requests: vec![req(1, 1, b'a'), req(2, 1, b'b'), req(1, 1, b'a'), req(1, 2, b'c')],
    };
    let out = ex.execute_batch(SeqNo(1), ViewNo(0), &b);
    assert_eq!(ex.service().calls, 1);
    assert_eq!(ex.service().log, b"abc");
    assert_eq!(out.iter().map(|e| e.fresh).collect::<Vec<_>>(), vec![true, true, false, true]);
    assert_eq!(out[2].result, out[0].result);
    let again = ex.execute_batch(SeqNo(2), ViewNo(0), &b);
    assert_eq!(ex.service().calls, 1, "nothing fresh: the service is not called");
    assert!(again.iter().all(|e| !e.fresh));
}
