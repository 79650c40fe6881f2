//! Protocol parameters. Every limit the core enforces lives here.

use crate::types::Membership;

/// Parameters of one replica's core. Defaults suit a LAN cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// Who is in the cluster, f, and the mode.
    pub membership: Membership,
    /// Checkpoint every this many sequence numbers (PBFT's K).
    pub checkpoint_interval: u64,
    /// Sequence numbers accepted above the stable checkpoint (PBFT's L, the
    /// distance from the low to the high watermark). At least 2K so the
    /// pipeline need not stall while a checkpoint becomes stable.
    pub log_window: u64,
    /// Requests per batch, at most.
    pub batch_max_requests: usize,
    /// Request bytes per batch, at most.
    pub batch_max_bytes: usize,
    /// Batches the primary keeps proposed but not yet delivered. More gives
    /// pipelining; fewer gives bigger batches.
    pub max_in_flight: u64,
    /// With a batch already in flight, the primary proposes another only
    /// once this many requests wait (or a full batch does). With nothing in
    /// flight it proposes at once, so light load never waits; under load,
    /// batches stay large enough that per-batch messages stay cheap.
    pub pipeline_min_batch: usize,
    /// A backup that has waited this long for a request to execute suspects
    /// the primary and starts a view change. It doubles with every view
    /// change that executes nothing (up to `view_change_backoff_max`), so a
    /// network slower than this still makes progress.
    pub request_timeout_ms: u64,
    /// Once agreement has been timed here, the request timeout shrinks to
    /// this many measured rounds (PRE-PREPARE accepted to commit decided)
    /// for every full batch waiting, between `request_timeout_min_ms` and
    /// `request_timeout_ms`. A primary cannot stretch those rounds by
    /// delaying its proposals, so one that holds each batch just under the
    /// configured timeout is suspected within a fraction of it. 0 keeps the
    /// timeout fixed.
    pub request_timeout_rounds: u64,
    /// The shortest adaptive request timeout: room for scheduling hiccups
    /// of a loaded host, which no round measurement sees.
    pub request_timeout_min_ms: u64,
    /// BFT-SMaRt's periodic leader change: every replica moves to the next
    /// view once the current one has lasted this long, so a primary that
    /// stays just fast enough to escape suspicion (tiny batches, a
    /// starved client) leads only its share of the time. 0 turns it off.
    pub leader_rotation_ms: u64,
    /// The request timeout while this replica's connection from the primary
    /// is closed: a crashed primary's process closes its connections at
    /// once, so its backups need not wait the whole request timeout. It
    /// doubles with the request timeout, and a connection that comes back
    /// in time costs nothing.
    pub primary_down_timeout_ms: u64,
    /// Whether clients send every request to every replica (the cluster's
    /// `requests_to_all`), as BFT-SMaRt's do. A backup then holds the load
    /// the primary is offered, and forwards a request only once it has
    /// waited `forward_grace_ms` here unproposed; otherwise it forwards
    /// each request it gets straight from a client (a retransmission).
    pub requests_to_all: bool,
    /// How long a request a backup holds may wait unproposed before the
    /// backup sends it to the primary, and how long after that before the
    /// primary's batches that leave it out count against it (see
    /// `batch_watch_skips`); at least four measured rounds, doubling with
    /// the request timeout's backoff.
    pub forward_grace_ms: u64,
    /// The watch on the primary's batches: a backup that sees this many
    /// PRE-PREPAREs with room to spare leave out a request the primary has
    /// had for `forward_grace_ms` suspects the primary (reason
    /// `skipped-requests`). A primary that keeps every round short but
    /// proposes tiny batches is caught by no timer; this catches it when
    /// the backups hold the offered load (`requests_to_all`). 0 turns it
    /// off.
    pub batch_watch_skips: u32,
    /// Base time to wait for a NEW-VIEW before moving to the next view.
    pub view_change_timeout_ms: u64,
    /// The view-change and request timeouts double per failed attempt, up
    /// to 2^this: the protocol is live for any network whose request path
    /// fits in `request_timeout_ms << view_change_backoff_max`.
    pub view_change_backoff_max: u32,
    /// How long an undecided slot stands still before this replica's
    /// messages for it go again (at most a quarter of the request timeout);
    /// the period of VIEW-CHANGE, rejoin and end-vote retransmissions, and
    /// of batch requests, which peers answer at most once per period.
    pub retransmit_ms: u64,
    /// Period of STATUS messages, through which laggards catch up.
    pub status_interval_ms: u64,
    /// While fetching a checkpoint's state, a question unanswered for this
    /// long is asked of another peer.
    pub state_transfer_timeout_ms: u64,
    /// Questions a fetching replica keeps outstanding, spread over its
    /// peers; a replica answers each peer at most four times this many per
    /// `retransmit_ms`.
    pub state_fetch_window: usize,
    /// Largest distance between a PRE-PREPARE's timestamp and the backup's clock.
    pub timestamp_tolerance_ms: u64,
    /// Requests waiting to be ordered, at most; more are dropped and the
    /// client retries (the runtime pushes back before this is reached).
    pub pending_max: usize,
    /// Requests one client may have waiting to be ordered, at most; more
    /// are refused as busy, so a client that floods holds a bounded part
    /// of the pool (and batches are cut fairly between clients).
    pub pending_per_client_max: usize,
    /// A client with more requests than this waiting here is not timed: it
    /// floods, and a correct primary, which orders each client's requests
    /// a share of each batch at a time and drops what is past its quota,
    /// cannot be held to a deadline for all of them. Only the oldest
    /// pending request of each client is ever timed. Keep it at least the
    /// most requests a correct client keeps outstanding: a backup forwards
    /// a client's requests to the primary as they come only up to this
    /// count, and one it did not forward gets the primary a second timeout.
    pub client_timed_max: usize,
    /// A client that had more than `client_timed_max` requests waiting
    /// stays untimed (and unforwarded) this long after it falls back
    /// within: each replica keeps a different part of a flood sent to all,
    /// so the request at its head here may wait deep in the primary's
    /// backlog of it. A correct client never gets here.
    pub client_flood_memory_ms: u64,
    /// Read-only requests waiting for execution to catch up, at most.
    pub read_queue_max: usize,
    /// DECIDED notices sent per STATUS from a laggard.
    pub catch_up_max: u64,
    /// Request ids per client below its highest executed one that are still
    /// filtered for duplicates; pass the same value to [`crate::Executor::new`].
    pub client_window: u64,
    /// PBFT's tentative execution: a batch prepared here, with every
    /// earlier one committed, executes at once and its replies say so; a
    /// client takes a quorum of matching tentative replies. It saves the
    /// COMMIT round on the client's path. The host must be able to roll a
    /// tentative execution back (see [`crate::Action::RollBack`]).
    pub tentative_execution: bool,
    /// Test-only planted bugs.
    #[cfg(feature = "planted-bugs")]
    pub planted: crate::planted::PlantedBugs,
}

impl Config {
    /// Defaults for `membership`.
    pub fn new(membership: Membership) -> Config {
        Config {
            membership,
            checkpoint_interval: 128,
            log_window: 512,
            batch_max_requests: 1024,
            batch_max_bytes: 4 << 20,
            max_in_flight: 4,
            pipeline_min_batch: 64,
            request_timeout_ms: 2_000,
            request_timeout_rounds: 16,
            request_timeout_min_ms: 250,
            leader_rotation_ms: 0,
            primary_down_timeout_ms: 200,
            requests_to_all: false,
            forward_grace_ms: 20,
            batch_watch_skips: 8,
            view_change_timeout_ms: 2_000,
            view_change_backoff_max: 5,
            retransmit_ms: 200,
            status_interval_ms: 200,
            state_transfer_timeout_ms: 2_000,
            state_fetch_window: 8,
            timestamp_tolerance_ms: 60_000,
            pending_max: 100_000,
            pending_per_client_max: 1_024,
            client_timed_max: 256,
            client_flood_memory_ms: 10_000,
            read_queue_max: 10_000,
            catch_up_max: 64,
            client_window: 1024,
            tentative_execution: false,
            #[cfg(feature = "planted-bugs")]
            planted: Default::default(),
        }
    }

    /// Checks the parameters are consistent; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.checkpoint_interval == 0 {
            return Err("checkpoint_interval must be at least 1".into());
        }
        if self.log_window < 2 * self.checkpoint_interval {
            return Err(format!(
                "log_window ({}) must be at least twice checkpoint_interval ({})",
                self.log_window, self.checkpoint_interval
            ));
        }
        if self.batch_max_requests == 0 || self.max_in_flight == 0 {
            return Err("batch_max_requests and max_in_flight must be at least 1".into());
        }
        if self.state_fetch_window == 0 {
            return Err("state_fetch_window must be at least 1".into());
        }
        if self.pending_per_client_max == 0 {
            return Err("pending_per_client_max must be at least 1".into());
        }
        if self.client_window == 0 {
            return Err("client_window must be at least 1".into());
        }
        Ok(())
    }
}
