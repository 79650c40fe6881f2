//! Safety checkers: agreement, exactly-once execution and linearizability
//! of what clients observed. They only look at correct replicas.

use crate::service::SimOp;
use bytes::Bytes;
use palisade_core::{ClientId, Digest, ReplicaId, RequestId, SeqNo};
use palisade_services::counter::CounterOp;
use palisade_services::register::RegisterOp;
use std::collections::BTreeMap;

/// One request executed for the first time inside a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreshExec {
    /// Client.
    pub client: ClientId,
    /// Request.
    pub request: RequestId,
    /// Operation bytes.
    pub operation: Bytes,
    /// Result bytes.
    pub result: Bytes,
}

/// What one client saw of one operation.
#[derive(Clone, Debug)]
pub struct OpRecord {
    /// Client.
    pub client: ClientId,
    /// Ids the operation used (a read-only attempt, then an ordered retry).
    pub requests: Vec<RequestId>,
    /// The operation.
    pub op: SimOp,
    /// When the client invoked it.
    pub invoke_ms: u64,
    /// When the client accepted a result, if it did.
    pub complete_ms: Option<u64>,
    /// The accepted result.
    pub result: Option<Bytes>,
}

/// Collects evidence while a run goes and judges it.
#[derive(Default)]
pub struct Checker {
    decided: BTreeMap<SeqNo, (Digest, ReplicaId)>,
    fresh: BTreeMap<SeqNo, Vec<FreshExec>>,
    position: BTreeMap<(ClientId, RequestId), (SeqNo, usize)>,
    checkpoints: BTreeMap<SeqNo, (Digest, ReplicaId)>,
    /// Every violation found, in words.
    pub violations: Vec<String>,
    /// Requests a correct replica still holds executed tentatively at the
    /// end of a run beyond the fault model: accepted on tentative answers,
    /// neither committed nor lost.
    pub pending: std::collections::BTreeSet<(ClientId, RequestId)>,
}

impl Checker {
    /// A correct replica delivered `seq` with batch `digest` and executed `fresh` for the first time.
    pub fn on_deliver(&mut self, replica: ReplicaId, seq: SeqNo, digest: Digest, fresh: Vec<FreshExec>) {
        match self.decided.get(&seq) {
            None => {
                self.decided.insert(seq, (digest, replica));
                for (i, e) in fresh.iter().enumerate() {
                    let key = (e.client, e.request);
                    if let Some((other, _)) = self.position.get(&key) {
                        self.violations.push(format!(
                            "exactly-once: client {} request {} executed at seq {} and again at seq {}",
                            e.client, e.request, other, seq
                        ));
                    } else {
                        self.position.insert(key, (seq, i));
                    }
                }
                self.fresh.insert(seq, fresh);
            }
            Some((d, first)) => {
                if *d != digest {
                    self.violations.push(format!(
                        "agreement: seq {seq}: replica {first} delivered batch {d}, replica {replica} delivered {digest}"
                    ));
                } else if self.fresh.get(&seq) != Some(&fresh) {
                    self.violations.push(format!(
                        "agreement: seq {seq}: replica {replica} executed the batch differently from replica {first}"
                    ));
                }
            }
        }
    }

    /// Distinct client requests executed so far.
    pub fn executed_count(&self) -> usize {
        self.position.len()
    }

    /// A correct replica's state digest at checkpoint `seq`.
    pub fn on_checkpoint(&mut self, replica: ReplicaId, seq: SeqNo, state: Digest) {
        match self.checkpoints.get(&seq) {
            None => {
                self.checkpoints.insert(seq, (state, replica));
            }
            Some((d, first)) if *d != state => self.violations.push(format!(
                "agreement: checkpoint {seq}: replica {first} has state {d}, replica {replica} has {state}"
            )),
            Some(_) => {}
        }
    }

    /// A correct replica's core raised an alarm (it saw evidence of divergence).
    pub fn on_alarm(&mut self, replica: ReplicaId, count: u64) {
        self.violations.push(format!("replica {replica} raised {count} safety alarm(s)"));
    }

    /// Batches delivered by some correct replica.
    pub fn decided_count(&self) -> usize {
        self.decided.len()
    }

    /// Linearizability of client observations against the canonical order.
    /// Each object's updates get even points 2i (the i-th update, from 1)
    /// and a read of the value after update i gets the odd point 2i+1; the
    /// history is linearizable iff no operation has a smaller point than an
    /// operation that completed before it was invoked, and every accepted
    /// result is the one the canonical execution produced.
    pub fn check_linearizable(&mut self, history: &[OpRecord]) {
        // The canonical sequence of updates per object.
        let mut counter_values: Vec<u64> = Vec::new();
        let mut register_values: Vec<u64> = Vec::new();
        let mut update_point: BTreeMap<(ClientId, RequestId), u64> = BTreeMap::new();
        let mut canonical_result: BTreeMap<(ClientId, RequestId), Bytes> = BTreeMap::new();
        for execs in self.fresh.values() {
            for e in execs {
                canonical_result.insert((e.client, e.request), e.result.clone());
                match SimOp::decode(&e.operation) {
                    Some(SimOp::Counter(CounterOp::Add(_))) => {
                        counter_values.push(u64_of(&e.result).unwrap_or(u64::MAX));
                        update_point.insert((e.client, e.request), 2 * counter_values.len() as u64);
                    }
                    Some(SimOp::Register(RegisterOp::Write(v))) => {
                        register_values.push(v);
                        update_point.insert((e.client, e.request), 2 * register_values.len() as u64);
                    }
                    _ => {}
                }
            }
        }
        let mut per_object: [Vec<(u64, Option<u64>, u64)>; 2] = [Vec::new(), Vec::new()];
        for op in history {
            let object = match op.op {
                SimOp::Counter(_) => 0,
                SimOp::Register(_) => 1,
            };
            if let (Some(result), Some(last)) = (&op.result, op.requests.last()) {
                if let Some(canon) = canonical_result.get(&(op.client, *last)) {
                    if canon != result {
                        self.violations.push(format!(
                            "linearizability: client {} request {} accepted {:?}, but it executed as {:?}",
                            op.client, last, result, canon
                        ));
                    }
                }
            }
            let pending = op.requests.last().is_some_and(|r| self.pending.contains(&(op.client, *r)));
            let point = if op.op.is_read_only() {
                let Some(result) = &op.result else { continue };
                if pending {
                    // A read retried as an ordered request, answered by a
                    // tentative execution that is still pending.
                    continue;
                }
                let Some(value) = u64_of(result) else {
                    self.violations.push(format!("client {} accepted a malformed result {result:?}", op.client));
                    continue;
                };
                let values = if object == 0 { &counter_values } else { &register_values };
                if value == 0 {
                    1
                } else if let Some(i) = values.iter().position(|v| *v == value) {
                    2 * (i as u64 + 1) + 1
                } else {
                    self.violations
                        .push(format!("linearizability: client {} read {} that no update produced", op.client, value));
                    continue;
                }
            } else {
                match op.requests.last().and_then(|r| update_point.get(&(op.client, *r))) {
                    Some(p) => *p,
                    None => {
                        if op.complete_ms.is_some() && !pending {
                            self.violations.push(format!(
                                "client {} accepted a result for request {:?} that no correct replica executed",
                                op.client,
                                op.requests.last()
                            ));
                        }
                        continue;
                    }
                }
            };
            per_object[object].push((op.invoke_ms, op.complete_ms, point));
        }
        for (object, ops) in per_object.iter().enumerate() {
            let mut completed: Vec<(u64, u64)> = ops.iter().filter_map(|(_, c, p)| c.map(|c| (c, *p))).collect();
            completed.sort();
            let mut by_invoke: Vec<(u64, u64)> = ops.iter().map(|(i, _, p)| (*i, *p)).collect();
            by_invoke.sort();
            let mut j = 0;
            let mut max_before = 0u64;
            for (invoke, point) in by_invoke {
                while j < completed.len() && completed[j].0 < invoke {
                    max_before = max_before.max(completed[j].1);
                    j += 1;
                }
                if point < max_before {
                    let name = if object == 0 { "counter" } else { "register" };
                    self.violations.push(format!(
                        "linearizability: a {name} operation invoked at {invoke} ms is ordered at point {point}, before point {max_before} of an operation that had already completed"
                    ));
                    break;
                }
            }
        }
    }
}

fn u64_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(client: u64, id: u64, op: SimOp, result: u64) -> FreshExec {
        FreshExec {
            client: ClientId(client),
            request: RequestId(id),
            operation: op.encode(),
            result: Bytes::copy_from_slice(&result.to_le_bytes()),
        }
    }

    fn rec(client: u64, id: u64, op: SimOp, invoke: u64, complete: u64, result: u64) -> OpRecord {
        OpRecord {
            client: ClientId(client),
            requests: vec![RequestId(id)],
            op,
            invoke_ms: invoke,
            complete_ms: Some(complete),
            result: Some(Bytes::copy_from_slice(&result.to_le_bytes())),
        }
    }

    #[test]
    fn different_batches_at_one_sequence_number_break_agreement() {
        let mut c = Checker::default();
        c.on_deliver(ReplicaId(0), SeqNo(1), Digest([1; 32]), vec![]);
        c.on_deliver(ReplicaId(1), SeqNo(1), Digest([1; 32]), vec![]);
        assert!(c.violations.is_empty());
        c.on_deliver(ReplicaId(2), SeqNo(1), Digest([2; 32]), vec![]);
        assert_eq!(c.violations.len(), 1);
    }

    #[test]
    fn one_request_executed_at_two_sequence_numbers_breaks_exactly_once() {
        let mut c = Checker::default();
        let add = SimOp::Counter(CounterOp::Add(1));
        c.on_deliver(ReplicaId(0), SeqNo(1), Digest([1; 32]), vec![exec(1, 1, add, 1)]);
        c.on_deliver(ReplicaId(0), SeqNo(2), Digest([2; 32]), vec![exec(1, 1, add, 2)]);
        assert!(c.violations[0].contains("exactly-once"));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let mut c = Checker::default();
        let add = SimOp::Counter(CounterOp::Add(5));
        c.on_deliver(ReplicaId(0), SeqNo(1), Digest([1; 32]), vec![exec(1, 1, add, 5)]);
        let get = SimOp::Counter(CounterOp::Get);
        // The add completes at 10; a read invoked at 20 returns the old 0.
        c.check_linearizable(&[rec(1, 1, add, 0, 10, 5), rec(2, 1, get, 20, 30, 0)]);
        assert!(c.violations.iter().any(|v| v.contains("linearizability")), "{:?}", c.violations);
    }

    #[test]
    fn a_concurrent_read_may_see_either_value() {
        let mut c = Checker::default();
        let w = SimOp::Register(RegisterOp::Write(7));
        c.on_deliver(ReplicaId(0), SeqNo(1), Digest([1; 32]), vec![exec(1, 1, w, 0)]);
        let r = SimOp::Register(RegisterOp::Read);
        c.check_linearizable(&[rec(1, 1, w, 0, 10, 0), rec(2, 1, r, 5, 30, 0), rec(3, 1, r, 6, 31, 7)]);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
    }

    #[test]
    fn a_result_other_than_the_executed_one_is_caught() {
        let mut c = Checker::default();
        let add = SimOp::Counter(CounterOp::Add(5));
        c.on_deliver(ReplicaId(0), SeqNo(1), Digest([1; 32]), vec![exec(1, 1, add, 5)]);
        c.check_linearizable(&[rec(1, 1, add, 0, 10, 6)]);
        assert!(!c.violations.is_empty());
    }
}
