//! The CPU stages. Each is an actor: it owns its state, takes from bounded
//! queues without blocking, in batches, and never waits on a full output
//! queue (it takes less input instead, or holds output that must not be
//! dropped and takes nothing new). A runner thread runs one stage or
//! several and parks only when all are idle; queues ring the consumer's
//! runner when they fill and the producer's when they drain. The runner
//! watches the stop flag, so shutting a replica down never depends on
//! channels closing.

use crate::metrics::{CoreSnapshot, RuntimeMetrics};
use crate::net::Net;
use crate::storage::Storage;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use palisade_core::exec::Lookup;
use palisade_core::message::Reply;
use palisade_core::replica::DropReason;
use palisade_core::{
    Action, Batch, ClientId, Digest, Executor, Input, PeerMessage, Replica, ReplicaId, Request, RequestId, SeqNo,
    Service, ViewNo,
};
use palisade_wire::envelope::{designated_replier, Answer, RejectReason, ReplicaMessage, MAX_LIST};
use palisade_wire::verify::{self, VerifyLimits};
use parking_lot::RwLock;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Most bytes of frame bodies handed to a connection in one mailbox message.
pub const BATCH_BYTES: usize = 256 << 10;

/// How long a stage blocks before looking at the stop flag again.
const POLL: Duration = Duration::from_millis(50);

/// Work for the delivery stage, in the order the core decided it.
#[derive(Debug)]
pub enum DeliveryCmd {
    /// Execute a committed batch.
    Deliver {
        /// Sequence number.
        seq: SeqNo,
        /// View.
        view: ViewNo,
        /// The batch.
        batch: Arc<Batch>,
    },
    /// Answer a read-only request.
    Read(Request),
    /// Send the snapshot at `seq` to `to`.
    Serve {
        /// Who asked.
        to: ReplicaId,
        /// Which checkpoint.
        seq: SeqNo,
    },
    /// Install a certified snapshot.
    Install {
        /// Its checkpoint.
        seq: SeqNo,
        /// Its bytes.
        snapshot: Bytes,
    },
    /// A new stable checkpoint: forget snapshots below this sequence
    /// number (the previous stable checkpoint, still served to laggards).
    Stable(SeqNo),
}

/// Something for one client, on its way to the reply stage, which frames
/// it (and signs it as this replica's).
#[derive(Debug)]
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

/// Replies travel to the reply stage in batches: one per delivered batch
/// (or a single push-back notice), so that queue is bounded in batches.
pub type ReplyBatch = Vec<ClientMail>;

// ----- queues, bells and runners -------------------------------------------------

/// Wakes the thread that runs a stage when it is parked. Every stage run by
/// one thread shares that thread's bell; ringing a running thread costs an
/// atomic swap, a parked one a futex wake.
/// A runner on the network thread is an async task and waits on a
/// `Notify` instead.
#[derive(Clone, Default)]
pub struct Bell(Arc<BellInner>);

#[derive(Default)]
struct BellInner {
    thread: OnceLock<Thread>,
    task: tokio::sync::Notify,
}

impl Bell {
    /// Wakes the runner, or makes its next wait return at once.
    pub fn ring(&self) {
        match self.0.thread.get() {
            Some(t) => t.unpark(),
            None => self.0.task.notify_one(),
        }
    }

    fn bind(&self) {
        let _ = self.0.thread.set(std::thread::current());
    }
}

/// The sending end of a bounded queue between stages (or from the network
/// to a stage): never blocks, and rings the consumer's bell.
pub struct Tx<T> {
    inner: Sender<T>,
    bell: Bell,
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        Tx { inner: self.inner.clone(), bell: self.bell.clone() }
    }
}

impl<T> Tx<T> {
    /// Queues `item` if there is room.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let r = self.inner.try_send(item);
        if r.is_ok() {
            self.bell.ring();
        }
        r
    }

    /// Free slots right now.
    pub fn room(&self) -> usize {
        self.inner.capacity().unwrap_or(usize::MAX).saturating_sub(self.inner.len())
    }
}

/// The receiving end: takes without blocking, and rings the producer's bell
/// when it frees room in a queue at least half full (the producer may be
/// waiting for that room).
pub struct Rx<T> {
    inner: Receiver<T>,
    producer: Option<Bell>,
}

impl<T> Rx<T> {
    /// Takes one item if one is queued.
    pub fn take(&self) -> Option<T> {
        let waiting =
            self.producer.as_ref().filter(|_| self.inner.len() * 2 >= self.inner.capacity().unwrap_or(usize::MAX));
        let item = self.inner.try_recv().ok();
        if let (Some(producer), Some(_)) = (waiting, &item) {
            producer.ring();
        }
        item
    }

    /// Takes up to `max` items.
    pub fn take_up_to(&self, max: usize) -> Vec<T> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.take() {
                Some(x) => out.push(x),
                None => break,
            }
        }
        out
    }

    /// Reads the queue's depth from anywhere (for gauges).
    pub fn depth_probe(&self) -> impl Fn() -> usize + Send + 'static
    where
        T: Send + 'static,
    {
        let probe = self.inner.clone();
        move || probe.len()
    }
}

/// A bounded queue of `capacity` items consumed by the stage behind
/// `consumer`; `producer` is rung when room frees up (for producers that
/// wait for room rather than drop).
pub fn queue<T>(capacity: usize, consumer: &Bell, producer: Option<&Bell>) -> (Tx<T>, Rx<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (Tx { inner: tx, bell: consumer.clone() }, Rx { inner: rx, producer: producer.cloned() })
}

/// Output that must never be dropped (decisions, their replies, checkpoint
/// digests): what the queue cannot take waits here, and the stage takes no
/// new input until it has gone. The backlog is bounded by one input's
/// worth of output, and what one input can produce is bounded by the
/// protocol's window.
pub struct Outflow<T> {
    tx: Tx<T>,
    backlog: VecDeque<T>,
}

impl<T> Outflow<T> {
    /// Output into `tx`.
    pub fn new(tx: Tx<T>) -> Self {
        Outflow { tx, backlog: VecDeque::new() }
    }

    /// Sends `item`, or keeps it behind what already waits.
    pub fn push(&mut self, item: T) -> Result<(), Ended> {
        self.backlog.push_back(item);
        self.flush().map(|_| ())
    }

    /// Sends what waits, in order; true once nothing does.
    pub fn flush(&mut self) -> Result<bool, Ended> {
        while let Some(item) = self.backlog.pop_front() {
            match self.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.backlog.push_front(item);
                    return Ok(false);
                }
                Err(TrySendError::Disconnected(_)) => return Err(Ended),
            }
        }
        Ok(true)
    }

    /// Items waiting for room.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }
}

/// A stage ends when a queue it feeds or drains has lost its other side
/// (the replica is stopping).
#[derive(Debug)]
pub struct Ended;

/// A stage of the pipeline: an actor that owns its state, takes from its
/// inboxes without blocking and reports whether it did anything. A runner
/// thread parks only when every stage it runs is idle, so a stage may run
/// on its own thread or share one with others (see [`StageThreads`]).
pub trait Stage: Send {
    /// The stage's name (its thread's name when it runs alone).
    fn name(&self) -> &'static str;
    /// Does the work that is ready, up to the stage's per-wake-up limit.
    fn poll(&mut self) -> Result<bool, Ended>;
    /// When the stage next has work even if nobody rings (timers).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// How the CPU stages map to threads. The stages and their queues are the
/// same in every placement; only who runs them changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageThreads {
    /// Each stage on its own thread: stages overlap on many cores.
    Dedicated,
    /// All CPU stages on one thread, in pipeline order, beside the network
    /// thread: no hand-off between stages costs a thread wake-up.
    Shared,
    /// All CPU stages on the network thread, as one more task between
    /// socket events: a replica is a single thread, and no hand-off in it
    /// costs a wake-up. For small machines and many replicas per machine.
    Network,
}

impl StageThreads {
    /// The placement for this machine's core count (see docs/configuration.md
    /// for the measurements behind it).
    pub fn for_machine() -> StageThreads {
        match std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
            n if n < 4 => StageThreads::Network,
            _ => StageThreads::Dedicated,
        }
    }
}

/// Polls every stage once: `Some(idle wait)` when none had work, `None`
/// while busy; `Err` when one ended.
fn poll_all(stages: &mut [Box<dyn Stage>]) -> Result<Option<Duration>, Ended> {
    let mut busy = false;
    for s in stages.iter_mut() {
        busy |= s.poll()?;
    }
    if busy {
        return Ok(None);
    }
    let now = Instant::now();
    let wait = stages.iter().filter_map(|s| s.next_deadline()).map(|d| d.saturating_duration_since(now)).min();
    Ok(Some(wait.unwrap_or(POLL).min(POLL)))
}

/// Runs `stages` on the current thread until `stop` is set or one ends.
pub fn run_stages(mut stages: Vec<Box<dyn Stage>>, bell: Bell, stop: Arc<AtomicBool>) {
    bell.bind();
    while !stop.load(Ordering::Relaxed) {
        match poll_all(&mut stages) {
            Ok(None) => {}
            Ok(Some(wait)) => std::thread::park_timeout(wait),
            Err(Ended) => return,
        }
    }
}

/// Runs `stages` as a task of the network thread's event loop: after each
/// busy pass it yields to socket events, and when idle it waits for its
/// bell or the next deadline.
pub async fn run_stages_on_network(mut stages: Vec<Box<dyn Stage>>, bell: Bell, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match poll_all(&mut stages) {
            Ok(None) => tokio::task::yield_now().await,
            Ok(Some(wait)) => {
                tokio::select! {
                    _ = bell.0.task.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(Ended) => return,
        }
    }
}

/// Frame bodies for several connections, gathered during one wake-up so that
/// each connection gets one mailbox message instead of one per frame. A
/// message holds at most [`BATCH_BYTES`] (a single larger frame goes alone),
/// so a mailbox bounded in messages stays bounded in bytes.
pub struct Outbox<K> {
    open: BTreeMap<K, (usize, Vec<Bytes>)>,
}

impl<K: Ord + Copy> Outbox<K> {
    /// An empty outbox.
    pub fn new() -> Self {
        Outbox { open: BTreeMap::new() }
    }

    /// Adds `body` for `to`; returns a full batch for `to` to send now.
    pub fn push(&mut self, to: K, body: Bytes) -> Option<Vec<Bytes>> {
        let (bytes, bodies) = self.open.entry(to).or_default();
        let full = (!bodies.is_empty() && *bytes + body.len() > BATCH_BYTES).then(|| {
            *bytes = 0;
            std::mem::take(bodies)
        });
        *bytes += body.len();
        bodies.push(body);
        full
    }

    /// Everything still gathered, one batch per connection.
    pub fn drain(&mut self) -> impl Iterator<Item = (K, Vec<Bytes>)> {
        std::mem::take(&mut self.open).into_iter().map(|(k, (_, bodies))| (k, bodies))
    }
}

impl<K: Ord + Copy> Default for Outbox<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands a peer message to the next stage. A full queue drops it and counts
/// the drop (the protocol retransmits); false when the stage is gone.
pub fn offer_peer(tx: &Tx<(ReplicaId, PeerMessage)>, item: (ReplicaId, PeerMessage), metrics: &RuntimeMetrics) -> bool {
    match tx.try_send(item) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            RuntimeMetrics::add(&metrics.counters.peer_messages_dropped, 1);
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// Sends a push-back notice or a cached reply; when the reply queue is full
/// it is dropped and counted (the client retransmits).
fn notify(tx: &Tx<ReplyBatch>, mail: ClientMail, metrics: &RuntimeMetrics) {
    if tx.try_send(vec![mail]).is_err() {
        RuntimeMetrics::add(&metrics.counters.replies_dropped, 1);
    }
}

/// Passes a request to the next stage; if it has no room after all (another
/// producer took it), the client is pushed back.
fn pass_on(tx: &Tx<Request>, r: Request, tx_reply: &Tx<ReplyBatch>, metrics: &RuntimeMetrics) -> Result<(), Ended> {
    let (client, request) = (r.client, r.id);
    match tx.try_send(r) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            RuntimeMetrics::add(&metrics.counters.requests_busy, 1);
            notify(tx_reply, ClientMail::Refusal { client, request, reason: RejectReason::Busy }, metrics);
            Ok(())
        }
        Err(TrySendError::Disconnected(_)) => Err(Ended),
    }
}

/// Request verification (when clients sign): cheap checks, then client
/// signatures in parallel dalek batches on a rayon pool. Takes only as many
/// requests as the proposer's queue has room for, so a slow pipeline fills
/// the verify queue and the network pushes clients back.
pub struct Verifier {
    /// Requests from the network.
    pub rx: Rx<Request>,
    /// Verified requests to proposing.
    pub tx: Tx<Request>,
    /// Refusals.
    pub tx_reply: Tx<ReplyBatch>,
    /// Requests known to be verified.
    pub verified: Arc<crate::crypto::VerifiedRequests>,
    /// Size limits.
    pub limits: VerifyLimits,
    /// Signature-checking threads.
    pub pool: Arc<rayon::ThreadPool>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Requests per wake-up.
    pub drain_max: usize,
}

impl Stage for Verifier {
    fn name(&self) -> &'static str {
        "verify"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let batch = self.rx.take_up_to(self.drain_max.min(self.tx.room()));
        if batch.is_empty() {
            return Ok(false);
        }
        for verdict in verify::verify_batch(batch, self.limits, |_, _| true, &self.pool) {
            match verdict {
                Ok(r) => {
                    self.verified.insert(&r);
                    pass_on(&self.tx, r, &self.tx_reply, &self.metrics)?;
                }
                Err((r, _why)) => {
                    RuntimeMetrics::add(&self.metrics.counters.requests_invalid, 1);
                    let invalid =
                        ClientMail::Refusal { client: r.client, request: r.id, reason: RejectReason::Invalid };
                    notify(&self.tx_reply, invalid, &self.metrics);
                }
            }
        }
        Ok(true)
    }
}

/// Request verification for PRE-PREPAREs (when clients sign): checks every
/// request of a batch in parallel dalek batches, records them as verified
/// for the consensus stage, and passes the PRE-PREPARE on. A batch with a
/// request that fails is dropped: a correct primary never proposes one.
pub struct PrePrepareVerifier {
    /// PRE-PREPAREs from the network.
    pub rx: Rx<(ReplicaId, PeerMessage)>,
    /// Checked PRE-PREPAREs to consensus.
    pub tx_peer: Tx<(ReplicaId, PeerMessage)>,
    /// Requests known to be verified.
    pub verified: Arc<crate::crypto::VerifiedRequests>,
    /// Size limits.
    pub limits: VerifyLimits,
    /// Signature-checking threads.
    pub pool: Arc<rayon::ThreadPool>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Messages per wake-up.
    pub drain_max: usize,
}

impl Stage for PrePrepareVerifier {
    fn name(&self) -> &'static str {
        "verify-pp"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let batch = self.rx.take_up_to(self.drain_max);
        if batch.is_empty() {
            return Ok(false);
        }
        for (from, msg) in batch {
            if let PeerMessage::PrePrepare(pp) = &msg {
                let unchecked: Vec<Request> =
                    pp.batch.requests.iter().filter(|r| !self.verified.contains(r)).cloned().collect();
                let verdicts = verify::verify_batch(unchecked, self.limits, |_, _| true, &self.pool);
                if verdicts.iter().any(|v| v.is_err()) {
                    RuntimeMetrics::add(&self.metrics.counters.peer_messages_dropped, 1);
                    continue;
                }
                for r in verdicts.into_iter().flatten() {
                    self.verified.insert(&r);
                }
            }
            if !offer_peer(&self.tx_peer, (from, msg), &self.metrics) {
                return Err(Ended);
            }
        }
        Ok(true)
    }
}

/// Batch proposing: answers retransmissions from the reply cache, refuses
/// stale ids, and feeds new requests to the consensus stage in bursts (the
/// core, on the primary, cuts them into batches as the pipeline has room).
/// Takes only as many requests as the consensus queue has room for.
pub struct Proposer<S: Service> {
    /// Requests from verification (or the network).
    pub rx: Rx<Request>,
    /// New requests to consensus.
    pub tx: Tx<Request>,
    /// Cached replies and refusals.
    pub tx_reply: Tx<ReplyBatch>,
    /// The reply cache and client windows.
    pub exec: Arc<RwLock<Executor<S>>>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Requests per wake-up.
    pub drain_max: usize,
}

impl<S: Service + Send + Sync> Stage for Proposer<S> {
    fn name(&self) -> &'static str {
        "propose"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let batch = self.rx.take_up_to(self.drain_max.min(self.tx.room()));
        if batch.is_empty() {
            return Ok(false);
        }
        let view = ViewNo(self.metrics.core.lock().view);
        let verdicts: Vec<(Request, Lookup)> = {
            let exec = self.exec.read();
            batch
                .into_iter()
                .map(|r| {
                    let l = if r.read_only { Lookup::New } else { exec.lookup(r.client, r.id) };
                    (r, l)
                })
                .collect()
        };
        for (r, lookup) in verdicts {
            match lookup {
                Lookup::New => pass_on(&self.tx, r, &self.tx_reply, &self.metrics)?,
                Lookup::Cached(result) => {
                    RuntimeMetrics::add(&self.metrics.counters.requests_cached, 1);
                    let cached =
                        ClientMail::Answer { client: r.client, view, request: r.id, answer: Answer::Full(result) };
                    notify(&self.tx_reply, cached, &self.metrics);
                }
                Lookup::Stale => {
                    RuntimeMetrics::add(&self.metrics.counters.requests_stale, 1);
                    let stale = ClientMail::Refusal { client: r.client, request: r.id, reason: RejectReason::Stale };
                    notify(&self.tx_reply, stale, &self.metrics);
                }
            }
        }
        Ok(true)
    }
}

/// The consensus stage: the only owner of the protocol core.
pub struct Consensus<C: palisade_core::Crypto> {
    /// The core.
    pub core: Replica<C>,
    /// Durable records.
    pub storage: Box<dyn Storage>,
    /// Peer messages in.
    pub rx_peer: Rx<(ReplicaId, PeerMessage)>,
    /// Requests in.
    pub rx_requests: Rx<Request>,
    /// Checkpoint completions in.
    pub rx_control: Rx<(SeqNo, Digest)>,
    /// Ticks in: the monotonic and the wall clock.
    pub rx_tick: Rx<(u64, u64)>,
    /// Decisions out (never dropped: while any wait for room, the stage
    /// takes no peer message or request).
    pub tx_delivery: Outflow<DeliveryCmd>,
    /// Push-back out.
    pub tx_reply: Tx<ReplyBatch>,
    /// The network.
    pub net: Arc<Net>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Inputs per wake-up.
    pub drain_max: usize,
    /// Bodies for each peer gathered during one wake-up, sent together.
    pub outbox: Outbox<ReplicaId>,
    /// Whether the core has had its first tick.
    pub started: bool,
}

impl<C: palisade_core::Crypto> Consensus<C> {
    fn queue(&mut self, to: ReplicaId, body: Bytes) {
        if let Some(full) = self.outbox.push(to, body) {
            self.send(to, full);
        }
    }

    /// Sends what this wake-up produced: one mailbox message per peer.
    fn flush(&mut self) {
        let batches: Vec<_> = self.outbox.drain().collect();
        for (to, bodies) in batches {
            self.send(to, bodies);
        }
    }

    fn send(&self, to: ReplicaId, bodies: Vec<Bytes>) {
        let n = bodies.len() as u64;
        if !self.net.peers.send_batch(to, bodies) {
            RuntimeMetrics::add(&self.metrics.counters.peer_sends_dropped, n);
        }
    }

    fn step(&mut self, input: Input) -> Result<(), Ended> {
        self.core.step(input);
        for action in self.core.take_actions() {
            match action {
                Action::Persist(r) => self.storage.persist(r),
                // Persist actions above were handled before these, in order:
                // queued bodies leave only after everything persisted.
                Action::Send { to, msg } => {
                    let body = self.net.peer_body(&msg);
                    self.queue(to, body);
                }
                Action::Broadcast(msg) => {
                    let body = self.net.peer_body(&msg);
                    let others: Vec<ReplicaId> =
                        self.core.membership().members().iter().copied().filter(|m| *m != self.net.me).collect();
                    for to in others {
                        self.queue(to, body.clone());
                    }
                }
                Action::Deliver { seq, view, batch } => {
                    self.tx_delivery.push(DeliveryCmd::Deliver { seq, view, batch })?
                }
                Action::ExecuteReadOnly(r) => self.tx_delivery.push(DeliveryCmd::Read(r))?,
                Action::ServeSnapshot { to, seq } => self.tx_delivery.push(DeliveryCmd::Serve { to, seq })?,
                Action::InstallSnapshot { seq, snapshot } => {
                    self.tx_delivery.push(DeliveryCmd::Install { seq, snapshot })?
                }
                Action::StableCheckpoint { keep_from, .. } => self.tx_delivery.push(DeliveryCmd::Stable(keep_from))?,
                Action::Dropped { client, request, reason } => {
                    let reason = match reason {
                        DropReason::RequestTooLarge => {
                            RuntimeMetrics::add(&self.metrics.counters.requests_invalid, 1);
                            RejectReason::TooLarge
                        }
                        DropReason::PendingFull | DropReason::ReadQueueFull => {
                            RuntimeMetrics::add(&self.metrics.counters.requests_busy, 1);
                            RejectReason::Busy
                        }
                    };
                    notify(&self.tx_reply, ClientMail::Refusal { client, request, reason }, &self.metrics);
                }
            }
        }
        Ok(())
    }

    fn publish(&self) {
        let m = self.core.metrics();
        *self.metrics.core.lock() = CoreSnapshot {
            view: self.core.view().0,
            normal: self.core.is_normal(),
            primary: self.core.is_primary(),
            delivered: self.core.delivered().0,
            stable: self.core.stable_checkpoint().seq.0,
            view_changes: m.view_changes,
            state_transfers: m.state_transfers,
            timers_restarted: m.timers_restarted,
            proposed_batches: m.proposed_batches,
            delivered_requests: m.delivered_requests,
            pending_requests: self.core.pending_requests(),
            dropped: m.dropped.iter().map(|(reason, n)| (reason.name(), *n)).collect(),
            rejoining: self.core.rejoining(),
            rejoin_mark: self.core.rejoin_mark().map(|s| s.0),
        };
    }
}

impl<C: palisade_core::Crypto + Send> Stage for Consensus<C> {
    fn name(&self) -> &'static str {
        "consensus"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let mut busy = false;
        if !self.started {
            // The core's clock starts at zero and moves only with ticks: give
            // it the time before any request can be timed (or a batch stamped).
            self.started = true;
            let (now_ms, wall_ms) = clocks();
            self.step(Input::Tick { now_ms, wall_ms })?;
            busy = true;
        }
        let clear = self.tx_delivery.flush()?;
        // Checkpoint completions and ticks never wait: they produce little
        // for delivery, and delivery may be waiting on them.
        while let Some((seq, state)) = self.rx_control.take() {
            self.step(Input::CheckpointReady { seq, state })?;
            busy = true;
        }
        if let Some((now_ms, wall_ms)) = std::iter::from_fn(|| self.rx_tick.take()).last() {
            self.step(Input::Tick { now_ms, wall_ms })?;
            busy = true;
        }
        // Peer messages first, then requests, while decisions flow.
        let mut budget = if clear { self.drain_max } else { 0 };
        while budget > 0 && self.tx_delivery.backlog() == 0 {
            let next = if let Some((from, msg)) = self.rx_peer.take() {
                Input::Peer { from, msg }
            } else if let Some(r) = self.rx_requests.take() {
                Input::Request(r)
            } else {
                break;
            };
            self.step(next)?;
            busy = true;
            budget -= 1;
        }
        if busy {
            self.flush();
            self.publish();
        }
        Ok(busy)
    }
}

/// Delivery: runs the service in order, takes snapshots at checkpoints,
/// answers reads, serves and installs snapshots. Its replies and checkpoint
/// digests are never dropped: while any wait for room it takes nothing new.
pub struct Delivery<S: Service> {
    /// Decisions in.
    pub rx: Rx<DeliveryCmd>,
    /// The service.
    pub exec: Arc<RwLock<Executor<S>>>,
    /// Checkpoint digests back to consensus.
    pub tx_control: Outflow<(SeqNo, Digest)>,
    /// Replies out, one batch per delivered batch.
    pub tx_reply: Outflow<ReplyBatch>,
    /// The network (snapshots to peers).
    pub net: Arc<Net>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Checkpoint interval.
    pub checkpoint_interval: u64,
    /// Snapshots kept for state transfer, from the stable checkpoint up.
    pub snapshots: BTreeMap<SeqNo, Bytes>,
    /// With digest replies, the membership that designates full repliers.
    pub reply_digests: Option<palisade_core::Membership>,
    /// Commands per wake-up.
    pub drain_max: usize,
}

impl<S: Service> Delivery<S> {
    fn handle(&mut self, cmd: DeliveryCmd) -> Result<(), Ended> {
        let me = self.net.me;
        match cmd {
            DeliveryCmd::Deliver { seq, view, batch } => {
                let executed = self.exec.write().execute_batch(seq, view, &batch);
                RuntimeMetrics::add(&self.metrics.counters.batches_delivered, 1);
                let mut replies = Vec::with_capacity(executed.len());
                for e in executed {
                    if e.fresh {
                        RuntimeMetrics::add(&self.metrics.counters.requests_executed, 1);
                    }
                    let full =
                        self.reply_digests.as_ref().is_none_or(|m| designated_replier(m, e.client, e.request) == me);
                    let answer = if full {
                        Answer::Full(e.result)
                    } else {
                        RuntimeMetrics::add(&self.metrics.counters.reply_digests, 1);
                        Answer::Digest(Digest::of(&e.result))
                    };
                    replies.push(ClientMail::Answer { client: e.client, view, request: e.request, answer });
                }
                if !replies.is_empty() {
                    self.tx_reply.push(replies)?;
                }
                if seq.0 % self.checkpoint_interval == 0 {
                    let snapshot = self.exec.read().snapshot();
                    let state = Digest::of(&snapshot);
                    self.snapshots.insert(seq, snapshot);
                    RuntimeMetrics::add(&self.metrics.counters.snapshots_taken, 1);
                    self.tx_control.push((seq, state))?;
                }
            }
            DeliveryCmd::Read(r) => {
                let result = self.exec.read().execute_read_only(&r);
                let view = ViewNo(self.metrics.core.lock().view);
                let answer = ClientMail::Answer { client: r.client, view, request: r.id, answer: Answer::Full(result) };
                self.tx_reply.push(vec![answer])?;
            }
            DeliveryCmd::Serve { to, seq } => {
                if let Some(snapshot) = self.snapshots.get(&seq).cloned() {
                    if snapshot.len() + 1024 > self.net.max_frame_bytes {
                        RuntimeMetrics::add(&self.metrics.counters.snapshots_too_large, 1);
                    } else {
                        let body = self.net.peer_body(&PeerMessage::StateReply { seq, snapshot });
                        if !self.net.peers.send(to, body) {
                            RuntimeMetrics::add(&self.metrics.counters.peer_sends_dropped, 1);
                        }
                    }
                }
            }
            DeliveryCmd::Install { seq, snapshot } => {
                // The digest matched a certificate signed by a quorum; a
                // snapshot that does not install means this build cannot read
                // its own cluster's state: stop rather than diverge.
                self.exec.write().install(&snapshot).expect("a certified snapshot installs");
                self.snapshots.insert(seq, snapshot);
            }
            DeliveryCmd::Stable(seq) => {
                let newer = self.snapshots.split_off(&seq);
                if !newer.is_empty() {
                    self.snapshots = newer;
                }
            }
        }
        Ok(())
    }
}

impl<S: Service + Send + Sync> Stage for Delivery<S> {
    fn name(&self) -> &'static str {
        "delivery"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let mut busy = false;
        for _ in 0..self.drain_max {
            if !(self.tx_control.flush()? && self.tx_reply.flush()?) {
                break;
            }
            let Some(cmd) = self.rx.take() else { break };
            self.handle(cmd)?;
            busy = true;
        }
        Ok(busy)
    }
}

/// Reply sending: encodes replies and routes them to client connections.
/// The answers one client gets from one wake-up travel as one
/// `Replies` frame (split by count and size), and each client's frames as
/// one mailbox message.
pub struct Replier {
    /// Replies in.
    pub rx: Rx<ReplyBatch>,
    /// The network.
    pub net: Arc<Net>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Replies per wake-up (at least one batch).
    pub drain_max: usize,
    /// Bodies gathered per client during one wake-up.
    pub outbox: Outbox<ClientId>,
}

/// Answers for one client in one view, gathered for one frame.
#[derive(Default)]
struct Answers {
    list: Vec<(RequestId, Answer)>,
    bytes: usize,
}

impl Replier {
    fn send(&self, client: ClientId, bodies: Vec<Bytes>) {
        let n = bodies.len() as u64;
        if !self.net.clients.send_batch(client, bodies) {
            RuntimeMetrics::add(&self.metrics.counters.replies_dropped, n);
        }
    }

    fn queue(&mut self, client: ClientId, body: Bytes) {
        if let Some(full) = self.outbox.push(client, body) {
            self.send(client, full);
        }
    }

    /// Encodes gathered answers as one message.
    fn seal(&mut self, (client, view): (ClientId, ViewNo), answers: Vec<(RequestId, Answer)>) {
        let replica = self.net.me;
        RuntimeMetrics::add(&self.metrics.counters.replies_sent, answers.len() as u64);
        let msg = match <[_; 1]>::try_from(answers) {
            Ok([(request, Answer::Full(result))]) => {
                ReplicaMessage::Reply(Reply { view, replica, client, request, result })
            }
            Ok([(request, Answer::Digest(digest))]) => {
                ReplicaMessage::ReplyDigest { view, replica, client, request, digest }
            }
            Err(answers) => ReplicaMessage::Replies { view, replica, client, answers },
        };
        let body = self.net.client_body(&msg);
        self.queue(client, body);
    }
}

impl Stage for Replier {
    fn name(&self) -> &'static str {
        "reply"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        // Room for a frame's answers: well inside the frame limit.
        let max_bytes = (self.net.max_frame_bytes / 2).min(BATCH_BYTES);
        let mut gathered: BTreeMap<(ClientId, ViewNo), Answers> = BTreeMap::new();
        let mut taken = 0;
        while taken < self.drain_max {
            let Some(mails) = self.rx.take() else { break };
            taken += mails.len().max(1);
            for mail in mails {
                let (client, view, request, answer) = match mail {
                    ClientMail::Answer { client, view, request, answer } => (client, view, request, answer),
                    ClientMail::Refusal { client, request, reason } => {
                        RuntimeMetrics::add(&self.metrics.counters.replies_sent, 1);
                        let body =
                            self.net.client_body(&ReplicaMessage::Rejected { replica: self.net.me, request, reason });
                        self.queue(client, body);
                        continue;
                    }
                };
                let size = 48
                    + match &answer {
                        Answer::Full(b) => b.len(),
                        Answer::Digest(_) => 32,
                    };
                let a = gathered.entry((client, view)).or_default();
                if !a.list.is_empty() && (a.list.len() >= MAX_LIST || a.bytes + size > max_bytes) {
                    self.seal((client, view), std::mem::take(a).list);
                }
                a.bytes += size;
                a.list.push((request, answer));
            }
        }
        if taken == 0 {
            return Ok(false);
        }
        for (key, a) in gathered {
            self.seal(key, a.list);
        }
        for (client, bodies) in self.outbox.drain() {
            self.send(client, bodies);
        }
        Ok(true)
    }
}

/// Milliseconds since the Unix epoch: stamps batches.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Milliseconds on a monotonic clock (since this process first asked),
/// which drives the core's timers, and on the wall clock.
pub fn clocks() -> (u64, u64) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    // Start at one so that no timer deadline is ever at zero.
    (start.elapsed().as_millis() as u64 + 1, wall_clock_ms())
}

/// The request-timer stage: ticks the core with the wall clock. A tick that
/// finds the queue full is dropped; the next one carries the time.
pub struct Timers {
    /// Ticks out.
    pub tx: Tx<(u64, u64)>,
    /// Tick period.
    pub period: Duration,
    /// When the next tick is due.
    pub next: Instant,
}

impl Stage for Timers {
    fn name(&self) -> &'static str {
        "timers"
    }

    fn poll(&mut self) -> Result<bool, Ended> {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + self.period;
            if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(clocks()) {
                return Err(Ended);
            }
        }
        // Ticking is not work that should keep the thread from parking.
        Ok(false)
    }

    fn next_deadline(&self) -> Option<Instant> {
        Some(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Waker};

    /// Whether `bell` was rung since last asked (a bell no thread has bound
    /// keeps one wake-up, like a runner on the network thread).
    fn rung(bell: &Bell) -> bool {
        let mut wait = std::pin::pin!(bell.0.task.notified());
        wait.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    #[test]
    fn queues_ring_the_consumer_on_send_and_a_waiting_producer_when_room_frees() {
        let (consumer, producer) = (Bell::default(), Bell::default());
        let (tx, rx) = queue::<u32>(4, &consumer, Some(&producer));
        assert!(!rung(&consumer));
        tx.try_send(1).unwrap();
        assert!(rung(&consumer), "a send wakes the consumer");
        assert_eq!(rx.take(), Some(1));
        assert!(!rung(&producer), "taking from a nearly empty queue does not wake the producer");
        for i in 0..4 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.room(), 0);
        assert!(matches!(tx.try_send(9), Err(TrySendError::Full(9))));
        assert_eq!(rx.take_up_to(3), vec![0, 1, 2]);
        assert!(rung(&producer), "freeing room in a crowded queue wakes the producer");
        assert_eq!(tx.room(), 3);
    }

    #[test]
    fn an_outflow_never_drops_and_keeps_order() {
        let bell = Bell::default();
        let (tx, rx) = queue::<u32>(2, &bell, None);
        let mut out = Outflow::new(tx);
        for i in 0..5 {
            out.push(i).unwrap();
        }
        assert_eq!(out.backlog(), 3, "what does not fit waits");
        assert!(!out.flush().unwrap(), "still full");
        let mut got = rx.take_up_to(10);
        while !out.flush().unwrap() {
            got.extend(rx.take_up_to(1));
        }
        got.extend(rx.take_up_to(10));
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        out.push(5).unwrap();
        assert_eq!(rx.take(), Some(5), "with nothing waiting, output goes straight out");
        drop(rx);
        assert!(out.push(6).is_err(), "a consumer that is gone ends the stage");
    }

    #[test]
    fn an_outbox_batches_per_connection_within_the_byte_bound() {
        let mut o = Outbox::new();
        let half = Bytes::from(vec![0u8; BATCH_BYTES / 2]);
        assert!(o.push(1u32, half.clone()).is_none());
        assert!(o.push(2u32, half.clone()).is_none());
        assert!(o.push(1u32, half.clone()).is_none(), "exactly BATCH_BYTES still fits");
        let full = o.push(1u32, Bytes::from_static(b"x")).expect("the next body closes the batch");
        assert_eq!(full.len(), 2);
        let big = Bytes::from(vec![0u8; BATCH_BYTES * 2]);
        assert!(o.push(3u32, big).is_none(), "a single larger frame goes alone");
        let rest: BTreeMap<u32, usize> = o.drain().map(|(k, b)| (k, b.len())).collect();
        assert_eq!(rest, BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
        assert_eq!(o.drain().count(), 0);
    }
}
