//! Identities, numbers and membership.
//!
//! Every number the protocol compares is its own type, so that a sequence
//! number can never be passed where a view number is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A replica's identity; stable across views and reconfigurations.
    ReplicaId(u32)
);
id_type!(
    /// A client's identity. Runtime clients derive it from their public key,
    /// so that it cannot be claimed by anyone without the secret key.
    ClientId(u64)
);
id_type!(
    /// A client-chosen request number. Ids only need to be unique per client
    /// within the execution window (see [`crate::exec`]); clients that restart
    /// pick ids above anything they used before (for example a clock reading).
    RequestId(u64)
);
id_type!(
    /// The position of a batch in the total order.
    SeqNo(u64)
);
id_type!(
    /// A view number; the primary of view v is `members[v mod n]`.
    ViewNo(u64)
);

impl ClientId {
    /// The id of the client holding the secret of `public`: a hash, so that
    /// nobody without the key can claim it.
    pub fn of_key(public: &[u8; 32]) -> ClientId {
        let d = Digest::of_parts(&[b"palisade/client-id/v1", public]);
        ClientId(u64::from_le_bytes(d.0[..8].try_into().expect("8 bytes")))
    }
}

impl SeqNo {
    /// The next sequence number.
    pub fn next(self) -> SeqNo {
        SeqNo(self.0 + 1)
    }
}

impl ViewNo {
    /// The next view number.
    pub fn next(self) -> ViewNo {
        ViewNo(self.0 + 1)
    }
}

/// A SHA-256 digest. Batches, snapshots and checkpoint states are named by
/// their digest, so anything fetched from an untrusted peer can be checked.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(bytes).into())
    }

    /// SHA-256 over several parts, each prefixed with its length so that no
    /// two different part lists hash the same way.
    pub fn of_parts(parts: &[&[u8]]) -> Digest {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Digest(h.finalize().into())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Which failures the cluster is built to survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Byzantine faults: n >= 3f+1, quorums of ceil((n+f+1)/2), three phases.
    Bft,
    /// Crash faults only: n >= 2f+1, majority quorums, no PREPARE phase.
    Cft,
}

impl Mode {
    /// The largest f that `n` replicas tolerate in this mode.
    pub fn max_f(self, n: usize) -> usize {
        match self {
            Mode::Bft => n.saturating_sub(1) / 3,
            Mode::Cft => n.saturating_sub(1) / 2,
        }
    }
}

/// Why a membership is not usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipError {
    /// No replicas at all.
    Empty,
    /// The same replica listed twice.
    Duplicate(ReplicaId),
    /// Too few replicas for the fault threshold in this mode.
    TooSmall {
        /// Replicas listed.
        n: usize,
        /// Faults to tolerate.
        f: usize,
        /// Replicas the mode needs for that many faults.
        needed: usize,
    },
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::Empty => write!(f, "membership has no replicas"),
            MembershipError::Duplicate(r) => write!(f, "replica {r} is listed twice"),
            MembershipError::TooSmall { n, f: faults, needed } => {
                write!(f, "{n} replicas cannot tolerate {faults} faults; this mode needs at least {needed}")
            }
        }
    }
}

impl std::error::Error for MembershipError {}

/// The replicas of a view, the fault threshold and the mode.
///
/// Quorums are always computed from this value, never from constants, because
/// reconfiguration changes membership at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    members: Vec<ReplicaId>,
    f: usize,
    mode: Mode,
    /// Index of view 0's primary in `members`: an epoch after the first
    /// starts with the replica that led the end of the epoch before, so a
    /// crashed lowest id does not cost every new epoch a view change.
    first: usize,
}

impl Membership {
    /// Checks that `members` can tolerate `f` faults in `mode`.
    pub fn new(mut members: Vec<ReplicaId>, f: usize, mode: Mode) -> Result<Self, MembershipError> {
        if members.is_empty() {
            return Err(MembershipError::Empty);
        }
        members.sort();
        if let Some(w) = members.windows(2).find(|w| w[0] == w[1]) {
            return Err(MembershipError::Duplicate(w[0]));
        }
        let needed = match mode {
            Mode::Bft => 3 * f + 1,
            Mode::Cft => 2 * f + 1,
        };
        if members.len() < needed {
            return Err(MembershipError::TooSmall { n: members.len(), f, needed });
        }
        Ok(Membership { members, f, mode, first: 0 })
    }

    /// The same membership with `r` as view 0's primary (and the others
    /// following in id order, wrapping around); the lowest id when `r` is
    /// not a member.
    pub fn starting_with(mut self, r: ReplicaId) -> Self {
        self.first = self.index_of(r).unwrap_or(0);
        self
    }

    /// Replicas `0..n` with the largest f the mode allows.
    pub fn with_size(n: usize, mode: Mode) -> Result<Self, MembershipError> {
        Membership::new((0..n as u32).map(ReplicaId).collect(), mode.max_f(n), mode)
    }

    /// The replicas, sorted by id.
    pub fn members(&self) -> &[ReplicaId] {
        &self.members
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.members.len()
    }

    /// Faults tolerated.
    pub fn f(&self) -> usize {
        self.f
    }

    /// BFT or CFT.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether `r` is a member.
    pub fn contains(&self, r: ReplicaId) -> bool {
        self.members.binary_search(&r).is_ok()
    }

    /// Position of `r` in the sorted member list.
    pub fn index_of(&self, r: ReplicaId) -> Option<usize> {
        self.members.binary_search(&r).ok()
    }

    /// The primary of view `v`: the ((first + v) mod n)-th member, where
    /// `first` is the lowest id unless [`Membership::starting_with`] chose.
    pub fn primary(&self, v: ViewNo) -> ReplicaId {
        let n = self.members.len() as u64;
        self.members[((self.first as u64 + v.0 % n) % n) as usize]
    }

    /// The size of a quorum: any two quorums intersect in at least one
    /// correct replica. BFT: ceil((n+f+1)/2), which is 2f+1 when n = 3f+1.
    /// CFT: a majority.
    pub fn quorum(&self) -> usize {
        let n = self.n();
        match self.mode {
            Mode::Bft => (n + self.f) / 2 + 1,
            Mode::Cft => n / 2 + 1,
        }
    }

    /// The size of a set that contains at least one correct replica (f+1).
    pub fn weak_quorum(&self) -> usize {
        self.f + 1
    }

    /// How many independent statements the view-change rule needs before it
    /// believes a replica's claim that a batch was pre-prepared: f+1 in BFT
    /// (one must be correct), one in CFT (nobody lies).
    pub fn voucher_quorum(&self) -> usize {
        match self.mode {
            Mode::Bft => self.f + 1,
            Mode::Cft => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn four_replicas_tolerate_one_byzantine_fault_with_quorums_of_three() {
        let m = Membership::with_size(4, Mode::Bft).unwrap();
        assert_eq!((m.f(), m.quorum(), m.weak_quorum()), (1, 3, 2));
    }

    #[test]
    fn three_replicas_tolerate_one_crash_with_majorities_of_two() {
        let m = Membership::with_size(3, Mode::Cft).unwrap();
        assert_eq!((m.f(), m.quorum()), (1, 2));
    }

    #[test]
    fn too_small_and_duplicate_memberships_are_rejected() {
        let r = |v: &[u32]| v.iter().map(|&i| ReplicaId(i)).collect::<Vec<_>>();
        assert!(matches!(
            Membership::new(r(&[0, 1, 2]), 1, Mode::Bft),
            Err(MembershipError::TooSmall { needed: 4, .. })
        ));
        assert_eq!(Membership::new(r(&[0, 1, 1, 2]), 1, Mode::Bft), Err(MembershipError::Duplicate(ReplicaId(1))));
        assert_eq!(Membership::new(vec![], 0, Mode::Cft), Err(MembershipError::Empty));
    }

    #[test]
    fn the_primary_of_view_v_is_member_v_mod_n() {
        let m = Membership::new(vec![ReplicaId(7), ReplicaId(3), ReplicaId(9), ReplicaId(5)], 1, Mode::Bft).unwrap();
        assert_eq!(m.primary(ViewNo(0)), ReplicaId(3));
        assert_eq!(m.primary(ViewNo(5)), ReplicaId(5));
        let m = m.starting_with(ReplicaId(7));
        assert_eq!(
            (m.primary(ViewNo(0)), m.primary(ViewNo(1)), m.primary(ViewNo(2))),
            (ReplicaId(7), ReplicaId(9), ReplicaId(3))
        );
        assert_eq!(m.clone().starting_with(ReplicaId(4)).primary(ViewNo(0)), ReplicaId(3));
    }

    proptest! {
        // Two quorums of a BFT membership intersect in more than f replicas,
        // so in at least one correct replica; a quorum is always reachable
        // with f replicas silent.
        #[test]
        fn bft_quorums_intersect_in_a_correct_replica(n in 1usize..64, f_raw in 0usize..22) {
            let f = f_raw.min(n.saturating_sub(1) / 3);
            let m = Membership::new((0..n as u32).map(ReplicaId).collect(), f, Mode::Bft).unwrap();
            let q = m.quorum();
            prop_assert!(2 * q > n + f, "n={n} f={f} q={q}");
            prop_assert!(q <= n - f, "n={n} f={f} q={q}");
            prop_assert!(m.weak_quorum() <= q);
        }

        // Two CFT majorities intersect; a majority survives f crashes.
        #[test]
        fn cft_majorities_intersect_and_survive_f_crashes(n in 1usize..64) {
            let m = Membership::with_size(n, Mode::Cft).unwrap();
            let q = m.quorum();
            prop_assert!(2 * q > n);
            prop_assert!(q <= n - m.f());
        }
    }
}
