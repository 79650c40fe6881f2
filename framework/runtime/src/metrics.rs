//! Counters and queue-depth gauges that an operator or a benchmark reads
//! while the replica runs.

use palisade_core::{ClientId, RequestId};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

macro_rules! counters {
    ($($(#[doc = $doc:expr])* $name:ident),* $(,)?) => {
        /// Monotonic counters, updated by the stages without locks.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            /// Name and value of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }

            /// Name, description (its doc comment) and value of every
            /// counter, for the metrics endpoint's help text.
            pub fn described(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), concat!($($doc),*).trim(), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Client requests received over connections.
    requests_received,
    /// Client requests pushed back because a queue was full.
    requests_busy,
    /// Client requests refused by verification (size, signature, id).
    requests_invalid,
    /// Client requests dropped, unanswered, because their client already
    /// had its quota waiting for verification.
    requests_over_quota,
    /// Times a client connection paused reading because its client was
    /// past `client_rate_max`.
    client_reads_paced,
    /// Client connections closed because the client's requests kept
    /// failing verification.
    clients_closed,
    /// Requests whose client signature this replica checked (in the
    /// verification stages; with authenticators mostly on the primary
    /// alone).
    request_signatures_checked,
    /// Distinct client signatures those checks verified: a client signs
    /// the requests it issues together as one group, and a signature
    /// already verified is not checked again, so this grows far slower
    /// than `request_signatures_checked` under load.
    client_signatures_verified,
    /// Requests inside PRE-PREPAREs accepted on this replica's own MAC,
    /// with no signature check.
    request_macs_accepted,
    /// Retransmitted requests answered from the reply cache.
    requests_cached,
    /// Requests below their client's window.
    requests_stale,
    /// Peer messages received.
    peer_messages_received,
    /// Peer messages dropped because the consensus queue was full.
    peer_messages_dropped,
    /// Peer messages not sent because the connection was down or full.
    peer_sends_dropped,
    /// Frames that failed to decode or authenticate (connection closed).
    bad_frames,
    /// Handshakes that failed (connection closed).
    handshakes_failed,
    /// Connections refused at the client-connection limit.
    connections_refused,
    /// Batches delivered.
    batches_delivered,
    /// Requests executed (fresh).
    requests_executed,
    /// Answers sent (results, digests, refusals), however they were framed.
    replies_sent,
    /// Of the replies from delivery, those sent as a digest of the result.
    reply_digests,
    /// Reply frames dropped (client gone or not reading, or the reply
    /// queue full for a cached reply or a push-back notice).
    replies_dropped,
    /// States taken at checkpoints.
    checkpoints_taken,
    /// Answers about a kept checkpoint's state sent to fetching peers.
    state_answers_served,
    /// Parts of a fetched state installed.
    state_parts_installed,
    /// Pieces of state from peers that failed a check (the piece is asked
    /// of another peer).
    state_data_bad,
    /// Batches an epoch's core delivered past that epoch's end, not
    /// executed (the next epoch orders those sequence numbers again).
    batches_void,
    /// Batches executed tentatively (answered before they committed).
    batches_tentative,
    /// Tentative executions undone because another batch committed at
    /// their sequence number (after a view change).
    tentative_rollbacks,
    /// Links of the chain of epochs sent to clients (asked for, or
    /// pushed when an epoch starts).
    chain_links_sent,
    /// Reconfiguration requests the execution refused (forged, replayed,
    /// for another epoch, or breaking a rule; each answered with why).
    admin_requests_rejected,
    /// Reconfiguration requests accepted.
    admin_requests_accepted,
    /// Groups written to the log (one write and one fdatasync each).
    log_groups,
    /// Entries written to the log.
    log_entries,
    /// Snapshots written to disk.
    snapshots_written,
    /// Bytes of snapshots written (only what changed since the last one,
    /// and what was moved out of mostly dead packs).
    snapshot_bytes,
    /// Parts written into snapshot packs.
    snapshot_parts_written,
    /// Parts a snapshot named where an older pack already held them.
    snapshot_parts_reused,
}

/// A queue-depth probe.
pub(crate) type Gauge = Box<dyn Fn() -> usize + Send>;

/// A queue: its name, a probe of its depth, and its bound.
pub(crate) struct QueueGauge {
    pub(crate) name: &'static str,
    pub(crate) depth: Gauge,
    pub(crate) capacity: usize,
}

/// Everything observable about a running replica.
#[derive(Default)]
pub struct RuntimeMetrics {
    /// Counters.
    pub counters: Counters,
    /// The protocol core's view, delivered sequence number, stable checkpoint
    /// and its own drop counters, published by the consensus stage.
    pub core: Mutex<CoreSnapshot>,
    /// Queue depths, sampled by [`crate::ReplicaHandle::queue_depths`].
    pub(crate) gauges: Mutex<Vec<QueueGauge>>,
    /// Other levels read when asked (connected peers and clients).
    pub(crate) levels: Mutex<Vec<(&'static str, Gauge)>>,
    /// Latency histograms.
    pub latency: Latencies,
}

/// Upper bounds of the latency buckets, in seconds: 10 us to about 10 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(10e-6, 2.0, 21)
}

/// How long things take: each stage's work per wake-up, and ordering.
pub struct Latencies {
    /// Time a stage spent on one wake-up that found work, by stage.
    pub stages: prometheus_client::metrics::family::Family<StageLabel, Histogram>,
    /// From a request's arrival at this replica's request filter to its
    /// answer from execution, for one request in [`ORDERING_SAMPLE`].
    pub ordering: Histogram,
    /// Arrival times of the sampled requests still being ordered.
    pub(crate) arrivals: Mutex<HashMap<(ClientId, RequestId), Instant>>,
}

/// One request in this many (by client and request id) has its ordering
/// latency measured, so that the bookkeeping costs nothing measurable.
pub const ORDERING_SAMPLE: u64 = 16;
/// Sampled requests waiting at most; beyond it new ones are not sampled
/// (a flood of requests that never execute cannot grow the table).
const ARRIVALS_MAX: usize = 4096;
/// A sampled request not answered within this long is forgotten when the
/// table is full.
const ARRIVAL_FORGET: std::time::Duration = std::time::Duration::from_secs(30);

/// A histogram of latencies in seconds.
pub type Histogram = prometheus_client::metrics::histogram::Histogram;

/// The label that tells stages apart.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StageLabel {
    /// The stage's name.
    pub stage: &'static str,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            stages: prometheus_client::metrics::family::Family::new_with_constructor(|| {
                Histogram::new(latency_buckets())
            }),
            ordering: Histogram::new(latency_buckets()),
            arrivals: Mutex::new(HashMap::new()),
        }
    }
}

fn sampled(client: ClientId, id: RequestId) -> bool {
    (client.0 ^ id.0) % ORDERING_SAMPLE == 0
}

impl Latencies {
    /// The histogram of `stage`'s work per wake-up (looked up once, by the
    /// thread that runs it).
    pub(crate) fn stage(&self, stage: &'static str) -> Histogram {
        self.stages.get_or_create(&StageLabel { stage }).clone()
    }

    /// A request reached the request filter.
    pub(crate) fn arrived(&self, client: ClientId, id: RequestId) {
        if sampled(client, id) {
            let mut a = self.arrivals.lock();
            if a.len() >= ARRIVALS_MAX {
                // Requests refused or lost after the filter never answer.
                a.retain(|_, t| t.elapsed() < ARRIVAL_FORGET);
            }
            if a.len() < ARRIVALS_MAX {
                a.entry((client, id)).or_insert_with(Instant::now);
            }
        }
    }

    /// Execution answered a request.
    pub(crate) fn answered(&self, client: ClientId, id: RequestId) {
        if sampled(client, id) {
            if let Some(t) = self.arrivals.lock().remove(&(client, id)) {
                self.ordering.observe(t.elapsed().as_secs_f64());
            }
        }
    }
}

/// What the consensus stage publishes about the core after each wake-up.
#[derive(Clone, Debug, Default)]
pub struct CoreSnapshot {
    /// Current view.
    pub view: u64,
    /// Normal operation (not changing views).
    pub normal: bool,
    /// Whether this replica is the primary.
    pub primary: bool,
    /// Highest delivered sequence number.
    pub delivered: u64,
    /// Stable checkpoint.
    pub stable: u64,
    /// View changes started or joined.
    pub view_changes: u64,
    /// Of those, started because the view had lasted `leader_rotation_ms`.
    pub rotations: u64,
    /// Of those, started because the primary's batches kept leaving out a
    /// request it had (the batch watch).
    pub skip_suspicions: u64,
    /// Requests this backup forwarded because the primary had not proposed
    /// them within the forward grace (clients sending to every replica).
    pub late_forwards: u64,
    /// The request timeout in force (adaptive once rounds are timed), ms.
    pub request_timeout_ms: u64,
    /// State transfers completed.
    pub state_transfers: u64,
    /// Evidence that this replica's state diverged from what a quorum
    /// certified (a non-deterministic service, corrupted storage) or of a
    /// safety bug: must stay 0.
    pub alarms: u64,
    /// Request timers restarted because this replica was behind its peers.
    pub timers_restarted: u64,
    /// Batches proposed as primary.
    pub proposed_batches: u64,
    /// Requests ordered (in delivered batches).
    pub delivered_requests: u64,
    /// Requests waiting for ordering.
    pub pending_requests: usize,
    /// The core's dropped-message counters.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Whether the replica is rejoining after losing its votes (it casts
    /// none yet, and counts as one of the f faulty replicas).
    pub rejoining: bool,
    /// The stable checkpoint it must reach before it votes again.
    pub rejoin_mark: Option<u64>,
    /// The epoch of the current core.
    pub epoch: u64,
    /// Its members.
    pub members: Vec<palisade_core::ReplicaId>,
    /// The faults that epoch tolerates.
    pub f: usize,
    /// The primary of the current view.
    pub primary_id: palisade_core::ReplicaId,
    /// Member, joining, or removed.
    pub role: palisade_wire::envelope::MemberRole,
    /// The epoch whose configuration removed this replica, if one did.
    pub removed_in: Option<u64>,
    /// Peer messages that reached no core: from an epoch older than any
    /// kept here, from one not reached yet, and links that did not check.
    pub epoch_counters: palisade_host::EpochCounters,
    /// Why the replica last started or joined a view change.
    pub last_view_change: Option<&'static str>,
    /// The request whose wait last made it suspect the primary.
    pub last_late_request: Option<palisade_core::LateRequest>,
}

impl RuntimeMetrics {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn gauge(&self, name: &'static str, capacity: usize, f: impl Fn() -> usize + Send + 'static) {
        self.gauges.lock().push(QueueGauge { name, depth: Box::new(f), capacity });
    }

    pub(crate) fn level(&self, name: &'static str, f: impl Fn() -> usize + Send + 'static) {
        self.levels.lock().push((name, Box::new(f)));
    }

    /// Every queue's name, depth and bound.
    pub fn queues(&self) -> Vec<(&'static str, usize, usize)> {
        self.gauges.lock().iter().map(|g| (g.name, (g.depth)(), g.capacity)).collect()
    }

    /// Every level's name and value (connected peers and clients).
    pub fn levels(&self) -> Vec<(&'static str, usize)> {
        self.levels.lock().iter().map(|(n, f)| (*n, f())).collect()
    }
}
