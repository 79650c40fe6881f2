//! What a simulated run is made of: its parameters and the protocol
//! timers of its replicas.

use palisade_core::{Config, Membership, Mode};

/// Which replicas are Byzantine, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ByzantineChoice {
    /// A strategy drawn from the seed.
    Random,
    /// All replicas correct.
    None,
    /// This strategy.
    Named(String),
}

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed; everything else about the run follows from it.
    pub seed: u64,
    /// Number of replicas.
    pub replicas: usize,
    /// BFT or CFT.
    pub mode: Mode,
    /// Byzantine behaviour (ignored in CFT mode, which assumes crash faults only).
    pub byzantine: ByzantineChoice,
    /// Closed-loop clients.
    pub clients: usize,
    /// Length of the fault phase.
    pub fault_phase_ms: u64,
    /// Operations each client completes after the network heals.
    pub ops_after_heal: u32,
    /// Every operation must complete within this long of the later of its
    /// invocation and the heal (see docs/protocol.md for how it is derived).
    pub liveness_bound_ms: u64,
    /// Print a line per interesting event on stderr (for reproducing a seed).
    pub trace: bool,
    /// Whether crashed replicas lose their disks and restart without
    /// their votes; `None` draws it from the seed.
    pub amnesia: Option<bool>,
    /// Whether replicas execute prepared batches tentatively; `None`: on
    /// for even seeds, so that sweeps cover both.
    pub tentative: Option<bool>,
    /// Clients that misbehave (the same request id with different
    /// operations to different replicas, requests only backups see); `None`
    /// draws zero or one from the seed.
    pub byzantine_clients: Option<usize>,
    /// Whether crash victims' disks tear writes and rot; `None` draws it.
    pub disk_faults: Option<bool>,
    /// Whether every correct replica crashes at once during the fault
    /// phase (only where disks survive); `None` draws it.
    pub crash_all: Option<bool>,
    /// Whether the view manager changes the membership during the run
    /// (crashes are then left out: the log does not record epochs yet).
    pub reconfigure: bool,
    /// Extra one-way delay of every message after the heal: a network
    /// slower than the protocol's timeouts, which must still make progress.
    pub slow_network_ms: u64,
    /// Periodic leader rotation (`Config::leader_rotation_ms`); 0: off.
    pub rotation_ms: u64,
    /// Whether correct clients send every request to every replica
    /// (`Config::requests_to_all`), arming the backups' watch on the
    /// primary's batches with the load it is offered.
    pub requests_to_all: bool,
    /// Planted bugs to switch on.
    #[cfg(feature = "planted-bugs")]
    pub planted: palisade_core::planted::PlantedBugs,
}

impl SimConfig {
    /// The defaults: n=4, BFT, a random strategy, all fault kinds.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            replicas: 4,
            mode: Mode::Bft,
            byzantine: ByzantineChoice::Random,
            clients: 4,
            fault_phase_ms: 8_000,
            ops_after_heal: 8,
            liveness_bound_ms: LIVENESS_BOUND_MS,
            trace: false,
            amnesia: None,
            tentative: None,
            byzantine_clients: None,
            disk_faults: None,
            crash_all: None,
            reconfigure: false,
            slow_network_ms: 0,
            rotation_ms: 0,
            requests_to_all: false,
            #[cfg(feature = "planted-bugs")]
            planted: Default::default(),
        }
    }
}

/// The protocol timers of simulated replicas (milliseconds).
pub const REQUEST_TIMEOUT_MS: u64 = 500;
/// Base view-change timeout.
pub const VIEW_CHANGE_TIMEOUT_MS: u64 = 500;
/// Backoff exponent cap: the longest view-change wait is 500 ms << 3 = 4 s.
pub const VIEW_CHANGE_BACKOFF_MAX: u32 = 3;
/// Client retransmission: 300 ms, doubling, at most 2.4 s.
pub const CLIENT_RETRY_MS: u64 = 300;
/// After the heal: a view-change wait armed just before it (4 s), a
/// Byzantine primary next in line (request timeout plus another full
/// view-change wait, 4.5 s), the client's longest retry (2.4 s), state
/// transfer through every peer (3 x 300 ms) and a checkpoint interval of
/// batches, rounded up with a factor of two for queued work: 25 s.
pub const LIVENESS_BOUND_MS: u64 = 25_000;

/// The liveness bound when every message takes `slow_ms` longer after the
/// heal: the usual bound, plus the time the timeouts need to double past
/// the network's round trip (every view change in between may wait out a
/// full timeout) and the operation's own round trips.
pub fn slow_network_bound_ms(slow_ms: u64) -> u64 {
    LIVENESS_BOUND_MS + 100 * slow_ms
}

/// The core configuration used for simulated replicas: small checkpoint
/// intervals and windows so that checkpoints, garbage collection and state
/// transfer happen many times per run.
pub fn core_config(membership: Membership) -> Config {
    let mut c = Config::new(membership);
    c.checkpoint_interval = 8;
    c.log_window = 32;
    c.batch_max_requests = 16;
    c.max_in_flight = 4;
    c.pipeline_min_batch = 4;
    c.request_timeout_ms = REQUEST_TIMEOUT_MS;
    c.view_change_timeout_ms = VIEW_CHANGE_TIMEOUT_MS;
    c.view_change_backoff_max = VIEW_CHANGE_BACKOFF_MAX;
    c.retransmit_ms = 100;
    c.status_interval_ms = 100;
    c.state_transfer_timeout_ms = 300;
    c.timestamp_tolerance_ms = 30_000;
    c.pending_max = 1_000;
    c.read_queue_max = 1_000;
    c.catch_up_max = 32;
    // A handful of closed-loop clients make few batches: a shorter watch
    // lets it act before the request timer does.
    c.batch_watch_skips = 3;
    c
}

/// Simulated time between two ticks of a replica or a client.
pub const TICK_MS: u64 = 10;
