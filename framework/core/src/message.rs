//! Protocol messages, as the core sees them.
//!
//! These are closed types: the wire layer decodes bytes into exactly these
//! and nothing else. Normal-case messages (PRE-PREPARE, PREPARE, COMMIT) rely
//! on the authenticated channel for their sender; the statements that travel
//! inside proofs (CHECKPOINT, VIEW-CHANGE, NEW-VIEW) are signed by their
//! author, so they can be relayed and checked by anyone.

use crate::types::{ClientId, Digest, ReplicaId, RequestId, SeqNo, ViewNo};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A client's request, as ordered and executed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Who sent it.
    pub client: ClientId,
    /// The client's number for it.
    pub id: RequestId,
    /// Read-only requests are executed without ordering and must not change state.
    pub read_only: bool,
    /// Opaque to the framework; the service interprets it.
    pub operation: Bytes,
    /// The client's signature over [`Request::signing_bytes`], checked by
    /// every replica that sees the request inside a PRE-PREPARE, so a
    /// primary cannot invent requests. Empty when signatures are off.
    pub auth: Bytes,
}

impl Request {
    /// The bytes a client signs: everything but the signature itself.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.operation.len());
        self.signing_parts(|part| out.extend_from_slice(part));
        out
    }

    /// [`Request::signing_bytes`] in the pieces they are made of, so that
    /// a hash can take them without a copy of the operation.
    pub fn signing_parts(&self, mut take: impl FnMut(&[u8])) {
        take(b"palisade/request/v1");
        take(&self.client.0.to_le_bytes());
        take(&self.id.0.to_le_bytes());
        take(&[self.read_only as u8]);
        take(&self.operation);
    }

    /// Approximate size in a batch, for the batch byte limit.
    pub fn size_bytes(&self) -> usize {
        24 + self.operation.len() + self.auth.len()
    }
}

/// What the primary orders at one sequence number: requests plus the
/// primary-chosen timestamp (PBFT's non-determinism handling). A batch with
/// no requests is the null batch the new primary uses to fill gaps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Milliseconds since the Unix epoch on the primary's clock; backups
    /// check it is within tolerance of theirs, and execution makes it
    /// monotonic (see [`crate::exec`]).
    pub timestamp_ms: u64,
    /// The view whose primary first proposed it (0 for the null batch); a
    /// re-proposal after a view change keeps it, and backups refuse a
    /// PRE-PREPARE naming a later view than its own. Execution keeps the
    /// largest, so every replica agrees on who last proposed requests in
    /// an epoch, and the next epoch starts with that replica as primary.
    pub proposed_in: ViewNo,
    /// The requests, executed in this order.
    pub requests: Vec<Request>,
}

impl Batch {
    /// The null batch.
    pub fn null() -> Batch {
        Batch { timestamp_ms: 0, proposed_in: ViewNo(0), requests: Vec::new() }
    }

    /// A batch of `requests` proposed in `view` at `timestamp_ms`.
    pub fn new(timestamp_ms: u64, proposed_in: ViewNo, requests: Vec<Request>) -> Batch {
        Batch { timestamp_ms, proposed_in, requests }
    }

    /// Digest over the canonical encoding.
    pub fn digest(&self) -> Digest {
        Digest::of(&canonical_bytes(self))
    }

    /// Whether this is the null batch.
    pub fn is_null(&self) -> bool {
        self.requests.is_empty()
    }

    /// Sum of request sizes.
    pub fn size_bytes(&self) -> usize {
        self.requests.iter().map(Request::size_bytes).sum()
    }
}

/// Digest of the null batch, used in NEW-VIEW for sequence numbers it fills.
pub fn null_digest() -> Digest {
    Batch::null().digest()
}

/// Canonical encoding used for digests and signatures.
pub fn canonical_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard cannot fail on these types: they contain no maps with
    // non-string keys and no unsupported types.
    postcard::to_allocvec(value).expect("protocol types always encode")
}

/// A signature produced by the [`crate::Crypto`] implementation; its
/// length depends on the scheme (64 bytes for ed25519).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(pub Bytes);

/// A statement plus its author's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The statement.
    pub body: T,
    /// Over `domain || canonical_bytes(body)`.
    pub signature: Signature,
}

/// PRE-PREPARE: the primary assigns `seq` to `batch` in `view`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// View of the primary that sent it.
    pub view: ViewNo,
    /// Assigned sequence number.
    pub seq: SeqNo,
    /// The batch itself; its digest is computed by the receiver.
    pub batch: Arc<Batch>,
}

/// PREPARE or COMMIT: a vote for `digest` at (`view`, `seq`). The voter is
/// the authenticated sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// View of the vote.
    pub view: ViewNo,
    /// Sequence number voted on.
    pub seq: SeqNo,
    /// Digest of the batch voted for.
    pub digest: Digest,
}

/// CHECKPOINT: the author's service state after executing `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    /// Last executed sequence number.
    pub seq: SeqNo,
    /// Digest of the snapshot after executing `seq`.
    pub state: Digest,
    /// Digest of the membership configuration in that state (zero for a
    /// cluster that cannot be reconfigured): a certificate at an epoch's
    /// handover checkpoint then proves the next configuration without the
    /// state (docs/reconfiguration.md).
    pub config: Digest,
    /// Author.
    pub replica: ReplicaId,
}

/// A stable checkpoint: a quorum of matching signed CHECKPOINT messages. The
/// certificate for sequence number 0 is the genesis state and has no proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCert {
    /// Checkpoint sequence number.
    pub seq: SeqNo,
    /// State digest.
    pub state: Digest,
    /// Quorum of signed checkpoints; empty for genesis.
    pub proof: Vec<Signed<CheckpointBody>>,
}

/// "I prepared `digest` at `seq` in `view`" (the latest view in which the
/// author prepared anything at `seq`). PBFT's P set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PreparedEntry {
    /// Sequence number.
    pub seq: SeqNo,
    /// View in which it prepared.
    pub view: ViewNo,
    /// What it prepared.
    pub digest: Digest,
}

/// "I pre-prepared `digest` at `seq`, most recently in `view`". PBFT's Q set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PrePreparedEntry {
    /// Sequence number.
    pub seq: SeqNo,
    /// Digest pre-prepared.
    pub digest: Digest,
    /// Latest view in which that digest was pre-prepared at `seq`.
    pub view: ViewNo,
}

/// VIEW-CHANGE: the author's request to move to `new_view`, carrying its
/// stable checkpoint with proof and its P and Q sets above it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChangeBody {
    /// The view the author moves to.
    pub new_view: ViewNo,
    /// Author.
    pub replica: ReplicaId,
    /// Author's stable checkpoint.
    pub checkpoint: CheckpointCert,
    /// P: sorted by seq, at most one per seq, all above the checkpoint.
    pub prepared: Vec<PreparedEntry>,
    /// Q: sorted by (seq, digest), a bounded number per seq.
    pub preprepared: Vec<PrePreparedEntry>,
}

/// NEW-VIEW: the new primary's proof and decisions. `chosen` must be exactly
/// what the decision rule computes from `view_changes`; every backup checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewViewBody {
    /// The view being started.
    pub view: ViewNo,
    /// Its primary (the author).
    pub replica: ReplicaId,
    /// The signed VIEW-CHANGE messages the decision was taken from.
    pub view_changes: Vec<Signed<ViewChangeBody>>,
    /// For each sequence number from the selected checkpoint + 1 up, the
    /// digest re-proposed in the new view (the null digest fills gaps).
    pub chosen: Vec<(SeqNo, Digest)>,
}

/// What a replica tells its peers periodically so that they can help it
/// catch up (and it them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Sender's view.
    pub view: ViewNo,
    /// Whether the sender is in normal operation in that view.
    pub normal: bool,
    /// Highest sequence number the sender has delivered.
    pub delivered: SeqNo,
    /// Sender's stable checkpoint.
    pub stable: SeqNo,
}

/// Everything one replica sends another.
///
/// Variants are only ever appended, so that the wire encoding of existing
/// ones never changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// PRE-PREPARE.
    PrePrepare(PrePrepare),
    /// PREPARE.
    Prepare(Vote),
    /// COMMIT.
    Commit(Vote),
    /// Signed CHECKPOINT (may be relayed).
    Checkpoint(Signed<CheckpointBody>),
    /// Signed VIEW-CHANGE.
    ViewChange(Signed<ViewChangeBody>),
    /// Signed NEW-VIEW (may be relayed).
    NewView(Arc<Signed<NewViewBody>>),
    /// A client request a backup received, forwarded to the primary.
    Forward(Request),
    /// Periodic progress report.
    Status(Status),
    /// "`seq` committed with `digest` here": f+1 of these let a replica that
    /// missed the normal case learn the decision.
    Decided {
        /// Sequence number.
        seq: SeqNo,
        /// Committed batch digest.
        digest: Digest,
    },
    /// Asks for the batch with `digest` at `seq`.
    BatchRequest {
        /// Sequence number.
        seq: SeqNo,
        /// Wanted digest.
        digest: Digest,
    },
    /// A batch, checked against the digest the receiver asked for.
    BatchReply {
        /// Sequence number.
        seq: SeqNo,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// Obsolete (whole snapshots in one frame; see [`PeerMessage::StateFetch`]):
    /// kept so that the encoding of later variants never changes, and ignored.
    StateRequest {
        /// Checkpoint sequence number.
        seq: SeqNo,
    },
    /// Obsolete, like [`PeerMessage::StateRequest`], and ignored.
    StateReply {
        /// Checkpoint sequence number.
        seq: SeqNo,
        /// The serialized state.
        snapshot: Bytes,
    },
    /// From a replica restarted without its votes: how far have you got?
    /// `nonce` is fresh for each restart, so that no answer sent to an
    /// earlier incarnation counts.
    RejoinQuery {
        /// Fresh per restart.
        nonce: u64,
    },
    /// The answer: the sender's stable checkpoint (with its proof) and how
    /// far it has delivered.
    RejoinReply {
        /// The query's nonce.
        nonce: u64,
        /// Highest sequence number the sender has delivered.
        delivered: SeqNo,
        /// The sender's stable checkpoint certificate.
        checkpoint: CheckpointCert,
    },
    /// Asks for part of the state at checkpoint `seq` (state transfer).
    StateFetch {
        /// Checkpoint sequence number.
        seq: SeqNo,
        /// What part of it.
        query: StateQuery,
    },
    /// Part of the state at checkpoint `seq`, checked by the receiver
    /// against the certified digest, piece by piece.
    StateData {
        /// Checkpoint sequence number.
        seq: SeqNo,
        /// The answer.
        answer: StateAnswer,
    },
    /// Links of the chain of membership epochs, in epoch order: the answer
    /// to a message from an older epoch, or to a [`PeerMessage::HandoverQuery`].
    /// Each is checked against the configuration before it, so they can be
    /// relayed by anyone (see [`crate::reconfig::Handover`]).
    Handovers(Vec<crate::reconfig::Handover>),
    /// From a replica that is not a member of any epoch it knows of yet (a
    /// joiner): which epochs came after `after`?
    HandoverQuery {
        /// The newest epoch the asker knows.
        after: u64,
    },
}

/// What a replica fetching a checkpoint's state asks a peer for (see
/// [`crate::state`] for parts and records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateQuery {
    /// The digests of the parts, from part `from` on.
    Manifest {
        /// First part.
        from: u32,
    },
    /// The parts `parts`, in order: each part's record digests, then its
    /// records. The first part is continued from its record digest
    /// `digests_from`, or, once its digests are all there, from byte
    /// `offset` of record `record`.
    Parts {
        /// Which parts.
        parts: Vec<u32>,
        /// Where the first part's record digests continue.
        digests_from: u32,
        /// Where its records continue.
        record: u32,
        /// Where that record continues.
        offset: u64,
    },
}

/// The answer to a [`StateQuery`], as much as fits one frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateAnswer {
    /// Part digests `from..` of `total`.
    Manifest {
        /// First part.
        from: u32,
        /// How many parts the state has.
        total: u32,
        /// Their digests.
        digests: Vec<Digest>,
    },
    /// Pieces of the parts asked for, in the order asked.
    Parts(Vec<StateItem>),
    /// That checkpoint is not kept here.
    Unavailable,
}

/// One piece of a part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateItem {
    /// Record digests `from..` of `part`, which has `total` records.
    Digests {
        /// Part.
        part: u32,
        /// First record.
        from: u32,
        /// How many records the part has.
        total: u32,
        /// Their digests.
        digests: Vec<Digest>,
    },
    /// Bytes `offset..` of record `record` of `part`, which is `len` bytes long.
    Bytes {
        /// Part.
        part: u32,
        /// Record.
        record: u32,
        /// Where these bytes start in the record.
        offset: u64,
        /// The record's length.
        len: u64,
        /// The bytes.
        bytes: Bytes,
    },
}

impl PeerMessage {
    /// Whether this is ordering work (a vote, a proposal, a view change or
    /// a request to order), as opposed to a laggard's question or its
    /// answer: an epoch that is over takes no more of it.
    pub fn orders(&self) -> bool {
        matches!(
            self,
            PeerMessage::PrePrepare(_)
                | PeerMessage::Prepare(_)
                | PeerMessage::Commit(_)
                | PeerMessage::ViewChange(_)
                | PeerMessage::NewView(_)
                | PeerMessage::Forward(_)
        )
    }

    /// Short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::PrePrepare(_) => "pre-prepare",
            PeerMessage::Prepare(_) => "prepare",
            PeerMessage::Commit(_) => "commit",
            PeerMessage::Checkpoint(_) => "checkpoint",
            PeerMessage::ViewChange(_) => "view-change",
            PeerMessage::NewView(_) => "new-view",
            PeerMessage::Forward(_) => "forward",
            PeerMessage::Status(_) => "status",
            PeerMessage::Decided { .. } => "decided",
            PeerMessage::BatchRequest { .. } => "batch-request",
            PeerMessage::BatchReply { .. } => "batch-reply",
            PeerMessage::StateRequest { .. } => "state-request",
            PeerMessage::StateReply { .. } => "state-reply",
            PeerMessage::RejoinQuery { .. } => "rejoin-query",
            PeerMessage::RejoinReply { .. } => "rejoin-reply",
            PeerMessage::StateFetch { .. } => "state-fetch",
            PeerMessage::StateData { .. } => "state-data",
            PeerMessage::Handovers(_) => "handovers",
            PeerMessage::HandoverQuery { .. } => "handover-query",
        }
    }
}

/// A replica's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The replica's view, so that clients learn who the primary is.
    pub view: ViewNo,
    /// Author.
    pub replica: ReplicaId,
    /// Request answered.
    pub client: ClientId,
    /// Request answered.
    pub request: RequestId,
    /// The service's result.
    pub result: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_digests_depend_on_every_field() {
        let req = Request {
            client: ClientId(1),
            id: RequestId(2),
            read_only: false,
            operation: Bytes::from_static(b"op"),
            auth: Bytes::new(),
        };
        let a = Batch { timestamp_ms: 5, proposed_in: ViewNo(0), requests: vec![req.clone()] };
        let mut b = a.clone();
        b.timestamp_ms = 6;
        let mut c = a.clone();
        c.requests[0].operation = Bytes::from_static(b"oq");
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest(), a.clone().digest());
        assert_ne!(a.digest(), null_digest());
    }

    #[test]
    fn request_signing_bytes_cover_identity_and_operation() {
        let r = Request {
            client: ClientId(1),
            id: RequestId(2),
            read_only: false,
            operation: Bytes::from_static(b"x"),
            auth: Bytes::from_static(b"sig"),
        };
        let mut other = r.clone();
        other.id = RequestId(3);
        assert_ne!(r.signing_bytes(), other.signing_bytes());
        let mut resigned = r.clone();
        resigned.auth = Bytes::from_static(b"other");
        assert_eq!(r.signing_bytes(), resigned.signing_bytes());
    }
}
