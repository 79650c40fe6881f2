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
    /// Enough replicas agree on this result (f+1 committed, or a quorum
    /// counting tentative ones from one view, for an ordered request; a
    /// quorum for a read-only one); `view` is their median view, the
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
    quorum: usize,
    n: usize,
    read_only: bool,
    designated: ReplicaId,
    /// Each replica's answer.
    replies: BTreeMap<ReplicaId, Reply>,
    /// Replicas that said the result is too large: its length and digest.
    too_large: BTreeMap<ReplicaId, (u64, Digest)>,
    rejections: BTreeMap<ReplicaId, RejectReason>,
    /// 0: not yet; 1: told the caller to wait for it; 2: asked everyone.
    asked_for_full: u8,
    settled: bool,
}

/// One replica's answer as far as it is known.
#[derive(Clone, Debug)]
struct Reply {
    /// The result's digest.
    digest: Digest,
    /// The result, if sent in full.
    full: Option<Bytes>,
    /// The replica's view.
    view: ViewNo,
    /// Whether it came from a tentative execution.
    tentative: bool,
}

impl Invocation {
    /// Starts deciding request `request` of `client`.
    pub fn new(membership: &Membership, client: ClientId, request: RequestId, read_only: bool) -> Invocation {
        Invocation {
            need: if read_only { membership.quorum() } else { membership.weak_quorum() },
            weak_quorum: membership.weak_quorum(),
            quorum: membership.quorum(),
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
        let (digest, full, tentative) = match answer {
            Answer::Full(result) => (Digest::of(&result), Some(result), false),
            Answer::TentativeFull(result) => (Digest::of(&result), Some(result), true),
            Answer::Digest(digest) => (digest, None, false),
            Answer::TentativeDigest(digest) => (digest, None, true),
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
        };
        let reply = match self.replies.remove(&from) {
            // The same result again: keep the bytes if either had them,
            // and the answer is committed if either says so.
            Some(old) if old.digest == digest => Reply {
                digest,
                full: full.or(old.full),
                view: if old.tentative && !tentative { view } else { old.view },
                tentative: old.tentative && tentative,
            },
            // A tentative answer never replaces a committed one, and a
            // digest never replaces a full result of the same standing.
            Some(old)
                if (tentative && !old.tentative)
                    || (tentative == old.tentative && full.is_none() && old.full.is_some()) =>
            {
                old
            }
            _ => Reply { digest, full, view, tentative },
        };
        self.replies.insert(from, reply);
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

    /// Whether answers agreeing on one result settle it. A read counts
    /// them all against a quorum. An ordered request needs f+1 committed
    /// answers, or a quorum of committed ones and tentative ones from one
    /// view: a quorum of replicas prepared it, so some correct replica in
    /// every later view change's quorum prepared it too, and it is
    /// re-proposed where it was (docs/protocol.md, "Tentative execution").
    fn enough(&self, answers: &[&Reply]) -> bool {
        if self.read_only {
            return answers.len() >= self.need;
        }
        let committed = answers.iter().filter(|r| !r.tentative).count();
        if committed >= self.weak_quorum {
            return true;
        }
        let mut per_view: BTreeMap<ViewNo, usize> = BTreeMap::new();
        for r in answers.iter().filter(|r| r.tentative) {
            *per_view.entry(r.view).or_default() += 1;
        }
        committed + per_view.values().max().copied().unwrap_or(0) >= self.quorum
    }

    fn settle(&mut self, wait_for_designated: bool) -> Option<Verdict> {
        let mut by_digest: BTreeMap<Digest, Vec<&Reply>> = BTreeMap::new();
        for r in self.replies.values() {
            by_digest.entry(r.digest).or_default().push(r);
        }
        let found = by_digest.into_values().find(|answers| self.enough(answers)).map(|answers| {
            let full = answers.iter().find_map(|r| r.full.clone());
            (full, answers.iter().map(|r| r.view).collect::<Vec<_>>())
        });
        match found {
            Some((Some(result), mut views)) => {
                views.sort();
                let view = views[views.len() / 2];
                self.settled = true;
                Some(Verdict::Done { result, view })
            }
            Some((None, _)) => {
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
    fn tentative(b: &'static [u8]) -> Answer {
        Answer::TentativeFull(Bytes::from_static(b))
    }

    #[test]
    fn tentative_answers_settle_at_a_quorum_from_one_view_and_committed_ones_at_f_plus_1() {
        // f+1 tentative answers are not enough: a quorum must have prepared.
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(9), false);
        assert_eq!(inv.on_answer(ReplicaId(0), ViewNo(0), tentative(b"ok"), true), None);
        assert_eq!(inv.on_answer(ReplicaId(1), ViewNo(0), tentative(b"ok"), true), None);
        let done = inv.on_answer(ReplicaId(2), ViewNo(0), tentative(b"ok"), true);
        assert_eq!(done, Some(Verdict::Done { result: Bytes::from_static(b"ok"), view: ViewNo(0) }));
        // Tentative answers from different views do not add up...
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(10), false);
        inv.on_answer(ReplicaId(0), ViewNo(0), tentative(b"ok"), true);
        inv.on_answer(ReplicaId(1), ViewNo(1), tentative(b"ok"), true);
        assert_eq!(inv.on_answer(ReplicaId(2), ViewNo(2), tentative(b"ok"), true), None);
        // ...but a committed answer joins either, and one more committed
        // answer makes f+1.
        let done = inv.on_answer(ReplicaId(3), ViewNo(2), full(b"ok"), true);
        assert!(done.is_none(), "1 committed + 1 tentative in view 2 is not a quorum");
        let done = inv.on_answer(ReplicaId(1), ViewNo(2), full(b"ok"), true);
        assert!(matches!(done, Some(Verdict::Done { .. })), "{done:?}");
        // A committed answer then a tentative one from the same replica
        // stays committed; two tentative plus one committed make a quorum.
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(11), false);
        inv.on_answer(ReplicaId(0), ViewNo(0), full(b"ok"), true);
        assert_eq!(inv.on_answer(ReplicaId(0), ViewNo(0), tentative(b"ok"), true), None);
        assert_eq!(inv.on_answer(ReplicaId(1), ViewNo(0), tentative(b"ok"), true), None);
        assert!(matches!(inv.on_answer(ReplicaId(2), ViewNo(0), tentative(b"ok"), true), Some(Verdict::Done { .. })));
    }

    #[test]
    fn a_liar_answering_tentatively_neither_settles_its_lie_nor_blocks_the_truth() {
        let mut inv = Invocation::new(&four(), ClientId(1), RequestId(12), false);
        assert_eq!(inv.on_answer(ReplicaId(3), ViewNo(0), tentative(b"lie"), true), None);
        assert_eq!(inv.on_answer(ReplicaId(3), ViewNo(0), full(b"lie"), true), None, "one committed lie is not f+1");
        assert_eq!(inv.on_answer(ReplicaId(0), ViewNo(0), tentative(b"ok"), true), None);
        let d = Answer::TentativeDigest(Digest::of(b"ok"));
        assert_eq!(inv.on_answer(ReplicaId(1), ViewNo(0), d, true), None, "two tentative answers are not a quorum");
        let done = inv.on_answer(ReplicaId(2), ViewNo(0), full(b"ok"), true);
        assert!(matches!(done, Some(Verdict::Done { result, .. }) if result == Bytes::from_static(b"ok")));
    }
}
