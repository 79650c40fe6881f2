//! The view-change decision rule and the checks on VIEW-CHANGE messages.
//!
//! Normal-case messages are authenticated with MACs only, so a replica's
//! claim that it prepared something cannot carry a transferable proof. The
//! rule below (Castro's, from the MAC-based variant of PBFT) therefore
//! never trusts one replica's claim: a value is re-proposed at a sequence
//! number only if a quorum of VIEW-CHANGEs does not contradict it (A1) and
//! enough replicas to include a correct one say they pre-prepared it in that
//! view or later (A2). VIEW-CHANGE and NEW-VIEW are signed, so nobody can put
//! words in another replica's mouth, and every backup recomputes the
//! decisions from the same signed inputs. See docs/protocol.md for the proof.

use crate::checkpoint::{self, CertError};
use crate::crypto::{self, Crypto, Domain};
use crate::message::{null_digest, CheckpointCert, Signed, ViewChangeBody};
use crate::types::{Digest, Membership, ReplicaId, SeqNo, ViewNo};
use std::collections::BTreeSet;

/// What the new primary re-proposes, derived from a set of VIEW-CHANGEs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewPlan {
    /// The highest stable checkpoint any of them proves.
    pub checkpoint: CheckpointCert,
    /// For each sequence number above it, the digest to re-propose (the null
    /// digest where nothing may have committed).
    pub chosen: Vec<(SeqNo, Digest)>,
}

/// Why a VIEW-CHANGE was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewChangeError {
    /// The author is not a member.
    UnknownReplica(ReplicaId),
    /// The signature does not verify.
    BadSignature,
    /// Its checkpoint certificate is invalid.
    BadCheckpoint(CertError),
    /// A P or Q entry outside (checkpoint, checkpoint + window], from a view
    /// not below the new one, unsorted, duplicated, or too many.
    BadEntries,
}

/// Limits a VIEW-CHANGE must respect.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The log window (L).
    pub log_window: u64,
    /// Checkpoint interval (K).
    pub checkpoint_interval: u64,
    /// Q entries per sequence number: n + 1, the most a correct replica
    /// can ever hold (see [`digests_per_seq_max`]).
    pub preprepared_per_seq_max: usize,
}

/// The most distinct digests a correct replica pre-prepares at one
/// sequence number: its first fresh one, and those NEW-VIEWs choose. A
/// NEW-VIEW only chooses a digest that f+1 replicas vouch for, so one that
/// some correct replica pre-prepared, and every correct replica accepts at
/// most one fresh digest per sequence number (a second one it refuses).
/// Every digest a correct replica holds is therefore the first fresh digest
/// of some correct replica, or null: at most n + 1. Q sets bounded this way
/// never need to evict, so a voucher the decision rule needs is never lost.
pub fn digests_per_seq_max(membership: &Membership) -> usize {
    membership.n() + 1
}

/// Checks a signed VIEW-CHANGE completely: signature, checkpoint proof, and
/// the shape of its P and Q sets.
pub fn verify_view_change<C: Crypto + ?Sized>(
    crypto: &C,
    membership: &Membership,
    quorum: usize,
    limits: Limits,
    genesis: checkpoint::Genesis,
    vc: &Signed<ViewChangeBody>,
) -> Result<(), ViewChangeError> {
    let body = &vc.body;
    if !membership.contains(body.replica) {
        return Err(ViewChangeError::UnknownReplica(body.replica));
    }
    check_entries(body, limits)?;
    if !crypto::verify(crypto, Domain::ViewChange, body.replica, vc) {
        return Err(ViewChangeError::BadSignature);
    }
    checkpoint::verify_cert(crypto, membership, quorum, limits.checkpoint_interval, genesis, &body.checkpoint)
        .map_err(ViewChangeError::BadCheckpoint)
}

fn check_entries(body: &ViewChangeBody, limits: Limits) -> Result<(), ViewChangeError> {
    let low = body.checkpoint.seq.0;
    let in_window = |s: SeqNo| s.0 > low && s.0 <= low.saturating_add(limits.log_window);
    let mut last: Option<SeqNo> = None;
    for e in &body.prepared {
        if !in_window(e.seq) || e.view >= body.new_view || last.is_some_and(|l| l >= e.seq) {
            return Err(ViewChangeError::BadEntries);
        }
        last = Some(e.seq);
    }
    let mut last: Option<(SeqNo, Digest)> = None;
    let mut per_seq = 0usize;
    for e in &body.preprepared {
        if !in_window(e.seq) || e.view >= body.new_view {
            return Err(ViewChangeError::BadEntries);
        }
        match last {
            Some((s, d)) if (s, d) >= (e.seq, e.digest) => return Err(ViewChangeError::BadEntries),
            Some((s, _)) if s == e.seq => per_seq += 1,
            _ => per_seq = 1,
        }
        if per_seq > limits.preprepared_per_seq_max {
            return Err(ViewChangeError::BadEntries);
        }
        last = Some((e.seq, e.digest));
    }
    Ok(())
}

/// Castro's decision rule over a set of already verified VIEW-CHANGEs for
/// the same view from distinct replicas. Returns `None` while some sequence
/// number cannot be decided yet; more VIEW-CHANGEs will settle it once those
/// of all correct replicas have arrived.
///
/// For each sequence number n above the highest proven checkpoint h, up to
/// the highest n in any P or Q set (so that a new primary never proposes a
/// fresh batch where some replica in S already pre-prepared one):
/// - re-propose d if some P entry (n, v, d) satisfies
///   A1: at least `quorum` messages have no P entry at n, or one with a view
///   below v, or exactly (v, d); and
///   A2: at least `vouchers` messages have a Q entry (n, d, v') with v' >= v.
///   Among several such entries the highest view wins (then the lowest digest).
/// - otherwise, re-propose null if at least `quorum` messages have no P entry at n;
/// - otherwise, undecided.
pub fn decide(view_changes: &[&ViewChangeBody], quorum: usize, vouchers: usize) -> Option<NewViewPlan> {
    decide_up_to(view_changes, quorum, vouchers, true)
}

/// [`decide`], covering sequence numbers up to the highest P entry only
/// when `cover_q` is false: the planted bug that lets a new primary offer a
/// fresh batch where replicas already pre-prepared one.
pub(crate) fn decide_up_to(
    view_changes: &[&ViewChangeBody],
    quorum: usize,
    vouchers: usize,
    cover_q: bool,
) -> Option<NewViewPlan> {
    if view_changes.len() < quorum {
        return None;
    }
    let checkpoint =
        view_changes.iter().map(|vc| &vc.checkpoint).max_by(|a, b| (a.seq, a.state).cmp(&(b.seq, b.state)))?.clone();
    let h = checkpoint.seq;
    let top = view_changes
        .iter()
        .flat_map(|vc| {
            let q = vc.preprepared.iter().map(|e| e.seq).filter(|_| cover_q);
            vc.prepared.iter().map(|e| e.seq).chain(q)
        })
        .filter(|s| *s > h)
        .max();
    let mut chosen = Vec::new();
    let Some(top) = top else {
        return Some(NewViewPlan { checkpoint, chosen });
    };
    for n in (h.0 + 1)..=top.0 {
        let n = SeqNo(n);
        let entry_at = |vc: &ViewChangeBody| {
            vc.prepared.binary_search_by(|e| e.seq.cmp(&n)).ok().map(|i| (vc.prepared[i].view, vc.prepared[i].digest))
        };
        let mut candidates: Vec<(ViewNo, Digest)> = view_changes.iter().filter_map(|vc| entry_at(vc)).collect();
        // Highest view first; lowest digest breaks ties deterministically.
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        candidates.dedup();
        let mut pick = None;
        for &(v, d) in &candidates {
            let a1 = view_changes
                .iter()
                .filter(|vc| match entry_at(vc) {
                    None => true,
                    Some((v2, d2)) => v2 < v || (v2 == v && d2 == d),
                })
                .count();
            if a1 < quorum {
                continue;
            }
            let a2 = view_changes
                .iter()
                .filter(|vc| vc.preprepared.iter().any(|q| q.seq == n && q.digest == d && q.view >= v))
                .count();
            if a2 >= vouchers {
                pick = Some(d);
                break;
            }
        }
        match pick {
            Some(d) => chosen.push((n, d)),
            None => {
                let empty = view_changes.iter().filter(|vc| entry_at(vc).is_none()).count();
                if empty >= quorum {
                    chosen.push((n, null_digest()));
                } else {
                    return None;
                }
            }
        }
    }
    Some(NewViewPlan { checkpoint, chosen })
}

/// Distinct authors, or `None` if one appears twice.
pub fn distinct_authors(view_changes: &[Signed<ViewChangeBody>]) -> Option<BTreeSet<ReplicaId>> {
    let mut set = BTreeSet::new();
    for vc in view_changes {
        if !set.insert(vc.body.replica) {
            return None;
        }
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::genesis;
    use crate::message::{PrePreparedEntry, PreparedEntry};

    fn d(x: u8) -> Digest {
        Digest([x; 32])
    }

    fn vc(replica: u32, prepared: &[(u64, u64, u8)], preprepared: &[(u64, u8, u64)]) -> ViewChangeBody {
        ViewChangeBody {
            new_view: ViewNo(10),
            replica: ReplicaId(replica),
            checkpoint: genesis(d(0)),
            prepared: prepared
                .iter()
                .map(|&(s, v, x)| PreparedEntry { seq: SeqNo(s), view: ViewNo(v), digest: d(x) })
                .collect(),
            preprepared: preprepared
                .iter()
                .map(|&(s, x, v)| PrePreparedEntry { seq: SeqNo(s), digest: d(x), view: ViewNo(v) })
                .collect(),
        }
    }

    fn run(vcs: &[ViewChangeBody]) -> Option<Vec<(SeqNo, Digest)>> {
        let refs: Vec<&ViewChangeBody> = vcs.iter().collect();
        decide(&refs, 3, 2).map(|p| p.chosen)
    }

    #[test]
    fn a_value_prepared_by_a_quorum_is_re_proposed() {
        // Committed at seq 1 in view 2: three replicas prepared it.
        let vcs =
            [vc(0, &[(1, 2, 7)], &[(1, 7, 2)]), vc(1, &[(1, 2, 7)], &[(1, 7, 2)]), vc(2, &[(1, 2, 7)], &[(1, 7, 2)])];
        assert_eq!(run(&vcs), Some(vec![(SeqNo(1), d(7))]));
    }

    #[test]
    fn gaps_with_no_prepared_value_are_filled_with_null() {
        let vcs = [vc(0, &[(2, 1, 7)], &[(2, 7, 1)]), vc(1, &[(2, 1, 7)], &[(2, 7, 1)]), vc(2, &[], &[])];
        let chosen = run(&vcs).unwrap();
        assert_eq!(chosen, vec![(SeqNo(1), null_digest()), (SeqNo(2), d(7))]);
    }

    #[test]
    fn a_lie_about_a_prepared_value_without_vouchers_is_ignored() {
        // Replica 3 claims it prepared 9 in view 5; nobody else pre-prepared 9.
        let vcs = [
            vc(0, &[(1, 2, 7)], &[(1, 7, 2)]),
            vc(1, &[(1, 2, 7)], &[(1, 7, 2)]),
            vc(2, &[], &[(1, 7, 2)]),
            vc(3, &[(1, 5, 9)], &[(1, 9, 5)]),
        ];
        assert_eq!(run(&vcs), Some(vec![(SeqNo(1), d(7))]));
    }

    #[test]
    fn a_prepared_value_cannot_be_replaced_by_null() {
        // Two replicas prepared 7; a third replica and a liar claim nothing.
        // Null needs a quorum of empty P entries and 7 needs A2 vouchers;
        // with vouchers present, 7 wins.
        let vcs =
            [vc(0, &[(1, 2, 7)], &[(1, 7, 2)]), vc(1, &[(1, 2, 7)], &[(1, 7, 2)]), vc(2, &[], &[]), vc(3, &[], &[])];
        assert_eq!(run(&vcs), Some(vec![(SeqNo(1), d(7))]));
    }

    #[test]
    fn undecidable_until_more_view_changes_arrive() {
        // One replica prepared 7 but only it vouches; the others are two
        // empties: neither 7 (A2) nor null (quorum of empties) qualifies.
        let vcs = [vc(0, &[(1, 2, 7)], &[(1, 7, 2)]), vc(1, &[], &[]), vc(2, &[], &[])];
        assert_eq!(run(&vcs), None);
        let mut more = vcs.to_vec();
        more.push(vc(3, &[], &[]));
        assert_eq!(run(&more), Some(vec![(SeqNo(1), null_digest())]));
    }

    #[test]
    fn the_highest_proven_checkpoint_bounds_the_decisions() {
        let mut high = vc(0, &[], &[]);
        high.checkpoint = CheckpointCert { seq: SeqNo(4), state: d(4), proof: vec![] };
        let vcs = [high, vc(1, &[(3, 1, 7)], &[(3, 7, 1)]), vc(2, &[(3, 1, 7)], &[(3, 7, 1)])];
        let plan = decide(&vcs.iter().collect::<Vec<_>>(), 3, 2).unwrap();
        assert_eq!(plan.checkpoint.seq, SeqNo(4));
        assert!(plan.chosen.is_empty());
    }

    #[test]
    fn malformed_entry_sets_are_rejected() {
        let limits = Limits { log_window: 8, checkpoint_interval: 4, preprepared_per_seq_max: 2 };
        let unsorted = vc(0, &[(2, 1, 7), (1, 1, 7)], &[]);
        assert_eq!(check_entries(&unsorted, limits), Err(ViewChangeError::BadEntries));
        let future_view = vc(0, &[(1, 10, 7)], &[]);
        assert_eq!(check_entries(&future_view, limits), Err(ViewChangeError::BadEntries));
        let outside = vc(0, &[(9, 1, 7)], &[]);
        assert_eq!(check_entries(&outside, limits), Err(ViewChangeError::BadEntries));
        let too_many = vc(0, &[], &[(1, 1, 1), (1, 2, 1), (1, 3, 1)]);
        assert_eq!(check_entries(&too_many, limits), Err(ViewChangeError::BadEntries));
        let fine = vc(0, &[(1, 1, 7), (2, 3, 8)], &[(1, 7, 1), (1, 8, 2), (2, 8, 3)]);
        assert_eq!(check_entries(&fine, limits), Ok(()));
    }
}
