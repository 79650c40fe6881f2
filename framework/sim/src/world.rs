//! One simulated run: n replicas and some clients on one thread, a network
//! that loses, duplicates, delays, reorders and partitions, crashes with
//! restarts from durable records, Byzantine replicas, and the checkers.
//!
//! A run has two phases. During the fault phase everything in the seed's
//! fault mix happens and only safety is checked. Then the network heals and
//! crashed replicas restart (Byzantine replicas stay Byzantine), and every
//! operation must complete within the liveness bound.

use crate::byzantine::{self, ByzCtx, Placement, Strategy};
use crate::checker::{Checker, FreshExec, OpRecord};
use crate::crypto::{Keys, SimCrypto};
use crate::rng::Rng;
use crate::service::{SimOp, SimService};
use crate::votes::Votes;
use palisade_core::exec::Lookup;
use palisade_core::replica::{Record, RecordLog, Restart};
use palisade_core::{
    Action, ClientId, Config, Digest, Executor, Input, Membership, Mode, PeerMessage, Replica, ReplicaId, Reply,
    Request, RequestId, SeqNo, ViewNo,
};
use palisade_services::counter::CounterOp;
use palisade_services::register::RegisterOp;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

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
    /// Clients that misbehave (the same request id with different
    /// operations to different replicas, requests only backups see); `None`
    /// draws zero or one from the seed.
    pub byzantine_clients: Option<usize>,
    /// Extra one-way delay of every message after the heal: a network
    /// slower than the protocol's timeouts, which must still make progress.
    pub slow_network_ms: u64,
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
            byzantine_clients: None,
            slow_network_ms: 0,
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

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Strategy of the Byzantine replicas, if any.
    pub strategy: Option<String>,
    /// The Byzantine replicas.
    pub byzantine: Vec<ReplicaId>,
    /// The faults of this run exceed what the protocol tolerates (f
    /// Byzantine replicas plus a replica that lost its votes): only safety
    /// is judged, since liveness is not promised.
    pub beyond_model: bool,
    /// The fault mix drawn for this seed.
    pub faults: String,
    /// Safety violations.
    pub safety: Vec<String>,
    /// Liveness failures.
    pub liveness: Vec<String>,
    /// Longest time from the heal to the completion of an operation that was pending at the heal.
    pub recovery_ms: Option<u64>,
    /// Operations clients completed.
    pub ops_completed: usize,
    /// Sequence numbers decided.
    pub batches: usize,
    /// Highest view any correct replica reached.
    pub max_view: u64,
    /// Snapshots installed by state transfer.
    pub state_transfers: u64,
    /// Times a correct replica that lost its votes finished rejoining.
    pub rejoins: u64,
    /// Messages put on the network.
    pub messages: u64,
    /// Each replica's state at the end, for diagnosing failures.
    pub replica_states: Vec<String>,
}

#[derive(Clone, Debug)]
enum Payload {
    Peer(PeerMessage),
    Request(Request),
    Reply(Reply),
}

#[derive(Debug)]
enum Event {
    Deliver { from: usize, to: usize, payload: Payload },
    ReplicaTick(usize),
    ClientTick(usize),
    Crash(usize),
    Restart(usize),
    Partition,
    HealPartition,
    Heal,
}

struct Scheduled {
    time: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.order) == (other.time, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.order).cmp(&(other.time, other.order))
    }
}

/// The fault mix of one seed.
#[derive(Clone, Debug)]
struct Faults {
    loss: f64,
    duplicate: f64,
    delay_max_ms: u64,
    partitions: bool,
    one_way: bool,
    crashes: usize,
    /// Crash victims lose their disks: they restart without their votes.
    amnesia: bool,
    /// Chance that a crash victim crashes right after any one record of a
    /// step is durable, before the rest of the step happens.
    torn_steps: f64,
    clogged: bool,
    /// Bursts of delays near the request timeout: views change again and
    /// again, and Q sets churn.
    asynchrony: bool,
    byzantine_clients: usize,
}

impl Faults {
    fn draw(rng: &mut Rng, f: usize, cfg: &SimConfig) -> Faults {
        let crashes = if rng.chance(0.6) { rng.range(1, f as u64 + 1) as usize } else { 0 };
        let amnesia = rng.chance(0.3);
        let byzantine_clients = usize::from(rng.chance(0.3));
        Faults {
            loss: if rng.chance(0.7) { rng.unit() * 0.3 } else { 0.0 },
            duplicate: if rng.chance(0.5) { rng.unit() * 0.5 } else { 0.0 },
            delay_max_ms: *[2u64, 10, 40, 120].get(rng.below(4) as usize).expect("index"),
            partitions: rng.chance(0.6),
            one_way: rng.chance(0.5),
            crashes: if cfg.amnesia == Some(true) { crashes.max(1) } else { crashes },
            amnesia: cfg.amnesia.unwrap_or(amnesia),
            torn_steps: if rng.chance(0.5) { 0.05 + rng.unit() * 0.25 } else { 0.0 },
            clogged: rng.chance(0.3),
            asynchrony: rng.chance(0.2),
            byzantine_clients: cfg.byzantine_clients.unwrap_or(byzantine_clients).min(cfg.clients),
        }
    }

    fn describe(&self) -> String {
        format!(
            "loss={:.2} dup={:.2} delay<={}ms partitions={}{} crashes={}{}{} clogged={} asynchrony={} byzantine-clients={}",
            self.loss,
            self.duplicate,
            self.delay_max_ms,
            self.partitions,
            if self.partitions && self.one_way { "(one-way too)" } else { "" },
            self.crashes,
            if self.crashes > 0 && self.amnesia { "(losing their votes)" } else { "" },
            if self.crashes > 0 && self.torn_steps > 0.0 { "(mid-step too)" } else { "" },
            self.clogged,
            self.asynchrony,
            self.byzantine_clients,
        )
    }
}

#[derive(Default)]
struct Disk {
    records: RecordLog,
    snapshots: BTreeMap<SeqNo, bytes::Bytes>,
}

impl Disk {
    fn persist(&mut self, record: Record) {
        self.records.append(record);
    }

    /// Keeps the snapshots from `keep_from` on (the previous stable
    /// checkpoint, which laggards may still fetch); if this replica has
    /// none there yet (it is about to fetch one), keeps its newest older
    /// one so that a crash before the transfer completes can still restart
    /// from something.
    fn on_stable(&mut self, keep_from: SeqNo) {
        let newer = self.snapshots.split_off(&keep_from);
        let fallback = self.snapshots.pop_last();
        self.snapshots = newer;
        if self.snapshots.is_empty() {
            self.snapshots.extend(fallback);
        }
    }
}

struct SimReplica {
    id: ReplicaId,
    core: Option<Replica<SimCrypto>>,
    exec: Option<Executor<SimService>>,
    disk: Disk,
    crypto: SimCrypto,
    strategy: Option<Box<dyn Strategy>>,
    rng: Rng,
    skew_ms: u64,
}

struct Current {
    record: usize,
    request: Request,
    replies: BTreeMap<ReplicaId, Reply>,
    retransmit_at: u64,
    backoff: u32,
}

struct SimClient {
    id: ClientId,
    /// Sends the same request id with different operations to different
    /// replicas, or requests only backups see; never waits for answers.
    byzantine: bool,
    next_request: u64,
    current: Option<Current>,
    next_op_at: u64,
    ops_after_heal: u32,
    view: ViewNo,
    rng: Rng,
}

const TICK_MS: u64 = 10;

struct World {
    cfg: SimConfig,
    core_cfg: Config,
    membership: Membership,
    rng: Rng,
    now: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    replicas: Vec<SimReplica>,
    clients: Vec<SimClient>,
    keys: Arc<Keys>,
    genesis: Digest,
    genesis_snapshot: bytes::Bytes,
    faults: Faults,
    faulty_phase: bool,
    blocked: BTreeSet<(usize, usize)>,
    clogged: BTreeSet<(usize, usize)>,
    checker: Checker,
    votes: Votes,
    /// Replicas that crash in this run (and so may lose their votes).
    victims: BTreeSet<usize>,
    /// Windows of the fault phase in which messages are slow.
    slow_windows: Vec<(u64, u64)>,
    history: Vec<OpRecord>,
    heal_at: u64,
    messages: u64,
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
    c
}

/// Hands a Byzantine replica's strategy the context it may use: its own key only.
fn with_strategy<T>(
    rep: &mut SimReplica,
    membership: &Membership,
    cfg: &Config,
    f: impl FnOnce(&mut dyn Strategy, &mut ByzCtx<'_>) -> T,
) -> T {
    let mut ctx = ByzCtx {
        me: rep.id,
        crypto: &rep.crypto,
        rng: &mut rep.rng,
        membership,
        request_timeout_ms: cfg.request_timeout_ms,
        log_window: cfg.log_window,
    };
    f(rep.strategy.as_deref_mut().expect("a Byzantine replica"), &mut ctx)
}

/// Runs one seed and judges it.
pub fn run(cfg: &SimConfig) -> Report {
    let mut world = World::new(cfg.clone());
    world.run()
}

impl World {
    fn new(cfg: SimConfig) -> World {
        let mut rng = Rng::new(cfg.seed);
        let membership = Membership::with_size(cfg.replicas, cfg.mode).expect("valid replica count");
        #[allow(unused_mut)]
        let mut core_cfg = core_config(membership.clone());
        #[cfg(feature = "planted-bugs")]
        {
            core_cfg.planted = cfg.planted;
        }
        let f = membership.f();
        let n = cfg.replicas;
        let client_ids: Vec<ClientId> = (0..cfg.clients as u64).map(|i| ClientId(i + 1)).collect();
        let keys = Keys::new(cfg.seed, n, &client_ids);
        let faults = Faults::draw(&mut rng, f, &cfg);

        // Byzantine replicas: f of them (one when n = 4), BFT mode only.
        // With several, each draws its own strategy (the first one the
        // named or drawn one), so different attacks combine in one run.
        let strategy_name: Option<String> = match (&cfg.byzantine, cfg.mode) {
            (_, Mode::Cft) | (ByzantineChoice::None, _) => None,
            (ByzantineChoice::Named(s), _) => Some(s.clone()),
            (ByzantineChoice::Random, _) => {
                let i = rng.below(byzantine::STRATEGIES.len() as u64) as usize;
                Some(byzantine::STRATEGIES[i].0.to_string())
            }
        };
        let mut byz: BTreeMap<usize, String> = BTreeMap::new();
        if let Some(name) = &strategy_name {
            let preferred = match byzantine::placement(name) {
                Placement::InitialPrimary => Some(0),
                Placement::FirstNewPrimary => Some(1 % n),
                Placement::Any => None,
            };
            if let Some(p) = preferred.filter(|_| rng.chance(0.75)) {
                byz.insert(p, name.clone());
            }
            while byz.len() < f {
                let r = rng.below(n as u64) as usize;
                if byz.contains_key(&r) {
                    continue;
                }
                let other = if byz.is_empty() || cfg.byzantine != ByzantineChoice::Random {
                    name.clone()
                } else {
                    let i = rng.below(byzantine::STRATEGIES.len() as u64) as usize;
                    byzantine::STRATEGIES[i].0.to_string()
                };
                byz.insert(r, other);
            }
        }

        let exec = Executor::new(SimService::default(), core_cfg.client_window);
        let genesis_snapshot = exec.snapshot();
        let genesis = Digest::of(&genesis_snapshot);
        let replicas = (0..n)
            .map(|i| {
                let id = ReplicaId(i as u32);
                let crypto = SimCrypto::new(id, keys.clone());
                let strategy = byz.get(&i).and_then(|name| byzantine::make(name));
                let mut disk = Disk::default();
                disk.snapshots.insert(SeqNo(0), genesis_snapshot.clone());
                SimReplica {
                    id,
                    core: Some(Replica::new(core_cfg.clone(), id, crypto.clone(), genesis)),
                    exec: Some(Executor::new(SimService::default(), core_cfg.client_window)),
                    disk,
                    crypto,
                    strategy,
                    rng: rng.fork(),
                    skew_ms: rng.below(200),
                }
            })
            .collect();
        let byzantine_clients = faults.byzantine_clients;
        let clients = client_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| SimClient {
                id,
                byzantine: i < byzantine_clients,
                ops_after_heal: if i < byzantine_clients { 0 } else { cfg.ops_after_heal },
                next_request: 1,
                current: None,
                next_op_at: 0,
                view: ViewNo(0),
                rng: rng.fork(),
            })
            .collect();
        let heal_at = cfg.fault_phase_ms;
        World {
            core_cfg,
            membership,
            rng,
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            replicas,
            clients,
            keys,
            genesis,
            genesis_snapshot,
            faults,
            faulty_phase: true,
            blocked: BTreeSet::new(),
            clogged: BTreeSet::new(),
            checker: Checker::default(),
            votes: Votes::default(),
            victims: BTreeSet::new(),
            slow_windows: Vec::new(),
            history: Vec::new(),
            heal_at,
            messages: 0,
            cfg,
        }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled { time: at, order: self.order, event }));
    }

    fn n(&self) -> usize {
        self.replicas.len()
    }

    fn is_byzantine(&self, r: usize) -> bool {
        self.replicas[r].strategy.is_some()
    }

    fn run(&mut self) -> Report {
        let n = self.n();
        for r in 0..n {
            self.schedule(r as u64, Event::ReplicaTick(r));
        }
        for c in 0..self.clients.len() {
            let at = self.rng.below(50);
            self.schedule(at, Event::ClientTick(c));
        }
        self.schedule_faults();
        self.schedule(self.heal_at, Event::Heal);
        // Each operation after the heal has the liveness bound to complete,
        // one after another: stop once none could still be within it.
        let hard_end = self.heal_at + (u64::from(self.cfg.ops_after_heal) + 2) * self.cfg.liveness_bound_ms;
        while let Some(Reverse(ev)) = self.queue.pop() {
            if ev.time > hard_end {
                break;
            }
            self.now = ev.time;
            match ev.event {
                Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
                Event::ReplicaTick(r) => {
                    let now = self.now + self.replicas[r].skew_ms;
                    self.replica_step(r, Input::Tick { now_ms: now, wall_ms: now });
                    if self.replicas[r].strategy.is_some() && self.replicas[r].core.is_some() {
                        let outs = with_strategy(&mut self.replicas[r], &self.membership, &self.core_cfg, |s, ctx| {
                            s.on_tick(ctx)
                        });
                        for o in outs {
                            if (o.to.0 as usize) < n && o.to.0 as usize != r {
                                self.send(r, o.to.0 as usize, Payload::Peer(o.msg), o.delay_ms);
                            }
                        }
                    }
                    self.schedule(self.now + TICK_MS, Event::ReplicaTick(r));
                }
                Event::ClientTick(c) => {
                    self.client_tick(c);
                    self.schedule(self.now + TICK_MS, Event::ClientTick(c));
                }
                Event::Crash(r) => self.crash(r),
                Event::Restart(r) => self.restart(r),
                Event::Partition => self.partition(),
                Event::HealPartition => self.blocked.clear(),
                Event::Heal => {
                    self.faulty_phase = false;
                    self.blocked.clear();
                    self.clogged.clear();
                    for r in 0..n {
                        if self.replicas[r].core.is_none() {
                            self.restart(r);
                        }
                    }
                }
            }
            if !self.faulty_phase && self.clients.iter().all(|c| c.ops_after_heal == 0 && c.current.is_none()) {
                break;
            }
        }
        self.report()
    }

    fn schedule_faults(&mut self) {
        let phase = self.cfg.fault_phase_ms;
        if self.faults.partitions {
            let mut t = self.rng.range(200, 1500);
            while t < phase {
                self.schedule(t, Event::Partition);
                let len = self.rng.range(300, 3000);
                self.schedule((t + len).min(phase), Event::HealPartition);
                t += len + self.rng.range(200, 1500);
            }
        }
        if self.faults.clogged {
            let n = self.n();
            for _ in 0..n {
                let a = self.rng.below(n as u64) as usize;
                let b = self.rng.below(n as u64) as usize;
                if a != b {
                    self.clogged.insert((a, b));
                }
            }
        }
        if self.faults.asynchrony {
            let mut t = self.rng.range(100, 1000);
            while t < phase {
                let len = self.rng.range(500, 2500);
                self.slow_windows.push((t, (t + len).min(phase)));
                t += len + self.rng.range(200, 1500);
            }
        }
        // Crashes: each crash victim is honest; a restart replays its
        // durable records, or, with amnesia, starts without its votes.
        let mut candidates: Vec<usize> = (0..self.n()).filter(|r| !self.is_byzantine(*r)).collect();
        for _ in 0..self.faults.crashes {
            if candidates.is_empty() {
                break;
            }
            let i = self.rng.below(candidates.len() as u64) as usize;
            let victim = candidates.swap_remove(i);
            self.victims.insert(victim);
            let mut t = self.rng.range(100, phase / 2);
            while t < phase {
                self.schedule(t, Event::Crash(victim));
                let down = self.rng.range(200, 3000);
                if t + down < phase {
                    self.schedule(t + down, Event::Restart(victim));
                }
                t += down + self.rng.range(500, 4000);
            }
        }
    }

    fn partition(&mut self) {
        self.blocked.clear();
        let nodes = self.n() + self.clients.len();
        let side: Vec<bool> = (0..nodes).map(|_| self.rng.chance(0.5)).collect();
        let one_way = self.faults.one_way && self.rng.chance(0.5);
        for a in 0..nodes {
            for b in 0..nodes {
                if side[a] && !side[b] {
                    self.blocked.insert((a, b));
                    if !one_way {
                        self.blocked.insert((b, a));
                    }
                }
            }
        }
    }

    // ----- network ---------------------------------------------------------

    fn send(&mut self, from: usize, to: usize, payload: Payload, extra_delay_ms: u64) {
        self.messages += 1;
        let (loss, dup, jitter) = if self.faulty_phase {
            (self.faults.loss, self.faults.duplicate, self.faults.delay_max_ms)
        } else {
            (0.0, 0.0, 3)
        };
        if self.faulty_phase && self.blocked.contains(&(from, to)) {
            return;
        }
        if self.rng.chance(loss) {
            return;
        }
        let mut delay = 1 + self.rng.below(jitter + 1) + extra_delay_ms;
        if self.clogged.contains(&(from, to)) {
            delay += 150;
        }
        if self.faulty_phase && self.slow_windows.iter().any(|(a, b)| (*a..*b).contains(&self.now)) {
            // Slow enough to trip request timers, and view-change timers too.
            delay += self.rng.below(3 * REQUEST_TIMEOUT_MS);
        }
        if !self.faulty_phase {
            delay += self.cfg.slow_network_ms;
        }
        if self.rng.chance(dup) {
            // A duplicate that may arrive much later: a replay.
            let later = delay + self.rng.below(500);
            self.schedule(self.now + later, Event::Deliver { from, to, payload: payload.clone() });
        }
        self.schedule(self.now + delay, Event::Deliver { from, to, payload });
    }

    fn deliver(&mut self, from: usize, to: usize, payload: Payload) {
        let n = self.n();
        if to >= n {
            if let Payload::Reply(r) = payload {
                self.client_reply(to - n, r);
            }
            return;
        }
        if self.replicas[to].core.is_none() {
            return;
        }
        match payload {
            Payload::Peer(msg) if from < n => {
                if self.replicas[to].strategy.is_some() {
                    let from = ReplicaId(from as u32);
                    with_strategy(&mut self.replicas[to], &self.membership, &self.core_cfg, |s, ctx| {
                        s.observe(ctx, from, &msg)
                    });
                }
                self.replica_step(to, Input::Peer { from: ReplicaId(from as u32), msg });
            }
            Payload::Request(req) if from >= n => {
                if !req.read_only {
                    let exec = self.replicas[to].exec.as_ref().expect("up");
                    match exec.lookup(req.client, req.id) {
                        Lookup::Cached(result) => {
                            let reply = self.make_reply(to, &req.client, req.id, result);
                            self.replica_reply(to, reply);
                            return;
                        }
                        Lookup::Stale => return,
                        Lookup::New => {}
                    }
                }
                self.replica_step(to, Input::Request(req));
            }
            _ => {}
        }
    }

    fn client_node(&self, client: ClientId) -> Option<usize> {
        let i = client.0.checked_sub(1)? as usize;
        (i < self.clients.len()).then_some(self.n() + i)
    }

    fn make_reply(&self, r: usize, client: &ClientId, request: RequestId, result: bytes::Bytes) -> Reply {
        let view = self.replicas[r].core.as_ref().map(|c| c.view()).unwrap_or_default();
        Reply { view, replica: ReplicaId(r as u32), client: *client, request, result }
    }

    fn replica_reply(&mut self, r: usize, reply: Reply) {
        let Some(node) = self.client_node(reply.client) else {
            return;
        };
        let reply = if self.replicas[r].strategy.is_some() {
            match with_strategy(&mut self.replicas[r], &self.membership, &self.core_cfg, |s, ctx| s.reply(ctx, reply)) {
                Some(r) => r,
                None => return,
            }
        } else {
            reply
        };
        self.send(r, node, Payload::Reply(reply), 0);
    }

    fn replica_send(&mut self, r: usize, to: ReplicaId, msg: PeerMessage) {
        if self.replicas[r].strategy.is_none() {
            self.send(r, to.0 as usize, Payload::Peer(msg), 0);
            return;
        }
        let outs =
            with_strategy(&mut self.replicas[r], &self.membership, &self.core_cfg, |s, ctx| s.outgoing(ctx, to, msg));
        for o in outs {
            if (o.to.0 as usize) < self.n() && o.to.0 as usize != r {
                self.send(r, o.to.0 as usize, Payload::Peer(o.msg), o.delay_ms);
            }
        }
    }

    // ----- replicas --------------------------------------------------------

    fn replica_step(&mut self, r: usize, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let actions = match self.replicas[r].core.as_mut() {
                Some(core) => {
                    let before = (core.view(), core.is_normal());
                    core.step(input);
                    let after = (core.view(), core.is_normal());
                    if self.cfg.trace && before != after {
                        eprintln!(
                            "{:>6} r{r} view {} normal={} -> view {} normal={}",
                            self.now, before.0, before.1, after.0, after.1
                        );
                    }
                    core.take_actions()
                }
                None => return,
            };
            if !self.apply_all(r, actions, &mut inputs) {
                return;
            }
        }
    }

    fn drain(&mut self, r: usize) {
        let actions = self.replicas[r].core.as_mut().map(|c| c.take_actions()).unwrap_or_default();
        let mut inputs = VecDeque::new();
        if !self.apply_all(r, actions, &mut inputs) {
            return;
        }
        while let Some(i) = inputs.pop_front() {
            self.replica_step(r, i);
        }
    }

    /// Carries out one step's actions in order; false if the replica
    /// crashed in the middle (right after one of its records became
    /// durable), in which case the rest of the step never happens.
    fn apply_all(&mut self, r: usize, actions: Vec<Action>, inputs: &mut VecDeque<Input>) -> bool {
        for a in actions {
            let persisted = matches!(a, Action::Persist(_));
            self.apply(r, a, inputs);
            if persisted && self.torn_step(r) {
                if self.cfg.trace {
                    eprintln!("{:>6} r{r} crashes in the middle of a step", self.now);
                }
                self.crash(r);
                let down = self.rng.range(100, 1500);
                self.schedule(self.now + down, Event::Restart(r));
                return false;
            }
        }
        true
    }

    /// Whether replica `r` crashes right after the record it just made durable.
    fn torn_step(&mut self, r: usize) -> bool {
        self.faulty_phase
            && self.faults.torn_steps > 0.0
            && self.victims.contains(&r)
            && self.now + 2_000 < self.heal_at
            && self.rng.chance(self.faults.torn_steps)
    }

    fn crash(&mut self, r: usize) {
        if self.cfg.trace {
            eprintln!("{:>6} r{r} crash", self.now);
        }
        let rep = &mut self.replicas[r];
        if let Some(core) = rep.core.take() {
            if core.metrics().alarms > 0 && rep.strategy.is_none() {
                self.checker.on_alarm(rep.id, core.metrics().alarms);
            }
        }
        rep.exec = None;
        if self.faults.amnesia {
            // The disk goes too: the replica will restart without its votes.
            rep.disk = Disk::default();
            rep.disk.snapshots.insert(SeqNo(0), self.genesis_snapshot.clone());
        }
    }

    fn apply(&mut self, r: usize, action: Action, inputs: &mut VecDeque<Input>) {
        let byz = self.is_byzantine(r);
        if self.cfg.trace {
            match &action {
                Action::Deliver { seq, view, batch } => {
                    eprintln!(
                        "{:>6} r{r} deliver seq {seq} view {view} batch {} ({} requests)",
                        self.now,
                        batch.digest(),
                        batch.requests.len()
                    )
                }
                Action::InstallSnapshot { seq, .. } => {
                    eprintln!("{:>6} r{r} install snapshot {seq}", self.now)
                }
                Action::Broadcast(PeerMessage::NewView(nv)) => {
                    eprintln!("{:>6} r{r} new-view {} chosen {:?}", self.now, nv.body.view, nv.body.chosen)
                }
                Action::Persist(rec) => eprintln!("{:>6} r{r} persist {rec:?}", self.now),
                _ => {}
            }
        }
        match action {
            Action::Persist(record) => self.replicas[r].disk.persist(record),
            Action::Send { to, msg } => {
                if !byz {
                    self.votes.on_send(ReplicaId(r as u32), &msg);
                }
                self.replica_send(r, to, msg)
            }
            Action::Broadcast(msg) => {
                if !byz {
                    self.votes.on_send(ReplicaId(r as u32), &msg);
                }
                let others: Vec<ReplicaId> =
                    self.membership.members().iter().copied().filter(|m| m.0 as usize != r).collect();
                for to in others {
                    self.replica_send(r, to, msg.clone());
                }
            }
            Action::Deliver { seq, view, batch } => {
                let exec = self.replicas[r].exec.as_mut().expect("up");
                let executed = exec.execute_batch(seq, view, &batch);
                let mut fresh = Vec::new();
                for e in &executed {
                    if e.fresh {
                        let op = batch
                            .requests
                            .iter()
                            .find(|q| q.client == e.client && q.id == e.request)
                            .map(|q| q.operation.clone())
                            .unwrap_or_default();
                        fresh.push(FreshExec {
                            client: e.client,
                            request: e.request,
                            operation: op,
                            result: e.result.clone(),
                        });
                    }
                }
                if !byz {
                    self.checker.on_deliver(ReplicaId(r as u32), seq, batch.digest(), fresh);
                }
                for e in executed {
                    let reply = self.make_reply(r, &e.client, e.request, e.result);
                    self.replica_reply(r, reply);
                }
                if seq.0 % self.core_cfg.checkpoint_interval == 0 {
                    let rep = &mut self.replicas[r];
                    let snapshot = rep.exec.as_ref().expect("up").snapshot();
                    let state = Digest::of(&snapshot);
                    rep.disk.snapshots.insert(seq, snapshot);
                    if !byz {
                        self.checker.on_checkpoint(ReplicaId(r as u32), seq, state);
                    }
                    inputs.push_back(Input::CheckpointReady { seq, state });
                }
            }
            Action::ExecuteReadOnly(req) => {
                let result = self.replicas[r].exec.as_ref().expect("up").execute_read_only(&req);
                let reply = self.make_reply(r, &req.client, req.id, result);
                self.replica_reply(r, reply);
            }
            Action::ServeSnapshot { to, seq } => {
                if let Some(snapshot) = self.replicas[r].disk.snapshots.get(&seq).cloned() {
                    self.replica_send(r, to, PeerMessage::StateReply { seq, snapshot });
                }
            }
            Action::InstallSnapshot { seq, snapshot } => {
                let rep = &mut self.replicas[r];
                if let Err(e) = rep.exec.as_mut().expect("up").install(&snapshot) {
                    self.checker
                        .violations
                        .push(format!("replica {r}: certified snapshot {seq} does not install: {e}"));
                }
                rep.disk.snapshots.insert(seq, snapshot);
            }
            Action::StableCheckpoint { keep_from, .. } => self.replicas[r].disk.on_stable(keep_from),
            Action::Dropped { .. } => {}
        }
    }

    fn restart(&mut self, r: usize) {
        if self.replicas[r].core.is_some() {
            return;
        }
        let votes_lost = self.faults.amnesia && self.victims.contains(&r);
        let nonce = self.rng.next_u64();
        let rep = &mut self.replicas[r];
        let (&seq, snapshot) = rep.disk.snapshots.last_key_value().expect("genesis snapshot is always kept");
        let snapshot = snapshot.clone();
        let mut exec = Executor::new(SimService::default(), self.core_cfg.client_window);
        exec.install(&snapshot).expect("own snapshot installs");
        let restart = Restart {
            records: rep.disk.records.records().to_vec(),
            votes_lost,
            executed: seq,
            executed_state: Digest::of(&snapshot),
            nonce,
        };
        if self.cfg.trace {
            eprintln!("{:>6} r{r} restart{}", self.now, if votes_lost { " without its votes" } else { "" });
        }
        let core = Replica::recover(self.core_cfg.clone(), rep.id, rep.crypto.clone(), self.genesis, restart);
        rep.exec = Some(exec);
        rep.core = Some(core);
        self.drain(r);
    }

    // ----- clients ---------------------------------------------------------

    fn client_tick(&mut self, c: usize) {
        let now = self.now;
        if self.clients[c].byzantine {
            self.byzantine_client_tick(c);
            return;
        }
        if let Some(cur) = &self.clients[c].current {
            if now >= cur.retransmit_at {
                if cur.request.read_only {
                    self.fallback_to_ordered(c);
                } else {
                    let cl = &mut self.clients[c];
                    let cur = cl.current.as_mut().expect("present");
                    cur.backoff = (cur.backoff + 1).min(3);
                    cur.retransmit_at = now + (CLIENT_RETRY_MS << cur.backoff).min(2_400);
                    let req = cur.request.clone();
                    self.broadcast_request(c, req);
                }
            }
            return;
        }
        let cl = &self.clients[c];
        let more = self.faulty_phase || cl.ops_after_heal > 0;
        if more && now >= cl.next_op_at {
            self.start_op(c);
        }
    }

    fn start_op(&mut self, c: usize) {
        let n = self.n();
        let cl = &mut self.clients[c];
        let op = match cl.rng.below(10) {
            0..=2 => SimOp::Counter(CounterOp::Add(cl.rng.range(1, 10))),
            3..=5 => SimOp::Register(RegisterOp::Write(((c as u64 + 1) << 32) | cl.next_request)),
            6 | 7 => SimOp::Counter(CounterOp::Get),
            _ => SimOp::Register(RegisterOp::Read),
        };
        let id = RequestId(cl.next_request);
        cl.next_request += 1;
        let mut request = Request {
            client: cl.id,
            id,
            read_only: op.is_read_only(),
            operation: op.encode(),
            auth: Default::default(),
        };
        self.keys.sign_request(&mut request);
        self.history.push(OpRecord {
            client: cl.id,
            requests: vec![id],
            op,
            invoke_ms: self.now,
            complete_ms: None,
            result: None,
        });
        let record = self.history.len() - 1;
        let primary = self.membership.primary(cl.view);
        cl.current = Some(Current {
            record,
            request: request.clone(),
            replies: BTreeMap::new(),
            retransmit_at: self.now + CLIENT_RETRY_MS,
            backoff: 0,
        });
        if request.read_only {
            self.broadcast_request(c, request);
        } else {
            self.send(n + c, primary.0 as usize, Payload::Request(request), 0);
        }
    }

    /// A faulty client: every so often it sends a request either with the
    /// same id but a different operation to each replica, or to the backups
    /// of view 0 only. Its requests are properly signed: it is a client of
    /// the cluster, just not an honest one.
    fn byzantine_client_tick(&mut self, c: usize) {
        let n = self.n();
        let cl = &mut self.clients[c];
        if self.now < cl.next_op_at {
            return;
        }
        cl.next_op_at = self.now + cl.rng.range(20, 120);
        let id = RequestId(cl.next_request);
        cl.next_request += 1;
        let split = cl.rng.chance(0.5);
        let client = cl.id;
        let primary = self.membership.primary(ViewNo(0)).0 as usize;
        for r in 0..n {
            let op =
                if split { SimOp::Counter(CounterOp::Add(r as u64 + 1)) } else { SimOp::Counter(CounterOp::Add(7)) };
            if !split && r == primary {
                continue;
            }
            let mut request =
                Request { client, id, read_only: false, operation: op.encode(), auth: Default::default() };
            self.keys.sign_request(&mut request);
            self.send(n + c, r, Payload::Request(request), 0);
        }
    }

    fn broadcast_request(&mut self, c: usize, req: Request) {
        let n = self.n();
        for r in 0..n {
            self.send(n + c, r, Payload::Request(req.clone()), 0);
        }
    }

    /// A read-only request that could not gather a quorum of matching
    /// replies is retried as an ordered request under a new id.
    fn fallback_to_ordered(&mut self, c: usize) {
        let n = self.n();
        let cl = &mut self.clients[c];
        let cur = cl.current.as_mut().expect("present");
        let id = RequestId(cl.next_request);
        cl.next_request += 1;
        let mut request = Request { id, read_only: false, ..cur.request.clone() };
        self.keys.sign_request(&mut request);
        cur.request = request.clone();
        cur.replies.clear();
        cur.retransmit_at = self.now + CLIENT_RETRY_MS;
        cur.backoff = 0;
        self.history[cur.record].requests.push(id);
        let primary = self.membership.primary(cl.view);
        self.send(n + c, primary.0 as usize, Payload::Request(request), 0);
    }

    fn client_reply(&mut self, c: usize, reply: Reply) {
        let n = self.n();
        let need_ordered = self.membership.weak_quorum();
        let need_read = self.membership.quorum();
        let cl = &mut self.clients[c];
        let Some(cur) = cl.current.as_mut() else {
            return;
        };
        if reply.request != cur.request.id || reply.client != cl.id {
            return;
        }
        cur.replies.insert(reply.replica, reply);
        let need = if cur.request.read_only { need_read } else { need_ordered };
        let mut counts: BTreeMap<&[u8], Vec<ViewNo>> = BTreeMap::new();
        for r in cur.replies.values() {
            counts.entry(r.result.as_ref()).or_default().push(r.view);
        }
        let winner = counts.into_iter().find(|(_, views)| views.len() >= need);
        match winner {
            Some((result, mut views)) => {
                views.sort();
                let view = views[views.len() / 2];
                let rec = &mut self.history[cur.record];
                rec.complete_ms = Some(self.now);
                rec.result = Some(bytes::Bytes::copy_from_slice(result));
                cl.view = view;
                cl.current = None;
                if !self.faulty_phase {
                    cl.ops_after_heal = cl.ops_after_heal.saturating_sub(1);
                }
                cl.next_op_at = self.now + cl.rng.below(40);
            }
            None => {
                if cur.request.read_only && cur.replies.len() == n {
                    self.fallback_to_ordered(c);
                }
            }
        }
    }

    // ----- judgement -------------------------------------------------------

    fn report(&mut self) -> Report {
        let history = std::mem::take(&mut self.history);
        self.checker.check_linearizable(&history);
        let mut max_view = 0;
        let mut state_transfers = 0;
        let mut rejoins = 0;
        for (r, rep) in self.replicas.iter().enumerate() {
            if rep.strategy.is_some() {
                continue;
            }
            if let Some(core) = &rep.core {
                max_view = max_view.max(core.view().0);
                state_transfers += core.metrics().state_transfers;
                rejoins += core.metrics().rejoined;
                if core.metrics().alarms > 0 {
                    self.checker.on_alarm(ReplicaId(r as u32), core.metrics().alarms);
                }
            }
        }
        let mut liveness = Vec::new();
        let mut recovery_ms: Option<u64> = None;
        for op in &history {
            let start = op.invoke_ms.max(self.heal_at);
            match op.complete_ms {
                Some(done) if done <= start + self.cfg.liveness_bound_ms => {
                    if op.invoke_ms < self.heal_at && done >= self.heal_at {
                        recovery_ms = Some(recovery_ms.unwrap_or(0).max(done - self.heal_at));
                    }
                }
                Some(done) => liveness.push(format!(
                    "client {} request {:?} took {} ms after {} ms (bound {} ms)",
                    op.client,
                    op.requests.last(),
                    done - start,
                    start,
                    self.cfg.liveness_bound_ms
                )),
                None => liveness.push(format!(
                    "client {} request {:?} invoked at {} ms never completed (heal at {} ms)",
                    op.client,
                    op.requests.last(),
                    op.invoke_ms,
                    self.heal_at
                )),
            }
        }
        for cl in &self.clients {
            if cl.ops_after_heal > 0 && cl.current.is_none() {
                liveness.push(format!("client {} still had {} operations to run", cl.id, cl.ops_after_heal));
            }
        }
        // f Byzantine replicas plus replicas that lost their votes are more
        // faults than the protocol tolerates: it must stay safe, but it is
        // not promised to make progress (a replica without its votes waits
        // for progress to rejoin, and progress waits for its votes).
        let byzantine_count = self.replicas.iter().filter(|r| r.strategy.is_some()).count();
        let amnesiac_count = if self.faults.amnesia { self.victims.len() } else { 0 };
        let beyond_model = byzantine_count + amnesiac_count > self.membership.f();
        if beyond_model {
            liveness.clear();
        }
        self.checker.violations.append(&mut self.votes.violations);
        let byzantine: Vec<ReplicaId> = self.replicas.iter().filter(|r| r.strategy.is_some()).map(|r| r.id).collect();
        let replica_states = self
            .replicas
            .iter()
            .map(|rep| match &rep.core {
                None => format!("r{} down", rep.id),
                Some(c) => format!(
                    "r{}{} view={}{} delivered={} stable={} pending={} transfer={} {:?}",
                    rep.id,
                    if rep.strategy.is_some() { "(byz)" } else { "" },
                    c.view(),
                    if c.is_normal() { "" } else { "(changing)" },
                    c.delivered(),
                    c.stable_checkpoint().seq,
                    c.pending_requests(),
                    c.transferring(),
                    c.metrics().dropped
                ),
            })
            .collect();
        Report {
            replica_states,
            seed: self.cfg.seed,
            strategy: {
                let names: Vec<&str> =
                    self.replicas.iter().filter_map(|r| r.strategy.as_ref().map(|s| s.name())).collect();
                (!names.is_empty()).then(|| names.join("+"))
            },
            byzantine,
            beyond_model,
            faults: self.faults.describe(),
            safety: std::mem::take(&mut self.checker.violations),
            liveness,
            recovery_ms,
            ops_completed: history.iter().filter(|o| o.complete_ms.is_some()).count(),
            batches: self.checker.decided_count(),
            max_view,
            state_transfers,
            rejoins,
            messages: self.messages,
        }
    }
}
