//! What goes into a replica and what comes out: inputs, actions, and the
//! counters an operator or a test reads.

use super::records::Record;
use crate::message::{Batch, PeerMessage, Request, StateAnswer, StateQuery};
use crate::types::{ClientId, Digest, ReplicaId, RequestId, SeqNo, ViewNo};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Everything that can happen to a replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed.
    Tick {
        /// A monotonic clock in milliseconds: it drives every timer, so a
        /// jump of the wall clock never fires them all at once. Later
        /// values win; it never goes backwards.
        now_ms: u64,
        /// The wall clock in milliseconds since the Unix epoch: it only
        /// stamps batches (the primary-chosen non-determinism) and checks the
        /// primary's stamps.
        wall_ms: u64,
    },
    /// A request straight from a client, already authenticated by the channel
    /// and not known to the execution layer as executed or stale.
    Request(Request),
    /// A message from another replica, authenticated by the channel as
    /// coming from `from`.
    Peer {
        /// Authenticated sender.
        from: ReplicaId,
        /// The message.
        msg: PeerMessage,
    },
    /// The executor has executed `seq` (a checkpoint) and the state there
    /// has digest `state` (see [`crate::state`]).
    CheckpointReady {
        /// Checkpoint sequence number.
        seq: SeqNo,
        /// The state's digest.
        state: Digest,
        /// The digest of the state's membership configuration (zero
        /// without reconfiguration).
        config: Digest,
    },
    /// The executor accepted a reconfiguration: this core's epoch ends at
    /// `last`, the first checkpoint at or after the request
    /// (docs/reconfiguration.md).
    EpochEnds {
        /// The epoch's last sequence number.
        last: SeqNo,
    },
    /// This replica's connection from `peer` closed (`up` false) or opened
    /// again (`up` true), as the caller's network saw it. A crashed
    /// process's connections close at once, so a primary whose connection
    /// is down is suspected sooner (see `Config::primary_down_timeout_ms`).
    /// Only the replica's own links count: no peer can report another's.
    PeerLink {
        /// The peer.
        peer: ReplicaId,
        /// Whether a connection from it is open now.
        up: bool,
    },
    /// The executor now holds the state of checkpoint `seq`, fetched from
    /// peers and checked against `state`, the digest asked for in
    /// [`Action::FetchState`].
    StateFetched {
        /// Checkpoint sequence number.
        seq: SeqNo,
        /// The state's digest.
        state: Digest,
    },
}

/// What the core asks its caller to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Make this record durable before any later send.
    Persist(Record),
    /// Send to one replica.
    Send {
        /// Recipient.
        to: ReplicaId,
        /// Message.
        msg: PeerMessage,
    },
    /// Send to every other member.
    Broadcast(PeerMessage),
    /// Execute a committed batch; sequence numbers arrive in order, once.
    Deliver {
        /// Its sequence number.
        seq: SeqNo,
        /// This replica's view.
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// Execute a batch tentatively (PBFT 5.1): it is prepared here and
    /// every earlier sequence number is delivered, but it has not
    /// committed. Answers say they are tentative. At most one is
    /// outstanding; the next word about `seq` is [`Action::Confirm`], or
    /// [`Action::RollBack`] followed by a [`Action::Deliver`] of what
    /// committed there. It is never a checkpoint's sequence number.
    ExecuteTentative {
        /// Its sequence number.
        seq: SeqNo,
        /// This replica's view (the view it prepared in).
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// The batch executed tentatively at `seq` committed: it is delivered
    /// now, as it executed (log it as decided; nothing re-executes).
    Confirm {
        /// Its sequence number.
        seq: SeqNo,
        /// This replica's view.
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// What committed at `seq` is not what executed tentatively there:
    /// put the state back as it was after `seq - 1`, by installing the
    /// newest kept checkpoint's state and executing again the batches of
    /// `replay` above it (every delivered batch above the stable
    /// checkpoint, in order). No answers go out for the replay: those
    /// requests were answered when they were delivered.
    RollBack {
        /// The tentative sequence number being undone.
        seq: SeqNo,
        /// This replica's view (what the replayed batches' contexts say).
        view: ViewNo,
        /// Delivered batches, in order, from above the stable checkpoint
        /// to `seq - 1`.
        replay: Vec<(SeqNo, Arc<Batch>)>,
    },
    /// Answer a read-only request now, saying this view (clients learn the
    /// primary from replies).
    ExecuteReadOnly {
        /// The request.
        request: Request,
        /// This replica's view.
        view: ViewNo,
    },
    /// Answer `query` about the state at checkpoint `seq` to `to`, with a
    /// [`PeerMessage::StateData`].
    ServeState {
        /// Who asked.
        to: ReplicaId,
        /// Checkpoint.
        seq: SeqNo,
        /// What.
        query: StateQuery,
    },
    /// Fetch the state of checkpoint `seq`, whose digest is `state`, from
    /// peers, and say [`Input::StateFetched`] once it is installed. Repeated
    /// every state-transfer timeout while the transfer lasts: the fetcher
    /// then asks again whatever went unanswered since the last time.
    FetchState {
        /// Checkpoint.
        seq: SeqNo,
        /// Its certified digest.
        state: Digest,
        /// The replicas that signed this state, so hold it: asked first,
        /// before members that may be down or behind.
        holders: Vec<ReplicaId>,
    },
    /// A peer's answer for the fetch under way.
    StateData {
        /// Who answered.
        from: ReplicaId,
        /// Checkpoint.
        seq: SeqNo,
        /// The answer, unchecked.
        answer: StateAnswer,
    },
    /// `seq` is now the stable checkpoint: log records up to it and
    /// snapshots below `keep_from` can go. The previous stable checkpoint is
    /// kept too, so that a laggard fetching it when this one became stable
    /// can still finish.
    StableCheckpoint {
        /// The new low watermark.
        seq: SeqNo,
        /// Snapshots from here up are still served.
        keep_from: SeqNo,
    },
    /// A client request was not accepted; the client should back off and retry.
    Dropped {
        /// Whose.
        client: ClientId,
        /// Which.
        request: RequestId,
        /// Why.
        reason: DropReason,
    },
}

/// Why a client request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The pending-request limit is reached.
    PendingFull,
    /// The read-only queue is full.
    ReadQueueFull,
    /// The request alone is larger than a batch may be, so no primary could
    /// ever propose it; retrying cannot help.
    RequestTooLarge,
    /// A read-only request reached a replica that is rejoining: it cannot
    /// vouch for having seen what a quorum prepared before its restart, so
    /// its answer must not count towards a read quorum.
    Rejoining,
}

/// Why a peer message (or a client request the core saw) was discarded.
/// Each is counted in [`Metrics::dropped`]; [`Discard::name`] is what
/// operators see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Discard {
    /// The sender is not a member (or is this replica).
    UnknownSender,
    /// A normal-case message reached a replica that is rejoining and casts no votes.
    Rejoining,
    /// A PRE-PREPARE for a view other than the current one, or while changing views.
    PrePrepareOtherView,
    /// A PRE-PREPARE from a replica that is not the primary.
    PrePrepareNotPrimary,
    /// A PRE-PREPARE outside the watermarks.
    PrePrepareOutsideWindow,
    /// A PRE-PREPARE whose batch exceeds the batch limits.
    BatchOverLimits,
    /// A second, different PRE-PREPARE for one view and sequence number.
    Equivocation,
    /// A PRE-PREPARE whose batch differs from what this replica decided there.
    ContradictsDecision,
    /// A second fresh digest at a sequence number (see `view_change::digests_per_seq_max`).
    SecondFreshDigest,
    /// A primary's timestamp too far from this replica's wall clock.
    TimestampOutOfTolerance,
    /// A batch with a request whose client authentication fails.
    UnauthenticatedRequest,
    /// A PREPARE in CFT mode, which has no PREPARE phase.
    PrepareInCft,
    /// A PREPARE for another view or outside the watermarks.
    PrepareOutOfPlace,
    /// A PREPARE from the primary, which never sends one.
    PrepareFromPrimary,
    /// A PREPARE that contradicts the sender's earlier one.
    ConflictingPrepare,
    /// A COMMIT for another view or outside the watermarks.
    CommitOutOfPlace,
    /// A COMMIT that contradicts the sender's earlier one.
    ConflictingCommit,
    /// A batch nobody asked for, or one already held.
    UnwantedBatch,
    /// A client request that has already been delivered.
    AlreadyDelivered,
    /// A forwarded request reached a replica that is not the primary.
    ForwardToNonPrimary,
    /// A forwarded request whose client authentication fails.
    ForwardUnauthenticated,
    /// A forwarded request for which the pool, or its client's quota in
    /// it, has no room (dropped before its signature is checked).
    ForwardNoRoom,
    /// A client request whose signature does not check: never proposed,
    /// and never held against the primary.
    ClientUnauthenticated,
    /// A forwarded request larger than a batch may be.
    ForwardTooLarge,
    /// A CHECKPOINT whose signature or signer does not check.
    BadCheckpoint,
    /// A VIEW-CHANGE relayed by a replica other than its author.
    ViewChangeRelayed,
    /// A VIEW-CHANGE that fails verification.
    InvalidViewChange,
    /// A NEW-VIEW from the wrong replica or with a bad signature.
    NewViewBadSignature,
    /// A NEW-VIEW whose decisions do not follow from its proof.
    NewViewProofFails,
    /// A valid NEW-VIEW that contradicts this replica's decision: evidence
    /// of more than f faults.
    NewViewContradictsDecision,
    /// State data for a checkpoint this replica is not fetching.
    StateUnasked,
    /// A message of an obsolete kind (whole-snapshot state transfer), or
    /// one for the host rather than a core (the chain of epochs).
    Obsolete,
    /// A rejoin answer with an invalid checkpoint certificate.
    InvalidRejoinReply,
    /// A question asked faster than a correct peer would ask it.
    OverAnswerRate,
    /// A PRE-PREPARE past the end of this epoch.
    PrePreparePastEnd,
    /// Ordering work for an epoch that is over.
    EpochOver,
}

impl Discard {
    /// The reason in words, as counters and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Discard::UnknownSender => "unknown sender",
            Discard::Rejoining => "normal-case message while rejoining",
            Discard::PrePrepareOtherView => "pre-prepare for another view",
            Discard::PrePrepareNotPrimary => "pre-prepare from a non-primary",
            Discard::PrePrepareOutsideWindow => "pre-prepare outside the watermarks",
            Discard::BatchOverLimits => "pre-prepare batch over the limits",
            Discard::Equivocation => "equivocating pre-prepare",
            Discard::ContradictsDecision => "pre-prepare contradicts a decision",
            Discard::SecondFreshDigest => "pre-prepare of a second fresh batch at a sequence number",
            Discard::TimestampOutOfTolerance => "pre-prepare timestamp out of tolerance",
            Discard::UnauthenticatedRequest => "pre-prepare with an unauthenticated request",
            Discard::PrepareInCft => "prepare in CFT mode",
            Discard::PrepareOutOfPlace => "prepare for another view or outside the watermarks",
            Discard::PrepareFromPrimary => "prepare from the primary",
            Discard::ConflictingPrepare => "conflicting prepare",
            Discard::CommitOutOfPlace => "commit for another view or outside the watermarks",
            Discard::ConflictingCommit => "conflicting commit",
            Discard::UnwantedBatch => "unwanted batch",
            Discard::AlreadyDelivered => "request already delivered",
            Discard::ForwardToNonPrimary => "forward to a non-primary",
            Discard::ForwardUnauthenticated => "forwarded request fails authentication",
            Discard::ForwardNoRoom => "forwarded request with no room in the pool or its client's quota",
            Discard::ClientUnauthenticated => "client request with a bad signature",
            Discard::ForwardTooLarge => "forwarded request larger than a batch",
            Discard::BadCheckpoint => "checkpoint with a bad signature",
            Discard::ViewChangeRelayed => "view-change relayed by another replica",
            Discard::InvalidViewChange => "invalid view-change",
            Discard::NewViewBadSignature => "new-view with a bad signature",
            Discard::NewViewProofFails => "new-view whose proof does not hold",
            Discard::NewViewContradictsDecision => "new-view contradicts a local decision",
            Discard::StateUnasked => "state data for a checkpoint not being fetched",
            Discard::Obsolete => "obsolete message kind",
            Discard::InvalidRejoinReply => "rejoin reply with an invalid checkpoint",
            Discard::OverAnswerRate => "question over its answer rate",
            Discard::PrePreparePastEnd => "pre-prepare past the end of the epoch",
            Discard::EpochOver => "ordering work for an epoch that is over",
        }
    }
}

impl fmt::Display for Discard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counters an operator or a test can read.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Batches delivered.
    pub delivered_batches: u64,
    /// Requests delivered (inside batches).
    pub delivered_requests: u64,
    /// Batches this replica proposed as primary.
    pub proposed_batches: u64,
    /// View changes this replica started or joined.
    pub view_changes: u64,
    /// NEW-VIEWs accepted (or sent, as primary).
    pub new_views: u64,
    /// Snapshots installed by state transfer.
    pub state_transfers: u64,
    /// Decisions learned from f+1 DECIDED notices.
    pub decisions_learned: u64,
    /// Request timers that expired while this replica was catching up, and
    /// were restarted instead of starting a view change.
    pub timers_restarted: u64,
    /// PRE-PREPAREs holding a request with neither this replica's MAC nor
    /// a valid signature: proof the primary invented or altered it.
    pub primary_evidence: u64,
    /// Messages dropped, by reason.
    pub dropped: BTreeMap<Discard, u64>,
    /// Evidence of a safety bug or of a corrupted local state; must stay 0.
    pub alarms: u64,
    /// Times this replica finished rejoining after a restart without its
    /// votes, and voted again.
    pub rejoined: u64,
    /// Why this replica last started or joined a view change.
    pub last_view_change: Option<ViewChangeReason>,
    /// The request whose wait last made this replica suspect the primary:
    /// an operator's first question after an unexpected view change.
    pub last_late_request: Option<LateRequest>,
    /// Batches executed tentatively.
    pub tentative_batches: u64,
    /// Tentative executions undone because something else committed.
    pub rollbacks: u64,
    /// View changes this replica started because its view had lasted
    /// `leader_rotation_ms`.
    pub rotations: u64,
    /// View changes this replica started because the primary's batches
    /// kept leaving out a request it had (`Config::batch_watch_skips`).
    pub skip_suspicions: u64,
    /// Requests this replica, as a backup whose clients send to every
    /// replica, forwarded because the primary had not proposed them within
    /// `Config::forward_grace_ms`.
    pub late_forwards: u64,
}

/// The request that tripped the request timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LateRequest {
    /// Its client.
    pub client: crate::types::ClientId,
    /// The client's number for it.
    pub request: crate::types::RequestId,
    /// How long it had been timed.
    pub waited_ms: u64,
    /// The timeout it exceeded, backoff included.
    pub timeout_ms: u64,
    /// Requests its client had pending here: many means a busy or flooding
    /// client, whose requests a correct primary orders a share at a time.
    pub client_pending: usize,
    /// Whether a PRE-PREPARE of this view held it: agreement, not the
    /// primary's proposing, was what it waited for.
    pub proposed: bool,
    /// The last batch delivered here.
    pub delivered: crate::types::SeqNo,
    /// How far agreement on the next one had got here, in this view: where
    /// a slow round stalled.
    pub next: NextSlot,
}

/// What a replica holds of the first batch it has not delivered, in the
/// current view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextSlot {
    /// Whether it accepted (or, as primary, sent) the PRE-PREPARE.
    pub pre_prepared: bool,
    /// Whether it holds the batch's contents.
    pub batch: bool,
    /// PREPAREs it holds.
    pub prepares: usize,
    /// COMMITs it holds.
    pub commits: usize,
}

/// Why a replica moved to a new view: for an operator's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewChangeReason {
    /// A request waited longer than the request timeout.
    RequestTimeout,
    /// The epoch's end was known but not reached in time.
    EndTimeout,
    /// The view change itself took longer than its timeout.
    ViewChangeTimeout,
    /// The primary proposed a request its client did not authenticate.
    PrimaryEvidence,
    /// The primary's connection closed and stayed closed while a request
    /// waited.
    PrimaryUnreachable,
    /// f+1 other replicas had moved to a later view.
    Joined,
    /// The view had lasted `leader_rotation_ms`.
    Rotation,
    /// The primary's batches kept leaving out a request it had, with room
    /// to spare (see `Config::batch_watch_skips`).
    SkippedRequests,
}

impl ViewChangeReason {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            ViewChangeReason::RequestTimeout => "request-timeout",
            ViewChangeReason::EndTimeout => "epoch-end-timeout",
            ViewChangeReason::ViewChangeTimeout => "view-change-timeout",
            ViewChangeReason::PrimaryEvidence => "primary-evidence",
            ViewChangeReason::PrimaryUnreachable => "primary-unreachable",
            ViewChangeReason::Joined => "joined-peers",
            ViewChangeReason::Rotation => "leader-rotation",
            ViewChangeReason::SkippedRequests => "skipped-requests",
        }
    }
}

impl Metrics {
    /// How many messages were dropped for `reason`.
    pub fn dropped(&self, reason: Discard) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }
}
