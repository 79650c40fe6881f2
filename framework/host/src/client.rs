//! The client's decisions, as a state machine: which answers settle an
//! operation. The async client wraps it with sockets and timers; the
//! simulator drives it against Byzantine replicas.

use bytes::Bytes;
use palisade_core::{ClientId, Digest, Membership, ReplicaId, RequestId, ViewNo};
use palisade_wire::envelope::{designated_replier, Answer, RejectReason};
use std::collections::BTreeMap;

/// What the answers so far mean for the operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Enough replicas agree on this result (f+1 for an ordered request,
    /// a quorum for a read-only one); `view` is their median view, the
    /// client's new idea of who is primary.
    Done {
        /// The result.
        result: Bytes,
        /// The median view of the agreeing replies.
        view: ViewNo,
    },
    /// f+1 replicas turned the request away for the same reason (never
    /// for `Busy`, which is only a hint to back off).
    Rejected(RejectReason),
    /// Every replica answered a read-only request and no quorum agrees:
    /// order it instead.
    NoQuorum,
    /// Enough replicas say the result is too large to send (`len` bytes);
    /// the operation executed if it was ordered.
    TooLarge {
        /// The result's length.
        len: u64,
    },
    /// Enough replicas agree on the result's digest but nobody sent it in
    /// full. `now: false`: wait a grace period for the designated replier;
    /// `now: true`: ask every replica again (they answer retransmissions in
    /// full).
    NeedFull {
        /// Ask at once.
        now: bool,
    },
}

/// One operation in flight.
#[derive(Clone, Debug)]
pub struct Invocation {
    need: usize,
    weak_quorum: usize,
    n: usize,
    read_only: bool,
    designated: ReplicaId,
    /// Each replica's answer: the result's digest, the result if sent in
    /// full, and the replica's view.
    replies: BTreeMap<ReplicaId, (Digest, Option<Bytes>, ViewNo)>,
    /// Replicas that said the result is too large: its length and digest.
    too_large: BTreeMap<ReplicaId, (u64, Digest)>,
    rejections: BTreeMap<ReplicaId, RejectReason>,
    /// 0: not yet; 1: told the caller to wait for it; 2: asked everyone.
    asked_for_full: u8,
    settled: bool,
}

impl Invocation {
    /// Starts deciding request `request` of `client`.
    pub fn new(membership: &Membership, client: ClientId, request: RequestId, read_only: bool) -> Invocation {
        Invocation {
            need: if read_only { membership.quorum() } else { membership.weak_quorum() },
            weak_quorum: membership.weak_quorum(),
            n: membership.n(),
            read_only,
            designated: designated_replier(membership, client, request),
            replies: BTreeMap::new(),
            too_large: BTreeMap::new(),
            rejections: BTreeMap::new(),
            asked_for_full: 0,
            settled: false,
        }
    }

    /// The replica that sends this request's result in full when the
    /// others send its digest.
    pub fn designated(&self) -> ReplicaId {
        self.designated
    }

    /// Replica `from` answered in `view`. `wait_for_designated` says
    /// whether waiting a grace period for the designated replier makes
    /// sense (it is connected and has not recently let one run out).
    /// Returns a verdict when the answers settle something new.
    pub fn on_answer(
        &mut self,
        from: ReplicaId,
        view: ViewNo,
        answer: Answer,
        wait_for_designated: bool,
    ) -> Option<Verdict> {
        if self.settled {
            return None;
        }
        if !matches!(answer, Answer::TooLarge { .. }) {
            self.too_large.remove(&from);
        }
        match answer {
            Answer::Full(result) => {
                self.replies.insert(from, (Digest::of(&result), Some(result), view));
            }
            Answer::Digest(digest) => {
                // Never let a digest replace a full result from the same replica.
                if self.replies.get(&from).is_none_or(|(_, full, _)| full.is_none()) {
                    self.replies.insert(from, (digest, None, view));
                }
            }
            Answer::TooLarge { len, digest } => {
                self.replies.remove(&from);
                self.too_large.insert(from, (len, digest));
                let agree = self.too_large.values().filter(|x| **x == (len, digest)).count();
                if agree >= self.need {
                    self.settled = true;
                    return Some(Verdict::TooLarge { len });
                }
                return None;
            }
        }
        self.settle(wait_for_designated)
    }

    /// Replica `from` turned the request away.
    pub fn on_rejection(&mut self, from: ReplicaId, reason: RejectReason) -> Option<Verdict> {
        if self.settled {
            return None;
        }
        self.rejections.insert(from, reason);
        // Busy is only a hint to back off (retransmission handles it); a
        // refusal counts when f+1 replicas agree on it.
        if reason != RejectReason::Busy
            && self.rejections.values().filter(|r| **r == reason).count() >= self.weak_quorum
        {
            self.settled = true;
            return Some(Verdict::Rejected(reason));
        }
        None
    }

    fn settle(&mut self, wait_for_designated: bool) -> Option<Verdict> {
        let mut by_digest: BTreeMap<Digest, (usize, Option<&Bytes>, Vec<ViewNo>)> = BTreeMap::new();
        for (digest, full, view) in self.replies.values() {
            let e = by_digest.entry(*digest).or_insert((0, None, Vec::new()));
            e.0 += 1;
            if e.1.is_none() {
                e.1 = full.as_ref();
            }
            e.2.push(*view);
        }
        match by_digest.into_iter().find(|(_, (count, _, _))| *count >= self.need) {
            Some((_, (_, Some(result), mut views))) => {
                views.sort();
                let (result, view) = (result.clone(), views[views.len() / 2]);
                self.settled = true;
                Some(Verdict::Done { result, view })
            }
            Some((_, (_, None, _))) => {
                // Once when the digests agree, and once more if every
                // replica has answered and none sent the result. Waiting is
                // pointless when the designated replica cannot answer.
                let ask_now = self.replies.len() == self.n || !wait_for_designated;
                let now = match self.asked_for_full {
                    0 => ask_now,
                    1 if ask_now => true,
                    _ => return None,
                };
                self.asked_for_full = if now { 2 } else { 1 };
                Some(Verdict::NeedFull { now })
            }
            None if self.read_only && self.replies.len() + self.too_large.len() == self.n => {
                self.settled = true;
                Some(Verdict::NoQuorum)
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn four() -> Membership {
        Membership::with_size(4, palisade_core::Mode::Bft).unwrap()
    }

    fn full(b: &'static [u8]) -> Answer {
        Answer::Full(Bytes::from_static(b))
    }

    #[test]
    fn an_ordered_request_settles_on_f_plus_1_matching_results_and_the_median_view() {
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(1), false);
        assert_eq!(inv.on_answer(ReplicaId(0), ViewNo(3), full(b"lie"), true), None);
        assert_eq!(inv.on_answer(ReplicaId(1), ViewNo(2), full(b"ok"), true), None);
        let done = inv.on_answer(ReplicaId(2), ViewNo(2), full(b"ok"), true);
        assert_eq!(done, Some(Verdict::Done { result: Bytes::from_static(b"ok"), view: ViewNo(2) }));
        assert_eq!(inv.on_answer(ReplicaId(3), ViewNo(2), full(b"ok"), true), None, "settled once");
    }

    #[test]
    fn agreeing_digests_without_the_result_ask_for_it_in_full() {
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(2), false);
        let d = Answer::Digest(Digest::of(b"ok"));
        let others: Vec<ReplicaId> = (0..4).map(ReplicaId).filter(|r| *r != inv.designated()).collect();
        assert_eq!(inv.on_answer(others[0], ViewNo(0), d.clone(), true), None);
        assert_eq!(inv.on_answer(others[1], ViewNo(0), d.clone(), true), Some(Verdict::NeedFull { now: false }));
        assert_eq!(inv.on_answer(others[2], ViewNo(0), d, true), None, "still waiting for the designated replier");
        let designated = inv.designated();
        let done = inv.on_answer(designated, ViewNo(0), full(b"ok"), true);
        assert!(matches!(done, Some(Verdict::Done { .. })));
        // A designated replier that cannot answer is not waited for.
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(2), false);
        let d = Answer::Digest(Digest::of(b"ok"));
        inv.on_answer(others[0], ViewNo(0), d.clone(), false);
        assert_eq!(inv.on_answer(others[1], ViewNo(0), d, false), Some(Verdict::NeedFull { now: true }));
    }

    #[test]
    fn a_wrong_full_result_never_completes_a_digest_it_does_not_match() {
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(3), false);
        let d = Answer::Digest(Digest::of(b"ok"));
        inv.on_answer(ReplicaId(0), ViewNo(0), full(b"forged"), true);
        inv.on_answer(ReplicaId(1), ViewNo(0), d.clone(), true);
        let v = inv.on_answer(ReplicaId(2), ViewNo(0), d, true);
        assert!(matches!(v, Some(Verdict::NeedFull { .. })), "{v:?}");
    }

    #[test]
    fn reads_need_a_quorum_and_give_up_when_everyone_answered_differently() {
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(4), true);
        inv.on_answer(ReplicaId(0), ViewNo(0), full(b"a"), true);
        inv.on_answer(ReplicaId(1), ViewNo(0), full(b"a"), true);
        inv.on_answer(ReplicaId(2), ViewNo(0), full(b"b"), true);
        assert_eq!(inv.on_answer(ReplicaId(3), ViewNo(0), full(b"c"), true), Some(Verdict::NoQuorum));
    }

    #[test]
    fn refusals_count_at_f_plus_1_and_busy_never() {
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(5), false);
        assert_eq!(inv.on_rejection(ReplicaId(0), RejectReason::Busy), None);
        assert_eq!(inv.on_rejection(ReplicaId(1), RejectReason::Busy), None);
        assert_eq!(inv.on_rejection(ReplicaId(2), RejectReason::Stale), None);
        assert_eq!(inv.on_rejection(ReplicaId(3), RejectReason::Stale), Some(Verdict::Rejected(RejectReason::Stale)));
    }

    #[test]
    fn a_result_too_large_to_send_settles_only_when_enough_replicas_say_so() {
        let big = Answer::TooLarge { len: 5_000_000, digest: Digest([9; 32]) };
        // Ordered: f lying replicas cannot make the client give up.
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(6), false);
        assert_eq!(inv.on_answer(ReplicaId(0), ViewNo(0), big.clone(), true), None);
        assert_eq!(inv.on_answer(ReplicaId(1), ViewNo(0), full(b"ok"), true), None);
        let done = inv.on_answer(ReplicaId(2), ViewNo(0), full(b"ok"), true);
        assert!(matches!(done, Some(Verdict::Done { .. })), "{done:?}");
        // f+1 agreeing on length and digest settle it.
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(7), false);
        let other = Answer::TooLarge { len: 5_000_000, digest: Digest([8; 32]) };
        assert_eq!(inv.on_answer(ReplicaId(0), ViewNo(0), other, true), None);
        assert_eq!(inv.on_answer(ReplicaId(1), ViewNo(0), big.clone(), true), None);
        assert_eq!(
            inv.on_answer(ReplicaId(2), ViewNo(0), big.clone(), true),
            Some(Verdict::TooLarge { len: 5_000_000 })
        );
        // Read-only needs a quorum, and a split that includes such claims
        // still ends in NoQuorum (so the client orders it) once all answered.
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(8), true);
        assert_eq!(inv.on_answer(ReplicaId(0), ViewNo(0), big.clone(), true), None);
        assert_eq!(inv.on_answer(ReplicaId(1), ViewNo(0), big.clone(), true), None);
        assert_eq!(inv.on_answer(ReplicaId(2), ViewNo(0), full(b"a"), true), None);
        assert_eq!(inv.on_answer(ReplicaId(3), ViewNo(0), full(b"b"), true), Some(Verdict::NoQuorum));
    }
}
