//! The CPU stages, each a dedicated thread reading one bounded queue and
//! draining it in batches per wake-up. Every stage also watches the stop
//! flag, so shutting a replica down never depends on channels closing.

use crate::metrics::{CoreSnapshot, RuntimeMetrics};
use crate::net::Net;
use crate::storage::Storage;
use bytes::Bytes;
use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};
use palisade_core::exec::Lookup;
use palisade_core::message::Reply;
use palisade_core::{
    Action, Batch, ClientId, Digest, Executor, Input, PeerMessage, Replica, ReplicaId, Request, SeqNo, Service, ViewNo,
};
use palisade_wire::envelope::{designated_replier, RejectReason, ReplicaMessage};
use palisade_wire::verify::{self, VerifyLimits};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Forget snapshots below this checkpoint.
    Stable(SeqNo),
}

/// A message for one client.
pub type ClientMail = (ClientId, ReplicaMessage);

/// A stage's inbox: flume where it meets the async network edge, crossbeam
/// between threads. Either way a stage waits for the first item, watching
/// its stop flag, and then takes what else is queued, up to a limit.
pub trait Inbox<T> {
    /// Waits up to `timeout`; `Err(true)` when every sender is gone.
    fn wait(&self, timeout: Duration) -> Result<T, bool>;
    /// Takes an item if one is queued.
    fn take(&self) -> Option<T>;
}

impl<T> Inbox<T> for flume::Receiver<T> {
    fn wait(&self, timeout: Duration) -> Result<T, bool> {
        self.recv_timeout(timeout).map_err(|e| e == flume::RecvTimeoutError::Disconnected)
    }
    fn take(&self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Inbox<T> for Receiver<T> {
    fn wait(&self, timeout: Duration) -> Result<T, bool> {
        self.recv_timeout(timeout).map_err(|e| e == RecvTimeoutError::Disconnected)
    }
    fn take(&self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// Waits for work, watching the stop flag, and takes up to `max` items;
/// `None` when the stage must end.
fn next_batch<T>(rx: &impl Inbox<T>, max: usize, stop: &AtomicBool) -> Option<Vec<T>> {
    while !stop.load(Ordering::Relaxed) {
        match rx.wait(POLL) {
            Ok(first) => {
                let mut batch = Vec::with_capacity(max.min(64));
                batch.push(first);
                while batch.len() < max {
                    match rx.take() {
                        Some(x) => batch.push(x),
                        None => break,
                    }
                }
                return Some(batch);
            }
            Err(false) => continue,
            Err(true) => return None,
        }
    }
    None
}

/// Waits for one item, watching the stop flag; `None` when the stage must end.
fn next_item<T>(rx: &impl Inbox<T>, stop: &AtomicBool) -> Option<T> {
    next_batch(rx, 1, stop)?.pop()
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
pub fn offer_peer(
    tx: &Sender<(ReplicaId, PeerMessage)>,
    item: (ReplicaId, PeerMessage),
    metrics: &RuntimeMetrics,
) -> bool {
    match tx.try_send(item) {
        Ok(()) => true,
        Err(crossbeam_channel::TrySendError::Full(_)) => {
            RuntimeMetrics::add(&metrics.counters.peer_messages_dropped, 1);
            true
        }
        Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
    }
}

/// Request verification (when clients sign): cheap checks, then client
/// signatures in parallel dalek batches on a rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn verifier(
    rx: flume::Receiver<Request>,
    tx: flume::Sender<Request>,
    tx_reply: Sender<ClientMail>,
    verified: Arc<crate::crypto::VerifiedRequests>,
    limits: VerifyLimits,
    pool: Arc<rayon::ThreadPool>,
    metrics: Arc<RuntimeMetrics>,
    me: ReplicaId,
    drain_max: usize,
    stop: Arc<AtomicBool>,
) {
    while let Some(batch) = next_batch(&rx, drain_max, &stop) {
        for verdict in verify::verify_batch(batch, limits, |_, _| true, &pool) {
            match verdict {
                Ok(r) => {
                    verified.insert(&r);
                    if tx.send(r).is_err() {
                        return;
                    }
                }
                Err((r, _why)) => {
                    RuntimeMetrics::add(&metrics.counters.requests_invalid, 1);
                    let _ = tx_reply.send((
                        r.client,
                        ReplicaMessage::Rejected { replica: me, request: r.id, reason: RejectReason::Invalid },
                    ));
                }
            }
        }
    }
}

/// Request verification for PRE-PREPAREs (when clients sign): checks every
/// request of a batch in parallel dalek batches, records them as verified
/// for the consensus stage, and passes the PRE-PREPARE on. A batch with a
/// request that fails is dropped: a correct primary never proposes one.
#[allow(clippy::too_many_arguments)]
pub fn preprepare_verifier(
    rx: Receiver<(ReplicaId, PeerMessage)>,
    tx_peer: Sender<(ReplicaId, PeerMessage)>,
    verified: Arc<crate::crypto::VerifiedRequests>,
    limits: VerifyLimits,
    pool: Arc<rayon::ThreadPool>,
    metrics: Arc<RuntimeMetrics>,
    drain_max: usize,
    stop: Arc<AtomicBool>,
) {
    while let Some(batch) = next_batch(&rx, drain_max, &stop) {
        for (from, msg) in batch {
            if let PeerMessage::PrePrepare(pp) = &msg {
                let unchecked: Vec<Request> =
                    pp.batch.requests.iter().filter(|r| !verified.contains(r)).cloned().collect();
                let verdicts = verify::verify_batch(unchecked, limits, |_, _| true, &pool);
                if verdicts.iter().any(|v| v.is_err()) {
                    RuntimeMetrics::add(&metrics.counters.peer_messages_dropped, 1);
                    continue;
                }
                for r in verdicts.into_iter().flatten() {
                    verified.insert(&r);
                }
            }
            if !offer_peer(&tx_peer, (from, msg), &metrics) {
                return;
            }
        }
    }
}

/// Batch proposing: answers retransmissions from the reply cache, refuses
/// stale ids, and feeds new requests to the consensus stage in bursts (the
/// core, on the primary, cuts them into batches as the pipeline has room).
#[allow(clippy::too_many_arguments)]
pub fn proposer<S: Service>(
    rx: flume::Receiver<Request>,
    tx: Sender<Request>,
    tx_reply: Sender<ClientMail>,
    exec: Arc<RwLock<Executor<S>>>,
    metrics: Arc<RuntimeMetrics>,
    me: ReplicaId,
    drain_max: usize,
    stop: Arc<AtomicBool>,
) {
    while let Some(batch) = next_batch(&rx, drain_max, &stop) {
        let view = ViewNo(metrics.core.lock().view);
        let verdicts: Vec<(Request, Lookup)> = {
            let exec = exec.read();
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
                Lookup::New => {
                    if tx.send(r).is_err() {
                        return;
                    }
                }
                Lookup::Cached(result) => {
                    RuntimeMetrics::add(&metrics.counters.requests_cached, 1);
                    let reply = Reply { view, replica: me, client: r.client, request: r.id, result };
                    let _ = tx_reply.send((r.client, ReplicaMessage::Reply(reply)));
                }
                Lookup::Stale => {
                    RuntimeMetrics::add(&metrics.counters.requests_stale, 1);
                    let _ = tx_reply.send((
                        r.client,
                        ReplicaMessage::Rejected { replica: me, request: r.id, reason: RejectReason::Stale },
                    ));
                }
            }
        }
    }
}

/// The consensus stage: the only owner of the protocol core.
pub struct Consensus<C: palisade_core::Crypto> {
    /// The core.
    pub core: Replica<C>,
    /// Durable records.
    pub storage: Box<dyn Storage>,
    /// Peer messages in.
    pub rx_peer: Receiver<(ReplicaId, PeerMessage)>,
    /// Requests in.
    pub rx_requests: Receiver<Request>,
    /// Checkpoint completions in.
    pub rx_control: Receiver<(SeqNo, Digest)>,
    /// Ticks in.
    pub rx_tick: Receiver<u64>,
    /// Decisions out.
    pub tx_delivery: Sender<DeliveryCmd>,
    /// Push-back out.
    pub tx_reply: Sender<ClientMail>,
    /// The network.
    pub net: Arc<Net>,
    /// Counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Inputs per wake-up.
    pub drain_max: usize,
    /// Stop flag.
    pub stop: Arc<AtomicBool>,
    /// Bodies for each peer gathered during one wake-up, sent together.
    pub outbox: Outbox<ReplicaId>,
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

    /// Runs until stopped.
    pub fn run(mut self) {
        // The core's clock starts at zero and moves only with ticks: give it
        // the time before any request can be timed (or a batch stamped).
        let _ = self.step(Input::Tick { now_ms: wall_clock_ms() });
        self.flush();
        while !self.stop.load(Ordering::Relaxed) {
            let first: Input = select! {
                recv(self.rx_control) -> m => match m { Ok((seq, state)) => Input::CheckpointReady { seq, state }, Err(_) => return },
                recv(self.rx_tick) -> m => match m { Ok(now_ms) => Input::Tick { now_ms }, Err(_) => return },
                recv(self.rx_peer) -> m => match m { Ok((from, msg)) => Input::Peer { from, msg }, Err(_) => return },
                recv(self.rx_requests) -> m => match m { Ok(r) => Input::Request(r), Err(_) => return },
                default(POLL) => continue,
            };
            if !self.step(first) {
                return;
            }
            // Drain what else is waiting, checkpoints and peers first.
            let mut budget = self.drain_max;
            while budget > 0 {
                let next = if let Ok((seq, state)) = self.rx_control.try_recv() {
                    Input::CheckpointReady { seq, state }
                } else if let Ok((from, msg)) = self.rx_peer.try_recv() {
                    Input::Peer { from, msg }
                } else if let Ok(r) = self.rx_requests.try_recv() {
                    Input::Request(r)
                } else {
                    break;
                };
                if !self.step(next) {
                    return;
                }
                budget -= 1;
            }
            self.flush();
            self.publish();
        }
    }

    fn step(&mut self, input: Input) -> bool {
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
                    if self.tx_delivery.send(DeliveryCmd::Deliver { seq, view, batch }).is_err() {
                        return false;
                    }
                }
                Action::ExecuteReadOnly(r) => {
                    if self.tx_delivery.send(DeliveryCmd::Read(r)).is_err() {
                        return false;
                    }
                }
                Action::ServeSnapshot { to, seq } => {
                    if self.tx_delivery.send(DeliveryCmd::Serve { to, seq }).is_err() {
                        return false;
                    }
                }
                Action::InstallSnapshot { seq, snapshot } => {
                    if self.tx_delivery.send(DeliveryCmd::Install { seq, snapshot }).is_err() {
                        return false;
                    }
                }
                Action::StableCheckpoint { seq } => {
                    if self.tx_delivery.send(DeliveryCmd::Stable(seq)).is_err() {
                        return false;
                    }
                }
                Action::Dropped { client, request, .. } => {
                    RuntimeMetrics::add(&self.metrics.counters.requests_busy, 1);
                    let _ = self.tx_reply.try_send((
                        client,
                        ReplicaMessage::Rejected { replica: self.net.me, request, reason: RejectReason::Busy },
                    ));
                }
            }
        }
        true
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
            proposed_batches: m.proposed_batches,
            delivered_requests: m.delivered_requests,
            pending_requests: self.core.pending_requests(),
            dropped: m.dropped.clone(),
        };
    }
}

/// Delivery: runs the service in order, takes snapshots at checkpoints,
/// answers reads, serves and installs snapshots.
#[allow(clippy::too_many_arguments)]
pub fn delivery<S: Service>(
    rx: Receiver<DeliveryCmd>,
    exec: Arc<RwLock<Executor<S>>>,
    tx_control: Sender<(SeqNo, Digest)>,
    tx_reply: Sender<ClientMail>,
    net: Arc<Net>,
    metrics: Arc<RuntimeMetrics>,
    checkpoint_interval: u64,
    genesis: Bytes,
    reply_digests: Option<palisade_core::Membership>,
    stop: Arc<AtomicBool>,
) {
    let me = net.me;
    let mut snapshots: BTreeMap<SeqNo, Bytes> = BTreeMap::from([(SeqNo(0), genesis)]);
    while let Some(cmd) = next_item(&rx, &stop) {
        match cmd {
            DeliveryCmd::Deliver { seq, view, batch } => {
                let executed = exec.write().execute_batch(seq, view, &batch);
                RuntimeMetrics::add(&metrics.counters.batches_delivered, 1);
                for e in executed {
                    if e.fresh {
                        RuntimeMetrics::add(&metrics.counters.requests_executed, 1);
                    }
                    let full = reply_digests.as_ref().is_none_or(|m| designated_replier(m, e.client, e.request) == me);
                    let msg = if full {
                        ReplicaMessage::Reply(Reply {
                            view,
                            replica: me,
                            client: e.client,
                            request: e.request,
                            result: e.result,
                        })
                    } else {
                        let digest = Digest::of(&e.result);
                        RuntimeMetrics::add(&metrics.counters.reply_digests, 1);
                        ReplicaMessage::ReplyDigest { view, replica: me, client: e.client, request: e.request, digest }
                    };
                    if tx_reply.send((e.client, msg)).is_err() {
                        return;
                    }
                }
                if seq.0 % checkpoint_interval == 0 {
                    let snapshot = exec.read().snapshot();
                    let state = Digest::of(&snapshot);
                    snapshots.insert(seq, snapshot);
                    RuntimeMetrics::add(&metrics.counters.snapshots_taken, 1);
                    if tx_control.send((seq, state)).is_err() {
                        return;
                    }
                }
            }
            DeliveryCmd::Read(r) => {
                let result = exec.read().execute_read_only(&r);
                let view = ViewNo(metrics.core.lock().view);
                let reply = Reply { view, replica: me, client: r.client, request: r.id, result };
                if tx_reply.send((r.client, ReplicaMessage::Reply(reply))).is_err() {
                    return;
                }
            }
            DeliveryCmd::Serve { to, seq } => {
                if let Some(snapshot) = snapshots.get(&seq).cloned() {
                    if snapshot.len() + 1024 > net.max_frame_bytes {
                        RuntimeMetrics::add(&metrics.counters.snapshots_too_large, 1);
                    } else {
                        let body = net.peer_body(&PeerMessage::StateReply { seq, snapshot });
                        if !net.peers.send(to, body) {
                            RuntimeMetrics::add(&metrics.counters.peer_sends_dropped, 1);
                        }
                    }
                }
            }
            DeliveryCmd::Install { seq, snapshot } => {
                // The digest matched a certificate signed by a quorum; a
                // snapshot that does not install means this build cannot read
                // its own cluster's state: stop rather than diverge.
                exec.write().install(&snapshot).expect("a certified snapshot installs");
                snapshots.insert(seq, snapshot);
            }
            DeliveryCmd::Stable(seq) => {
                let newer = snapshots.split_off(&seq);
                if !newer.is_empty() {
                    snapshots = newer;
                }
            }
        }
    }
}

/// Reply sending: encodes replies and routes them to client connections,
/// one mailbox message per client per wake-up.
pub fn replier(
    rx: Receiver<ClientMail>,
    net: Arc<Net>,
    metrics: Arc<RuntimeMetrics>,
    drain_max: usize,
    stop: Arc<AtomicBool>,
) {
    let send = |client: ClientId, bodies: Vec<Bytes>| {
        let n = bodies.len() as u64;
        if net.clients.send_batch(client, bodies) {
            RuntimeMetrics::add(&metrics.counters.replies_sent, n);
        } else {
            RuntimeMetrics::add(&metrics.counters.replies_dropped, n);
        }
    };
    let mut outbox = Outbox::new();
    while let Some(mails) = next_batch(&rx, drain_max, &stop) {
        for (client, msg) in mails {
            if let Some(full) = outbox.push(client, net.client_body(&msg)) {
                send(client, full);
            }
        }
        for (client, bodies) in outbox.drain() {
            send(client, bodies);
        }
    }
}

/// Milliseconds since the Unix epoch: the time the core runs on.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The request-timer stage: ticks the core with the wall clock. Ticks are
/// dropped when the consensus stage is busy; the next one carries the time.
pub fn ticker(tx: Sender<u64>, period: Duration, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(period);
        if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = tx.try_send(wall_clock_ms()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
