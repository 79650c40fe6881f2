//! Counters and queue-depth gauges that an operator or a benchmark reads
//! while the replica runs.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic counters, updated by the stages without locks.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            /// Name and value of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
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

/// Everything observable about a running replica.
#[derive(Default)]
pub struct RuntimeMetrics {
    /// Counters.
    pub counters: Counters,
    /// The protocol core's view, delivered sequence number, stable checkpoint
    /// and its own drop counters, published by the consensus stage.
    pub core: Mutex<CoreSnapshot>,
    /// Queue depths, sampled by [`crate::ReplicaHandle::queue_depths`].
    pub(crate) gauges: Mutex<Vec<(&'static str, Gauge)>>,
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
    /// State transfers completed.
    pub state_transfers: u64,
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
}

impl RuntimeMetrics {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn gauge(&self, name: &'static str, f: impl Fn() -> usize + Send + 'static) {
        self.gauges.lock().push((name, Box::new(f)));
    }
}
