//! The replica state machine: PBFT normal case, checkpoints, view change,
//! catch-up and state transfer, driven by [`Input`]s and answering with
//! [`Action`]s.
//!
//! # Ordering rules for actions
//! The caller processes the actions of one [`Replica::step`] in order, and:
//! 1. makes every [`Action::Persist`] durable before sending any message that
//!    follows it (a replica must never vote, then forget the vote in a crash);
//! 2. executes [`Action::Deliver`] and [`Action::ExecuteReadOnly`] in order on
//!    one executor, so a read sees every batch delivered before it;
//! 3. after executing a sequence number that is a multiple of the checkpoint
//!    interval, takes a snapshot, keeps it, and feeds back
//!    [`Input::CheckpointReady`] with its digest;
//! 4. applies [`Action::InstallSnapshot`] before any later `Deliver`.
//!
//! Messages may be dropped, duplicated and reordered by the caller's
//! network; the core retransmits what matters on its timers.

use crate::answers::{AnswerKind, AnswerLimiter};
use crate::checkpoint::{self, genesis};
use crate::config::Config;
use crate::crypto::{self, Crypto, Domain};
use crate::exec::IdWindow;
use crate::message::{
    null_digest, Batch, CheckpointBody, CheckpointCert, NewViewBody, PeerMessage, PrePrepare, PrePreparedEntry,
    PreparedEntry, Request, Signed, Status, ViewChangeBody, Vote,
};
use crate::types::{ClientId, Digest, Membership, Mode, ReplicaId, RequestId, SeqNo, ViewNo};
use crate::view_change::{self, Limits, NewViewPlan};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Request timeouts a replica that is behind may wait out per view before
/// it suspects the primary anyway.
pub const MAX_CATCH_UP_RESTARTS: u32 = 4;

/// Everything that can happen to a replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed. `now_ms` never goes backwards (later values win).
    Tick {
        /// Milliseconds on the replica's clock.
        now_ms: u64,
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
    /// The executor has executed `seq` (a checkpoint) and its snapshot has digest `state`.
    CheckpointReady {
        /// Checkpoint sequence number.
        seq: SeqNo,
        /// Digest of the snapshot's bytes.
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
    /// Answer a read-only request now.
    ExecuteReadOnly(Request),
    /// Send the snapshot taken at `seq` to `to` as a [`PeerMessage::StateReply`], if kept.
    ServeSnapshot {
        /// Who asked.
        to: ReplicaId,
        /// Checkpoint wanted.
        seq: SeqNo,
    },
    /// Replace the executor's state with this certified snapshot.
    InstallSnapshot {
        /// Its checkpoint.
        seq: SeqNo,
        /// Its bytes; their digest matches the certificate.
        snapshot: Bytes,
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

/// Why a client request was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The pending-request limit is reached.
    PendingFull,
    /// The read-only queue is full.
    ReadQueueFull,
    /// The request alone is larger than a batch may be, so no primary could
    /// ever propose it; retrying cannot help.
    RequestTooLarge,
}

/// What must survive a crash. Replaying a replica's records in order
/// through [`Replica::recover`] rebuilds everything safety depends on.
/// Records about sequence numbers at or below a [`Record::Stable`] may be
/// discarded once it is durable.
///
/// Each record is durable on its own, and any prefix of a step's records
/// is a state the replica may safely recover to: a step that changes
/// several things at once (entering a view together with its re-proposals)
/// writes them as one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// The replica started changing to `view` (and sent its VIEW-CHANGE).
    ViewChange {
        /// The view being changed to.
        view: ViewNo,
    },
    /// The replica entered the NEW-VIEW's view in normal operation, with
    /// every re-proposal it carries pre-prepared in that view: one record,
    /// so that no crash can leave the view entered without them.
    NewView(Arc<Signed<NewViewBody>>),
    /// Pre-prepared `digest` at `seq` in `view` (batch content, when known).
    PrePrepared {
        /// View.
        view: ViewNo,
        /// Sequence number.
        seq: SeqNo,
        /// Digest.
        digest: Digest,
        /// The batch, when known.
        batch: Option<Arc<Batch>>,
    },
    /// Prepared `digest` at `seq` in `view`.
    Prepared {
        /// View.
        view: ViewNo,
        /// Sequence number.
        seq: SeqNo,
        /// Digest.
        digest: Digest,
    },
    /// A new stable checkpoint.
    Stable(CheckpointCert),
    /// The replica restarted without its votes: it casts none until its
    /// stable checkpoint reaches `until`, past anything it may have voted on
    /// before (unknown until enough peers have answered).
    Rejoin {
        /// The rejoin mark, once known.
        until: Option<SeqNo>,
    },
}

/// The durable records a replica still needs, in order: what a write-ahead
/// log keeps. Appending a stable checkpoint drops every record it makes
/// obsolete, and only the newest view record is kept, so the log never
/// holds more than one log window of sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordLog {
    records: Vec<Record>,
    stable: SeqNo,
}

impl RecordLog {
    /// Appends `record`, dropping what it supersedes. A NEW-VIEW that a
    /// later view supersedes leaves behind what it pre-prepared, as plain
    /// PrePrepared records: the Q set still needs them.
    pub fn append(&mut self, record: Record) {
        match &record {
            Record::Stable(cert) => {
                let stable = cert.seq;
                self.stable = self.stable.max(stable);
                self.records.retain(|r| match r {
                    Record::PrePrepared { seq, .. } | Record::Prepared { seq, .. } => *seq > stable,
                    Record::Stable(_) => false,
                    Record::ViewChange { .. } | Record::NewView(_) | Record::Rejoin { .. } => true,
                });
            }
            Record::ViewChange { .. } | Record::NewView(_) => {
                let stable = self.stable;
                let old = std::mem::take(&mut self.records);
                for r in old {
                    match r {
                        Record::ViewChange { .. } => {}
                        Record::NewView(nv) => {
                            let view = nv.body.view;
                            self.records.extend(
                                nv.body
                                    .chosen
                                    .iter()
                                    .filter(|(seq, _)| *seq > stable)
                                    .map(|&(seq, digest)| Record::PrePrepared { view, seq, digest, batch: None }),
                            );
                        }
                        other => self.records.push(other),
                    }
                }
            }
            Record::Rejoin { .. } => self.records.retain(|r| !matches!(r, Record::Rejoin { .. })),
            Record::PrePrepared { .. } | Record::Prepared { .. } => {}
        }
        self.records.push(record);
    }

    /// The records, in order, for [`Replica::recover`].
    pub fn records(&self) -> &[Record] {
        &self.records
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
    /// Messages dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Evidence of a safety bug or of a corrupted local state; must stay 0.
    pub alarms: u64,
    /// Times this replica finished rejoining after a restart without its
    /// votes, and voted again.
    pub rejoined: u64,
}

#[derive(Clone, Debug, Default)]
struct Slot {
    /// View the per-view fields below belong to.
    view: ViewNo,
    pre_prepare: Option<Digest>,
    prepares: BTreeMap<ReplicaId, Digest>,
    commits: BTreeMap<ReplicaId, Digest>,
    prepared_here: bool,
    /// P: latest view in which this replica prepared here.
    prepared: Option<(ViewNo, Digest)>,
    /// Q: digests pre-prepared here, with the latest view of each.
    preprepared: BTreeMap<Digest, ViewNo>,
    /// Contents for digests in Q and for the decision.
    batches: BTreeMap<Digest, Arc<Batch>>,
    decided: Option<Digest>,
    decided_notices: BTreeMap<ReplicaId, Digest>,
    touched_ms: u64,
    batch_requested_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct Pending {
    request: Request,
    arrival_ms: u64,
    forwarded_ms: u64,
    order: u64,
    proposed: bool,
}

#[derive(Clone, Debug)]
struct Transfer {
    seq: SeqNo,
    state: Digest,
    attempt: usize,
    deadline_ms: u64,
    /// Who was asked last; only its wrong answer moves the transfer on.
    asked: Option<ReplicaId>,
    /// An older checkpoint asked for before this one was certified: its
    /// snapshot may still be on its way and is installed if it comes.
    earlier: Option<(SeqNo, Digest)>,
}

/// A replica that restarted without its votes: what it has learned of how
/// far it may have voted before.
#[derive(Clone, Debug)]
struct Rejoin {
    nonce: u64,
    /// Each answering peer's delivered sequence number, capped by what its
    /// certified checkpoint makes plausible.
    answers: BTreeMap<ReplicaId, SeqNo>,
    until: Option<SeqNo>,
}

/// How a replica comes back after a crash.
#[derive(Clone, Debug, Default)]
pub struct Restart {
    /// Its durable records, in order (what a [`RecordLog`] kept).
    pub records: Vec<Record>,
    /// The records of its votes were lost (in-memory storage, a log that
    /// keeps only decisions, a wiped disk): it rejoins without voting until
    /// its stable checkpoint passes anything it may have voted on.
    pub votes_lost: bool,
    /// The newest snapshot its executor restored.
    pub executed: SeqNo,
    /// That snapshot's digest.
    pub executed_state: Digest,
    /// Fresh entropy from the host, so that this incarnation's questions
    /// are never answered by replies meant for an earlier one.
    pub nonce: u64,
}

/// A deadline with exponential backoff (all the core's timers are values).
#[derive(Clone, Copy, Debug, Default)]
struct Timeout {
    deadline_ms: Option<u64>,
    attempts: u32,
}

type Key = (ClientId, RequestId);

/// One replica's protocol state. Pure: no I/O, no clock, no randomness.
pub struct Replica<C> {
    id: ReplicaId,
    cfg: Config,
    crypto: C,
    genesis_state: Digest,
    now_ms: u64,

    view: ViewNo,
    normal: bool,
    stable: CheckpointCert,
    delivered: SeqNo,
    slots: BTreeMap<SeqNo, Slot>,
    next_seq: SeqNo,
    last_timestamp_ms: u64,
    null_batch: Arc<Batch>,

    pending: BTreeMap<Key, Pending>,
    by_arrival: BTreeSet<(u64, ClientId, RequestId)>,
    queue: BTreeMap<u64, Key>,
    order_counter: u64,
    delivered_ids: BTreeMap<ClientId, IdWindow>,
    client_window: u64,
    reads: VecDeque<(SeqNo, Request)>,

    checkpoint_votes: BTreeMap<SeqNo, BTreeMap<ReplicaId, Signed<CheckpointBody>>>,
    own_checkpoints: BTreeMap<SeqNo, Digest>,
    view_changes: BTreeMap<ReplicaId, Signed<ViewChangeBody>>,
    new_view_msg: Option<Arc<Signed<NewViewBody>>>,
    transfer: Option<Transfer>,
    /// The view and delivered sequence number each peer last reported in
    /// STATUS: how far behind this replica is.
    peer_progress: BTreeMap<ReplicaId, (ViewNo, SeqNo)>,
    /// Request timers count from here at the earliest: moved to now when
    /// a timer expires while this replica is catching up.
    timers_restarted_ms: u64,
    /// Timer restarts in the current view, the view they count for, and
    /// what this replica had delivered at the last one.
    restarts: (ViewNo, u32, SeqNo),

    view_change_timer: Timeout,
    /// Doublings of the request timeout since a request last executed
    /// (PBFT 4.5.2): a network slower than the base timeout still lets a
    /// view finish its work.
    request_timeout_shift: u32,
    retransmit_at_ms: u64,
    status_at_ms: u64,
    /// The stable checkpoint before the current one: still served.
    prev_stable: SeqNo,
    /// Set while this replica rejoins after losing its votes.
    rejoin: Option<Rejoin>,
    answers: AnswerLimiter,

    actions: Vec<Action>,
    metrics: Metrics,
}

impl<C: Crypto> Replica<C> {
    /// A fresh replica at the genesis checkpoint, whose state digest every
    /// replica computes itself from the service's initial snapshot.
    ///
    /// Its clock starts at zero and moves only with [`Input::Tick`]: a
    /// caller that runs on a real clock must feed a tick before any other
    /// input, or the first requests will look long overdue.
    pub fn new(cfg: Config, id: ReplicaId, crypto: C, genesis_state: Digest) -> Self {
        let client_window = cfg.client_window;
        Replica {
            id,
            crypto,
            genesis_state,
            now_ms: 0,
            view: ViewNo(0),
            normal: true,
            stable: genesis(genesis_state),
            delivered: SeqNo(0),
            slots: BTreeMap::new(),
            next_seq: SeqNo(1),
            last_timestamp_ms: 0,
            null_batch: Arc::new(Batch::null()),
            pending: BTreeMap::new(),
            by_arrival: BTreeSet::new(),
            queue: BTreeMap::new(),
            order_counter: 0,
            delivered_ids: BTreeMap::new(),
            client_window,
            reads: VecDeque::new(),
            checkpoint_votes: BTreeMap::new(),
            own_checkpoints: BTreeMap::from([(SeqNo(0), genesis_state)]),
            view_changes: BTreeMap::new(),
            new_view_msg: None,
            transfer: None,
            view_change_timer: Timeout::default(),
            request_timeout_shift: 0,
            retransmit_at_ms: 0,
            status_at_ms: 0,
            prev_stable: SeqNo(0),
            rejoin: None,
            answers: AnswerLimiter::default(),
            actions: Vec::new(),
            metrics: Metrics::default(),
            peer_progress: BTreeMap::new(),
            timers_restarted_ms: 0,
            restarts: (ViewNo(0), 0, SeqNo(0)),
            cfg,
        }
    }

    /// Rebuilds a replica after a crash from what survived it: its durable
    /// records, and its executor restored from its own snapshot at
    /// `restart.executed`. If that is older than the recovered stable
    /// checkpoint the replica fetches the newer state itself.
    ///
    /// A replica whose votes were lost (`restart.votes_lost`) comes back
    /// *rejoining*: it learns decisions, follows views and executes, but
    /// sends no PRE-PREPARE, PREPARE, COMMIT, VIEW-CHANGE or NEW-VIEW until
    /// its stable checkpoint passes anything it may have voted on before
    /// (see docs/protocol.md, "Recovery"). Until then it counts as one of
    /// the f faulty replicas, but it cannot make anyone decide anything.
    pub fn recover(cfg: Config, id: ReplicaId, crypto: C, genesis_state: Digest, restart: Restart) -> Self {
        let mut r = Replica::new(cfg, id, crypto, genesis_state);
        let mut preprepared_in: Vec<(ViewNo, SeqNo, Digest)> = Vec::new();
        let mut rejoin_until = restart.votes_lost.then_some(None);
        for record in restart.records {
            match record {
                Record::ViewChange { view } => {
                    r.view = view;
                    r.normal = false;
                    r.new_view_msg = None;
                }
                Record::NewView(nv) => {
                    let view = nv.body.view;
                    r.view = view;
                    r.normal = true;
                    for &(seq, digest) in &nv.body.chosen {
                        if seq > r.stable.seq {
                            let null = r.null_batch.clone();
                            let slot = r.slots.entry(seq).or_default();
                            add_q(slot, digest, view);
                            if digest == null_digest() {
                                slot.batches.insert(digest, null);
                            }
                            preprepared_in.push((view, seq, digest));
                        }
                    }
                    r.new_view_msg = Some(nv);
                }
                Record::PrePrepared { view, seq, digest, batch } => {
                    if seq > r.stable.seq {
                        let slot = r.slots.entry(seq).or_default();
                        add_q(slot, digest, view);
                        if let Some(b) = batch {
                            slot.batches.insert(digest, b);
                        }
                        preprepared_in.push((view, seq, digest));
                    }
                }
                Record::Prepared { view, seq, digest } => {
                    if seq > r.stable.seq {
                        let slot = r.slots.entry(seq).or_default();
                        if slot.prepared.is_none_or(|(v, _)| v <= view) {
                            slot.prepared = Some((view, digest));
                        }
                    }
                }
                Record::Stable(cert) => {
                    if cert.seq > r.stable.seq {
                        r.slots = r.slots.split_off(&cert.seq.next());
                        r.prev_stable = r.stable.seq;
                        r.stable = cert;
                    }
                }
                Record::Rejoin { until } => rejoin_until = Some(until),
            }
        }
        r.restore_current_view(preprepared_in);
        r.next_seq = r.next_seq.max(r.stable.seq.next());
        r.delivered = restart.executed;
        r.own_checkpoints.insert(restart.executed, restart.executed_state);
        if let Some(until) = rejoin_until {
            r.rejoin = Some(Rejoin { nonce: restart.nonce, answers: BTreeMap::new(), until });
            r.persist(Record::Rejoin { until });
            if until.is_none() {
                r.broadcast(PeerMessage::RejoinQuery { nonce: restart.nonce });
            }
            r.check_rejoined();
        }
        if restart.executed < r.stable.seq {
            let (seq, state) = (r.stable.seq, r.stable.state);
            r.start_transfer(seq, state);
        }
        if !r.normal && !r.rejoining() {
            // Still changing views: say so again (same content as before the crash).
            let vc = r.build_view_change();
            r.view_changes.insert(id, vc.clone());
            r.actions.push(Action::Broadcast(PeerMessage::ViewChange(vc)));
        }
        r
    }

    /// Re-establishes what this replica said in its current view, so that
    /// it can never say something different after the crash: the digest it
    /// pre-prepared at each sequence number, its own PREPARE for it, and,
    /// where it prepared, its own COMMIT.
    fn restore_current_view(&mut self, preprepared_in: Vec<(ViewNo, SeqNo, Digest)>) {
        let view = self.view;
        let (me, bft) = (self.id, self.bft());
        let primary = self.cfg.membership.primary(view) == me;
        for (v, seq, digest) in preprepared_in {
            if v != view || seq <= self.stable.seq {
                continue;
            }
            let slot = self.slots.entry(seq).or_default();
            slot.view = view;
            slot.pre_prepare = Some(digest);
            // It voted for what it held; a re-proposal whose batch it never
            // got, it never voted for.
            if bft && !primary && (digest == null_digest() || slot.batches.contains_key(&digest)) {
                slot.prepares.insert(me, digest);
            }
            if let Some((pv, pd)) = slot.prepared {
                if pv == view && pd == digest {
                    slot.prepared_here = true;
                    slot.commits.insert(me, digest);
                }
            }
            if primary && seq >= self.next_seq {
                self.next_seq = seq.next();
            }
        }
    }

    // ----- accessors -------------------------------------------------------

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }
    /// Current view (or the view being changed to).
    pub fn view(&self) -> ViewNo {
        self.view
    }
    /// Whether in normal operation (not changing views).
    pub fn is_normal(&self) -> bool {
        self.normal
    }
    /// Whether this replica is the primary of its current view.
    pub fn is_primary(&self) -> bool {
        self.cfg.membership.primary(self.view) == self.id
    }
    /// The primary of the current view.
    pub fn primary(&self) -> ReplicaId {
        self.cfg.membership.primary(self.view)
    }
    /// Highest sequence number delivered.
    pub fn delivered(&self) -> SeqNo {
        self.delivered
    }
    /// The stable checkpoint.
    pub fn stable_checkpoint(&self) -> &CheckpointCert {
        &self.stable
    }
    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    /// Requests waiting to be ordered.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }
    /// Consensus instances held in the log; never more than the log window.
    pub fn log_len(&self) -> usize {
        self.slots.len()
    }
    /// Whether a state transfer is under way.
    pub fn transferring(&self) -> bool {
        self.transfer.is_some()
    }
    /// Whether this replica is rejoining after losing its votes, and so
    /// casts none yet.
    pub fn rejoining(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.amnesiac_votes {
            return false;
        }
        self.rejoin.is_some()
    }
    /// The sequence number this replica's stable checkpoint must reach
    /// before it votes again, once enough peers have said how far they got.
    pub fn rejoin_mark(&self) -> Option<SeqNo> {
        self.rejoin.as_ref().and_then(|r| r.until)
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The membership.
    pub fn membership(&self) -> &Membership {
        &self.cfg.membership
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Feeds one input.
    pub fn step(&mut self, input: Input) {
        match input {
            Input::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.on_tick();
            }
            Input::Request(req) => self.on_client_request(req),
            Input::Peer { from, msg } => {
                if from == self.id || !self.cfg.membership.contains(from) {
                    self.drop_msg("unknown sender");
                } else {
                    self.on_peer(from, msg);
                }
            }
            Input::CheckpointReady { seq, state } => self.on_checkpoint_ready(seq, state),
        }
    }

    // ----- helpers -------------------------------------------------------------

    fn quorum(&self) -> usize {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.weak_quorum {
            let m = &self.cfg.membership;
            return match m.mode() {
                Mode::Bft => 2 * m.f(),
                Mode::Cft => m.quorum() - 1,
            }
            .max(1);
        }
        self.cfg.membership.quorum()
    }

    /// Whether NEW-VIEWs cover every sequence number with a Q entry (always,
    /// but for the planted bug).
    fn cover_q(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.evicting_q {
            return false;
        }
        true
    }

    fn bft(&self) -> bool {
        self.cfg.membership.mode() == Mode::Bft
    }

    fn limits(&self) -> Limits {
        Limits {
            log_window: self.cfg.log_window,
            checkpoint_interval: self.cfg.checkpoint_interval,
            preprepared_per_seq_max: view_change::digests_per_seq_max(&self.cfg.membership),
        }
    }

    fn drop_msg(&mut self, reason: &'static str) {
        *self.metrics.dropped.entry(reason).or_default() += 1;
    }

    fn in_window(&self, seq: SeqNo) -> bool {
        seq > self.stable.seq && seq.0 <= self.stable.seq.0 + self.cfg.log_window
    }

    fn persist(&mut self, r: Record) {
        self.actions.push(Action::Persist(r));
    }

    fn broadcast(&mut self, m: PeerMessage) {
        self.actions.push(Action::Broadcast(m));
    }

    fn send(&mut self, to: ReplicaId, m: PeerMessage) {
        self.actions.push(Action::Send { to, msg: m });
    }

    /// The slot for `seq`, with its per-view fields reset if they belong to an older view.
    fn slot_in_view(&mut self, seq: SeqNo) -> &mut Slot {
        let view = self.view;
        let slot = self.slots.entry(seq).or_default();
        if slot.view < view {
            slot.view = view;
            slot.pre_prepare = None;
            slot.prepares.clear();
            slot.commits.clear();
            slot.prepared_here = false;
        }
        slot
    }

    fn batch_for(&self, seq: SeqNo, digest: Digest) -> Option<Arc<Batch>> {
        if digest == null_digest() {
            return Some(self.null_batch.clone());
        }
        self.slots.get(&seq).and_then(|s| s.batches.get(&digest).cloned())
    }

    fn is_delivered(&self, key: Key) -> bool {
        self.delivered_ids.get(&key.0).is_some_and(|w| w.contains(key.1 .0, self.client_window))
    }

    // ----- timers --------------------------------------------------------------

    fn on_tick(&mut self) {
        let now = self.now_ms;
        if self.normal {
            // The request timer: a replica that has waited too long for some
            // request suspects the primary (PBFT 4.4). Each request carries
            // its own start time, so constant load never keeps a timer from
            // expiring, and a busy but correct primary never trips it. The
            // primary times its own requests too: when its proposals cannot
            // commit (too few replicas left in its view) it is the one that
            // must move on.
            //
            // A replica that is merely behind (f+1 peers in its view report
            // deliveries well past its own) waits on itself, not on the
            // primary: it restarts its timers and catches up instead of
            // starting a view change nobody else would join. f+1 reports
            // include a correct replica's, so faulty peers cannot hold off
            // a view change this way; and one a primary deserves is still
            // started by the replicas that are not behind.
            //
            // The timeout doubles with every view change that executed
            // nothing since the last (PBFT 4.5.2), so a network slower than
            // the configured timeout still lets some view finish its work.
            let timeout = self.cfg.request_timeout_ms << self.request_timeout_shift;
            if let Some(&(arrival, _, _)) = self.by_arrival.first() {
                if now >= arrival.max(self.timers_restarted_ms) + timeout {
                    if self.may_wait_to_catch_up() {
                        self.timers_restarted_ms = now;
                        self.restarts = (self.view, self.restarts.1 + 1, self.delivered);
                        self.metrics.timers_restarted += 1;
                    } else if self.rejoining() {
                        // It casts no vote, a VIEW-CHANGE included; the
                        // replicas that vote decide whether the primary is slow.
                        self.timers_restarted_ms = now;
                    } else {
                        self.request_timeout_shift =
                            (self.request_timeout_shift + 1).min(self.cfg.view_change_backoff_max);
                        #[cfg(feature = "planted-bugs")]
                        if self.cfg.planted.fixed_request_timeout {
                            self.request_timeout_shift = 0;
                        }
                        self.start_view_change(self.view.next());
                    }
                }
            }
        } else if let Some(deadline) = self.view_change_timer.deadline_ms {
            if now >= deadline {
                self.start_view_change(self.view.next());
            }
        }
        if now >= self.retransmit_at_ms {
            self.retransmit_at_ms = now + self.cfg.retransmit_ms;
            self.retransmit();
        }
        if now >= self.status_at_ms {
            self.status_at_ms = now + self.cfg.status_interval_ms;
            self.broadcast(PeerMessage::Status(Status {
                view: self.view,
                normal: self.normal,
                delivered: self.delivered,
                stable: self.stable.seq,
            }));
        }
        if let Some(t) = &mut self.transfer {
            if now >= t.deadline_ms {
                t.attempt += 1;
                self.send_state_request();
            }
        }
        let horizon = self.cfg.retransmit_ms.max(self.cfg.status_interval_ms).max(self.cfg.state_transfer_timeout_ms);
        self.answers.forget_older_than(now, horizon);
        self.try_propose();
    }

    /// Whether an expired request timer may restart because this replica
    /// is behind: at most `MAX_CATCH_UP_RESTARTS` times per view, and after
    /// the first only if it delivered something since the last. A faulty
    /// primary that keeps a correct replica behind on purpose (withholding
    /// what it needs to deliver, while f+1 others report progress) thus
    /// delays that replica's suspicion by a few timeouts, never forever.
    ///
    /// A replica fetching a certified checkpoint is behind by definition (a
    /// quorum signed a state it lacks), and nobody can withhold the state
    /// from it: any correct peer serves it. So while a transfer runs, the
    /// timers restart without limit.
    fn may_wait_to_catch_up(&self) -> bool {
        if self.transfer.is_some() {
            return true;
        }
        let (view, count, delivered_then) = self.restarts;
        let (count, progressed) = if view == self.view { (count, self.delivered > delivered_then) } else { (0, true) };
        count < MAX_CATCH_UP_RESTARTS && (count == 0 || progressed) && self.lagging()
    }

    /// Whether f+1 peers in this replica's view have delivered more than a
    /// pipeline's worth past it.
    fn lagging(&self) -> bool {
        let mut ahead: Vec<SeqNo> =
            self.peer_progress.values().filter(|(v, _)| *v == self.view).map(|(_, d)| *d).collect();
        ahead.sort_unstable_by(|a, b| b.cmp(a));
        let f_plus_1 = self.cfg.membership.weak_quorum();
        ahead.get(f_plus_1 - 1).is_some_and(|d| d.0 > self.delivered.0 + self.cfg.max_in_flight)
    }

    fn retransmit(&mut self) {
        let now = self.now_ms;
        if let Some(r) = &self.rejoin {
            if r.until.is_none() {
                let nonce = r.nonce;
                self.broadcast(PeerMessage::RejoinQuery { nonce });
            }
        }
        let voting = !self.rejoining();
        if !self.normal {
            if !voting {
                return;
            }
            if let Some(vc) = self.view_changes.get(&self.id).cloned() {
                if vc.body.new_view == self.view {
                    self.broadcast(PeerMessage::ViewChange(vc));
                }
            }
            return;
        }
        let primary = self.is_primary() && voting;
        let bft = self.bft() && voting;
        let view = self.view;
        let me = self.id;
        let mut out = Vec::new();
        let mut fetch = Vec::new();
        for (&seq, slot) in self.slots.iter_mut() {
            if let Some(d) = slot.decided {
                if seq > self.delivered && d != null_digest() && !slot.batches.contains_key(&d) {
                    fetch.push((seq, d));
                }
                continue;
            }
            if slot.view != view || now < slot.touched_ms + self.cfg.retransmit_ms {
                continue;
            }
            let Some(d) = slot.pre_prepare else { continue };
            slot.touched_ms = now;
            if primary {
                if let Some(b) = slot.batches.get(&d) {
                    out.push(PeerMessage::PrePrepare(PrePrepare { view, seq, batch: b.clone() }));
                }
            } else if bft && slot.prepares.get(&me) == Some(&d) {
                out.push(PeerMessage::Prepare(Vote { view, seq, digest: d }));
            }
            if slot.prepared_here && voting {
                out.push(PeerMessage::Commit(Vote { view, seq, digest: d }));
            }
            if d != null_digest() && !slot.batches.contains_key(&d) {
                fetch.push((seq, d));
            }
        }
        for m in out {
            self.broadcast(m);
        }
        for (seq, digest) in fetch {
            self.broadcast(PeerMessage::BatchRequest { seq, digest });
        }
    }

    // ----- client requests -----------------------------------------------------

    fn on_client_request(&mut self, req: Request) {
        if req.read_only {
            self.on_read_only(req);
            return;
        }
        let key = (req.client, req.id);
        if self.is_delivered(key) {
            self.drop_msg("request already delivered");
            return;
        }
        if req.size_bytes() > self.cfg.batch_max_bytes {
            // Backups refuse a batch over the limit, so proposing this
            // request would only change views forever.
            self.actions.push(Action::Dropped {
                client: req.client,
                request: req.id,
                reason: DropReason::RequestTooLarge,
            });
            return;
        }
        let now = self.now_ms;
        let primary = self.primary();
        let am_primary = primary == self.id;
        if let Some(p) = self.pending.get_mut(&key) {
            // A retransmission: the client has not heard back. Make sure the
            // primary has it (the forward may have been lost).
            if !am_primary && now >= p.forwarded_ms + self.cfg.retransmit_ms {
                p.forwarded_ms = now;
                let r = p.request.clone();
                self.send(primary, PeerMessage::Forward(r));
            }
            return;
        }
        if !self.add_pending(req.clone()) {
            return;
        }
        if !am_primary {
            self.send(primary, PeerMessage::Forward(req));
        }
        self.try_propose();
    }

    fn add_pending(&mut self, req: Request) -> bool {
        if self.pending.len() >= self.cfg.pending_max {
            self.actions.push(Action::Dropped { client: req.client, request: req.id, reason: DropReason::PendingFull });
            return false;
        }
        let key = (req.client, req.id);
        let order = self.order_counter;
        self.order_counter += 1;
        self.by_arrival.insert((self.now_ms, key.0, key.1));
        self.queue.insert(order, key);
        self.pending.insert(
            key,
            Pending { request: req, arrival_ms: self.now_ms, forwarded_ms: self.now_ms, order, proposed: false },
        );
        true
    }

    fn remove_pending(&mut self, key: Key) {
        if let Some(p) = self.pending.remove(&key) {
            self.by_arrival.remove(&(p.arrival_ms, key.0, key.1));
            self.queue.remove(&p.order);
        }
    }

    fn on_forward(&mut self, req: Request) {
        if !self.is_primary() {
            self.drop_msg("forward to a non-primary");
            return;
        }
        if req.read_only || !self.crypto.verify_request(&req) {
            self.drop_msg("forwarded request fails authentication");
            return;
        }
        if req.size_bytes() > self.cfg.batch_max_bytes {
            self.drop_msg("forwarded request larger than a batch");
            return;
        }
        let key = (req.client, req.id);
        if self.is_delivered(key) || self.pending.contains_key(&key) {
            return;
        }
        if self.add_pending(req) {
            self.try_propose();
        }
    }

    /// Read-only requests run without ordering, but only once this replica
    /// has executed everything it has prepared. A write acknowledged to a
    /// client was prepared by a quorum before any replica executed it, and
    /// any quorum of read replies includes a correct replica of that
    /// quorum, so a read that gathers a quorum of matching replies sees
    /// every acknowledged write: reads stay linearizable.
    fn on_read_only(&mut self, req: Request) {
        let target = self
            .slots
            .iter()
            .rev()
            .find(|(_, s)| s.prepared.is_some())
            .map(|(&seq, _)| seq)
            .unwrap_or(SeqNo(0))
            .max(self.stable.seq);
        if self.delivered >= target && self.transfer.is_none() {
            self.actions.push(Action::ExecuteReadOnly(req));
        } else if self.reads.len() < self.cfg.read_queue_max {
            self.reads.push_back((target, req));
        } else {
            self.actions.push(Action::Dropped {
                client: req.client,
                request: req.id,
                reason: DropReason::ReadQueueFull,
            });
        }
    }

    fn flush_reads(&mut self) {
        if self.transfer.is_some() || self.reads.is_empty() {
            return;
        }
        let delivered = self.delivered;
        let mut keep = VecDeque::with_capacity(self.reads.len());
        for (target, req) in std::mem::take(&mut self.reads) {
            if target <= delivered {
                self.actions.push(Action::ExecuteReadOnly(req));
            } else {
                keep.push_back((target, req));
            }
        }
        self.reads = keep;
    }

    // ----- the primary ---------------------------------------------------------

    fn try_propose(&mut self) {
        if !self.normal || !self.is_primary() || self.transfer.is_some() || self.rejoining() {
            return;
        }
        self.next_seq = self.next_seq.max(self.stable.seq.next()).max(self.delivered.next());
        while !self.queue.is_empty() {
            let in_flight = self.next_seq.0 - 1 - self.delivered.0;
            if in_flight >= self.cfg.max_in_flight || !self.in_window(self.next_seq) {
                break;
            }
            if in_flight > 0 && self.queue.len() < self.cfg.pipeline_min_batch.min(self.cfg.batch_max_requests) {
                break;
            }
            let mut requests = Vec::new();
            let mut bytes = 0usize;
            while let Some((&order, &key)) = self.queue.first_key_value() {
                let p = self.pending.get_mut(&key).expect("queued requests are pending");
                let size = p.request.size_bytes();
                if !requests.is_empty()
                    && (requests.len() >= self.cfg.batch_max_requests || bytes + size > self.cfg.batch_max_bytes)
                {
                    break;
                }
                p.proposed = true;
                bytes += size;
                requests.push(p.request.clone());
                self.queue.remove(&order);
            }
            let timestamp_ms = self.now_ms.max(self.last_timestamp_ms);
            self.last_timestamp_ms = timestamp_ms;
            let batch = Arc::new(Batch { timestamp_ms, requests });
            let seq = self.next_seq;
            self.next_seq = seq.next();
            self.metrics.proposed_batches += 1;
            let digest = batch.digest();
            let view = self.view;
            let now = self.now_ms;
            let slot = self.slot_in_view(seq);
            slot.pre_prepare = Some(digest);
            slot.batches.insert(digest, batch.clone());
            slot.touched_ms = now;
            add_q(slot, digest, view);
            self.persist(Record::PrePrepared { view, seq, digest, batch: Some(batch.clone()) });
            self.broadcast(PeerMessage::PrePrepare(PrePrepare { view, seq, batch }));
            if !self.bft() {
                self.mark_prepared(seq, digest);
            }
        }
    }

    // ----- normal case ---------------------------------------------------------

    fn on_peer(&mut self, from: ReplicaId, msg: PeerMessage) {
        match msg {
            PeerMessage::PrePrepare(pp) => self.on_pre_prepare(from, pp),
            PeerMessage::Prepare(v) => self.on_prepare(from, v),
            PeerMessage::Commit(v) => self.on_commit(from, v),
            PeerMessage::Checkpoint(c) => self.on_checkpoint(c),
            PeerMessage::ViewChange(vc) => self.on_view_change(from, vc),
            PeerMessage::NewView(nv) => self.on_new_view(nv),
            PeerMessage::Forward(r) => self.on_forward(r),
            PeerMessage::Status(s) => self.on_status(from, s),
            PeerMessage::Decided { seq, digest } => self.on_decided(from, seq, digest),
            PeerMessage::BatchRequest { seq, digest } => self.on_batch_request(from, seq, digest),
            PeerMessage::BatchReply { seq, batch } => self.on_batch_reply(seq, batch),
            PeerMessage::StateRequest { seq } => self.on_state_request(from, seq),
            PeerMessage::StateReply { seq, snapshot } => self.on_state_reply(from, seq, snapshot),
            PeerMessage::RejoinQuery { nonce } => self.on_rejoin_query(from, nonce),
            PeerMessage::RejoinReply { nonce, delivered, checkpoint } => {
                self.on_rejoin_reply(from, nonce, delivered, checkpoint)
            }
        }
    }

    /// Whether `peer` may have another answer of `kind` now (see [`crate::answers`]).
    fn may_answer(&mut self, peer: ReplicaId, kind: AnswerKind) -> bool {
        let (interval, per_interval) = match kind {
            AnswerKind::NewView | AnswerKind::Rejoin | AnswerKind::Batch(_) => (self.cfg.retransmit_ms, 1),
            AnswerKind::CheckpointProof | AnswerKind::Decided => (self.cfg.status_interval_ms, 1),
            // A laggard fetches at most a catch-up's worth of batches per
            // STATUS round, plus the pipeline in flight.
            AnswerKind::Batches => (
                self.cfg.status_interval_ms,
                (self.cfg.catch_up_max + self.cfg.max_in_flight).min(u32::MAX as u64) as u32,
            ),
            AnswerKind::Snapshot => (self.cfg.state_transfer_timeout_ms, 1),
        };
        if self.answers.allow(peer, kind, self.now_ms, interval, per_interval) {
            true
        } else {
            self.drop_msg("question over its answer rate");
            false
        }
    }

    fn on_batch_request(&mut self, from: ReplicaId, seq: SeqNo, digest: Digest) {
        let Some(b) = self.batch_for(seq, digest) else { return };
        if b.is_null() || !self.may_answer(from, AnswerKind::Batch(seq)) || !self.may_answer(from, AnswerKind::Batches)
        {
            return;
        }
        self.send(from, PeerMessage::BatchReply { seq, batch: b });
    }

    /// Serves any checkpoint this replica executed from the one before its
    /// stable checkpoint up: a laggard that asked for that one just before
    /// this became stable can still finish, and one holding a certificate
    /// this replica has not seen yet is served too (it checks the digest).
    fn on_state_request(&mut self, from: ReplicaId, seq: SeqNo) {
        let held = seq >= self.prev_stable && self.delivered >= seq && self.own_checkpoints.contains_key(&seq);
        if held && self.may_answer(from, AnswerKind::Snapshot) {
            self.actions.push(Action::ServeSnapshot { to: from, seq });
        }
    }

    fn on_pre_prepare(&mut self, from: ReplicaId, pp: PrePrepare) {
        if self.rejoining() {
            self.drop_msg("normal-case message while rejoining");
            return;
        }
        if !self.normal || pp.view != self.view {
            self.drop_msg("pre-prepare for another view");
            return;
        }
        if from != self.primary() {
            self.drop_msg("pre-prepare from a non-primary");
            return;
        }
        if !self.in_window(pp.seq) {
            self.drop_msg("pre-prepare outside the watermarks");
            return;
        }
        if pp.batch.requests.len() > self.cfg.batch_max_requests || pp.batch.size_bytes() > self.cfg.batch_max_bytes {
            self.drop_msg("pre-prepare batch over the limits");
            return;
        }
        let digest = pp.batch.digest();
        let (view, seq) = (pp.view, pp.seq);
        let bft = self.bft();
        #[cfg(feature = "planted-bugs")]
        let (second_fresh_allowed, q_cap) = (self.cfg.planted.evicting_q, self.cfg.planted.evicting_q.then_some(4));
        #[cfg(not(feature = "planted-bugs"))]
        let (second_fresh_allowed, q_cap): (bool, Option<usize>) = (false, None);
        let slot = self.slot_in_view(seq);
        if let Some(existing) = slot.pre_prepare {
            if existing == digest {
                // The primary retransmits because it misses our vote.
                if bft {
                    self.send(from, PeerMessage::Prepare(Vote { view, seq, digest }));
                }
            } else {
                self.drop_msg("equivocating pre-prepare");
            }
            return;
        }
        if slot.decided.is_some_and(|d| d != digest) {
            self.drop_msg("pre-prepare contradicts a decision");
            return;
        }
        if !second_fresh_allowed && !slot.preprepared.is_empty() && !slot.preprepared.contains_key(&digest) {
            // A second fresh digest at this sequence number: a correct
            // replica accepts one, so its Q set stays bounded and never
            // evicts a voucher (see `view_change::digests_per_seq_max`).
            // A NEW-VIEW covers every sequence number some replica in its
            // proof pre-prepared, so only a primary that skipped this
            // replica's VIEW-CHANGE can offer one.
            self.drop_msg("pre-prepare of a second fresh batch at a sequence number");
            return;
        }
        if !pp.batch.is_null() {
            let skew = pp.batch.timestamp_ms.abs_diff(self.now_ms);
            if skew > self.cfg.timestamp_tolerance_ms {
                self.drop_msg("pre-prepare timestamp out of tolerance");
                return;
            }
            if pp.batch.requests.iter().any(|r| r.read_only || !self.crypto.verify_request(r)) {
                self.drop_msg("pre-prepare with an unauthenticated request");
                return;
            }
        }
        let now = self.now_ms;
        let me = self.id;
        let slot = self.slot_in_view(seq);
        slot.pre_prepare = Some(digest);
        slot.batches.insert(digest, pp.batch.clone());
        slot.touched_ms = now;
        add_q(slot, digest, view);
        if let Some(cap) = q_cap {
            evict_q(&mut slot.preprepared, digest, cap);
        }
        if bft {
            slot.prepares.insert(me, digest);
        }
        self.mark_proposed(&pp.batch);
        self.persist(Record::PrePrepared { view, seq, digest, batch: Some(pp.batch) });
        if bft {
            self.broadcast(PeerMessage::Prepare(Vote { view, seq, digest }));
            self.check_prepared(seq);
        } else {
            self.mark_prepared(seq, digest);
        }
    }

    fn on_prepare(&mut self, from: ReplicaId, v: Vote) {
        if self.rejoining() {
            self.drop_msg("normal-case message while rejoining");
            return;
        }
        if !self.bft() {
            self.drop_msg("prepare in CFT mode");
            return;
        }
        if v.view != self.view || !self.in_window(v.seq) {
            self.drop_msg("prepare for another view or outside the watermarks");
            return;
        }
        if from == self.cfg.membership.primary(v.view) {
            self.drop_msg("prepare from the primary");
            return;
        }
        let slot = self.slot_in_view(v.seq);
        if *slot.prepares.entry(from).or_insert(v.digest) != v.digest {
            self.drop_msg("conflicting prepare");
        }
        self.check_prepared(v.seq);
    }

    fn check_prepared(&mut self, seq: SeqNo) {
        if !self.normal {
            return;
        }
        let need = self.quorum().saturating_sub(1);
        let Some(slot) = self.slots.get(&seq) else {
            return;
        };
        if slot.prepared_here || slot.view != self.view {
            return;
        }
        let Some(d) = slot.pre_prepare else { return };
        if d != null_digest() && !slot.batches.contains_key(&d) {
            // Never vote for a batch this replica cannot produce (see `vote_when_held`).
            return;
        }
        if slot.prepares.values().filter(|x| **x == d).count() >= need {
            self.mark_prepared(seq, d);
        }
    }

    /// Votes for what this view pre-prepared at `seq` (a NEW-VIEW's
    /// re-proposal), once this replica holds its batch. A replica that
    /// voted for a digest it cannot produce would give it a P entry in the
    /// next view change, and if nobody holds the batch (its only holder
    /// lost its disk), every later view would re-propose it and nobody
    /// could ever execute it. Without the votes, the next view change fills
    /// the sequence number with null instead, which is safe: a batch that
    /// committed is held by a quorum.
    fn vote_when_held(&mut self, seq: SeqNo) {
        if self.rejoining() || !self.normal {
            return;
        }
        let (view, me, bft, primary) = (self.view, self.id, self.bft(), self.is_primary());
        let Some(slot) = self.slots.get_mut(&seq) else { return };
        let Some(d) = slot.pre_prepare else { return };
        if slot.view != view || (d != null_digest() && !slot.batches.contains_key(&d)) {
            return;
        }
        if bft {
            if !primary && !slot.prepares.contains_key(&me) {
                slot.prepares.insert(me, d);
                self.broadcast(PeerMessage::Prepare(Vote { view, seq, digest: d }));
            }
            self.check_prepared(seq);
        } else if !slot.prepared_here {
            self.mark_prepared(seq, d);
        }
    }

    /// prepared(m, v, n) holds: record it, then send COMMIT.
    fn mark_prepared(&mut self, seq: SeqNo, digest: Digest) {
        let view = self.view;
        let me = self.id;
        let now = self.now_ms;
        let slot = self.slot_in_view(seq);
        slot.prepared_here = true;
        slot.prepared = Some((view, digest));
        slot.commits.insert(me, digest);
        slot.touched_ms = now;
        self.persist(Record::Prepared { view, seq, digest });
        self.broadcast(PeerMessage::Commit(Vote { view, seq, digest }));
        self.check_committed(seq);
    }

    fn on_commit(&mut self, from: ReplicaId, v: Vote) {
        if self.rejoining() {
            self.drop_msg("normal-case message while rejoining");
            return;
        }
        if v.view != self.view || !self.in_window(v.seq) {
            self.drop_msg("commit for another view or outside the watermarks");
            return;
        }
        let slot = self.slot_in_view(v.seq);
        if *slot.commits.entry(from).or_insert(v.digest) != v.digest {
            self.drop_msg("conflicting commit");
        }
        self.check_committed(v.seq);
    }

    fn check_committed(&mut self, seq: SeqNo) {
        let q = self.quorum();
        let Some(slot) = self.slots.get(&seq) else {
            return;
        };
        if !slot.prepared_here || slot.view != self.view || slot.decided.is_some() {
            return;
        }
        let Some(d) = slot.pre_prepare else { return };
        if slot.commits.values().filter(|x| **x == d).count() >= q {
            self.decide(seq, d);
        }
    }

    fn decide(&mut self, seq: SeqNo, digest: Digest) {
        let Some(slot) = self.slots.get_mut(&seq) else {
            return;
        };
        match slot.decided {
            None => slot.decided = Some(digest),
            Some(d) if d == digest => return,
            Some(_) => {
                self.metrics.alarms += 1;
                return;
            }
        }
        self.try_deliver();
    }

    fn try_deliver(&mut self) {
        if self.transfer.is_some() {
            return;
        }
        let now = self.now_ms;
        loop {
            let seq = self.delivered.next();
            let Some(slot) = self.slots.get(&seq) else {
                break;
            };
            let Some(digest) = slot.decided else { break };
            let Some(batch) = self.batch_for(seq, digest) else {
                let slot = self.slots.get_mut(&seq).expect("present");
                if slot.batch_requested_ms.is_none_or(|t| now >= t + self.cfg.retransmit_ms) {
                    slot.batch_requested_ms = Some(now);
                    self.broadcast(PeerMessage::BatchRequest { seq, digest });
                }
                break;
            };
            self.delivered = seq;
            self.metrics.delivered_batches += 1;
            self.metrics.delivered_requests += batch.requests.len() as u64;
            if !batch.is_null() {
                self.view_change_timer.attempts = 0;
                self.adapt_request_timeout(&batch, now);
            }
            for r in &batch.requests {
                self.remove_pending((r.client, r.id));
                let window = self.client_window;
                self.delivered_ids.entry(r.client).or_default().insert(r.id.0, window);
            }
            self.actions.push(Action::Deliver { seq, view: self.view, batch });
        }
        self.flush_reads();
        self.try_propose();
    }

    /// Requests execute again: the request timeout comes back down, as
    /// far as the time they took allows. Within the base timeout it is back
    /// to the base; well inside the current one, one doubling less; slower
    /// than that it stays, so a network slower than the base timeout does
    /// not make every request after a success trip it again.
    fn adapt_request_timeout(&mut self, batch: &Batch, now: u64) {
        let waited = batch
            .requests
            .iter()
            .filter_map(|r| self.pending.get(&(r.client, r.id)))
            .map(|p| now.saturating_sub(p.arrival_ms))
            .max();
        let Some(waited) = waited else { return };
        let base = self.cfg.request_timeout_ms;
        if waited <= base {
            self.request_timeout_shift = 0;
        } else if waited < (base << self.request_timeout_shift) / 2 {
            self.request_timeout_shift = self.request_timeout_shift.saturating_sub(1);
        }
    }

    fn on_batch_reply(&mut self, seq: SeqNo, batch: Arc<Batch>) {
        let digest = batch.digest();
        let Some(slot) = self.slots.get_mut(&seq) else {
            return;
        };
        let wanted = slot.pre_prepare == Some(digest) || slot.decided == Some(digest);
        if !wanted || slot.batches.contains_key(&digest) {
            self.drop_msg("unwanted batch");
            return;
        }
        slot.batches.insert(digest, batch.clone());
        let view = slot.view;
        if slot.preprepared.contains_key(&digest) {
            self.persist(Record::PrePrepared { view, seq, digest, batch: Some(batch) });
        }
        if view == self.view {
            self.vote_when_held(seq);
        }
        self.try_deliver();
    }

    // ----- catch-up ------------------------------------------------------------

    fn on_status(&mut self, from: ReplicaId, st: Status) {
        if st.normal {
            self.peer_progress.insert(from, (st.view, st.delivered));
        } else {
            self.peer_progress.remove(&from);
        }
        if st.stable < self.stable.seq
            && self.stable.seq > SeqNo(0)
            && self.may_answer(from, AnswerKind::CheckpointProof)
        {
            // Their stable checkpoint is below ours (CHECKPOINT messages are
            // not retransmitted, so a lost one leaves a peer behind): give
            // them its proof; each vote is signed by its author, so relaying
            // is safe. It moves their watermarks, or starts their transfer.
            for vote in self.stable.proof.clone() {
                self.send(from, PeerMessage::Checkpoint(vote));
            }
        }
        if st.delivered < self.delivered {
            let start = st.delivered.max(self.stable.seq).0 + 1;
            let end = self.delivered.0.min(st.delivered.0 + self.cfg.catch_up_max);
            if start <= end && self.may_answer(from, AnswerKind::Decided) {
                for s in start..=end {
                    if let Some(d) = self.slots.get(&SeqNo(s)).and_then(|sl| sl.decided) {
                        self.send(from, PeerMessage::Decided { seq: SeqNo(s), digest: d });
                    }
                }
            }
        }
        let behind = st.view < self.view || (st.view == self.view && !st.normal);
        if self.normal && behind {
            self.relay_new_view(from);
        }
    }

    /// Sends this view's NEW-VIEW to a peer behind it, at most once per
    /// retransmission period: it is the largest message a replica sends.
    fn relay_new_view(&mut self, to: ReplicaId) {
        if self.new_view_msg.is_some() && self.may_answer(to, AnswerKind::NewView) {
            let nv = self.new_view_msg.clone().expect("checked");
            self.send(to, PeerMessage::NewView(nv));
        }
    }

    /// f+1 replicas say `seq` committed with `digest`: at least one is
    /// correct, and a correct replica only decides what committed.
    fn on_decided(&mut self, from: ReplicaId, seq: SeqNo, digest: Digest) {
        if seq <= self.delivered || !self.in_window(seq) {
            return;
        }
        let need = self.cfg.membership.voucher_quorum();
        let slot = self.slots.entry(seq).or_default();
        slot.decided_notices.insert(from, digest);
        if slot.decided.is_none() && slot.decided_notices.values().filter(|d| **d == digest).count() >= need {
            self.metrics.decisions_learned += 1;
            self.decide(seq, digest);
        }
    }

    // ----- checkpoints ---------------------------------------------------------

    fn on_checkpoint_ready(&mut self, seq: SeqNo, state: Digest) {
        if seq.0 % self.cfg.checkpoint_interval != 0 {
            return;
        }
        self.own_checkpoints.insert(seq, state);
        if seq == self.stable.seq && state != self.stable.state {
            // Our state diverged from the certified one: a non-deterministic
            // service or corrupted storage. Say so; state transfer repairs it.
            self.metrics.alarms += 1;
        }
        if seq <= self.stable.seq {
            return;
        }
        let vote = crypto::sign(&self.crypto, Domain::Checkpoint, CheckpointBody { seq, state, replica: self.id });
        self.insert_checkpoint_vote(vote.clone());
        self.broadcast(PeerMessage::Checkpoint(vote));
        self.check_stable(seq);
    }

    fn on_checkpoint(&mut self, vote: Signed<CheckpointBody>) {
        let b = vote.body;
        if b.seq <= self.stable.seq || b.seq.0 % self.cfg.checkpoint_interval != 0 {
            return;
        }
        if !self.cfg.membership.contains(b.replica) || !checkpoint::verify_vote(&self.crypto, &vote) {
            self.drop_msg("checkpoint with a bad signature");
            return;
        }
        self.insert_checkpoint_vote(vote);
        self.check_stable(b.seq);
    }

    fn insert_checkpoint_vote(&mut self, vote: Signed<CheckpointBody>) {
        let (seq, replica) = (vote.body.seq, vote.body.replica);
        self.checkpoint_votes.entry(seq).or_default().insert(replica, vote);
        // Bound memory: keep each replica's votes for at most 4 checkpoints.
        let mine: Vec<SeqNo> =
            self.checkpoint_votes.iter().filter(|(_, m)| m.contains_key(&replica)).map(|(s, _)| *s).collect();
        if mine.len() > 4 {
            let oldest = mine[0];
            if let Some(m) = self.checkpoint_votes.get_mut(&oldest) {
                m.remove(&replica);
                if m.is_empty() {
                    self.checkpoint_votes.remove(&oldest);
                }
            }
        }
    }

    fn check_stable(&mut self, seq: SeqNo) {
        let q = self.quorum();
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut by_state: BTreeMap<Digest, Vec<Signed<CheckpointBody>>> = BTreeMap::new();
        for v in votes.values() {
            by_state.entry(v.body.state).or_default().push(v.clone());
        }
        if let Some((state, proof)) = by_state.into_iter().find(|(_, p)| p.len() >= q) {
            self.adopt_stable(CheckpointCert { seq, state, proof });
            // The window moved: there may be room for new batches.
            self.try_propose();
        }
    }

    fn adopt_stable(&mut self, cert: CheckpointCert) {
        if cert.seq <= self.stable.seq {
            return;
        }
        let seq = cert.seq;
        self.persist(Record::Stable(cert.clone()));
        self.prev_stable = self.stable.seq;
        self.stable = cert;
        self.slots = self.slots.split_off(&seq.next());
        self.checkpoint_votes = self.checkpoint_votes.split_off(&seq.next());
        self.own_checkpoints = self.own_checkpoints.split_off(&self.prev_stable);
        self.actions.push(Action::StableCheckpoint { seq, keep_from: self.prev_stable });
        if self.delivered < seq {
            let state = self.stable.state;
            self.start_transfer(seq, state);
        } else if self.own_checkpoints.get(&seq).is_some_and(|d| *d != self.stable.state) {
            self.metrics.alarms += 1;
        }
        self.check_rejoined();
        // No proposing from here: while entering a new view the primary must
        // not assign sequence numbers before it has laid out the re-proposals.
    }

    // ----- state transfer ------------------------------------------------------

    fn start_transfer(&mut self, seq: SeqNo, state: Digest) {
        if self.transfer.as_ref().is_some_and(|t| t.seq >= seq) {
            return;
        }
        // A snapshot already asked for may still arrive: keep accepting it.
        let earlier = self.transfer.as_ref().map(|t| (t.seq, t.state)).filter(|(s, _)| *s > self.delivered);
        let attempt = self.transfer.as_ref().map_or(0, |t| t.attempt + 1);
        self.transfer = Some(Transfer { seq, state, attempt, deadline_ms: 0, asked: None, earlier });
        self.send_state_request();
    }

    fn send_state_request(&mut self) {
        let me = self.id;
        let members: Vec<ReplicaId> = self.cfg.membership.members().iter().copied().filter(|r| *r != me).collect();
        let offset = self.cfg.membership.index_of(me).unwrap_or(0);
        let now = self.now_ms;
        let timeout = self.cfg.state_transfer_timeout_ms;
        let Some(t) = &mut self.transfer else { return };
        t.deadline_ms = now + timeout;
        let to = members[(t.attempt + offset) % members.len()];
        t.asked = Some(to);
        let seq = t.seq;
        self.send(to, PeerMessage::StateRequest { seq });
    }

    fn on_state_reply(&mut self, from: ReplicaId, seq: SeqNo, snapshot: Bytes) {
        let Some(t) = &self.transfer else { return };
        let target = if t.seq == seq { Some(t.state) } else { t.earlier.filter(|(s, _)| *s == seq).map(|(_, d)| d) };
        let Some(state) = target else {
            self.drop_msg("state reply for a checkpoint not being fetched");
            return;
        };
        if Digest::of(&snapshot) != state {
            // Poisoned or stale. Only the peer asked last moves the
            // transfer on to the next one; replies nobody asked for cost
            // nothing, so a Byzantine peer cannot make this replica ask
            // everyone for snapshots.
            let asked_this = t.asked == Some(from) && t.seq == seq;
            self.drop_msg("snapshot does not match the certified digest");
            if asked_this {
                if let Some(t) = &mut self.transfer {
                    t.attempt += 1;
                }
                self.send_state_request();
            }
            return;
        }
        self.metrics.state_transfers += 1;
        self.actions.push(Action::InstallSnapshot { seq, snapshot });
        self.delivered = self.delivered.max(seq);
        self.own_checkpoints.insert(seq, state);
        // Requests executed inside the transferred range would wait here
        // forever; clients retransmit whatever still needs ordering.
        let keys: Vec<Key> = self.pending.keys().copied().collect();
        for k in keys {
            self.remove_pending(k);
        }
        let done = self.transfer.as_ref().is_some_and(|t| t.seq <= seq);
        if done {
            self.transfer = None;
            self.try_deliver();
        } else if let Some(t) = &mut self.transfer {
            // The older snapshot arrived; the newer one is still on its way.
            t.earlier = None;
        }
    }

    // ----- rejoining after lost votes ---------------------------------------------

    /// How many peers must say how far they got before a rejoining replica
    /// trusts the highest answer: enough that one of them is a correct
    /// replica that signed the last checkpoint this replica saw become
    /// stable before it lost its votes, even with f Byzantine peers among
    /// them (n - q + f + 1; 2f + 1 when n = 3f + 1). In CFT mode a quorum
    /// may hold only one other signer, so every peer must answer.
    fn rejoin_answers_needed(&self) -> usize {
        let m = &self.cfg.membership;
        match m.mode() {
            Mode::Bft => (m.n() - m.quorum() + m.f() + 1).min(m.n() - 1),
            Mode::Cft => m.n() - 1,
        }
    }

    fn on_rejoin_query(&mut self, from: ReplicaId, nonce: u64) {
        if self.may_answer(from, AnswerKind::Rejoin) {
            let reply = PeerMessage::RejoinReply { nonce, delivered: self.delivered, checkpoint: self.stable.clone() };
            self.send(from, reply);
        }
    }

    /// A peer's answer: its delivered sequence number, which is never more
    /// than a log window above its stable checkpoint, so a Byzantine peer
    /// can raise the rejoin mark at most to a real checkpoint plus two windows.
    fn on_rejoin_reply(&mut self, from: ReplicaId, nonce: u64, delivered: SeqNo, checkpoint: CheckpointCert) {
        let Some(rejoin) = &self.rejoin else { return };
        if rejoin.nonce != nonce || rejoin.until.is_some() || rejoin.answers.contains_key(&from) {
            return;
        }
        let m = &self.cfg.membership;
        let q = self.quorum();
        let k = self.cfg.checkpoint_interval;
        if checkpoint::verify_cert(&self.crypto, m, q, k, self.genesis_state, &checkpoint).is_err() {
            self.drop_msg("rejoin reply with an invalid checkpoint");
            return;
        }
        let plausible = SeqNo(delivered.0.min(checkpoint.seq.0.saturating_add(self.cfg.log_window)));
        let needed = self.rejoin_answers_needed();
        let window = self.cfg.log_window;
        let rejoin = self.rejoin.as_mut().expect("checked");
        rejoin.answers.insert(from, plausible);
        if rejoin.answers.len() >= needed {
            let highest = rejoin.answers.values().max().copied().unwrap_or_default();
            let until = SeqNo(highest.0.saturating_add(window));
            rejoin.until = Some(until);
            self.persist(Record::Rejoin { until: Some(until) });
        }
        self.adopt_stable(checkpoint);
        self.check_rejoined();
    }

    /// A rejoining replica whose stable checkpoint reached its mark holds
    /// a certificate past everything it may have voted on before: it votes
    /// again.
    fn check_rejoined(&mut self) {
        if self.rejoin.as_ref().and_then(|r| r.until).is_some_and(|until| self.stable.seq >= until) {
            self.rejoin = None;
            self.metrics.rejoined += 1;
            if self.normal {
                self.try_propose();
            } else {
                let vc = self.build_view_change();
                self.view_changes.insert(self.id, vc.clone());
                self.broadcast(PeerMessage::ViewChange(vc));
            }
        }
    }

    // ----- view change ---------------------------------------------------------

    fn build_view_change(&self) -> Signed<ViewChangeBody> {
        let mut prepared = Vec::new();
        let mut preprepared = Vec::new();
        for (&seq, slot) in self.slots.range(self.stable.seq.next()..) {
            if !self.in_window(seq) {
                continue;
            }
            if let Some((view, digest)) = slot.prepared {
                prepared.push(PreparedEntry { seq, view, digest });
            }
            for (&digest, &view) in &slot.preprepared {
                preprepared.push(PrePreparedEntry { seq, digest, view });
            }
        }
        crypto::sign(
            &self.crypto,
            Domain::ViewChange,
            ViewChangeBody {
                new_view: self.view,
                replica: self.id,
                checkpoint: self.stable.clone(),
                prepared,
                preprepared,
            },
        )
    }

    fn start_view_change(&mut self, target: ViewNo) {
        if target <= self.view {
            return;
        }
        self.view = target;
        self.normal = false;
        self.metrics.view_changes += 1;
        self.persist(Record::ViewChange { view: target });
        if !self.rejoining() {
            let vc = self.build_view_change();
            self.view_changes.insert(self.id, vc.clone());
            self.broadcast(PeerMessage::ViewChange(vc));
        }
        // PBFT: the timer for the next view starts only once a quorum asks
        // for this one, so a replica cut off from the rest does not race
        // ahead through views on its own.
        self.view_change_timer.deadline_ms = None;
        self.arm_view_change_timer();
        self.try_new_view();
    }

    fn arm_view_change_timer(&mut self) {
        if self.normal || self.view_change_timer.deadline_ms.is_some() {
            return;
        }
        // A VIEW-CHANGE for a later view also shows its author has given up
        // on every view before it, so it counts. Without this, a replica
        // whose peers' requests for this view were lost (and replaced by
        // requests for later views) would wait here forever.
        let view = self.view;
        let count = self.view_changes.values().filter(|vc| vc.body.new_view >= view).count();
        if count >= self.quorum() {
            let shift = self.view_change_timer.attempts.min(self.cfg.view_change_backoff_max);
            self.view_change_timer.deadline_ms = Some(self.now_ms + (self.cfg.view_change_timeout_ms << shift));
            self.view_change_timer.attempts += 1;
        }
    }

    fn on_view_change(&mut self, from: ReplicaId, vc: Signed<ViewChangeBody>) {
        if vc.body.replica != from {
            self.drop_msg("view-change relayed by another replica");
            return;
        }
        let v = vc.body.new_view;
        if v < self.view || (v == self.view && self.normal) {
            // The sender is behind or missed our NEW-VIEW. Its own signed
            // word that it is behind, checked before answering, costs it
            // its allowance of NEW-VIEWs; nobody else's.
            if self.normal && self.new_view_msg.is_some() {
                if !crypto::verify(&self.crypto, Domain::ViewChange, from, &vc) {
                    self.drop_msg("invalid view-change");
                    return;
                }
                self.relay_new_view(from);
            }
            return;
        }
        if self.view_changes.get(&from).is_some_and(|old| old.body.new_view >= v) {
            return;
        }
        let q = self.quorum();
        if let Err(_e) = view_change::verify_view_change(
            &self.crypto,
            &self.cfg.membership,
            q,
            self.limits(),
            self.genesis_state,
            &vc,
        ) {
            self.drop_msg("invalid view-change");
            return;
        }
        self.view_changes.insert(from, vc);
        // Join rule: f+1 replicas ask for views above ours, so at least one
        // correct replica has timed out; join the lowest view among the f+1
        // highest requests.
        let mut higher: Vec<ViewNo> = self
            .view_changes
            .iter()
            .filter(|(r, vc)| **r != self.id && vc.body.new_view > self.view)
            .map(|(_, vc)| vc.body.new_view)
            .collect();
        let weak = self.cfg.membership.weak_quorum();
        if higher.len() >= weak {
            higher.sort_by(|a, b| b.cmp(a));
            self.start_view_change(higher[weak - 1]);
        }
        self.arm_view_change_timer();
        self.try_new_view();
    }

    fn try_new_view(&mut self) {
        if self.normal || !self.is_primary() || self.rejoining() {
            return;
        }
        let view = self.view;
        let set: Vec<Signed<ViewChangeBody>> =
            self.view_changes.values().filter(|vc| vc.body.new_view == view).cloned().collect();
        let q = self.quorum();
        let bodies: Vec<&ViewChangeBody> = set.iter().map(|vc| &vc.body).collect();
        let Some(plan) = view_change::decide_up_to(&bodies, q, self.cfg.membership.voucher_quorum(), self.cover_q())
        else {
            return;
        };
        let body = NewViewBody { view, replica: self.id, view_changes: set, chosen: plan.chosen.clone() };
        let nv = Arc::new(crypto::sign(&self.crypto, Domain::NewView, body));
        // enter_new_view persists the NEW-VIEW before it is sent, so a
        // primary that crashes can only ever repeat this one.
        self.enter_new_view(nv, plan);
    }

    fn on_new_view(&mut self, nv: Arc<Signed<NewViewBody>>) {
        let b = &nv.body;
        let v = b.view;
        if v < self.view || (v == self.view && self.normal) {
            return;
        }
        let m = &self.cfg.membership;
        if b.replica != m.primary(v) || !crypto::verify(&self.crypto, Domain::NewView, b.replica, &nv) {
            self.drop_msg("new-view with a bad signature");
            return;
        }
        let plan = match self.check_new_view(b) {
            Some(plan) => plan,
            None => {
                self.drop_msg("new-view whose proof does not hold");
                return;
            }
        };
        self.enter_new_view(nv, plan);
    }

    /// Recomputes the NEW-VIEW's decisions from its signed VIEW-CHANGEs; the
    /// primary's choices must match exactly.
    fn check_new_view(&self, b: &NewViewBody) -> Option<NewViewPlan> {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.skip_new_view_check {
            let checkpoint = b
                .view_changes
                .iter()
                .map(|vc| vc.body.checkpoint.clone())
                .max_by_key(|c| c.seq)
                .unwrap_or_else(|| self.stable.clone());
            return Some(NewViewPlan { checkpoint, chosen: b.chosen.clone() });
        }
        let m = &self.cfg.membership;
        let q = self.quorum();
        let authors = view_change::distinct_authors(&b.view_changes)?;
        if authors.len() < q || authors.len() > m.n() {
            return None;
        }
        for vc in &b.view_changes {
            if vc.body.new_view != b.view {
                return None;
            }
            view_change::verify_view_change(&self.crypto, m, q, self.limits(), self.genesis_state, vc).ok()?;
        }
        let bodies: Vec<&ViewChangeBody> = b.view_changes.iter().map(|vc| &vc.body).collect();
        let plan = view_change::decide_up_to(&bodies, q, m.voucher_quorum(), self.cover_q())?;
        (plan.chosen == b.chosen).then_some(plan)
    }

    /// Enters the NEW-VIEW's view. The view and its re-proposals are one
    /// durable record, written before anything is sent in the view (the
    /// primary's NEW-VIEW included): after a crash the replica is either
    /// still changing views, or in the view with every re-proposal.
    fn enter_new_view(&mut self, nv: Arc<Signed<NewViewBody>>, plan: NewViewPlan) {
        if let Some(seq) = self.contradicted_decision(&plan) {
            // A valid NEW-VIEW that replaces what this replica decided can
            // only exist with more than f faulty replicas. Never vote for it:
            // keep the decision, say so, and let the view change move on.
            self.metrics.alarms += 1;
            self.drop_msg("new-view contradicts a local decision");
            let _ = seq;
            return;
        }
        let v = nv.body.view;
        self.view = v;
        self.normal = true;
        // The view-change backoff stays until a request executes in this
        // view (PBFT 4.5.2); only the running timer stops.
        self.view_change_timer.deadline_ms = None;
        self.metrics.new_views += 1;
        self.adopt_stable(plan.checkpoint);
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.torn_new_view {
            self.enter_new_view_torn(&nv);
        } else {
            self.persist(Record::NewView(nv.clone()));
        }
        #[cfg(not(feature = "planted-bugs"))]
        self.persist(Record::NewView(nv.clone()));
        if nv.body.replica == self.id {
            self.broadcast(PeerMessage::NewView(nv.clone()));
        }
        self.new_view_msg = Some(nv);
        self.view_changes.retain(|_, vc| vc.body.new_view > v);
        let top = self.install_re_proposals(v, &plan.chosen);
        if self.is_primary() {
            self.next_seq = top.next();
        }
        self.retime_pending();
        self.try_deliver();
        self.try_propose();
    }

    /// The planted bug: the view goes to disk on its own (after the
    /// primary's NEW-VIEW went out), each re-proposal after it.
    #[cfg(feature = "planted-bugs")]
    fn enter_new_view_torn(&mut self, nv: &Arc<Signed<NewViewBody>>) {
        let view = nv.body.view;
        if nv.body.replica == self.id {
            self.broadcast(PeerMessage::NewView(nv.clone()));
        }
        let mut bare = (**nv).clone();
        bare.body.chosen.clear();
        self.persist(Record::NewView(Arc::new(bare)));
        for &(seq, digest) in &nv.body.chosen {
            if seq > self.stable.seq {
                self.persist(Record::PrePrepared { view, seq, digest, batch: None });
            }
        }
    }

    /// The first sequence number at which `plan` chooses something other
    /// than what this replica decided there.
    fn contradicted_decision(&self, plan: &NewViewPlan) -> Option<SeqNo> {
        plan.chosen.iter().find_map(|&(seq, digest)| {
            let decided = self.slots.get(&seq).and_then(|s| s.decided);
            (seq > self.stable.seq && decided.is_some_and(|d| d != digest)).then_some(seq)
        })
    }

    /// Treats every choice of a NEW-VIEW as a PRE-PREPARE of view `v`
    /// (already durable in the NEW-VIEW record); returns the highest
    /// sequence number the view has now used.
    fn install_re_proposals(&mut self, v: ViewNo, chosen: &[(SeqNo, Digest)]) -> SeqNo {
        let now = self.now_ms;
        let mut top = self.stable.seq.max(self.delivered);
        for &(seq, digest) in chosen {
            top = top.max(seq);
            if seq <= self.stable.seq {
                continue;
            }
            let null = self.null_batch.clone();
            let slot = self.slot_in_view(seq);
            slot.pre_prepare = Some(digest);
            slot.touched_ms = now;
            if digest == null_digest() {
                slot.batches.insert(digest, null);
            }
            add_q(slot, digest, v);
            let batch = slot.batches.get(&digest).cloned();
            if let Some(b) = &batch {
                self.mark_proposed(b);
            }
            self.vote_when_held(seq);
            if batch.is_none() {
                self.broadcast(PeerMessage::BatchRequest { seq, digest });
            }
        }
        top
    }

    /// Gives the new primary a fresh request-timer window, makes sure it has
    /// every request this replica waits for, and on the primary queues
    /// again what an older view proposed but this one did not re-propose.
    fn retime_pending(&mut self) {
        let now = self.now_ms;
        let primary = self.is_primary();
        let v = self.view;
        let keys: Vec<Key> = self.pending.keys().copied().collect();
        self.by_arrival.clear();
        for key in keys {
            let p = self.pending.get_mut(&key).expect("present");
            p.arrival_ms = now;
            p.forwarded_ms = now;
            if !p.proposed || primary {
                if p.proposed {
                    // Proposed in an older view and not re-proposed: propose again.
                    p.proposed = false;
                }
                self.queue.insert(p.order, key);
            }
            self.by_arrival.insert((now, key.0, key.1));
            if !primary {
                let r = p.request.clone();
                let to = self.primary();
                self.send(to, PeerMessage::Forward(r));
            }
        }
        // Requests inside re-proposed batches must not be proposed twice.
        if primary {
            let in_chosen: Vec<Arc<Batch>> = self
                .slots
                .range(self.stable.seq.next()..)
                .filter(|(_, s)| s.view == v)
                .filter_map(|(_, s)| s.pre_prepare.and_then(|d| s.batches.get(&d)).cloned())
                .collect();
            for b in in_chosen {
                self.mark_proposed(&b);
            }
        }
    }

    /// The requests of `batch` are proposed: out of the queue, still timed.
    fn mark_proposed(&mut self, batch: &Batch) {
        for r in &batch.requests {
            if let Some(p) = self.pending.get_mut(&(r.client, r.id)) {
                p.proposed = true;
                let order = p.order;
                self.queue.remove(&order);
            }
        }
    }
}

/// Records in Q that `digest` was pre-prepared here in `view` (the latest
/// view wins). Nothing is ever evicted: a correct replica holds at most
/// n + 1 digests per sequence number (`view_change::digests_per_seq_max`),
/// and each one's batch stays, so a voucher the decision rule may need, and
/// the batch a NEW-VIEW may choose, are never lost.
fn add_q(slot: &mut Slot, digest: Digest, view: ViewNo) {
    let e = slot.preprepared.entry(digest).or_insert(view);
    if *e < view {
        *e = view;
    }
}

/// Only the planted bug ever evicts.
#[cfg(feature = "planted-bugs")]
use crate::planted::evict_q;
#[cfg(not(feature = "planted-bugs"))]
fn evict_q(_: &mut BTreeMap<Digest, ViewNo>, _: Digest, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(seq: u64) -> Record {
        Record::PrePrepared { view: ViewNo(0), seq: SeqNo(seq), digest: Digest([1; 32]), batch: None }
    }

    #[test]
    fn a_stable_checkpoint_drops_what_it_makes_obsolete_and_only_the_newest_view_stays() {
        let mut log = RecordLog::default();
        log.append(Record::ViewChange { view: ViewNo(0) });
        for s in 1..=6 {
            log.append(pp(s));
        }
        log.append(Record::Prepared { view: ViewNo(0), seq: SeqNo(3), digest: Digest([1; 32]) });
        log.append(Record::ViewChange { view: ViewNo(1) });
        let cert = CheckpointCert { seq: SeqNo(4), state: Digest([2; 32]), proof: vec![] };
        log.append(Record::Stable(cert.clone()));
        assert_eq!(log.records(), &[pp(5), pp(6), Record::ViewChange { view: ViewNo(1) }, Record::Stable(cert)]);
        let newer = CheckpointCert { seq: SeqNo(8), state: Digest([3; 32]), proof: vec![] };
        log.append(Record::Stable(newer.clone()));
        assert_eq!(log.records(), &[Record::ViewChange { view: ViewNo(1) }, Record::Stable(newer)]);
    }

    #[test]
    fn a_superseded_new_view_leaves_its_re_proposals_behind_as_pre_prepares() {
        let nv = |view: u64, chosen: Vec<(SeqNo, Digest)>| {
            Record::NewView(Arc::new(Signed {
                body: NewViewBody { view: ViewNo(view), replica: ReplicaId(1), view_changes: vec![], chosen },
                signature: crate::message::Signature(Bytes::new()),
            }))
        };
        let mut log = RecordLog::default();
        log.append(Record::Stable(CheckpointCert { seq: SeqNo(4), state: Digest([2; 32]), proof: vec![] }));
        let first = nv(1, vec![(SeqNo(5), Digest([1; 32])), (SeqNo(6), null_digest())]);
        log.append(first.clone());
        assert_eq!(log.records().last(), Some(&first));
        log.append(Record::ViewChange { view: ViewNo(2) });
        let pp_at =
            |seq: u64, digest: Digest| Record::PrePrepared { view: ViewNo(1), seq: SeqNo(seq), digest, batch: None };
        assert_eq!(
            &log.records()[1..],
            &[pp_at(5, Digest([1; 32])), pp_at(6, null_digest()), Record::ViewChange { view: ViewNo(2) }]
        );
    }
}
