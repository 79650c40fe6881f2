//! The replica state machine: PBFT normal case, checkpoints, view change,
//! catch-up, state transfer and recovery, driven by [`Input`]s and
//! answering with [`Action`]s.
//!
//! Each sub-protocol is a module that owns its state in a struct of its own
//! and its rules in `impl Replica` blocks:
//!
//! | module | owns | does |
//! |---|---|---|
//! | `log` | the slots between the watermarks | one consensus instance per sequence number |
//! | `pool` | pending requests | request timers, the primary's queue, delivered ids |
//! | `propose` | | client requests, forwarding, the primary's batches |
//! | `normal` | | PRE-PREPARE, PREPARE, COMMIT, decisions, delivery |
//! | `reads` | the read-only queue | reads once prepared work is executed |
//! | `checkpoints` | stable checkpoint, votes | checkpoints and watermarks |
//! | `transfer` | the transfer under way | state transfer, serving snapshots |
//! | `catch_up` | peers' progress | STATUS, DECIDED, the behind-not-suspicious rule |
//! | `view_change` | VIEW-CHANGEs received, the NEW-VIEW | the view-change driver (the rule is `crate::view_change`) |
//! | `timers` | every timer, in one table | ticks and retransmission |
//! | `rejoin` | what a replica without votes learned | rejoining |
//! | `recovery` | | rebuilding from records |
//!
//! # Ordering rules for actions
//! The caller processes the actions of one [`Replica::step`] in order, and:
//! 1. makes every [`Action::Persist`] durable before sending any message that
//!    follows it (a replica must never vote, then forget the vote in a crash);
//! 2. executes [`Action::Deliver`], [`Action::ExecuteTentative`],
//!    [`Action::Confirm`], [`Action::RollBack`] and
//!    [`Action::ExecuteReadOnly`] in order on one executor, so a read sees
//!    every batch executed before it;
//! 3. after executing a sequence number that is a multiple of the checkpoint
//!    interval, takes a snapshot, keeps it, and feeds back
//!    [`Input::CheckpointReady`] with its digest;
//! 4. delivers nothing while a [`Action::FetchState`] is under way: the
//!    next `Deliver` follows the fetched state.
//!
//! Messages may be dropped, duplicated and reordered by the caller's
//! network; the core retransmits what matters on its timers.

mod catch_up;
mod checkpoints;
mod epoch;
mod io;
mod log;
mod new_view;
mod normal;
mod pool;
mod propose;
mod reads;
mod records;
mod recovery;
mod rejoin;
mod timers;
mod transfer;
mod view_change;
mod watch;

pub use catch_up::MAX_CATCH_UP_RESTARTS;
pub use io::{Action, Discard, DropReason, Input, LateRequest, Metrics, NextSlot, ViewChangeReason};
pub use records::{Record, RecordLog, Restart};

use crate::answers::{AnswerKind, AnswerLimiter};
use crate::checkpoint::Genesis;
use crate::config::Config;
use crate::crypto::Crypto;
use crate::message::{CheckpointCert, PeerMessage};
use crate::types::{Digest, Membership, Mode, ReplicaId, SeqNo, ViewNo};
use crate::view_change::{digests_per_seq_max, Limits};
use catch_up::CatchUp;
use checkpoints::Checkpoints;
use log::Log;
use pool::RequestPool;
use reads::ReadQueue;
use rejoin::Rejoin;
use timers::Timers;
use transfer::Transfer;
use view_change::ViewChanges;

/// The time a replica runs on: both clocks, as the last tick gave them.
#[derive(Clone, Copy, Debug, Default)]
struct Clock {
    /// Monotonic: drives every timer.
    now_ms: u64,
    /// Wall clock: stamps batches.
    wall_ms: u64,
}

/// One replica's protocol state. Pure: no I/O, no clock, no randomness.
pub struct Replica<C> {
    id: ReplicaId,
    cfg: Config,
    crypto: C,
    /// Where this replica's log starts: sequence number 0, or the handover
    /// checkpoint of the epoch this core serves.
    genesis: Genesis,
    clock: Clock,
    view: ViewNo,
    normal: bool,
    log: Log,
    pool: RequestPool,
    reads: ReadQueue,
    checkpoints: Checkpoints,
    changes: ViewChanges,
    transfer: Option<Transfer>,
    catch_up: CatchUp,
    timers: Timers,
    /// Set while this replica rejoins after losing its votes.
    rejoin: Option<Rejoin>,
    /// The end of this core's epoch, once the executor has said it.
    end: Option<epoch::EpochEnd>,
    answers: AnswerLimiter,
    actions: Vec<Action>,
    metrics: Metrics,
}

impl<C: Crypto> Replica<C> {
    /// A fresh replica at the genesis checkpoint, whose state digest every
    /// replica computes itself from the service's initial snapshot.
    ///
    /// Its clocks start at zero and move only with [`Input::Tick`]: a
    /// caller that runs on real clocks must feed a tick before any other
    /// input, or the first requests will look long overdue.
    pub fn new(cfg: Config, id: ReplicaId, crypto: C, genesis_state: Digest) -> Self {
        Self::starting_at(cfg, id, crypto, Genesis::new(genesis_state))
    }

    /// A replica of a later epoch, starting in view 0 at the handover
    /// checkpoint `genesis` with that state executed: its log, watermarks
    /// and certificates all start there (docs/reconfiguration.md).
    pub fn starting_at(cfg: Config, id: ReplicaId, crypto: C, genesis: Genesis) -> Self {
        let mut log = Log::new();
        log.delivered = genesis.seq;
        log.next_seq = genesis.seq.next();
        Replica {
            id,
            crypto,
            genesis,
            clock: Clock::default(),
            view: ViewNo(0),
            normal: true,
            log,
            pool: {
                let mut pool = RequestPool::new(cfg.client_window);
                pool.timed_max = cfg.client_timed_max;
                pool.flood_memory_ms = cfg.client_flood_memory_ms;
                pool
            },
            reads: ReadQueue::default(),
            checkpoints: Checkpoints::new(genesis),
            changes: ViewChanges::default(),
            transfer: None,
            catch_up: CatchUp::default(),
            timers: Timers::default(),
            rejoin: None,
            end: None,
            answers: AnswerLimiter::default(),
            actions: Vec::new(),
            metrics: Metrics::default(),
            cfg,
        }
    }

    /// A replica joining an epoch at its handover checkpoint `genesis`
    /// whose executor holds only the state of `executed` (below it): it
    /// fetches the state first, as a laggard would, and votes meanwhile
    /// (it has no earlier votes to forget).
    pub fn joining(cfg: Config, id: ReplicaId, crypto: C, genesis: Genesis, executed: SeqNo) -> Self {
        let mut r = Self::starting_at(cfg, id, crypto, genesis);
        if executed < genesis.seq {
            r.log.delivered = executed;
            r.start_transfer(genesis.seq, genesis.state);
        }
        r
    }

    // ----- accessors -------------------------------------------------------

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }
    /// Where this core's log starts: sequence number 0, or its epoch's
    /// handover checkpoint.
    pub fn genesis(&self) -> Genesis {
        self.genesis
    }
    /// The wall clock as the last tick gave it: a core that takes over
    /// from this one starts on the same time.
    pub fn wall_ms(&self) -> u64 {
        self.clock.wall_ms
    }
    /// The epoch this core serves (its signatures say which).
    pub fn epoch(&self) -> u64 {
        self.crypto.epoch()
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
        self.primary() == self.id
    }
    /// The primary of the current view.
    pub fn primary(&self) -> ReplicaId {
        self.membership().primary(self.view)
    }
    /// Highest sequence number delivered.
    pub fn delivered(&self) -> SeqNo {
        self.log.delivered
    }
    /// The sequence number executed tentatively and not yet committed.
    pub fn tentative(&self) -> Option<SeqNo> {
        self.log.tentative.map(|(s, _)| s)
    }
    /// Whether a batch this replica prepared above what it delivered holds
    /// `client`'s request `id`: not committed here, but not lost (for
    /// checkers).
    pub fn prepared_undelivered(&self, client: crate::types::ClientId, id: crate::types::RequestId) -> bool {
        self.log.slots.range(self.log.delivered.next()..).any(|(seq, slot)| {
            slot.prepared
                .and_then(|(_, d)| self.log.batch_for(*seq, d))
                .is_some_and(|b| b.requests.iter().any(|r| r.client == client && r.id == id))
        })
    }
    /// The stable checkpoint.
    pub fn stable_checkpoint(&self) -> &CheckpointCert {
        &self.checkpoints.stable
    }
    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    /// The request timeout now in force, in ms, backoff included: the
    /// configured one, or the adaptive one once rounds are timed.
    pub fn request_timeout_ms(&self) -> u64 {
        self.request_timeout() << self.timers.request_shift
    }
    /// Requests waiting to be ordered.
    pub fn pending_requests(&self) -> usize {
        self.pool.len()
    }
    /// Consensus instances held in the log; never more than the log window.
    pub fn log_len(&self) -> usize {
        self.log.slots.len()
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
    /// Planted bug (tests only): the primary proposes requests without
    /// checking their signatures, and backups blame it for any it does not
    /// order.
    fn unchecked_proposals(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.cfg.planted.unchecked_proposals;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }
    /// Planted bug (tests only): backups accept any request a primary
    /// proposes.
    fn trusts_proposed_requests(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.cfg.planted.trust_proposed_requests;
        #[cfg(not(feature = "planted-bugs"))]
        false
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
    /// Who is in the cluster, f, and the mode. Every rule reaches the
    /// membership through here, never through the configuration, so that
    /// it can come from an epoch instead (docs/architecture.md lists the
    /// rules that assume it is fixed).
    pub fn membership(&self) -> &Membership {
        &self.cfg.membership
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Feeds one input.
    pub fn step(&mut self, input: Input) {
        self.pool.clock_ms = self.clock.now_ms;
        match input {
            Input::Tick { now_ms, wall_ms } => {
                self.clock.now_ms = self.clock.now_ms.max(now_ms);
                self.clock.wall_ms = wall_ms;
                self.pool.clock_ms = self.clock.now_ms;
                self.on_tick();
            }
            Input::Request(_) if self.epoch_over() => self.discard(Discard::EpochOver),
            Input::Request(req) => self.on_client_request(req),
            Input::Peer { from, msg } => {
                if from == self.id || !self.membership().contains(from) {
                    self.discard(Discard::UnknownSender);
                } else if self.epoch_over() && msg.orders() {
                    self.discard(Discard::EpochOver);
                } else {
                    self.on_peer(from, msg);
                }
            }
            Input::CheckpointReady { seq, state, config } => self.on_checkpoint_ready(seq, state, config),
            Input::StateFetched { seq, state } => self.on_state_fetched(seq, state),
            Input::EpochEnds { last } => self.on_epoch_ends(last),
            Input::PeerLink { peer, up } => self.on_peer_link(peer, up),
        }
    }

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
            PeerMessage::StateRequest { .. } | PeerMessage::StateReply { .. } => self.discard(Discard::Obsolete),
            // The host keeps the chain of epochs; a core has no use for it.
            PeerMessage::Handovers(_) | PeerMessage::HandoverQuery { .. } => self.discard(Discard::Obsolete),
            PeerMessage::StateFetch { seq, query } => self.on_state_fetch(from, seq, query),
            PeerMessage::StateData { seq, answer } => self.on_state_data(from, seq, answer),
            PeerMessage::RejoinQuery { nonce } => self.on_rejoin_query(from, nonce),
            PeerMessage::RejoinReply { nonce, delivered, checkpoint } => {
                self.on_rejoin_reply(from, nonce, delivered, checkpoint)
            }
        }
    }

    // ----- helpers shared by the sub-protocols ----------------------------------

    fn quorum(&self) -> usize {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.weak_quorum {
            let m = self.membership();
            return match m.mode() {
                Mode::Bft => 2 * m.f(),
                Mode::Cft => m.quorum() - 1,
            }
            .max(1);
        }
        self.membership().quorum()
    }

    fn bft(&self) -> bool {
        self.membership().mode() == Mode::Bft
    }

    fn limits(&self) -> Limits {
        Limits {
            log_window: self.cfg.log_window,
            checkpoint_interval: self.cfg.checkpoint_interval,
            preprepared_per_seq_max: digests_per_seq_max(self.membership()),
        }
    }

    fn discard(&mut self, reason: Discard) {
        *self.metrics.dropped.entry(reason).or_default() += 1;
    }

    /// Whether `seq` lies between the watermarks.
    fn in_window(&self, seq: SeqNo) -> bool {
        let low = self.checkpoints.stable.seq;
        seq > low && seq.0 <= low.0 + self.cfg.log_window
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

    /// Whether `peer` may have another answer of `kind` now (see [`crate::answers`]).
    fn may_answer(&mut self, peer: ReplicaId, kind: AnswerKind) -> bool {
        let (interval, per_interval) = match kind {
            AnswerKind::NewView | AnswerKind::Rejoin | AnswerKind::Batch(_) => (self.cfg.retransmit_ms, 1),
            AnswerKind::CheckpointProof | AnswerKind::Decided => (self.cfg.status_interval_ms, 1),
            // A laggard fetches at most a catch-up's worth of batches per
            // STATUS round, plus the pipeline in flight.
            AnswerKind::Batches => (
                self.cfg.status_interval_ms,
                u32::try_from(self.cfg.catch_up_max + self.cfg.max_in_flight).unwrap_or(u32::MAX),
            ),
            AnswerKind::StatePiece => {
                (self.cfg.retransmit_ms, u32::try_from(4 * self.cfg.state_fetch_window).unwrap_or(u32::MAX))
            }
        };
        if self.answers.allow(peer, kind, self.clock.now_ms, interval, per_interval) {
            true
        } else {
            self.discard(Discard::OverAnswerRate);
            false
        }
    }
}
