//! One simulated run: n replicas and some clients on one thread, a network
//! that loses, duplicates, delays, reorders and partitions, crashes with
//! restarts from durable records (or without them), Byzantine replicas and
//! clients, and the checkers.
//!
//! A run has two phases. During the fault phase everything in the seed's
//! fault mix happens and only safety is checked. Then the network heals and
//! crashed replicas restart (Byzantine replicas stay Byzantine), and every
//! operation must complete within the liveness bound.

mod admin;
mod client;
mod faults;
mod network;
mod replica;
mod report;

use crate::byzantine::{self, Placement};
use crate::checker::{Checker, OpRecord};
use crate::config::{core_config, ByzantineChoice, SimConfig, TICK_MS};
use crate::crypto::{Keys, SimCrypto};
use crate::rng::Rng;
use crate::service::SimService;
use crate::votes::Votes;
use admin::ViewManager;
use client::SimClient;
use faults::Faults;
use network::Payload;
use palisade_core::reconfig::{Configuration, Member};
use palisade_core::{ClientId, Config, Digest, Executor, Input, Membership, Mode, Replica, ReplicaId, ViewNo};
use palisade_host::EpochHost;
use replica::{crypto_for, Disk, SimReplica};
pub use report::{DiskStats, Report};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) enum Event {
    Deliver {
        from: usize,
        to: usize,
        payload: Payload,
    },
    ReplicaTick(usize),
    ClientTick(usize),
    ViewManagerTick,
    Crash(usize),
    Restart(usize),
    /// Every correct replica crashes at once.
    CrashAll,
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

/// Everything in one run.
pub(crate) struct World {
    pub cfg: SimConfig,
    pub core_cfg: Config,
    /// The membership clients know: the newest epoch a correct replica's
    /// state has entered.
    pub membership: Membership,
    pub epoch_known: u64,
    /// The smallest f of any epoch a correct replica's state entered: the
    /// faults a run may have and still be promised progress.
    pub least_f: usize,
    pub genesis_config: Configuration,
    pub cluster: u64,
    pub view_manager: Option<ViewManager>,
    pub rng: Rng,
    pub now: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub replicas: Vec<SimReplica>,
    pub clients: Vec<SimClient>,
    pub keys: Arc<Keys>,
    pub genesis: Digest,
    pub faults: Faults,
    pub faulty_phase: bool,
    pub blocked: BTreeSet<(usize, usize)>,
    pub clogged: BTreeSet<(usize, usize)>,
    pub checker: Checker,
    pub votes: Votes,
    /// Replicas that crash in this run (and so may lose their votes).
    pub victims: BTreeSet<usize>,
    /// Replicas that restarted without their votes (a lost or damaged disk).
    pub lost_votes: BTreeSet<usize>,
    pub disk_stats: report::DiskStats,
    /// Windows of the fault phase in which messages are slow.
    pub slow_windows: Vec<(u64, u64)>,
    pub history: Vec<OpRecord>,
    pub heal_at: u64,
    pub messages: u64,
    /// Batches correct replicas' cores delivered past their epoch's end
    /// (never executed).
    pub void_batches: u64,
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
        let mut core_cfg = core_config(membership.clone());
        core_cfg.tentative_execution = cfg.tentative.unwrap_or(cfg.seed.is_multiple_of(2));
        core_cfg.leader_rotation_ms = cfg.rotation_ms;
        core_cfg.requests_to_all = cfg.requests_to_all;
        #[cfg(feature = "planted-bugs")]
        {
            core_cfg.planted = cfg.planted;
        }
        let f = membership.f();
        let n = cfg.replicas;
        let spares = if cfg.reconfigure { admin::spares(n) } else { 0 };
        let client_ids: Vec<ClientId> = (0..cfg.clients as u64).map(|i| ClientId(i + 1)).collect();
        let keys = Keys::new(cfg.seed, n + spares, &client_ids);
        let cluster = cfg.seed ^ 0x5eed;
        let genesis_config = Configuration::new(
            0,
            cluster,
            (0..n)
                .map(|i| Member {
                    id: ReplicaId(i as u32),
                    address: format!("sim:{i}"),
                    public_key: keys.replica_public(i),
                })
                .collect(),
            membership.f(),
            cfg.mode,
            keys.view_manager_public(),
        )
        .expect("the genesis membership is valid");
        let faults = Faults::draw(&mut rng, f, &cfg);

        // Byzantine replicas: f of them (one when n = 4), BFT mode only.
        // With several, each draws its own strategy (the first one the
        // named or drawn one), so different attacks combine in one run.
        let mut side = Rng::new(cfg.seed ^ 0x51de_57a7_e915_0000);
        let strategy_name: Option<String> = match (&cfg.byzantine, cfg.mode) {
            (_, Mode::Cft) | (ByzantineChoice::None, _) => None,
            (ByzantineChoice::Named(s), _) => Some(s.clone()),
            (ByzantineChoice::Random, _) => Some(byzantine::draw(&mut rng, &mut side).to_string()),
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
                    byzantine::draw(&mut rng, &mut side).to_string()
                };
                byz.insert(r, other);
            }
        }

        let genesis = Executor::new(SimService::default(), core_cfg.client_window)
            .with_reconfiguration(
                genesis_config.clone(),
                Arc::new(crate::crypto::SimAdmin(keys.clone())),
                core_cfg.checkpoint_interval,
            )
            .state_digest();
        let view_manager = cfg.reconfigure.then(|| {
            let id = ClientId::of_key(&keys.view_manager_public());
            ViewManager::draw(&mut rng, n, f, cfg.mode, id, cfg.fault_phase_ms / 5)
        });
        let replicas = (0..n + spares)
            .map(|i| {
                let id = ReplicaId(i as u32);
                let crypto = SimCrypto::new(id, keys.clone());
                let strategy = byz.get(&i).and_then(|name| byzantine::make(name));
                // Spares start too, on standby: they know only the genesis
                // configuration and ask its members for the epochs after it.
                let core = Replica::new(core_cfg.clone(), id, crypto.clone(), genesis);
                let host = EpochHost::new(core, genesis_config.clone(), core_cfg.clone(), crypto_for(&crypto));
                SimReplica {
                    id,
                    consensus: Some(host),
                    execution: None,
                    disk: Disk::new(),
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
        let mut world = World {
            core_cfg,
            least_f: membership.f(),
            membership,
            epoch_known: 0,
            genesis_config,
            cluster,
            view_manager,
            rng,
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            replicas,
            clients,
            keys,
            genesis,
            faults,
            faulty_phase: true,
            blocked: BTreeSet::new(),
            clogged: BTreeSet::new(),
            checker: Checker::default(),
            votes: Votes::default(),
            victims: BTreeSet::new(),
            lost_votes: BTreeSet::new(),
            disk_stats: Default::default(),
            slow_windows: Vec::new(),
            history: Vec::new(),
            heal_at,
            messages: 0,
            void_batches: 0,
            cfg,
        };
        for r in 0..n + spares {
            let exec = world.execution_host(r);
            world.replicas[r].execution = Some(exec);
        }
        world
    }

    pub(crate) fn schedule(&mut self, at: u64, event: Event) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled { time: at, order: self.order, event }));
    }

    pub(crate) fn n(&self) -> usize {
        self.replicas.len()
    }

    pub(crate) fn is_byzantine(&self, r: usize) -> bool {
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
        if self.view_manager.is_some() {
            self.schedule(0, Event::ViewManagerTick);
        }
        self.schedule_faults();
        self.schedule(self.heal_at, Event::Heal);
        // Each operation after the heal has the liveness bound to complete,
        // one after another: stop once none could still be within it.
        let mut hard_end = self.heal_at + (u64::from(self.cfg.ops_after_heal) + 2) * self.cfg.liveness_bound_ms;
        let mut draining = false;
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
                    if let (Some(host), true) = (&self.replicas[r].consensus, self.replicas[r].strategy.is_some()) {
                        let epoch = host.epoch();
                        let outs = self.with_strategy(r, |s, ctx| s.on_tick(ctx));
                        for o in outs {
                            if (o.to.0 as usize) < n && o.to.0 as usize != r {
                                self.send(r, o.to.0 as usize, Payload::Peer(epoch, o.msg), o.delay_ms);
                            }
                        }
                    }
                    self.schedule(self.now + TICK_MS, Event::ReplicaTick(r));
                }
                Event::ClientTick(c) => {
                    self.client_tick(c);
                    self.schedule(self.now + TICK_MS, Event::ClientTick(c));
                }
                Event::ViewManagerTick => {
                    self.view_manager_tick();
                    self.schedule(self.now + TICK_MS, Event::ViewManagerTick);
                }
                Event::Crash(r) => self.crash(r),
                Event::CrashAll => self.crash_all(),
                Event::Restart(r) => self.restart(r),
                Event::Partition => self.partition(),
                Event::HealPartition => self.blocked.clear(),
                Event::Heal => {
                    self.faulty_phase = false;
                    self.blocked.clear();
                    self.clogged.clear();
                    for r in 0..n {
                        if self.replicas[r].consensus.is_none() {
                            self.restart(r);
                        }
                    }
                }
            }
            let admin_done = self.view_manager.as_ref().is_none_or(|vm| vm.done());
            if !self.faulty_phase
                && admin_done
                && self.clients.iter().all(|c| c.ops_after_heal == 0 && c.current.is_none())
            {
                // A client may have accepted a quorum of tentative answers
                // for a batch that has not committed yet: run on until no
                // correct replica holds a tentative execution (within the
                // liveness bound), so the checker judges committed history.
                // Beyond the fault model nothing promises the commit, and
                // the checker counts such requests as pending instead.
                if self.beyond_model() {
                    break;
                }
                if !draining {
                    draining = true;
                    hard_end = hard_end.min(self.now + self.cfg.liveness_bound_ms);
                }
                let pending = self.replicas.iter().any(|r| {
                    r.strategy.is_none() && r.consensus.as_ref().is_some_and(|c| c.core().tentative().is_some())
                });
                if !pending {
                    break;
                }
            }
        }
        self.report()
    }
}
