//! Every queue capacity and runtime period, in one place.

use palisade_core::Config as ProtocolConfig;
use palisade_host::Durability;
use palisade_wire::ClusterConfig;
use std::path::PathBuf;

/// What a request adds to its operation inside a batch at most: the ids and
/// flags `Request::size_bytes` counts, plus an authenticator (the client's
/// key and signature, and up to 255 replica MACs).
pub const REQUEST_OVERHEAD_BYTES: usize = 24 + palisade_wire::verify::MAX_AUTH_BYTES;

/// Capacities of the pipeline's queues and the runtime's periods. Each
/// queue's overload policy is on its field.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The protocol core's parameters.
    pub protocol: ProtocolConfig,
    /// Period of the request-timer stage's ticks.
    pub tick_ms: u64,
    /// Client requests waiting for verification (only when clients sign).
    /// Full: the client gets `Rejected { Busy }` (pushed back).
    pub verify_queue: usize,
    /// Requests one client may have waiting for verification; more are
    /// dropped unanswered, and clients are served in turn, so a client
    /// that floods gets its share and no more.
    pub client_quota: usize,
    /// Requests a second one client may send this replica, over all its
    /// connections; past it (and a burst of a tenth of a second's worth)
    /// its connections stop reading until it is back within, while its
    /// replies keep flowing: TCP slows it, and pacing drops nothing. 0 (the
    /// default) paces nobody. Set it above what any correct client sends:
    /// it bounds what a client flooding with valid requests takes of
    /// ordering.
    pub client_rate_max: u32,
    /// A client whose requests fail verification this many times has its
    /// connections closed.
    pub verify_failures_max: u32,
    /// Requests of one client that verification hands on before the core
    /// has taken them; the rest wait their turn in the intake. The queues
    /// after verification are first come, first served, so this keeps a
    /// client that floods from filling them ahead of everyone else.
    pub client_in_flight_max: u32,
    /// Requests waiting for the request filter. Without client signatures this is
    /// the first queue after the network, and when full the client gets
    /// `Rejected { Busy }`; with signatures the verifier takes no more than
    /// fits, so the verify queue fills and clients are pushed back.
    pub filter_queue: usize,
    /// Requests waiting for the consensus stage. Full: the filter takes
    /// no more than fits (same push-back chain).
    pub request_queue: usize,
    /// Peer messages waiting for the consensus stage. Full: dropped and
    /// counted (the protocol retransmits).
    pub peer_queue: usize,
    /// Decisions waiting for the delivery stage. Full: decisions are never
    /// dropped; the consensus stage holds the overflow (bounded by the
    /// protocol's window) and takes no peer message or request until it
    /// has gone, so the peer and request queues fill behind it.
    pub delivery_queue: usize,
    /// Batches of replies (one per delivered batch) waiting to be sent.
    /// Full: the delivery stage holds its replies and executes nothing new
    /// until they have gone; push-back notices and cached replies from
    /// other stages are dropped and counted (the client retransmits).
    pub reply_queue: usize,
    /// Messages waiting in one connection actor's mailbox (each carries
    /// frames of at most 256 KiB in total). Full: peer messages are dropped
    /// and counted; replies to a client that does not read are dropped (it
    /// retransmits and gets the cached reply).
    pub connection_mailbox: usize,
    /// Bytes a connection may buffer for writing before its actor stops
    /// taking frames (low, high watermarks).
    pub write_buffer: (usize, usize),
    /// Items a stage takes from its queue per wake-up.
    pub drain_max: usize,
    /// Whether the CPU stages share one thread or have one each.
    pub stage_threads: crate::StageThreads,
    /// Time allowed for a handshake.
    pub handshake_timeout_ms: u64,
    /// Concurrent client connections per replica; more are refused.
    pub max_client_connections: usize,
    /// Handshakes under way at once; a connection beyond them is closed
    /// straight away (counted as refused), so a connection flood costs
    /// bounded memory.
    pub max_handshakes: usize,
    /// Largest operation a client may send, in bytes.
    pub max_operation_bytes: usize,
    /// Threads verifying client signatures.
    pub verify_threads: usize,
    /// Requests remembered as signature-checked by the verification stage.
    pub verified_cache: usize,
    /// PBFT's digest replies: only the designated replica sends a result in
    /// full, the others its digest (retransmitted requests always get full
    /// replies from the reply cache).
    pub reply_digests: bool,
    /// Under saturation, how long a client's answers may wait for the next
    /// batch's so that they share its frame, in milliseconds; 0 sends each
    /// batch's answers at once (see [`crate::stages::Linger`]).
    pub reply_linger_ms: u64,
    /// Answers in a batch from which a replica counts as saturated and
    /// holds busy clients' answers for the next batch.
    pub reply_linger_min_batch: usize,
    /// How this process starts when its data directory holds nothing (see
    /// [`Start`]); otherwise it recovers from what the directory holds.
    pub start: Start,
    /// What the replica writes to disk (see [`Durability`]).
    pub durability: Durability,
    /// Where it writes it; required unless `durability` is `none`.
    pub data_dir: Option<PathBuf>,
    /// Sequence numbers between snapshots written to disk, at least; 0
    /// writes one at every stable checkpoint the writer is free for (while
    /// it writes one, newer checkpoints may become stable: it then writes
    /// the newest). The log keeps the batches since the snapshot before
    /// the last.
    pub snapshot_interval: u64,
    /// Share of the time the snapshot writer may spend writing, in
    /// percent: after a snapshot that took t it rests t * (100 - p) / p,
    /// so a large state's snapshots leave the disk to the log (the log
    /// keeps the batches since the fallback snapshot meanwhile).
    pub snapshot_duty_percent: u32,
    /// Bytes preallocated per log segment.
    pub wal_segment_bytes: u64,
    /// Commands waiting for the storage stage. Full: the consensus stage
    /// holds the overflow and takes no peer message or request until it
    /// has gone (nothing is dropped: each entry is a promise to a peer).
    pub storage_queue: usize,
    /// Links of the chain of epochs known before the replica starts (from
    /// its configuration directory): a joiner asks the newest members
    /// first. Checked from `cluster.toml` like any link.
    pub links: Vec<palisade_core::reconfig::Handover>,
    /// How long a replica that a reconfiguration removed keeps answering
    /// laggards and clients before [`crate::ReplicaHandle::removed`] says
    /// it may exit.
    pub leave_grace_ms: u64,
    /// Where to listen when no configuration known lists this replica yet
    /// (a replica started to join). A replica that is listed is never
    /// moved by it.
    pub listen: Option<std::net::SocketAddr>,
    /// Where to bind instead of the address peers and clients are given
    /// (a container binding `0.0.0.0` while they reach it by name), listed
    /// or joining.
    pub bind: Option<std::net::SocketAddr>,
    /// Tests only: as primary, add this request, which no client sent, to
    /// every PRE-PREPARE it sends (a Byzantine primary forging requests).
    #[cfg(feature = "byzantine")]
    pub forged_request: Option<palisade_core::Request>,
    /// Tests and benchmarks only: misbehave this way.
    #[cfg(feature = "byzantine")]
    pub misbehave: Option<crate::byzantine::Misbehaviour>,
    /// With `misbehave`: behave until this file exists.
    #[cfg(feature = "byzantine")]
    pub misbehave_trigger: Option<std::path::PathBuf>,
}

/// Whether a replica process may vote at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Start {
    /// The first start of this member: it never voted, so it may vote now.
    #[default]
    Fresh,
    /// A restart whose earlier votes were not kept (records live in memory
    /// only): the replica rejoins without voting until its stable
    /// checkpoint passes anything it may have voted on before.
    LostVotes,
}

impl RuntimeConfig {
    /// Defaults for a cluster.
    pub fn for_cluster(cluster: &ClusterConfig) -> RuntimeConfig {
        let mut protocol = ProtocolConfig::new(cluster.membership.clone());
        // A full batch must fit one frame with room for the envelope.
        protocol.batch_max_bytes = protocol.batch_max_bytes.min(cluster.max_frame_bytes / 2);
        RuntimeConfig {
            protocol,
            tick_ms: 10,
            verify_queue: 8_192,
            client_quota: 1_024,
            client_rate_max: 0,
            verify_failures_max: 16,
            client_in_flight_max: 256,
            filter_queue: 8_192,
            request_queue: 8_192,
            peer_queue: 16_384,
            delivery_queue: 1_024,
            reply_queue: 1_024,
            connection_mailbox: 1_024,
            write_buffer: (64 << 10, 8 << 20),
            drain_max: 512,
            stage_threads: crate::StageThreads::for_machine(),
            handshake_timeout_ms: 5_000,
            max_client_connections: 4_096,
            max_handshakes: 256,
            max_operation_bytes: (cluster.max_frame_bytes / 4).max(1024),
            verify_threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4),
            reply_digests: true,
            reply_linger_ms: 10,
            reply_linger_min_batch: 128,
            verified_cache: 65_536,
            start: Start::Fresh,
            durability: Durability::None,
            data_dir: None,
            snapshot_interval: 0,
            snapshot_duty_percent: 10,
            #[cfg(feature = "byzantine")]
            forged_request: None,
            #[cfg(feature = "byzantine")]
            misbehave: None,
            #[cfg(feature = "byzantine")]
            misbehave_trigger: None,
            wal_segment_bytes: 64 << 20,
            storage_queue: 4_096,
            links: Vec::new(),
            leave_grace_ms: 30_000,
            listen: None,
            bind: None,
        }
    }

    /// Checks the configuration; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.protocol.validate()?;
        for (name, v) in [
            ("verify_queue", self.verify_queue),
            ("filter_queue", self.filter_queue),
            ("request_queue", self.request_queue),
            ("peer_queue", self.peer_queue),
            ("delivery_queue", self.delivery_queue),
            ("reply_queue", self.reply_queue),
            ("connection_mailbox", self.connection_mailbox),
            ("drain_max", self.drain_max),
            ("verify_threads", self.verify_threads),
            ("max_handshakes", self.max_handshakes),
            ("storage_queue", self.storage_queue),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.reply_linger_ms > 1_000 {
            // Clients time their requests in hundreds of milliseconds.
            return Err("reply_linger_ms must be at most 1000".into());
        }
        if self.durability != Durability::None && self.data_dir.is_none() {
            return Err(format!("durability = {} needs a data directory", self.durability));
        }
        if self.write_buffer.0 >= self.write_buffer.1 {
            return Err("write_buffer: the low watermark must be below the high one".into());
        }
        // The largest request a client may send, with its id and signature,
        // must fit a batch alone: backups refuse larger batches, so such a
        // request could never be ordered.
        let largest_request = self.max_operation_bytes + REQUEST_OVERHEAD_BYTES;
        if largest_request > self.protocol.batch_max_bytes {
            return Err(format!(
                "max_operation_bytes ({}) plus {REQUEST_OVERHEAD_BYTES} bytes of request header must fit batch_max_bytes ({})",
                self.max_operation_bytes, self.protocol.batch_max_bytes
            ));
        }
        Ok(())
    }

    /// Capacity of the checkpoint-completion queue from delivery back to
    /// consensus: room for every checkpoint a full delivery queue can
    /// produce. Consensus drains it even while its own decisions wait for
    /// room, so the two stages never wait on each other.
    pub fn control_queue(&self) -> usize {
        (self.delivery_queue as u64 / self.protocol.checkpoint_interval + 4) as usize
    }
}
