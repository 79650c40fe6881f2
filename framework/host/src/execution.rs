//! Carrying out the core's decisions on the execution side: the service in
//! order, the state at checkpoints, state transfer, and answers to clients.

use crate::consensus::ExecCommand;
use crate::state::{FetchStep, Fetcher, PartStore};
use bytes::Bytes;
use palisade_core::exec::Executed;
use palisade_core::reconfig::{AdminOutcome, Configuration};
use palisade_core::{
    Batch, ClientId, Digest, Executor, Membership, PeerMessage, ReplicaId, RequestId, SeqNo, Service, ViewNo,
};
use palisade_wire::envelope::{designated_replier, Answer, RejectReason};
use parking_lot::RwLock;
use std::sync::Arc;

/// Something for one client, on its way to be framed (and signed as this
/// replica's) and sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMail {
    /// A request's answer: a client's answers from one wake-up share a frame.
    Answer {
        /// To whom.
        client: ClientId,
        /// This replica's view.
        view: ViewNo,
        /// Which request.
        request: RequestId,
        /// The result or its digest.
        answer: Answer,
    },
    /// A request turned away.
    Refusal {
        /// To whom.
        client: ClientId,
        /// Which request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
    },
}

/// What happened, for an operator's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// A batch was delivered.
    BatchDelivered,
    /// A batch executed tentatively.
    Tentative,
    /// A tentative execution was undone.
    RolledBack,
    /// Requests executed for the first time.
    Executed(u64),
    /// Results answered by digest (PBFT's digest replies).
    DigestReplies(u64),
    /// The state was taken at a checkpoint.
    CheckpointTaken,
    /// An answer about a kept checkpoint's state went to a peer.
    StateServed,
    /// A part of a fetched state was installed.
    PartInstalled,
    /// A peer sent state that failed a check.
    BadStateData,
    /// A batch an epoch's core delivered past that epoch's end was not
    /// executed (see `palisade_core::replica` on epochs).
    VoidBatch,
    /// A reconfiguration request executed for the first time: accepted,
    /// or rejected (forged, replayed, stale, or against a rule).
    Admin {
        /// Whether it was accepted.
        accepted: bool,
    },
}

/// What the executor's membership did, for the consensus side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconfigured {
    /// A change was accepted: epoch `epoch` ends at `last`.
    EpochEnds {
        /// The epoch that ends.
        epoch: u64,
        /// Its last sequence number.
        last: SeqNo,
    },
    /// The state is now in a new epoch, which started at the handover
    /// checkpoint `since` (executed here, or installed from peers).
    NewEpoch {
        /// Its configuration.
        config: Configuration,
        /// Its handover checkpoint.
        since: SeqNo,
    },
}

/// What an execution host needs from the world around it.
pub trait ExecutionIo {
    /// Answers for clients: one call per delivered batch, never dropped.
    fn replies(&mut self, mails: Vec<ClientMail>);
    /// Tentative answers, to send once the first `durable_group` groups of
    /// protocol records are durable (zero: at once).
    fn tentative_replies(&mut self, mails: Vec<ClientMail>, durable_group: u64) {
        let _ = durable_group;
        self.replies(mails);
    }
    /// The state at checkpoint `seq` has digest `state`, and its
    /// configuration digest `config`: for the core (as
    /// `Input::CheckpointReady`), never dropped.
    fn checkpoint(&mut self, seq: SeqNo, state: Digest, config: Digest);
    /// The state of checkpoint `seq` was fetched and installed: for the
    /// core (as `Input::StateFetched`), never dropped.
    fn state_fetched(&mut self, seq: SeqNo, state: Digest);
    /// Sends a state-transfer message to replica `to`, on behalf of the
    /// core serving `epoch`.
    fn send(&mut self, to: ReplicaId, epoch: u64, msg: PeerMessage);
    /// The membership changed; never dropped.
    fn reconfigured(&mut self, _event: Reconfigured) {}
    /// Counts what happened.
    fn note(&mut self, _event: ExecEvent) {}
    /// A batch was executed; `executed` says what each request did (for
    /// observers such as the simulator's checkers).
    fn executed(&mut self, _seq: SeqNo, _batch: &Batch, _executed: &[Executed]) {}
}

/// Bytes of a result's digest.
const DIGEST_BYTES: usize = std::mem::size_of::<Digest>();

/// The answer to send a client for `result`: in full when this replica
/// sends it in full (`full`), else its digest; and when it is larger than
/// `max` bytes, only its length and digest, from every replica alike.
///
/// A result no larger than its digest goes in full from every replica:
/// the digest would save nothing, and a client that has f+1 matching
/// results in hand never waits for, or asks again for, the designated
/// replica's (which, under saturation, sent every such client's request
/// to every replica a second time).
pub fn answer(result: Bytes, full: bool, max: usize) -> Answer {
    if result.len() > max {
        Answer::TooLarge { len: result.len() as u64, digest: Digest::of(&result) }
    } else if full || result.len() <= DIGEST_BYTES {
        Answer::Full(result)
    } else {
        Answer::Digest(Digest::of(&result))
    }
}

/// How an execution host is set up.
#[derive(Clone, Debug)]
pub struct ExecutionConfig {
    /// This replica.
    pub me: ReplicaId,
    /// The cluster, until the executor's own configuration says otherwise:
    /// who answers in full.
    pub membership: Membership,
    /// Take the state every this many sequence numbers.
    pub checkpoint_interval: u64,
    /// How far execution runs ahead of the stable checkpoint at most (the
    /// core's log window): a restart replaying its log keeps the states
    /// this close to the newest, so that the stable one is still served.
    pub log_window: u64,
    /// PBFT's digest replies: one replica per request sends the result,
    /// the others its digest.
    pub reply_digests: bool,
    /// Bytes of state in one answer to a peer (a frame, less the envelope).
    pub max_answer_bytes: usize,
    /// Questions a fetch keeps outstanding.
    pub fetch_window: usize,
    /// Largest record a fetch accepts (bounds what a lying peer can make
    /// it hold before the record's digest shows the lie).
    pub max_record_bytes: u64,
    /// Largest result sent to a client; a larger one is answered with
    /// [`Answer::TooLarge`] (it would not fit a frame). The same on every
    /// replica, so that they all answer alike.
    pub max_result_bytes: usize,
    /// Test-only planted bugs.
    #[cfg(feature = "planted-bugs")]
    pub planted: palisade_core::planted::PlantedBugs,
}

impl ExecutionConfig {
    /// Defaults for replica `me` of `membership`.
    pub fn new(me: ReplicaId, membership: Membership) -> ExecutionConfig {
        ExecutionConfig {
            me,
            membership,
            checkpoint_interval: 128,
            log_window: 512,
            reply_digests: true,
            max_answer_bytes: 1 << 20,
            fetch_window: 8,
            max_record_bytes: 1 << 31,
            max_result_bytes: usize::MAX,
            #[cfg(feature = "planted-bugs")]
            planted: Default::default(),
        }
    }
}

/// The service, the states it keeps, a fetch under way, and who answers
/// clients in full.
pub struct ExecutionHost<S> {
    exec: Arc<RwLock<Executor<S>>>,
    cfg: ExecutionConfig,
    store: PartStore,
    fetch: Option<Fetcher>,
    /// A newer checkpoint to fetch once the fetch under way is done (or
    /// finds no peer keeping its checkpoint): a fetch restarted at every
    /// new checkpoint would never finish on a slow network.
    next: Option<(SeqNo, Digest)>,
    /// The epoch of the core the fetch under way is for, and that epoch's
    /// members but this replica.
    fetch_epoch: u64,
    fetch_peers: Vec<ReplicaId>,
    /// How many of `fetch_peers`, from the first, hold the state wanted.
    fetch_holders: usize,
    /// What the consensus side was last told of the membership: the
    /// current epoch, and the epoch a pending change starts.
    told: (u64, Option<u64>),
    /// Who answers in full, and the epoch it was taken from: refreshed when
    /// the state's epoch changes, not built per batch.
    repliers: (u64, Membership),
    /// The batch executed tentatively, until it commits or is undone.
    tentative: Option<Tentative>,
}

/// A tentative execution waiting for its batch to commit.
struct Tentative {
    seq: SeqNo,
    /// The view it prepared in.
    view: ViewNo,
    batch: Arc<Batch>,
    executed: Vec<Executed>,
    /// Whether some answer was left out (a result too large to send).
    withheld: bool,
}

impl<S: Service> ExecutionHost<S> {
    /// Hosts `exec` (shared with whoever answers retransmissions from the
    /// reply cache). `restored` says that the executor already holds the
    /// state of that checkpoint with that digest (installed from a
    /// snapshot; checked again here); without it the genesis state is
    /// taken at sequence number 0.
    pub fn new(
        exec: Arc<RwLock<Executor<S>>>,
        cfg: ExecutionConfig,
        restored: Option<(SeqNo, Digest)>,
    ) -> Result<Self, String> {
        let mut host = ExecutionHost {
            exec,
            store: PartStore::default(),
            fetch: None,
            next: None,
            fetch_epoch: 0,
            fetch_peers: Vec::new(),
            fetch_holders: 0,
            told: (0, None),
            repliers: (0, cfg.membership.clone()),
            tentative: None,
            cfg,
        };
        {
            let mut exec = host.exec.write();
            exec.take_changed();
            let seq = restored.map_or(SeqNo(0), |(s, _)| s);
            let root = host.store.take_all(seq, &exec);
            if restored.is_some_and(|(_, want)| root != want) {
                return Err(format!("the state restored at {seq} does not have its recorded digest"));
            }
            host.told =
                (exec.configuration().map_or(0, |c| c.epoch), exec.pending_configuration().map(|(c, _)| c.epoch));
            if let Some(c) = exec.configuration() {
                host.repliers = (c.epoch, c.membership());
            }
        }
        Ok(host)
    }

    /// The epoch of the executor's state (0 without reconfiguration).
    pub fn epoch(&self) -> u64 {
        self.told.0
    }

    /// Tells the consensus side what changed in the membership since it
    /// was last told.
    fn tell_reconfigured(&mut self, io: &mut impl ExecutionIo) {
        let exec = self.exec.read();
        let Some((config, since)) = exec.configuration_since() else { return };
        if config.epoch > self.told.0 {
            // A change accepted at a checkpoint is handed over in the same
            // batch: the end of the epoch before is news too.
            if self.told.1 != Some(config.epoch) && config.epoch == self.told.0 + 1 {
                io.reconfigured(Reconfigured::EpochEnds { epoch: self.told.0, last: since });
            }
            self.told = (config.epoch, None);
            io.reconfigured(Reconfigured::NewEpoch { config: config.clone(), since });
        }
        if let Some((next, last)) = exec.pending_configuration() {
            if self.told.1 != Some(next.epoch) {
                self.told.1 = Some(next.epoch);
                io.reconfigured(Reconfigured::EpochEnds { epoch: config.epoch, last });
            }
        }
    }

    /// The checkpoint the executor was restored to, and its digest.
    pub fn restored(&self) -> (SeqNo, Digest) {
        let (seq, kept) = self.store.newest().expect("at least the genesis state");
        (seq, kept.root)
    }

    /// The executor, shared.
    pub fn executor(&self) -> &Arc<RwLock<Executor<S>>> {
        &self.exec
    }

    /// The states kept.
    pub fn store(&self) -> &PartStore {
        &self.store
    }

    /// The states kept, for a host whose states outlive it.
    pub fn into_store(self) -> PartStore {
        self.store
    }

    /// Carries out one command. An error means a certified state does not
    /// install: this build cannot read its own cluster's state.
    pub fn handle(&mut self, cmd: ExecCommand, io: &mut impl ExecutionIo) -> Result<(), String> {
        match cmd {
            ExecCommand::Deliver { epoch, seq, view, batch } => {
                if self.void(epoch, io) {
                    return Ok(());
                }
                if let Some(t) = &self.tentative {
                    return Err(format!("{seq} delivered over the tentative execution of {}", t.seq));
                }
                self.deliver(seq, view, &batch, io);
            }
            ExecCommand::Tentative { epoch, seq, view, batch, durable_group } => {
                if self.void(epoch, io) {
                    return Ok(());
                }
                self.execute_tentatively(seq, view, batch, durable_group, io);
            }
            ExecCommand::Confirm { epoch, seq, view, batch } => {
                if self.void(epoch, io) {
                    return Ok(());
                }
                match self.tentative.take() {
                    Some(t)
                        if t.seq == seq && (Arc::ptr_eq(&t.batch, &batch) || t.batch.digest() == batch.digest()) =>
                    {
                        self.exec.write().set_tentative(&[]);
                        // Answers from before a view change do not add up
                        // with answers from after it, and a withheld one was
                        // never sent: answer again, committed.
                        if t.view != view || t.withheld {
                            let replies = self.answers(view, &t.executed, false, io);
                            if !replies.is_empty() {
                                io.replies(replies);
                            }
                        }
                        self.finish(seq, &t.batch, &t.executed, io);
                    }
                    Some(t) => {
                        return Err(format!("{seq} committed, but {} executed tentatively", t.seq));
                    }
                    // Nothing executed here: execute it now.
                    None => self.deliver(seq, view, &batch, io),
                }
            }
            ExecCommand::RollBack { epoch, seq, view, replay } => {
                if epoch != self.told.0 {
                    return Ok(());
                }
                if self.tentative.take().is_some_and(|t| t.seq == seq) {
                    self.roll_back(view, &replay, io)?;
                }
            }
            ExecCommand::Read { request, view } => {
                let result = self.exec.read().execute_read_only(&request);
                let answer = answer(result, true, self.cfg.max_result_bytes);
                io.replies(vec![ClientMail::Answer { client: request.client, view, request: request.id, answer }]);
            }
            ExecCommand::Serve { epoch, to, seq, query } => {
                let answer = self.store.answer(seq, &query, self.cfg.max_answer_bytes);
                io.note(ExecEvent::StateServed);
                io.send(to, epoch, PeerMessage::StateData { seq, answer });
            }
            ExecCommand::Fetch { epoch, peers, holders, seq, state } => {
                // The fetched state replaces a tentative execution. Its
                // requests stay marked tentative until that state is in:
                // until then the state still holds their results.
                self.tentative = None;
                return self.fetch(epoch, &peers, holders, seq, state, io);
            }
            ExecCommand::StateData { from, seq, answer } => {
                let mut steps = Vec::new();
                match &mut self.fetch {
                    Some(f) if f.target().0 == seq => {
                        let exec = self.exec.read();
                        f.on_answer(from, answer, |i| exec.part_digest(i), &mut steps);
                    }
                    _ => return Ok(()),
                }
                return self.carry_out(steps, io);
            }
            ExecCommand::Stable { seq, keep_from } => self.store.stable(seq, keep_from),
        }
        Ok(())
    }

    fn fetch(
        &mut self,
        epoch: u64,
        peers: &[ReplicaId],
        holders: usize,
        seq: SeqNo,
        state: Digest,
        io: &mut impl ExecutionIo,
    ) -> Result<(), String> {
        let mut steps = Vec::new();
        let same_epoch = epoch == self.fetch_epoch;
        if !same_epoch || self.fetch.as_ref().is_none_or(|f| f.target() != (seq, state)) {
            // The peers, those that hold the state first, for the fetch this
            // starts, now or when the one under way ends.
            self.fetch_epoch = epoch;
            self.fetch_peers = peers.to_vec();
            self.fetch_holders = holders;
        }
        match &mut self.fetch {
            // A core of another epoch asks: its members are the ones to ask.
            Some(_) if !same_epoch => {
                self.next = None;
                self.start_fetch(seq, state, &mut steps)
            }
            Some(f) if f.target() == (seq, state) => f.nudge(&mut steps),
            Some(f) if f.target().0 < seq => {
                self.next = Some((seq, state));
                f.nudge(&mut steps);
            }
            _ => self.start_fetch(seq, state, &mut steps),
        }
        self.carry_out(steps, io)
    }

    fn start_fetch(&mut self, seq: SeqNo, state: Digest, steps: &mut Vec<FetchStep>) {
        let peers = self.fetch_peers.clone();
        // Replicas start their rotations at different peers (the fetcher
        // keeps them among the holders while any can answer).
        let turn = self.cfg.me.0 as usize;
        let (window, max_record) = (self.cfg.fetch_window, self.cfg.max_record_bytes);
        self.next = self.next.filter(|(s, _)| *s > seq);
        self.fetch = Some(Fetcher::start(seq, state, peers, self.fetch_holders, turn, window, max_record, steps));
    }

    fn carry_out(&mut self, mut steps: Vec<FetchStep>, io: &mut impl ExecutionIo) -> Result<(), String> {
        // Steps of a fetch started here (the next target) join the queue.
        let mut i = 0;
        while i < steps.len() {
            let step = std::mem::replace(&mut steps[i], FetchStep::Stuck);
            i += 1;
            match step {
                FetchStep::Ask(to, query) => {
                    let seq = self.fetch.as_ref().map_or(SeqNo(0), |f| f.target().0);
                    io.send(to, self.fetch_epoch, PeerMessage::StateFetch { seq, query });
                }
                FetchStep::Install(part, records) => {
                    self.exec.write().install_part(part, records).map_err(|e| format!("fetched part {part}: {e}"))?;
                    io.note(ExecEvent::PartInstalled);
                }
                FetchStep::Bad(_) => io.note(ExecEvent::BadStateData),
                FetchStep::Done => {
                    let Some(f) = self.fetch.take() else { continue };
                    let (seq, root) = f.target();
                    let mut exec = self.exec.write();
                    exec.set_tentative(&[]);
                    exec.take_changed();
                    if exec.state_digest() != root {
                        return Err(format!("the state fetched for {seq} does not install to its digest"));
                    }
                    self.store.take_all(seq, &exec);
                    drop(exec);
                    io.state_fetched(seq, root);
                    self.tell_reconfigured(io);
                    if let Some((seq, state)) = self.next.take() {
                        let mut more = Vec::new();
                        self.start_fetch(seq, state, &mut more);
                        steps.extend(more);
                    }
                }
                FetchStep::Stuck => {
                    if let Some((seq, state)) = self.next.take() {
                        let mut more = Vec::new();
                        self.start_fetch(seq, state, &mut more);
                        steps.extend(more);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a batch the core of `epoch` ordered is void: the state has
    /// moved to a later epoch (counted).
    fn void(&self, epoch: u64, io: &mut impl ExecutionIo) -> bool {
        #[cfg(feature = "planted-bugs")]
        let void = epoch != self.told.0 && !self.cfg.planted.execute_void_batches;
        #[cfg(not(feature = "planted-bugs"))]
        let void = epoch != self.told.0;
        if void {
            io.note(ExecEvent::VoidBatch);
        }
        void
    }

    fn deliver(&mut self, seq: SeqNo, view: ViewNo, batch: &Batch, io: &mut impl ExecutionIo) {
        let executed = self.execute(seq, view, batch, false);
        let replies = self.answers(view, &executed, false, io);
        if !replies.is_empty() {
            io.replies(replies);
        }
        self.finish(seq, batch, &executed, io);
    }

    /// Executes a prepared batch and answers tentatively; what it executed
    /// is kept until the batch commits or is undone.
    fn execute_tentatively(
        &mut self,
        seq: SeqNo,
        view: ViewNo,
        batch: Arc<Batch>,
        durable_group: u64,
        io: &mut impl ExecutionIo,
    ) {
        let executed = self.execute(seq, view, &batch, true);
        let replies = self.answers(view, &executed, true, io);
        let withheld = replies.len() < executed.len();
        if !replies.is_empty() {
            io.tentative_replies(replies, durable_group);
        }
        self.tentative = Some(Tentative { seq, view, batch, executed, withheld });
        io.note(ExecEvent::Tentative);
    }

    /// Executes `batch`; a tentative execution marks its requests under
    /// the same lock, so no lookup sees its results as committed.
    fn execute(&mut self, seq: SeqNo, view: ViewNo, batch: &Batch, tentative: bool) -> Vec<Executed> {
        let mut exec = self.exec.write();
        let executed = exec.execute_batch(seq, view, batch);
        if tentative {
            exec.set_tentative(&executed);
        }
        // Who answers in full: the members of the state's epoch.
        if let Some(c) = exec.configuration().filter(|c| c.epoch != self.repliers.0) {
            self.repliers = (c.epoch, c.membership());
        }
        executed
    }

    /// The answers to send for `executed`; tentative ones leave out a
    /// result too large to send (it settles nothing until it commits).
    fn answers(
        &self,
        view: ViewNo,
        executed: &[Executed],
        tentative: bool,
        io: &mut impl ExecutionIo,
    ) -> Vec<ClientMail> {
        let mut replies = Vec::with_capacity(executed.len());
        let mut digests = 0;
        let me = self.cfg.me;
        let digest_replies = self.cfg.reply_digests.then_some(&self.repliers.1);
        for e in executed {
            let full = digest_replies.is_none_or(|m| designated_replier(m, e.client, e.request) == me);
            let mut answer = answer(e.result.clone(), full, self.cfg.max_result_bytes);
            digests += u64::from(matches!(answer, Answer::Digest(_)));
            if tentative {
                if matches!(answer, Answer::TooLarge { .. }) {
                    continue;
                }
                answer = answer.tentative();
            }
            replies.push(ClientMail::Answer { client: e.client, view, request: e.request, answer });
        }
        if digests > 0 {
            io.note(ExecEvent::DigestReplies(digests));
        }
        replies
    }

    /// What follows a batch's commit: counters, observers, the membership,
    /// and the state at a checkpoint.
    fn finish(&mut self, seq: SeqNo, batch: &Batch, executed: &[Executed], io: &mut impl ExecutionIo) {
        let admin = self.exec.read().configuration().map(|c| c.view_manager_client());
        for e in executed.iter().filter(|e| e.fresh && Some(e.client) == admin) {
            if let Some(outcome) = AdminOutcome::decode(&e.result) {
                io.note(ExecEvent::Admin { accepted: matches!(outcome, AdminOutcome::Accepted { .. }) });
            }
        }
        io.note(ExecEvent::BatchDelivered);
        io.executed(seq, batch, executed);
        let fresh = executed.iter().filter(|e| e.fresh).count() as u64;
        if fresh > 0 {
            io.note(ExecEvent::Executed(fresh));
        }
        if seq.0 % self.cfg.checkpoint_interval == 0 {
            let mut exec = self.exec.write();
            let changed = exec.take_changed();
            let state = self.store.take(seq, &exec, &changed);
            let config = exec.configuration().map_or_else(Digest::default, |c| c.digest());
            drop(exec);
            io.note(ExecEvent::CheckpointTaken);
            io.checkpoint(seq, state, config);
        }
        self.tell_reconfigured(io);
    }

    /// Puts the state back as it was before the tentative execution: the
    /// newest kept checkpoint's state, only in the parts that changed since
    /// (the snapshot machinery's own change tracking), then the delivered
    /// batches above it executed again, without answers. No service needs
    /// undo code.
    fn roll_back(
        &mut self,
        view: ViewNo,
        replay: &[(SeqNo, Arc<Batch>)],
        io: &mut impl ExecutionIo,
    ) -> Result<(), String> {
        let (from, kept) = self.store.newest().ok_or("no kept state to roll back to")?;
        let kept = kept.clone();
        let mut exec = self.exec.write();
        exec.set_tentative(&[]);
        let changed = exec.take_changed();
        let parts: Vec<u32> = if kept.parts.len() == exec.part_count() as usize {
            changed
        } else {
            (0..kept.parts.len() as u32).collect()
        };
        for i in parts {
            let part = kept.parts.get(i as usize).ok_or_else(|| format!("roll-back: no part {i} kept at {from}"))?;
            exec.install_part(i, part.records()).map_err(|e| format!("roll-back: part {i} of {from}: {e}"))?;
        }
        if exec.state_digest() != kept.root {
            return Err(format!("roll-back: the state put back is not the one kept at {from}"));
        }
        let mut next = from.next();
        for (seq, batch) in replay.iter().filter(|(s, _)| *s > from) {
            if *seq != next {
                return Err(format!("roll-back: replay from {from} misses {next}"));
            }
            exec.execute_batch(*seq, view, batch);
            next = seq.next();
        }
        drop(exec);
        io.note(ExecEvent::RolledBack);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_is_sent_as_a_digest_only_when_the_digest_is_smaller() {
        let small = Bytes::from_static(&[7u8; 32]);
        let large = Bytes::from(vec![7u8; 33]);
        assert_eq!(answer(small.clone(), false, 1024), Answer::Full(small.clone()));
        assert_eq!(answer(large.clone(), false, 1024), Answer::Digest(Digest::of(&large)));
        assert_eq!(answer(large.clone(), true, 1024), Answer::Full(large.clone()));
        assert_eq!(answer(large.clone(), true, 32), Answer::TooLarge { len: 33, digest: Digest::of(&large) });
        assert_eq!(answer(Bytes::new(), false, 1024), Answer::Full(Bytes::new()));
    }
}
