//! The client proxy: `invoke` on a replicated service.
//!
//! A [`Client`] keeps an authenticated connection to every replica
//! (reconnecting with backoff, so a client created before the cluster is up
//! simply waits). [`Client::invoke_ordered`] sends a request to the primary
//! it believes in, retransmits to every replica after a timeout, and
//! returns once f+1 replicas sent the same result: at least one of them is
//! correct. [`Client::invoke_unordered`] asks every replica for a read-only
//! answer and needs a quorum of matching replies; without one it retries as
//! an ordered request. Both are `async` and many can be in flight at once;
//! [`BlockingClient`] wraps them for synchronous callers.

#![deny(missing_docs)]

mod connection;
mod resend;
mod signer;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use palisade_core::{ClientId, Membership, ReplicaId, Request, RequestId, ViewNo};
use palisade_host::client::{Invocation, Verdict};
use palisade_wire::chain::Chain;
use palisade_wire::envelope::{Answer, ClientMessage, RejectReason, ReplicaMessage, StatusReport};
use palisade_wire::{keys, ClusterConfig};
use parking_lot::{Mutex, RwLock};
use resend::{ResendCounters, Rtt};
pub use resend::{Resends, RETRANSMIT_CEILING};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Timing of a client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Least wait before retransmitting to every replica. A client whose
    /// requests usually take longer waits longer (their smoothed latency
    /// plus four deviations, as TCP does, up to 2 s); the wait doubles with
    /// every retransmission, up to 2 s or this floor.
    pub retransmit_ms: u64,
    /// Give up on an operation after this long from when it was sent (it
    /// may first wait for a place among `in_flight_max`).
    pub timeout_ms: u64,
    /// Wait this long for a quorum of read-only replies before ordering the read.
    pub read_timeout_ms: u64,
    /// Requests queued per replica while its connection is down or slow.
    pub outbox: usize,
    /// How long to wait for the full result once f+1 replicas agree on its
    /// digest, before asking every replica for it in full; at least a
    /// quarter of what the request has waited so far.
    pub full_reply_grace_ms: u64,
    /// Where to keep the links of the chain of epochs the client adopts
    /// (its configuration directory), so that its next start knows the
    /// membership without asking.
    pub keep_chain_in: Option<std::path::PathBuf>,
    /// Most requests one client signature covers: requests issued together
    /// (many in flight) are signed as a group, so that the client signs
    /// once and the primary checks once per group. 1 signs each alone.
    pub sign_group_max: usize,
    /// Most operations in flight at once; more wait for one to finish
    /// before they are sent. A replica counts a client with more than its
    /// `client_timed_max` requests pending (256 by default) as flooding,
    /// and no longer times or forwards its requests: keep this at most
    /// that. The operation timeout starts once an operation is sent.
    pub in_flight_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retransmit_ms: 500,
            timeout_ms: 10_000,
            read_timeout_ms: 1_000,
            outbox: 4_096,
            full_reply_grace_ms: 20,
            keep_chain_in: None,
            sign_group_max: 32,
            in_flight_max: 256,
        }
    }
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvokeError {
    /// No f+1 matching results in time.
    Timeout {
        /// How long the client waited.
        waited_ms: u64,
        /// Replicas it is connected to.
        connected: usize,
        /// Replicas in the cluster.
        replicas: usize,
    },
    /// f+1 replicas refused the request.
    Rejected(RejectReason),
    /// The result is `len` bytes, more than a frame may carry, so the
    /// replicas sent only its digest. An ordered operation did execute.
    ResultTooLarge {
        /// The result's length.
        len: u64,
    },
    /// The client is shut down.
    Closed,
}

impl fmt::Display for InvokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvokeError::Timeout { waited_ms, connected, replicas } => write!(
                f,
                "no answer from the cluster within {waited_ms} ms (connected to {connected} of {replicas} replicas)"
            ),
            InvokeError::Rejected(RejectReason::Busy) => write!(f, "the cluster is overloaded; retry later"),
            InvokeError::Rejected(RejectReason::Stale) => write!(f, "the request id is too old to execute"),
            InvokeError::Rejected(RejectReason::Invalid) => write!(f, "the cluster refused the request as invalid"),
            InvokeError::Rejected(RejectReason::TooLarge) => {
                write!(f, "the request is larger than the cluster's batch limit, so it can never be ordered")
            }
            InvokeError::ResultTooLarge { len } => write!(
                f,
                "the result is {len} bytes, more than the cluster's frame limit lets a replica send; \
                 ask for it in parts (for example a page of keys at a time)"
            ),
            InvokeError::Closed => write!(f, "the client is closed"),
        }
    }
}

impl std::error::Error for InvokeError {}

enum Outcome {
    Done(Bytes),
    NoQuorum,
    TooLarge(u64),
    Rejected(RejectReason),
    /// f+1 replicas agree on a result's digest but its designated replier
    /// has not sent it in full: give it [`ClientOptions::full_reply_grace_ms`],
    /// then ask everyone again (they answer retransmissions in full). When
    /// every replica has answered without it, or the designated replica is
    /// disconnected or recently missed its grace period, ask at once.
    NeedFull {
        /// Whether every replica has answered.
        now: bool,
    },
    /// The client adopted a new membership: send again, to its members.
    Moved,
    /// The connection to the primary closed: send to every replica now,
    /// so that the backups hold the request when they change views.
    PrimaryLost,
}

/// An operation in flight: its decisions, and where to tell the caller.
struct Pending {
    request: RequestId,
    read_only: bool,
    decide: Invocation,
    done: Option<mpsc::Sender<Outcome>>,
}

/// The membership a client talks to, and its connections' outboxes; it
/// changes when the client adopts links of the chain of epochs.
struct Members {
    /// `cluster.toml`: the template each epoch's members are put into.
    genesis: ClusterConfig,
    /// The chain from it, every link checked.
    chain: Chain,
    /// The newest epoch's replicas.
    cluster: ClusterConfig,
    membership: Membership,
    outboxes: BTreeMap<ReplicaId, mpsc::Sender<Out>>,
}

/// What a connection sends: requests (batched into frames), or another
/// message alone.
enum Out {
    Request(Request),
    Message(ClientMessage),
}

struct Inner {
    members: RwLock<Members>,
    key: SigningKey,
    id: ClientId,
    opts: ClientOptions,
    next_request: AtomicU64,
    view: AtomicU64,
    pending: Mutex<HashMap<RequestId, Pending>>,
    connected: Mutex<BTreeMap<ReplicaId, bool>>,
    /// When pending requests were last sent to every replica because the
    /// connection to the primary closed.
    primary_lost_at: Mutex<Option<Instant>>,
    /// Where status answers go while [`Client::status`] waits for them.
    status: Mutex<Option<mpsc::Sender<StatusReport>>>,
    /// The request-MAC key of the latest channel to each replica (kept
    /// after a disconnect: the replica honours it for a grace period).
    request_keys: Mutex<BTreeMap<ReplicaId, [u8; 32]>>,
    /// Signs requests issued together with one signature.
    signer: signer::Signer,
    /// Connection attempts that failed, to any replica.
    failed_dials: AtomicU64,
    /// Requests sent again to every replica, by cause.
    resends: ResendCounters,
    /// How long ordered requests take here: the retransmission period
    /// follows it.
    latency: Mutex<Rtt>,
    /// Replicas that recently let a full result's grace period run out,
    /// until when: their designated results are asked for at once.
    slow: Mutex<BTreeMap<ReplicaId, Instant>>,
    /// One permit per operation in flight (`in_flight_max`).
    in_flight: tokio::sync::Semaphore,
}

/// A handle on the cluster; cheap to clone, usable from many tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

impl Client {
    /// Starts connecting to every replica of `cluster` as the client holding
    /// `key`, on the current tokio runtime. Returns at once.
    pub fn connect(cluster: ClusterConfig, key: SigningKey, opts: ClientOptions) -> Client {
        let chain = Chain::new(cluster.genesis());
        Self::connect_at(cluster, chain, key, opts)
    }

    /// [`Client::connect`] to the newest epoch of `chain`, which starts at
    /// `cluster`'s genesis configuration (see
    /// [`palisade_wire::chain::load_current`]).
    pub fn connect_at(genesis: ClusterConfig, chain: Chain, key: SigningKey, opts: ClientOptions) -> Client {
        let id = keys::client_id(key.verifying_key().as_bytes());
        let cluster = genesis.at(chain.newest()).unwrap_or_else(|_| genesis.clone());
        let members =
            Members { membership: cluster.membership.clone(), genesis, chain, cluster, outboxes: BTreeMap::new() };
        let signer = signer::Signer::new(opts.sign_group_max);
        let in_flight = tokio::sync::Semaphore::new(opts.in_flight_max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS));
        let inner = Arc::new(Inner {
            members: RwLock::new(members),
            key,
            id,
            opts,
            // Request ids start at the clock, so a restarted client with
            // the same key continues above the ids it used before.
            next_request: AtomicU64::new(now_micros()),
            view: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            connected: Mutex::new(BTreeMap::new()),
            primary_lost_at: Mutex::new(None),
            status: Mutex::new(None),
            request_keys: Mutex::new(BTreeMap::new()),
            signer,
            failed_dials: AtomicU64::new(0),
            resends: ResendCounters::default(),
            latency: Mutex::new(Rtt::default()),
            slow: Mutex::new(BTreeMap::new()),
            in_flight,
        });
        inner.connect_members();
        Client { inner }
    }

    /// The epoch of the membership this client talks to.
    pub fn epoch(&self) -> u64 {
        self.inner.members.read().chain.newest().epoch
    }

    /// The membership this client talks to: ids, f and mode.
    pub fn membership(&self) -> Membership {
        self.inner.members.read().membership.clone()
    }

    /// Asks every replica it is connected to for its status.
    pub async fn status(&self, wait: Duration) -> Vec<StatusReport> {
        let (tx, mut rx) = mpsc::channel(256);
        *self.inner.status.lock() = Some(tx);
        let outboxes: Vec<mpsc::Sender<Out>> = self.inner.members.read().outboxes.values().cloned().collect();
        for o in outboxes {
            let _ = o.try_send(Out::Message(ClientMessage::Status));
        }
        let mut reports: BTreeMap<ReplicaId, StatusReport> = BTreeMap::new();
        let deadline = Instant::now() + wait;
        let n = self.inner.members.read().membership.n();
        while reports.len() < n {
            match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), rx.recv()).await {
                Ok(Some(r)) => {
                    reports.insert(r.replica, r);
                }
                _ => break,
            }
        }
        *self.inner.status.lock() = None;
        reports.into_values().collect()
    }

    /// This client's id (derived from its key).
    pub fn id(&self) -> ClientId {
        self.inner.id
    }

    /// Replicas it currently has an authenticated connection to.
    pub fn connected(&self) -> usize {
        self.inner.connected.lock().values().filter(|c| **c).count()
    }

    /// Connection attempts that have failed since the client started. A
    /// count that keeps growing while [`Client::connected`] stays low means
    /// replicas are unreachable (down, misaddressed, or refusing its key),
    /// not merely slow.
    pub fn failed_dials(&self) -> u64 {
        self.inner.failed_dials.load(Ordering::Relaxed)
    }

    /// How often this client sent a request again to every replica, and
    /// why. Every resend costs each replica a receive and a check, so a
    /// count that grows with the load, rather than with failures, is a
    /// cluster working on retransmissions instead of on new requests.
    pub fn resends(&self) -> Resends {
        self.inner.resends.snapshot()
    }

    /// Operations sent and not yet finished: at most `in_flight_max`; the
    /// rest wait to be sent.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.lock().len()
    }

    /// Executes `operation` in the total order; returns the result f+1
    /// replicas agree on.
    pub async fn invoke_ordered(&self, operation: Bytes) -> Result<Bytes, InvokeError> {
        self.invoke(operation, false).await
    }

    /// Executes a read-only `operation` without ordering when a quorum of
    /// replicas agree right away; otherwise orders it.
    pub async fn invoke_unordered(&self, operation: Bytes) -> Result<Bytes, InvokeError> {
        match self.invoke(operation.clone(), true).await {
            Ok(r) => Ok(r),
            Err(e @ (InvokeError::Rejected(_) | InvokeError::ResultTooLarge { .. })) => Err(e),
            Err(_) => self.invoke(operation, false).await,
        }
    }

    async fn invoke(&self, operation: Bytes, read_only: bool) -> Result<Bytes, InvokeError> {
        let inner = &self.inner;
        // Taken before the request id, so that ids go out in about the
        // order they were numbered.
        let _permit = inner.in_flight.acquire().await.map_err(|_| InvokeError::Closed)?;
        let id = RequestId(inner.next_request.fetch_add(1, Ordering::Relaxed));
        let req = Request { client: inner.id, id, read_only, operation, auth: Bytes::new() };
        let (auth, membership, to_all) = {
            let m = inner.members.read();
            (m.cluster.request_auth, m.membership.clone(), m.cluster.requests_to_all)
        };
        let req = inner.signer.sign(&inner.key, &inner.request_keys, req, auth).await.ok_or(InvokeError::Closed)?;
        let decide = Invocation::new(&membership, inner.id, id, read_only);
        let mut designated = decide.designated();
        let (tx, mut rx) = mpsc::channel(4);
        inner.pending.lock().insert(id, Pending { request: id, read_only, decide, done: Some(tx) });
        let _guard = PendingGuard { inner: inner.clone(), id };
        let started = Instant::now();
        let deadline =
            Duration::from_millis(if read_only { inner.opts.read_timeout_ms } else { inner.opts.timeout_ms });
        if read_only || to_all {
            // A cluster whose clients send to every replica watches its
            // primary's batches against what the backups hold.
            self.send_all(&req);
        } else {
            let primary = membership.primary(ViewNo(inner.view.load(Ordering::Relaxed)));
            if inner.connected.lock().get(&primary).copied().unwrap_or(false) {
                self.send_to(primary, req.clone());
            } else {
                // The believed primary is unreachable: do not wait a retransmission
                // period for nothing; every replica forwards to the real primary.
                self.send_all(&req);
            }
        }
        let mut wait = inner.latency.lock().retransmit_after(Duration::from_millis(inner.opts.retransmit_ms));
        let wait_max = wait.max(RETRANSMIT_CEILING);
        // Set while waiting for a full result that is a moment behind its digests.
        let mut full_due: Option<Instant> = None;
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(self.timeout(started));
            }
            let wake = full_due.map_or(wait, |due| due.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wake.min(left), rx.recv()).await {
                Ok(Some(Outcome::Done(result))) => {
                    if !read_only {
                        inner.latency.lock().sample(started.elapsed().as_micros() as u64);
                    }
                    return Ok(result);
                }
                Ok(Some(Outcome::Rejected(reason))) => return Err(InvokeError::Rejected(reason)),
                Ok(Some(Outcome::NoQuorum)) => return Err(self.timeout(started)),
                Ok(Some(Outcome::TooLarge(len))) => return Err(InvokeError::ResultTooLarge { len }),
                Ok(Some(Outcome::NeedFull { now: true })) => {
                    full_due = None;
                    inner.resends.full_result.fetch_add(1, Ordering::Relaxed);
                    self.send_all(&req);
                }
                Ok(Some(Outcome::NeedFull { now: false })) => {
                    // Replicas answer as far apart as their queues are
                    // long: under load a correct designated replica trails
                    // the digests by a share of the whole wait, and asking
                    // everyone again then would only add to the load.
                    let floor = Duration::from_millis(inner.opts.full_reply_grace_ms);
                    let grace = floor.max((started.elapsed() / 4).min(RETRANSMIT_CEILING / 4));
                    full_due = Some(Instant::now() + grace);
                }
                Ok(Some(Outcome::PrimaryLost)) => {
                    inner.resends.primary_lost.fetch_add(1, Ordering::Relaxed);
                    self.send_all(&req);
                }
                Ok(Some(Outcome::Moved)) => {
                    // A new membership: its members have not seen the
                    // request yet.
                    full_due = None;
                    if let Some(p) = inner.pending.lock().get(&id) {
                        designated = p.decide.designated();
                    }
                    inner.resends.moved.fetch_add(1, Ordering::Relaxed);
                    self.send_all(&req);
                }
                Ok(None) => return Err(InvokeError::Closed),
                Err(_) if full_due.take().is_some() => {
                    // The designated replica missed its grace period.
                    inner.slow.lock().insert(designated, Instant::now() + connection::SLOW_FOR);
                    inner.resends.full_result.fetch_add(1, Ordering::Relaxed);
                    self.send_all(&req);
                }
                Err(_) => {
                    // No answer yet: make sure every replica has it (a
                    // backup times it and makes sure the primary has it).
                    inner.resends.timeouts.fetch_add(1, Ordering::Relaxed);
                    self.send_all(&req);
                    wait = (wait * 2).min(wait_max);
                }
            }
        }
    }

    fn timeout(&self, started: Instant) -> InvokeError {
        InvokeError::Timeout {
            waited_ms: started.elapsed().as_millis() as u64,
            connected: self.connected(),
            replicas: self.inner.members.read().membership.n(),
        }
    }

    fn send_to(&self, r: ReplicaId, body: Request) {
        if let Some(tx) = self.inner.members.read().outboxes.get(&r) {
            // A full outbox means that replica is unreachable or slow; the
            // retransmission to all covers for it.
            let _ = tx.try_send(Out::Request(body));
        }
    }

    fn send_all(&self, body: &Request) {
        for tx in self.inner.members.read().outboxes.values() {
            let _ = tx.try_send(Out::Request(body.clone()));
        }
    }
}

/// Removes an operation's bookkeeping however the caller's future ends.
struct PendingGuard {
    inner: Arc<Inner>,
    id: RequestId,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.inner.pending.lock().remove(&self.id);
    }
}

impl Inner {
    /// Starts a connection to every member that has none, and lets the
    /// connections of replicas no longer members end.
    fn connect_members(self: &Arc<Self>) {
        let mut m = self.members.write();
        let wanted: Vec<ReplicaId> = m.cluster.replicas.keys().copied().collect();
        m.outboxes.retain(|r, _| wanted.contains(r));
        for r in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = m.outboxes.entry(r) {
                let (tx, rx) = mpsc::channel(self.opts.outbox);
                slot.insert(tx);
                tokio::spawn(connection::run(Arc::downgrade(self), r, rx));
            }
        }
        let members = m.membership.members().to_vec();
        drop(m);
        self.connected.lock().retain(|r, _| members.contains(r));
        self.request_keys.lock().retain(|r, _| members.contains(r));
    }

    /// Checks `links` from the membership held and, when any is new, moves
    /// to the newest epoch: connects to its members, keeps the chain if
    /// asked to, and sends the operations in flight again to the new
    /// members. A link that does not check changes nothing.
    fn adopt(self: &Arc<Self>, links: Vec<palisade_core::reconfig::Handover>) {
        let mut m = self.members.write();
        let mut chain = m.chain.clone();
        if !matches!(chain.extend(links), Ok(n) if n > 0) {
            return;
        }
        // Nothing changes unless the new members can be reached.
        let Ok(cluster) = m.genesis.at(chain.newest()) else { return };
        m.chain = chain;
        m.membership = cluster.membership.clone();
        m.cluster = cluster;
        if let Some(dir) = &self.opts.keep_chain_in {
            // Best effort: a client that cannot write there asks again at
            // its next start.
            let _ = m.chain.save(dir);
        }
        let membership = m.membership.clone();
        drop(m);
        self.view.store(0, Ordering::Relaxed);
        self.connect_members();
        let mut pending = self.pending.lock();
        for p in pending.values_mut() {
            p.decide = Invocation::new(&membership, self.id, p.request, p.read_only);
            if let Some(tx) = &p.done {
                let _ = tx.try_send(Outcome::Moved);
            }
        }
    }

    /// The connection to `r` closed. If `r` is the primary this client
    /// believes in, its ordered invocations go to every replica at once
    /// instead of at their next retransmission: a crashed primary's
    /// backups then hold them when they change views.
    pub(crate) fn connection_lost(&self, r: ReplicaId) {
        let primary = self.members.read().membership.primary(ViewNo(self.view.load(Ordering::Relaxed)));
        if r != primary {
            return;
        }
        // A primary that accepts connections and drops them at once must not
        // turn every reconnection into a broadcast: at most one per
        // retransmission period.
        {
            let mut last = self.primary_lost_at.lock();
            let period = Duration::from_millis(self.opts.retransmit_ms);
            if last.is_some_and(|t| t.elapsed() < period) {
                return;
            }
            *last = Some(Instant::now());
        }
        for p in self.pending.lock().values().filter(|p| !p.read_only) {
            if let Some(tx) = &p.done {
                let _ = tx.try_send(Outcome::PrimaryLost);
            }
        }
    }

    /// Whether waiting a grace period for `designated`'s full result makes
    /// sense: it is connected and has not recently let one run out.
    fn wait_for(&self, designated: ReplicaId) -> bool {
        self.connected.lock().get(&designated).copied().unwrap_or(false)
            && self.slow.lock().get(&designated).is_none_or(|until| Instant::now() >= *until)
    }

    /// Passes a verdict on to the waiting caller.
    fn tell(&self, p: &mut Pending, verdict: Option<Verdict>) {
        let outcome = match verdict {
            None => return,
            Some(Verdict::Done { result, view }) => {
                self.view.store(view.0, Ordering::Relaxed);
                Outcome::Done(result)
            }
            Some(Verdict::Rejected(reason)) => Outcome::Rejected(reason),
            Some(Verdict::NoQuorum) => Outcome::NoQuorum,
            Some(Verdict::TooLarge { len }) => Outcome::TooLarge(len),
            Some(Verdict::NeedFull { now }) => {
                if let Some(tx) = &p.done {
                    let _ = tx.try_send(Outcome::NeedFull { now });
                }
                return;
            }
        };
        if let Some(tx) = p.done.take() {
            let _ = tx.try_send(outcome);
        }
    }

    /// Records replica `from`'s answer to `request`.
    fn on_answer(
        &self,
        pending: &mut HashMap<RequestId, Pending>,
        from: ReplicaId,
        view: ViewNo,
        request: RequestId,
        answer: Answer,
    ) {
        let Some(p) = pending.get_mut(&request) else { return };
        let wait = self.wait_for(p.decide.designated());
        let verdict = p.decide.on_answer(from, view, answer, wait);
        self.tell(p, verdict);
    }

    fn on_message(&self, from: ReplicaId, msg: ReplicaMessage) {
        let mut pending = self.pending.lock();
        match msg {
            ReplicaMessage::Reply(r) => {
                if r.client != self.id || r.replica != from {
                    return;
                }
                self.on_answer(&mut pending, from, r.view, r.request, Answer::Full(r.result));
            }
            ReplicaMessage::ReplyDigest { view, replica, client, request, digest } => {
                if client != self.id || replica != from {
                    return;
                }
                self.on_answer(&mut pending, from, view, request, Answer::Digest(digest));
            }
            ReplicaMessage::Replies { view, replica, client, answers } => {
                if client != self.id || replica != from {
                    return;
                }
                for (request, answer) in answers {
                    self.on_answer(&mut pending, from, view, request, answer);
                }
            }
            ReplicaMessage::Status(report) => {
                if report.replica == from {
                    if let Some(tx) = &*self.status.lock() {
                        let _ = tx.try_send(report);
                    }
                }
            }
            // Handled by the connection, which can start new ones.
            ReplicaMessage::Chain(_) => {}
            ReplicaMessage::Rejected { replica, request, reason } => {
                if replica != from {
                    return;
                }
                let Some(p) = pending.get_mut(&request) else {
                    return;
                };
                let verdict = p.decide.on_rejection(from, reason);
                self.tell(p, verdict);
            }
        }
    }
}

/// A [`Client`] with its own runtime, for synchronous callers.
pub struct BlockingClient {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    /// Connects in the background; see [`Client::connect`].
    pub fn connect(cluster: ClusterConfig, key: SigningKey, opts: ClientOptions) -> std::io::Result<BlockingClient> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let client = runtime.block_on(async { Client::connect(cluster, key, opts) });
        Ok(BlockingClient { runtime, client })
    }

    /// The async client, for spawning work on [`Self::runtime`].
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The runtime the client runs on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// See [`Client::invoke_ordered`].
    pub fn invoke_ordered(&self, operation: Bytes) -> Result<Bytes, InvokeError> {
        self.runtime.block_on(self.client.invoke_ordered(operation))
    }

    /// See [`Client::invoke_unordered`].
    pub fn invoke_unordered(&self, operation: Bytes) -> Result<Bytes, InvokeError> {
        self.runtime.block_on(self.client.invoke_unordered(operation))
    }
}
