//! Carrying out the core's actions on the consensus side.

use palisade_core::message::{StateAnswer, StateQuery};
use palisade_core::replica::DropReason;
use palisade_core::{
    Action, Batch, ClientId, Crypto, Digest, Input, PeerMessage, Record, Replica, ReplicaId, Request, RequestId,
};
use palisade_core::{SeqNo, ViewNo};
use palisade_wire::envelope::RejectReason;
use std::sync::Arc;

/// Work for the execution side, in the order the core decided it.
#[derive(Debug)]
pub enum ExecCommand {
    /// Execute a committed batch.
    Deliver {
        /// The epoch whose core decided it: a batch an epoch's core
        /// delivers past that epoch's end is void and not executed.
        epoch: u64,
        /// Sequence number.
        seq: SeqNo,
        /// The deciding replica's view.
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// Execute a prepared batch tentatively (`Action::ExecuteTentative`).
    Tentative {
        /// The epoch whose core prepared it.
        epoch: u64,
        /// Sequence number.
        seq: SeqNo,
        /// The view it prepared in.
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
        /// With durable votes: the answers wait until this many groups of
        /// records are durable (the one saying it prepared among them), so
        /// that a quorum of tentative answers survives every replica
        /// crashing at once. Zero: send at once.
        durable_group: u64,
    },
    /// The tentative batch at `seq` committed (`Action::Confirm`).
    Confirm {
        /// The epoch whose core decided it.
        epoch: u64,
        /// Sequence number.
        seq: SeqNo,
        /// The deciding replica's view.
        view: ViewNo,
        /// The batch, for the log of decided batches.
        batch: Arc<Batch>,
    },
    /// Undo the tentative execution at `seq` (`Action::RollBack`).
    RollBack {
        /// The epoch whose core decided otherwise.
        epoch: u64,
        /// The tentative sequence number.
        seq: SeqNo,
        /// The replica's view.
        view: ViewNo,
        /// Delivered batches to execute again, in order.
        replay: Vec<(SeqNo, Arc<Batch>)>,
    },
    /// Answer a read-only request.
    Read {
        /// The request.
        request: Request,
        /// The replica's view.
        view: ViewNo,
    },
    /// Answer a peer's question about a kept checkpoint's state.
    Serve {
        /// The epoch of the core that was asked (the answer says it).
        epoch: u64,
        /// Who asked.
        to: ReplicaId,
        /// Which checkpoint.
        seq: SeqNo,
        /// What.
        query: StateQuery,
    },
    /// Fetch the state of a certified checkpoint (again: a nudge).
    Fetch {
        /// The epoch of the core that wants it: its members are asked.
        epoch: u64,
        /// Those members, but this replica, the ones known to hold the
        /// state first.
        peers: Arc<[ReplicaId]>,
        /// How many of `peers`, from the first, are known to hold it.
        holders: usize,
        /// Its checkpoint.
        seq: SeqNo,
        /// Its certified digest.
        state: Digest,
    },
    /// A peer's answer for the fetch under way.
    StateData {
        /// Who answered.
        from: ReplicaId,
        /// Its checkpoint.
        seq: SeqNo,
        /// The answer, unchecked.
        answer: StateAnswer,
    },
    /// Checkpoint `seq` is stable: its state may go to disk, and states
    /// below `keep_from` (the previous stable checkpoint, still served to
    /// laggards) are forgotten.
    Stable {
        /// The stable checkpoint.
        seq: SeqNo,
        /// The oldest state still kept.
        keep_from: SeqNo,
    },
}

/// What a consensus host needs from the world around it.
pub trait ConsensusIo {
    /// Makes `record` durable before anything sent after it leaves
    /// (the core's ordering rule 1).
    fn persist(&mut self, record: Record);
    /// Sends `msg`, a statement of the core serving `epoch`, to replica
    /// `to`.
    fn send(&mut self, to: ReplicaId, epoch: u64, msg: &PeerMessage);
    /// Sends `msg` to every replica in `to`. Override to encode once.
    fn broadcast(&mut self, to: &[ReplicaId], epoch: u64, msg: &PeerMessage) {
        for &r in to {
            self.send(r, epoch, msg);
        }
    }
    /// Hands work to the execution side, in order; decisions must never be
    /// dropped.
    fn execute(&mut self, cmd: ExecCommand);
    /// Tells a client its request was turned away.
    fn refuse(&mut self, client: ClientId, request: RequestId, reason: RejectReason);
    /// The core of a later epoch starts at the handover `link` certifies:
    /// the records persisted after this are that core's, so a durable host
    /// marks the switch before them.
    fn epoch_started(&mut self, _link: &palisade_core::reconfig::Handover) {}
    /// Whether the replica stopped in the middle of the step (the
    /// simulator's crash right after a record became durable): the rest of
    /// the step's actions never happen.
    fn stopped(&self) -> bool {
        false
    }
}

/// A replica's core and the loop that carries out what it asks.
pub struct ConsensusHost<C> {
    core: Replica<C>,
    /// Everyone else in the core's epoch, for broadcasts.
    peers: Arc<[ReplicaId]>,
}

impl<C: Crypto> ConsensusHost<C> {
    /// Hosts `core`. Actions it already holds (a recovered replica's first
    /// words) are carried out with the first step.
    pub fn new(core: Replica<C>) -> Self {
        let me = core.id();
        let peers = core.membership().members().iter().copied().filter(|r| *r != me).collect();
        ConsensusHost { core, peers }
    }

    /// The core, to read its state.
    pub fn core(&self) -> &Replica<C> {
        &self.core
    }

    /// The core, no longer hosted (a test that drives it by hand).
    pub fn into_core(self) -> Replica<C> {
        self.core
    }

    /// Feeds one input and carries out every action it produced, in order.
    pub fn step(&mut self, input: Input, io: &mut impl ConsensusIo) {
        self.core.step(input);
        self.carry_out(io);
    }

    /// Carries out actions the core holds without a new input.
    pub fn carry_out(&mut self, io: &mut impl ConsensusIo) {
        let epoch = self.core.epoch();
        for action in self.core.take_actions() {
            if io.stopped() {
                return;
            }
            match action {
                Action::Persist(r) => io.persist(r),
                Action::Send { to, msg } => io.send(to, epoch, &msg),
                Action::Broadcast(msg) => io.broadcast(&self.peers, epoch, &msg),
                Action::Deliver { seq, view, batch } => io.execute(ExecCommand::Deliver { epoch, seq, view, batch }),
                Action::ExecuteTentative { seq, view, batch } => {
                    io.execute(ExecCommand::Tentative { epoch, seq, view, batch, durable_group: 0 })
                }
                Action::Confirm { seq, view, batch } => io.execute(ExecCommand::Confirm { epoch, seq, view, batch }),
                Action::RollBack { seq, view, replay } => {
                    io.execute(ExecCommand::RollBack { epoch, seq, view, replay })
                }
                Action::ExecuteReadOnly { request, view } => io.execute(ExecCommand::Read { request, view }),
                Action::ServeState { to, seq, query } => io.execute(ExecCommand::Serve { epoch, to, seq, query }),
                Action::FetchState { seq, state, holders } => {
                    let (first, rest): (Vec<ReplicaId>, Vec<ReplicaId>) =
                        self.peers.iter().partition(|p| holders.contains(p));
                    let count = first.len();
                    let peers: Arc<[ReplicaId]> = first.into_iter().chain(rest).collect();
                    io.execute(ExecCommand::Fetch { epoch, peers, holders: count, seq, state })
                }
                Action::StateData { from, seq, answer } => io.execute(ExecCommand::StateData { from, seq, answer }),
                Action::StableCheckpoint { seq, keep_from } => io.execute(ExecCommand::Stable { seq, keep_from }),
                Action::Dropped { client, request, reason } => {
                    let reason = match reason {
                        DropReason::RequestTooLarge => RejectReason::TooLarge,
                        DropReason::PendingFull | DropReason::ReadQueueFull | DropReason::Rejoining => {
                            RejectReason::Busy
                        }
                    };
                    io.refuse(client, request, reason);
                }
            }
        }
    }
}
