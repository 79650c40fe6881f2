//! Membership as epochs: the configuration as replicated state, and the
//! view manager's signed requests that change it.
//!
//! A configuration is {epoch, members with addresses and keys, f, mode, the
//! view manager's key}. Epoch 0 is the genesis configuration (the cluster's
//! file); each later one is made by executing a reconfiguration request,
//! which every correct replica accepts or rejects alike because the verdict
//! depends only on the replicated state and the request's bytes. An accepted
//! change is *pending* until the handover boundary: the first checkpoint at
//! or after the request's sequence number. Executing the batch at the
//! boundary installs it, so the checkpoint certificate of the old members
//! covers the new configuration (see docs/reconfiguration.md).
//!
//! The view manager is a client like any other, identified by the client id
//! of its key; its operation bytes are an [`AdminRequest`] whose signature
//! covers the cluster, the epoch it was written for, a nonce and the
//! operations, so it cannot be replayed in another cluster, another epoch or
//! twice in the same one.

use crate::types::{ClientId, Digest, Membership, MembershipError, Mode, ReplicaId, SeqNo, ViewNo};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod handover;

pub use handover::{Handover, HandoverError};

/// Longest member address accepted, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 255;
/// Most operations in one request.
pub const MAX_OPS: usize = 64;
/// Most members a configuration may have.
pub const MAX_MEMBERS: usize = 256;

/// One replica of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its identity.
    pub id: ReplicaId,
    /// Where peers and clients reach it (`host:port`).
    pub address: String,
    /// Its ed25519 public key: new members' keys travel in the replicated
    /// state, so nobody installs them by hand.
    pub public_key: [u8; 32],
}

/// The membership of one epoch and everything needed to talk to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Configuration {
    /// 0 for the genesis configuration, one more for each handover.
    pub epoch: u64,
    /// The cluster these members serve; signed into every admin request.
    pub cluster: u64,
    /// Sorted by id, no duplicates.
    pub members: Vec<Member>,
    /// Faults tolerated.
    pub f: usize,
    /// BFT or CFT.
    pub mode: Mode,
    /// Whose signature changes the configuration.
    pub view_manager: [u8; 32],
    /// View 0's primary: the lowest id in the genesis configuration; in a
    /// later one, the member that proposed the newest view's batches at
    /// the end of the epoch before (or the next id after it, when it left).
    /// A configuration reported when its request is accepted still names
    /// the lowest id here; the boundary decides.
    pub first_primary: ReplicaId,
}

impl Configuration {
    /// Checks and normalises (sorts the members).
    pub fn new(
        epoch: u64,
        cluster: u64,
        mut members: Vec<Member>,
        f: usize,
        mode: Mode,
        view_manager: [u8; 32],
    ) -> Result<Configuration, MembershipError> {
        members.sort_by_key(|m| m.id);
        Membership::new(members.iter().map(|m| m.id).collect(), f, mode)?;
        let first_primary = members[0].id;
        Ok(Configuration { epoch, cluster, members, f, mode, view_manager, first_primary })
    }

    /// Ids, f, mode and view 0's primary: what quorums and primaries are
    /// computed from.
    pub fn membership(&self) -> Membership {
        Membership::new(self.members.iter().map(|m| m.id).collect(), self.f, self.mode)
            .expect("configurations are checked when made")
            .starting_with(self.first_primary)
    }

    /// The member that leads view 0 after `proposer` led the end of the
    /// epoch before: `proposer` itself, or the next id after it when it is
    /// gone, wrapping around.
    fn successor_of(&self, proposer: ReplicaId) -> ReplicaId {
        self.members.iter().map(|m| m.id).find(|id| *id >= proposer).unwrap_or(self.members[0].id)
    }

    /// The member with id `id`.
    pub fn member(&self, id: ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The digest CHECKPOINT statements carry for it.
    pub fn digest(&self) -> Digest {
        Digest::of_parts(&[b"palisade/configuration/v1", &postcard::to_allocvec(self).expect("configurations encode")])
    }

    /// The client id the view manager's requests arrive under.
    pub fn view_manager_client(&self) -> ClientId {
        ClientId::of_key(&self.view_manager)
    }
}

/// One change a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Admit a replica.
    Add {
        /// Its id; not a current member.
        id: ReplicaId,
        /// Where it listens.
        address: String,
        /// Its ed25519 public key.
        public_key: [u8; 32],
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: ReplicaId,
    },
    /// Set f explicitly. Without it, f rises to what the new n allows and
    /// never falls: a request that would lower f must say so.
    SetF {
        /// The new fault threshold.
        f: usize,
    },
}

/// What the view manager signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminBody {
    /// The cluster it is meant for.
    pub cluster: u64,
    /// The epoch it was written against: executed in any other, it is
    /// rejected, so it cannot be replayed after the change it made.
    pub epoch: u64,
    /// Above every nonce the view manager used before in this cluster.
    pub nonce: u64,
    /// Applied in order.
    pub ops: Vec<AdminOp>,
}

impl AdminBody {
    /// The bytes the view manager's signature covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        postcard::to_extend(self, b"palisade/admin/v1".to_vec()).expect("admin bodies encode")
    }
}

/// A reconfiguration request: the operation bytes of a request sent under
/// the view manager's client id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRequest {
    /// What is asked.
    pub body: AdminBody,
    /// The view manager's ed25519 signature over [`AdminBody::signing_bytes`].
    pub signature: Bytes,
}

impl AdminRequest {
    /// The operation bytes.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("admin requests encode"))
    }

    /// Reads operation bytes.
    pub fn decode(bytes: &[u8]) -> Option<AdminRequest> {
        postcard::from_bytes(bytes).ok()
    }
}

/// Why a reconfiguration was rejected. Every correct replica gives the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// The operation bytes are not an admin request.
    Malformed,
    /// No ops, or more than [`MAX_OPS`].
    OpCount(usize),
    /// The signature is not the view manager's over this body.
    BadSignature,
    /// Written for another cluster.
    WrongCluster {
        /// This cluster.
        ours: u64,
    },
    /// Written for another epoch.
    WrongEpoch {
        /// The epoch now.
        current: u64,
    },
    /// An accepted change has not been handed over yet.
    ChangePending {
        /// The epoch it will start.
        epoch: u64,
        /// The sequence number it takes effect at.
        boundary: SeqNo,
    },
    /// The nonce is not above the last one used.
    NonceReused {
        /// The highest nonce used so far.
        last: u64,
    },
    /// An added replica's key is not a valid ed25519 public key.
    InvalidKey(ReplicaId),
    /// An added replica's address is empty or too long.
    InvalidAddress(ReplicaId),
    /// Added, but already a member.
    AlreadyMember(ReplicaId),
    /// Removed, but not a member.
    NotMember(ReplicaId),
    /// The result would have more than [`MAX_MEMBERS`] members.
    TooMany(usize),
    /// The result cannot tolerate its f (n < 3f+1, or 2f+1 in CFT), or has
    /// no members.
    TooSmall {
        /// Members it would have.
        n: usize,
        /// Faults it would have to tolerate.
        f: usize,
    },
    /// The result would tolerate fewer faults than now, and the request did
    /// not set f to say it means that.
    WouldLowerF {
        /// f now.
        from: usize,
        /// f it would have.
        to: usize,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Malformed => write!(f, "the request is not a reconfiguration request"),
            Rejection::OpCount(n) => write!(f, "{n} operations (1 to {MAX_OPS} are allowed)"),
            Rejection::BadSignature => write!(f, "not signed by the view manager"),
            Rejection::WrongCluster { ours } => write!(f, "written for another cluster (this is cluster {ours})"),
            Rejection::WrongEpoch { current } => write!(f, "written for another epoch (the epoch is {current})"),
            Rejection::ChangePending { epoch, boundary } => {
                write!(f, "a change is pending: epoch {epoch} starts after sequence number {boundary}")
            }
            Rejection::NonceReused { last } => write!(f, "nonce not above the last one used ({last})"),
            Rejection::InvalidKey(r) => write!(f, "replica {r}'s public key is not a valid ed25519 key"),
            Rejection::InvalidAddress(r) => write!(f, "replica {r}'s address is empty or too long"),
            Rejection::AlreadyMember(r) => write!(f, "replica {r} is already a member"),
            Rejection::NotMember(r) => write!(f, "replica {r} is not a member"),
            Rejection::TooMany(n) => write!(f, "{n} members (at most {MAX_MEMBERS})"),
            Rejection::TooSmall { n, f: faults } => {
                write!(f, "{n} replicas cannot tolerate {faults} faults in this mode")
            }
            Rejection::WouldLowerF { from, to } => {
                write!(f, "f would fall from {from} to {to}; set f explicitly to mean that")
            }
        }
    }
}

/// The answer to a reconfiguration request: its result bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOutcome {
    /// Accepted: `next` starts once sequence number `boundary` executes.
    Accepted {
        /// The configuration of the next epoch.
        next: Configuration,
        /// The last sequence number of the current epoch.
        boundary: SeqNo,
    },
    /// Rejected, and why; nothing changed.
    Rejected(Rejection),
}

impl AdminOutcome {
    /// The result bytes.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).expect("admin outcomes encode"))
    }

    /// Reads result bytes.
    pub fn decode(bytes: &[u8]) -> Option<AdminOutcome> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The cryptography execution needs: the same answer on every replica for
/// the same bytes (ed25519 verification is deterministic).
pub trait AdminVerify: Send + Sync {
    /// Whether `signature` is `key`'s over `message`.
    fn signature_checks(&self, key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool;
    /// Whether `key` is a usable public key.
    fn key_is_valid(&self, key: &[u8; 32]) -> bool;
}

/// The replicated membership state: the current configuration, an accepted
/// change waiting for its boundary, and the last nonce used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconfig {
    current: Configuration,
    /// The handover checkpoint the current configuration started at.
    since: SeqNo,
    pending: Option<(Configuration, SeqNo)>,
    last_nonce: u64,
    /// The largest view any batch executed in this epoch was proposed in.
    newest_view: ViewNo,
}

impl Reconfig {
    /// Starts from the genesis configuration.
    pub fn new(genesis: Configuration) -> Reconfig {
        Reconfig { current: genesis, since: SeqNo(0), pending: None, last_nonce: 0, newest_view: ViewNo(0) }
    }

    /// The configuration in force.
    pub fn current(&self) -> &Configuration {
        &self.current
    }

    /// The handover checkpoint the current configuration started at (0 for
    /// the genesis configuration).
    pub fn since(&self) -> SeqNo {
        self.since
    }

    /// An accepted change and the sequence number it takes effect after.
    pub fn pending(&self) -> Option<(&Configuration, SeqNo)> {
        self.pending.as_ref().map(|(c, s)| (c, *s))
    }

    /// Executes the view manager's request ordered at `seq`.
    pub fn execute(
        &mut self,
        seq: SeqNo,
        checkpoint_interval: u64,
        operation: &[u8],
        verify: &dyn AdminVerify,
    ) -> AdminOutcome {
        match self.judge(seq, checkpoint_interval, operation, verify) {
            Ok((next, boundary, nonce)) => {
                self.last_nonce = nonce;
                self.pending = Some((next.clone(), boundary));
                AdminOutcome::Accepted { next, boundary }
            }
            Err(r) => AdminOutcome::Rejected(r),
        }
    }

    fn judge(
        &self,
        seq: SeqNo,
        k: u64,
        operation: &[u8],
        verify: &dyn AdminVerify,
    ) -> Result<(Configuration, SeqNo, u64), Rejection> {
        let req = AdminRequest::decode(operation).ok_or(Rejection::Malformed)?;
        let body = &req.body;
        if !verify.signature_checks(&self.current.view_manager, &body.signing_bytes(), &req.signature) {
            return Err(Rejection::BadSignature);
        }
        if body.cluster != self.current.cluster {
            return Err(Rejection::WrongCluster { ours: self.current.cluster });
        }
        if body.epoch != self.current.epoch {
            return Err(Rejection::WrongEpoch { current: self.current.epoch });
        }
        if let Some((next, boundary)) = &self.pending {
            return Err(Rejection::ChangePending { epoch: next.epoch, boundary: *boundary });
        }
        if body.nonce <= self.last_nonce {
            return Err(Rejection::NonceReused { last: self.last_nonce });
        }
        if body.ops.is_empty() || body.ops.len() > MAX_OPS {
            return Err(Rejection::OpCount(body.ops.len()));
        }
        let mut members = self.current.members.clone();
        let mut set_f = None;
        for op in &body.ops {
            match op {
                AdminOp::Add { id, address, public_key } => {
                    if members.iter().any(|m| m.id == *id) {
                        return Err(Rejection::AlreadyMember(*id));
                    }
                    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
                        return Err(Rejection::InvalidAddress(*id));
                    }
                    if !verify.key_is_valid(public_key) {
                        return Err(Rejection::InvalidKey(*id));
                    }
                    if members.len() >= MAX_MEMBERS {
                        return Err(Rejection::TooMany(members.len() + 1));
                    }
                    members.push(Member { id: *id, address: address.clone(), public_key: *public_key });
                }
                AdminOp::Remove { id } => {
                    let before = members.len();
                    members.retain(|m| m.id != *id);
                    if members.len() == before {
                        return Err(Rejection::NotMember(*id));
                    }
                }
                AdminOp::SetF { f } => set_f = Some(*f),
            }
        }
        let mode = self.current.mode;
        let n = members.len();
        let f = match set_f {
            Some(f) => f,
            None => {
                let allowed = mode.max_f(n);
                if n > 0 && allowed < self.current.f {
                    return Err(Rejection::WouldLowerF { from: self.current.f, to: allowed });
                }
                allowed.max(self.current.f)
            }
        };
        let next = Configuration::new(
            self.current.epoch + 1,
            self.current.cluster,
            members,
            f,
            mode,
            self.current.view_manager,
        )
        .map_err(|_| Rejection::TooSmall { n, f })?;
        Ok((next, boundary_of(seq, k), body.nonce))
    }

    /// Called after the batch at `seq`, proposed in view `proposed_in`,
    /// executed: at the boundary the pending configuration takes over,
    /// led first by the primary of the newest view that proposed in this
    /// epoch (every replica executed the same batches, so they agree).
    /// Returns it when it did.
    pub fn after_batch(&mut self, seq: SeqNo, proposed_in: ViewNo) -> Option<&Configuration> {
        self.newest_view = self.newest_view.max(proposed_in);
        match &self.pending {
            Some((_, boundary)) if *boundary <= seq => {
                let (mut next, boundary) = self.pending.take().expect("just matched");
                let proposer = self.current.membership().primary(self.newest_view);
                next.first_primary = next.successor_of(proposer);
                self.current = next;
                self.since = boundary;
                self.newest_view = ViewNo(0);
                Some(&self.current)
            }
            _ => None,
        }
    }
}

/// The handover boundary of a request ordered at `seq`: the first
/// checkpoint at or after it.
pub fn boundary_of(seq: SeqNo, checkpoint_interval: u64) -> SeqNo {
    let k = checkpoint_interval.max(1);
    SeqNo(seq.0.div_ceil(k) * k)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stand-in for ed25519 in tests: a "signature" is the key followed
    /// by a hash of the message; keys whose first byte is 0xff are invalid.
    pub(crate) struct TestVerify;

    impl AdminVerify for TestVerify {
        fn signature_checks(&self, key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
            signature == test_sign(key, message).as_ref()
        }
        fn key_is_valid(&self, key: &[u8; 32]) -> bool {
            key[0] != 0xff
        }
    }

    pub(crate) fn test_sign(key: &[u8; 32], message: &[u8]) -> Bytes {
        let mut s = key.to_vec();
        s.extend_from_slice(&crate::types::Digest::of(message).0);
        Bytes::from(s)
    }

    pub(crate) const VM: [u8; 32] = [7; 32];
    pub(crate) const CLUSTER: u64 = 42;

    pub(crate) fn member(id: u32) -> Member {
        Member { id: ReplicaId(id), address: format!("10.0.0.{id}:7000"), public_key: [id as u8 + 1; 32] }
    }

    pub(crate) fn genesis(n: u32, mode: Mode) -> Configuration {
        let n_usize = n as usize;
        Configuration::new(0, CLUSTER, (0..n).map(member).collect(), mode.max_f(n_usize), mode, VM).unwrap()
    }

    pub(crate) fn signed(epoch: u64, nonce: u64, ops: Vec<AdminOp>) -> Bytes {
        let body = AdminBody { cluster: CLUSTER, epoch, nonce, ops };
        let signature = test_sign(&VM, &body.signing_bytes());
        AdminRequest { body, signature }.encode()
    }

    pub(crate) fn add(id: u32) -> AdminOp {
        let m = member(id);
        AdminOp::Add { id: m.id, address: m.address, public_key: m.public_key }
    }

    fn accepted(o: AdminOutcome) -> (Configuration, SeqNo) {
        match o {
            AdminOutcome::Accepted { next, boundary } => (next, boundary),
            AdminOutcome::Rejected(r) => panic!("rejected: {r}"),
        }
    }

    fn rejected(o: AdminOutcome) -> Rejection {
        match o {
            AdminOutcome::Rejected(r) => r,
            AdminOutcome::Accepted { next, .. } => panic!("accepted: {next:?}"),
        }
    }

    #[test]
    fn adding_replicas_raises_f_as_n_allows_and_takes_effect_at_the_next_checkpoint() {
        let mut r = Reconfig::new(genesis(4, Mode::Bft));
        let (next, boundary) = accepted(r.execute(SeqNo(130), 128, &signed(0, 1, vec![add(4)]), &TestVerify));
        assert_eq!((next.epoch, next.members.len(), next.f, boundary), (1, 5, 1, SeqNo(256)));
        assert_eq!(r.current().epoch, 0, "not before the boundary");
        assert!(r.after_batch(SeqNo(255), ViewNo(0)).is_none());
        assert_eq!(r.after_batch(SeqNo(256), ViewNo(0)).map(|c| c.epoch), Some(1));
        let (next, boundary) = accepted(r.execute(SeqNo(256), 128, &signed(1, 2, vec![add(5), add(6)]), &TestVerify));
        assert_eq!((next.members.len(), next.f, boundary), (7, 2, SeqNo(256)), "a checkpoint is its own boundary");
        r.after_batch(SeqNo(256), ViewNo(0));
        assert_eq!(r.current().membership().quorum(), 5);
    }

    #[test]
    fn a_new_epoch_is_led_first_by_whoever_proposed_in_the_newest_view_of_the_last() {
        let remove = |id| AdminOp::Remove { id: ReplicaId(id) };
        let mut r = Reconfig::new(genesis(4, Mode::Bft));
        // r0 led view 0, crashed; r1 proposed in view 1, r2 in view 2 (a
        // re-proposal from view 1 executes later but does not lower it).
        accepted(r.execute(SeqNo(10), 128, &signed(0, 1, vec![add(4)]), &TestVerify));
        r.after_batch(SeqNo(10), ViewNo(2));
        r.after_batch(SeqNo(11), ViewNo(1));
        let c = r.after_batch(SeqNo(128), ViewNo(0)).expect("the boundary").clone();
        assert_eq!((c.epoch, c.first_primary), (1, ReplicaId(2)));
        assert_eq!(c.membership().primary(ViewNo(0)), ReplicaId(2));
        assert_eq!(c.membership().primary(ViewNo(3)), ReplicaId(0), "then in id order, wrapping");
        // In epoch 1 views restart: view 1's primary is r3, which then leaves;
        // its successor in id order, r4, leads epoch 2.
        accepted(r.execute(SeqNo(130), 128, &signed(1, 2, vec![remove(3)]), &TestVerify));
        let c = r.after_batch(SeqNo(256), ViewNo(1)).expect("the boundary").clone();
        assert_eq!(c.first_primary, ReplicaId(4));
        // The last member leaving wraps around to the lowest id.
        accepted(r.execute(SeqNo(260), 128, &signed(2, 3, vec![remove(4), add(3)]), &TestVerify));
        let c = r.after_batch(SeqNo(384), ViewNo(0)).expect("the boundary").clone();
        assert_eq!((c.first_primary, c.membership().primary(ViewNo(0))), (ReplicaId(0), ReplicaId(0)));
    }

    #[test]
    fn every_bad_request_is_rejected_with_its_reason_and_changes_nothing() {
        let mut r = Reconfig::new(genesis(4, Mode::Bft));
        let before = r.clone();
        let cases: Vec<(Bytes, Rejection)> = vec![
            (Bytes::from_static(b"\xff\xff"), Rejection::Malformed),
            (
                {
                    let body = AdminBody { cluster: CLUSTER, epoch: 0, nonce: 1, ops: vec![add(4)] };
                    AdminRequest { body, signature: test_sign(&[8; 32], b"other") }.encode()
                },
                Rejection::BadSignature,
            ),
            (
                {
                    let body = AdminBody { cluster: 9, epoch: 0, nonce: 1, ops: vec![add(4)] };
                    let signature = test_sign(&VM, &body.signing_bytes());
                    AdminRequest { body, signature }.encode()
                },
                Rejection::WrongCluster { ours: CLUSTER },
            ),
            (signed(3, 1, vec![add(4)]), Rejection::WrongEpoch { current: 0 }),
            (signed(0, 0, vec![add(4)]), Rejection::NonceReused { last: 0 }),
            (signed(0, 1, vec![]), Rejection::OpCount(0)),
            (signed(0, 1, vec![add(2)]), Rejection::AlreadyMember(ReplicaId(2))),
            (signed(0, 1, vec![AdminOp::Remove { id: ReplicaId(9) }]), Rejection::NotMember(ReplicaId(9))),
            (
                signed(0, 1, vec![AdminOp::Add { id: ReplicaId(4), address: "h:1".into(), public_key: [0xff; 32] }]),
                Rejection::InvalidKey(ReplicaId(4)),
            ),
            (
                signed(0, 1, vec![AdminOp::Add { id: ReplicaId(4), address: String::new(), public_key: [5; 32] }]),
                Rejection::InvalidAddress(ReplicaId(4)),
            ),
            (signed(0, 1, vec![add(4), AdminOp::SetF { f: 2 }]), Rejection::TooSmall { n: 5, f: 2 }),
            (signed(0, 1, vec![AdminOp::Remove { id: ReplicaId(0) }]), Rejection::WouldLowerF { from: 1, to: 0 }),
        ];
        for (op, why) in cases {
            assert_eq!(rejected(r.execute(SeqNo(5), 128, &op, &TestVerify)), why);
            assert_eq!(r, before, "{why} changed nothing");
        }
    }

    #[test]
    fn a_pending_change_blocks_another_and_a_used_nonce_is_never_accepted_again() {
        let mut r = Reconfig::new(genesis(4, Mode::Bft));
        accepted(r.execute(SeqNo(5), 128, &signed(0, 10, vec![add(4)]), &TestVerify));
        assert_eq!(
            rejected(r.execute(SeqNo(6), 128, &signed(0, 11, vec![add(5)]), &TestVerify)),
            Rejection::ChangePending { epoch: 1, boundary: SeqNo(128) }
        );
        r.after_batch(SeqNo(128), ViewNo(0));
        // The captured request, replayed in the new epoch: wrong epoch.
        assert_eq!(
            rejected(r.execute(SeqNo(130), 128, &signed(0, 10, vec![add(4)]), &TestVerify)),
            Rejection::WrongEpoch { current: 1 }
        );
        // Re-signed for the new epoch with an old nonce: refused too.
        assert_eq!(
            rejected(r.execute(SeqNo(130), 128, &signed(1, 10, vec![add(5)]), &TestVerify)),
            Rejection::NonceReused { last: 10 }
        );
        accepted(r.execute(SeqNo(131), 128, &signed(1, 11, vec![add(5)]), &TestVerify));
    }

    #[test]
    fn shrinking_below_f_needs_an_explicit_f_and_cft_counts_2f_plus_1() {
        let mut r = Reconfig::new(genesis(4, Mode::Bft));
        let (next, _) = accepted(r.execute(
            SeqNo(1),
            128,
            &signed(0, 1, vec![AdminOp::Remove { id: ReplicaId(0) }, AdminOp::SetF { f: 0 }]),
            &TestVerify,
        ));
        assert_eq!((next.members.len(), next.f), (3, 0));

        let mut c = Reconfig::new(genesis(3, Mode::Cft));
        let (next, _) = accepted(c.execute(SeqNo(1), 128, &signed(0, 1, vec![add(3), add(4)]), &TestVerify));
        assert_eq!((next.members.len(), next.f, next.membership().quorum()), (5, 2, 3));
        // Replace a member in one request: n and f stay.
        let mut r = Reconfig::new(genesis(4, Mode::Bft));
        let (next, _) = accepted(r.execute(
            SeqNo(1),
            128,
            &signed(0, 1, vec![add(4), AdminOp::Remove { id: ReplicaId(0) }]),
            &TestVerify,
        ));
        let ids: Vec<u32> = next.members.iter().map(|m| m.id.0).collect();
        assert_eq!((ids, next.f), (vec![1, 2, 3, 4], 1));
    }
}
