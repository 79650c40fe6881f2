//! Carrying out the core's decisions on the execution side: the service in
//! order, snapshots at checkpoints, state transfer, and answers to clients.

use crate::consensus::ExecCommand;
use bytes::Bytes;
use palisade_core::exec::Executed;
use palisade_core::{Batch, ClientId, Digest, Executor, Membership, ReplicaId, RequestId, SeqNo, Service, ViewNo};
use palisade_wire::envelope::{designated_replier, Answer, RejectReason};
use parking_lot::RwLock;
use std::collections::BTreeMap;
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
    /// Requests executed for the first time.
    Executed(u64),
    /// Results answered by digest (PBFT's digest replies).
    DigestReplies(u64),
    /// A snapshot was taken at a checkpoint.
    SnapshotTaken,
    /// A snapshot could not be served: it does not fit one frame.
    SnapshotTooLarge,
}

/// What an execution host needs from the world around it.
pub trait ExecutionIo {
    /// Answers for clients: one call per delivered batch, never dropped.
    fn replies(&mut self, mails: Vec<ClientMail>);
    /// The snapshot at checkpoint `seq` has digest `state`: for the core
    /// (as `Input::CheckpointReady`), never dropped.
    fn checkpoint(&mut self, seq: SeqNo, state: Digest);
    /// Sends the snapshot at `seq` to replica `to` (a state reply).
    fn send_snapshot(&mut self, to: ReplicaId, seq: SeqNo, snapshot: Bytes);
    /// Counts what happened.
    fn note(&mut self, _event: ExecEvent) {}
    /// A batch was executed; `executed` says what each request did (for
    /// observers such as the simulator's checkers).
    fn executed(&mut self, _seq: SeqNo, _batch: &Batch, _executed: &[Executed]) {}
}

/// The service, its snapshots, and who answers clients in full.
pub struct ExecutionHost<S> {
    exec: Arc<RwLock<Executor<S>>>,
    me: ReplicaId,
    checkpoint_interval: u64,
    /// Snapshots still served: from the previous stable checkpoint up.
    snapshots: BTreeMap<SeqNo, Bytes>,
    /// With digest replies, the membership that designates full repliers.
    reply_digests: Option<Membership>,
    /// Largest snapshot that can be sent (one frame, less the envelope).
    max_snapshot_bytes: usize,
}

impl<S: Service> ExecutionHost<S> {
    /// Hosts `exec` (shared with whoever answers retransmissions from the
    /// reply cache) for replica `me`. `snapshots` are those that survived
    /// a restart (empty for a fresh start): the newest is installed, and
    /// the genesis snapshot is taken if there is none.
    pub fn new(
        exec: Arc<RwLock<Executor<S>>>,
        me: ReplicaId,
        checkpoint_interval: u64,
        reply_digests: Option<Membership>,
        max_snapshot_bytes: usize,
        snapshots: BTreeMap<SeqNo, Bytes>,
    ) -> Result<Self, String> {
        let mut host = ExecutionHost { exec, me, checkpoint_interval, snapshots, reply_digests, max_snapshot_bytes };
        match host.snapshots.last_key_value() {
            Some((_, newest)) => {
                let newest = newest.clone();
                host.exec.write().install(&newest)?;
            }
            None => {
                let genesis = host.exec.read().snapshot();
                host.snapshots.insert(SeqNo(0), genesis);
            }
        }
        Ok(host)
    }

    /// The checkpoint the executor was restored to, and its digest.
    pub fn restored(&self) -> (SeqNo, Digest) {
        let (seq, bytes) = self.snapshots.last_key_value().expect("at least the genesis snapshot");
        (*seq, Digest::of(bytes))
    }

    /// The executor, shared.
    pub fn executor(&self) -> &Arc<RwLock<Executor<S>>> {
        &self.exec
    }

    /// The snapshots kept, for a host whose snapshots outlive it.
    pub fn into_snapshots(self) -> BTreeMap<SeqNo, Bytes> {
        self.snapshots
    }

    /// Carries out one command. An error means a certified snapshot does
    /// not install: this build cannot read its own cluster's state.
    pub fn handle(&mut self, cmd: ExecCommand, io: &mut impl ExecutionIo) -> Result<(), String> {
        match cmd {
            ExecCommand::Deliver { seq, view, batch } => self.deliver(seq, view, &batch, io),
            ExecCommand::Read { request, view } => {
                let result = self.exec.read().execute_read_only(&request);
                let answer = Answer::Full(result);
                io.replies(vec![ClientMail::Answer { client: request.client, view, request: request.id, answer }]);
            }
            ExecCommand::Serve { to, seq } => {
                if let Some(snapshot) = self.snapshots.get(&seq).cloned() {
                    if snapshot.len() > self.max_snapshot_bytes {
                        io.note(ExecEvent::SnapshotTooLarge);
                    } else {
                        io.send_snapshot(to, seq, snapshot);
                    }
                }
            }
            ExecCommand::Install { seq, snapshot } => {
                self.exec.write().install(&snapshot).map_err(|e| format!("certified snapshot {seq}: {e}"))?;
                self.snapshots.insert(seq, snapshot);
            }
            ExecCommand::ForgetBelow(keep_from) => {
                // Keep the snapshots from there up; with none there yet (a
                // transfer is about to fetch one), keep the newest older
                // one so that a restart still has something to start from.
                let newer = self.snapshots.split_off(&keep_from);
                let fallback = self.snapshots.pop_last();
                self.snapshots = newer;
                if self.snapshots.is_empty() {
                    self.snapshots.extend(fallback);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, seq: SeqNo, view: ViewNo, batch: &Batch, io: &mut impl ExecutionIo) {
        let executed = self.exec.write().execute_batch(seq, view, batch);
        io.note(ExecEvent::BatchDelivered);
        io.executed(seq, batch, &executed);
        let mut replies = Vec::with_capacity(executed.len());
        let (mut fresh, mut digests) = (0, 0);
        for e in executed {
            fresh += u64::from(e.fresh);
            let full =
                self.reply_digests.as_ref().is_none_or(|m| designated_replier(m, e.client, e.request) == self.me);
            let answer = if full {
                Answer::Full(e.result)
            } else {
                digests += 1;
                Answer::Digest(Digest::of(&e.result))
            };
            replies.push(ClientMail::Answer { client: e.client, view, request: e.request, answer });
        }
        if fresh > 0 {
            io.note(ExecEvent::Executed(fresh));
        }
        if digests > 0 {
            io.note(ExecEvent::DigestReplies(digests));
        }
        if !replies.is_empty() {
            io.replies(replies);
        }
        if seq.0 % self.checkpoint_interval == 0 {
            let snapshot = self.exec.read().snapshot();
            let state = Digest::of(&snapshot);
            self.snapshots.insert(seq, snapshot);
            io.note(ExecEvent::SnapshotTaken);
            io.checkpoint(seq, state);
        }
    }
}
