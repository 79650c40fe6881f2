//! The pipeline, wired top to bottom: the queues, the stages, the threads
//! that run them, and the network stage.

use crate::config::{RuntimeConfig, Start};
use crate::crypto::{ClientKeys, Ed25519Crypto, VerifiedRequests, CLIENT_KEY_GRACE};
use crate::egress::{Egress, Outbox};
use crate::metrics::RuntimeMetrics;
use crate::net::{self, Net};
use crate::queue::{queue, Bell, Outflow, Rx};
use crate::runner::{run_stages, run_stages_on_network, Stage, StageThreads, Timed};
use crate::shared::{CurrentView, PublishedChain};
use crate::stages::{
    Consensus, ConsensusMembership, Delivery, DeliveryDisk, JournalLink, PrePrepareVerifier, Replier, RequestFilter,
    Ticker, Verifier,
};
use crate::storage::{DurableMarks, SnapshotPolicy, SnapshotWriter, StorageStage};
use ed25519_dalek::SigningKey;
use palisade_core::reconfig::Configuration;
use palisade_core::replica::Restart;
use palisade_core::{Executor, Replica, ReplicaId, SeqNo, Service};
use palisade_host::epochs::plan_restart;
use palisade_host::{CryptoFor, Durability, EpochHost, ExecutionConfig, ExecutionHost, RecoveryReport};
use palisade_storage::{FsDir, WalOptions};
use palisade_wire::chain::Chain;
use palisade_wire::handshake::Keyring;
use palisade_wire::verify::VerifyLimits;
use palisade_wire::ClusterConfig;
use palisade_wire::RequestAuth;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running replica.
pub struct ReplicaHandle {
    id: ReplicaId,
    metrics: Arc<RuntimeMetrics>,
    stop: Arc<AtomicBool>,
    system: Option<actix_rt::System>,
    threads: Vec<JoinHandle<()>>,
    recovery: Option<RecoveryReport>,
    marks: Option<Arc<DurableMarks>>,
    /// How long a removed replica serves on.
    leave_grace: Duration,
    /// When this replica was first seen removed, and by which epoch.
    removed_at: parking_lot::Mutex<Option<(u64, std::time::Instant)>>,
}

impl ReplicaHandle {
    /// What the replica recovered from its data directory, if it keeps one.
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// Whether the replica stopped by itself, and why (a disk that failed:
    /// it never runs on without the durability it was configured for).
    pub fn failure(&self) -> Option<String> {
        self.marks.as_ref().and_then(|m| m.failure.lock().clone())
    }

    /// The epoch that removed this replica from the cluster, once the
    /// replica has served laggards and redirected clients for its grace
    /// period (`leave_grace_ms`): the caller may then stop it.
    pub fn removed(&self) -> Option<u64> {
        let removed_in = self.metrics.core.lock().removed_in;
        let mut at = self.removed_at.lock();
        match (removed_in, *at) {
            (None, _) => {
                *at = None;
                None
            }
            (Some(epoch), None) => {
                *at = Some((epoch, std::time::Instant::now()));
                None
            }
            (Some(_), Some((epoch, since))) => (since.elapsed() >= self.leave_grace).then_some(epoch),
        }
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// Counters and the core's state.
    pub fn metrics(&self) -> &Arc<RuntimeMetrics> {
        &self.metrics
    }

    /// Current depth of every queue, by name.
    pub fn queue_depths(&self) -> Vec<(&'static str, usize)> {
        self.metrics.queues().into_iter().map(|(n, d, _)| (n, d)).collect()
    }

    /// Stops every stage and closes every connection, then waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Blocks until the replica stops (it runs until [`Self::stop`]).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sys) = self.system.take() {
            sys.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ReplicaHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The identities handshakes accept before the consensus stage says whom
/// to deal with: the members `cluster.toml` and the newest configuration
/// known list, and this replica.
fn keyring_of(cluster: &ClusterConfig, newest: &Configuration, me: ReplicaId, key: &SigningKey) -> Keyring {
    let mut keyring = Keyring::from_config(cluster);
    for m in &newest.members {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_bytes(&m.public_key) {
            keyring.replicas.insert(m.id, k);
        }
    }
    keyring.replicas.insert(me, key.verifying_key());
    keyring
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(name.to_string()).spawn(f).expect("spawn a stage thread")
}

fn gauge<T: Send + 'static>(metrics: &RuntimeMetrics, name: &'static str, rx: &Rx<T>) {
    metrics.gauge(name, rx.capacity(), rx.depth_probe());
}

/// Starts replica `me` of `cluster` running `service`: binds its address,
/// dials its peers and starts every stage. Returns once the listener is bound.
pub fn spawn_replica<S: Service + Send + Sync + 'static>(
    cluster: &ClusterConfig,
    me: ReplicaId,
    key: SigningKey,
    service: S,
    cfg: RuntimeConfig,
) -> Result<ReplicaHandle, String> {
    cfg.validate()?;
    // The membership as far as this replica knows it before recovery:
    // `cluster.toml`, then the links it was given and those it kept.
    let genesis_config = cluster.genesis();
    let mut chain = Chain::new(genesis_config.clone());
    let mut known = cfg.links.clone();
    if let (Some(dir), true) = (&cfg.data_dir, cfg.durability != Durability::None) {
        known.extend(Chain::load(dir, genesis_config.clone()).map_err(|e| e.to_string())?.links().iter().cloned());
    }
    chain.extend(known).map_err(|e| format!("a link of the chain of epochs: {e}"))?;
    // Where this replica listens: the newest configuration listing it, or
    // the address it was started with to join.
    let listed = chain
        .links()
        .iter()
        .rev()
        .map(|l| &l.config)
        .chain(std::iter::once(&genesis_config))
        .find_map(|c| c.member(me).cloned());
    let address = match (&listed, cfg.listen) {
        (Some(m), _) => {
            if m.public_key != key.verifying_key().to_bytes() {
                return Err(format!(
                    "the key file does not belong to replica {me}: its public key is not the one the configuration lists"
                ));
            }
            match cfg.bind {
                Some(a) => a,
                None => palisade_wire::address::HostPort::parse(&m.address)
                    .ok()
                    .and_then(|a| a.resolve())
                    .ok_or_else(|| format!("cannot resolve {}", m.address))?,
            }
        }
        (None, Some(a)) => cfg.bind.unwrap_or(a),
        (None, None) => {
            return Err(format!("replica {me} is not in cluster.toml (start it with --join to have it admitted)"))
        }
    };
    let metrics = Arc::new(RuntimeMetrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let view = Arc::new(CurrentView::default());
    let published = Arc::new(PublishedChain::default());

    // One bell per runner thread: shared by every CPU stage, or one each.
    let shared = Bell::default();
    let bell = || if cfg.stage_threads == StageThreads::Dedicated { Bell::default() } else { shared.clone() };
    let (b_verify, b_verify_pp, b_filter, b_ticker, b_consensus, b_delivery, b_reply) =
        (bell(), bell(), bell(), bell(), bell(), bell(), bell());

    // The queues, in pipeline order; the producer's bell where the producer
    // waits for room instead of dropping.
    let (tx_verify, rx_verify) = queue(cfg.verify_queue, &b_verify, None);
    let (tx_filter, rx_filter) = queue(cfg.filter_queue, &b_filter, Some(&b_verify));
    let (tx_requests, rx_requests) = queue(cfg.request_queue, &b_consensus, Some(&b_filter));
    let (tx_peer, rx_peer) = queue(cfg.peer_queue, &b_consensus, None);
    let (tx_preprepare, rx_preprepare) = queue(cfg.peer_queue, &b_verify_pp, None);
    let (tx_tick, rx_tick) = queue(4, &b_consensus, None);
    let (tx_delivery, rx_delivery) = queue(cfg.delivery_queue, &b_delivery, Some(&b_consensus));
    let (tx_control, rx_control) = queue(cfg.control_queue(), &b_consensus, Some(&b_delivery));
    let (tx_reply, rx_reply) = queue(cfg.reply_queue, &b_reply, Some(&b_delivery));
    gauge(&metrics, "verify_queue", &rx_verify);
    gauge(&metrics, "filter_queue", &rx_filter);
    gauge(&metrics, "request_queue", &rx_requests);
    gauge(&metrics, "peer_queue", &rx_peer);
    gauge(&metrics, "delivery_queue", &rx_delivery);
    gauge(&metrics, "reply_queue", &rx_reply);

    // Without client signatures the verification stage has nothing left to
    // check (connection actors check size and client id), so requests skip
    // that hop and go straight to the filter.
    let signing = cluster.request_auth.clients_sign();
    let tx_from_net = if signing { tx_verify.clone() } else { tx_filter.clone() };
    // When clients sign, PRE-PREPAREs pass through verification too, so the
    // consensus stage never checks a signature one at a time (with
    // authenticators, only the requests whose MAC fails are checked).
    let verified = Arc::new(VerifiedRequests::new(cfg.verified_cache));
    let credits = Arc::new(crate::shared::ClientCredits::new(cfg.client_in_flight_max));
    let client_keys = Arc::new(ClientKeys::new(cfg.max_client_connections.saturating_mul(2), CLIENT_KEY_GRACE));
    let net = Arc::new(Net::new(
        me,
        cluster.cluster_id,
        cluster.max_frame_bytes,
        &cfg,
        tx_peer.clone(),
        tx_from_net,
        signing.then(|| tx_preprepare.clone()),
        metrics.clone(),
        client_keys.clone(),
        keyring_of(cluster, chain.newest(), me, &key),
        published.clone(),
    ));
    {
        let (peers, clients) = (Arc::downgrade(&net), Arc::downgrade(&net));
        metrics.level("peers_connected", move || peers.upgrade().map_or(0, |n| n.peers.distinct()));
        metrics.level("clients_connected", move || clients.upgrade().map_or(0, |n| n.clients.distinct()));
    }
    let egress: Arc<dyn Egress> = net.clone();
    #[cfg(feature = "byzantine")]
    let (egress, misbehave): (Arc<dyn Egress>, _) = match cfg.misbehave {
        Some(mode) => {
            let trigger = cfg.misbehave_trigger.clone();
            let m = crate::byzantine::Misbehaving::new(
                egress,
                mode,
                cluster.cluster_id,
                cfg.protocol.request_timeout_ms,
                trigger,
            );
            let active = m.active();
            (m, Some((mode, active)))
        }
        None => (egress, None),
    };
    let listener = std::net::TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;

    // Execution state, shared by the filter (reply cache) and delivery.
    // The membership is part of it: reconfiguration requests signed by the
    // view manager change it (docs/reconfiguration.md).
    let exec = Arc::new(RwLock::new(Executor::new(service, cfg.protocol.client_window).with_reconfiguration(
        genesis_config.clone(),
        Arc::new(palisade_wire::verify::AdminCrypto),
        cfg.protocol.checkpoint_interval,
    )));
    // A result must fit one frame with the reply's envelope and header.
    let max_result_bytes = cluster.max_frame_bytes.saturating_sub(1024);
    let ecfg = ExecutionConfig {
        max_result_bytes,
        checkpoint_interval: cfg.protocol.checkpoint_interval,
        log_window: cfg.protocol.log_window,
        reply_digests: cfg.reply_digests,
        // An answer about the state must fit one frame with the envelope.
        max_answer_bytes: cluster.max_frame_bytes.saturating_sub(1024).max(4096),
        fetch_window: cfg.protocol.state_fetch_window,
        ..ExecutionConfig::new(me, cluster.membership.clone())
    };
    // The genesis state's digest, before any recovery replaces the state.
    let genesis = exec.read().state_digest();
    let nonce = {
        use rand_core::RngCore;
        rand_core::OsRng.next_u64()
    };
    let mut disk = None;
    let mut records_link = None;
    let (execution, restart, recovery) = match (&cfg.data_dir, cfg.durability) {
        (Some(path), mode) if mode != Durability::None => {
            let dir = Arc::new(FsDir::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?);
            dir.lock().map_err(|e| format!("{}: {e}", path.display()))?;
            let wal = WalOptions { segment_bytes: cfg.wal_segment_bytes };
            let rec = palisade_host::durable::recover(dir.clone(), mode, wal, exec.clone(), ecfg, nonce)
                .map_err(|e| format!("cannot recover from {}: {e}", path.display()))?;
            disk = Some((rec.snapshots, rec.journal));
            records_link = rec.epoch;
            (rec.execution, rec.restart, Some(rec.report))
        }
        _ => (ExecutionHost::new(exec.clone(), ecfg, None)?, None, None),
    };

    // The CPU stages, in pipeline order, each with its bell.
    let mut stages: Vec<(Bell, Box<dyn Stage>)> = Vec::new();

    // Request verification (when clients sign): client requests, and the
    // requests inside PRE-PREPAREs, on one rayon pool.
    if signing {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(cfg.verify_threads)
                .thread_name(|i| format!("verify-{i}"))
                .build()
                .map_err(|e| e.to_string())?,
        );
        let limits = VerifyLimits { max_operation_bytes: cfg.max_operation_bytes, ..VerifyLimits::default() };
        // With authenticators only the primary checks client signatures (a
        // backup knows a client by its channel, and a proposed request by
        // its MAC); a backup that becomes primary checks what it holds as
        // it proposes it.
        let authenticators = cluster.request_auth == RequestAuth::Authenticators;
        stages.push((
            b_verify,
            Box::new(Verifier {
                rx: rx_verify,
                tx: tx_filter,
                tx_reply: tx_reply.clone(),
                verified: verified.clone(),
                limits,
                pool: pool.clone(),
                metrics: metrics.clone(),
                drain_max: cfg.drain_max,
                primary_only: authenticators.then(|| view.clone()),
                intake: crate::stages::FairIntake::new(cfg.client_quota, cfg.verify_queue),
                failures: Default::default(),
                failures_max: cfg.verify_failures_max.max(1),
                egress: egress.clone(),
                macs: authenticators.then(|| (client_keys.clone(), me)),
                credits: credits.clone(),
                over_quota: net.over_quota.clone(),
                banned: net.banned.clone(),
                waiting: net.waiting.clone(),
            }),
        ));
        stages.push((
            b_verify_pp,
            Box::new(PrePrepareVerifier {
                rx: rx_preprepare,
                tx_peer,
                verified: verified.clone(),
                limits,
                pool,
                metrics: metrics.clone(),
                drain_max: cfg.drain_max,
                macs: authenticators.then(|| (client_keys.clone(), me)),
            }),
        ));
    }

    // The request filter: reply cache and stale ids.
    stages.push((
        b_filter,
        Box::new(RequestFilter {
            rx: rx_filter,
            tx: tx_requests,
            tx_reply: tx_reply.clone(),
            exec: exec.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
            drain_max: cfg.drain_max,
            max_result_bytes,
            credits: signing.then(|| credits.clone()),
        }),
    ));

    // Consensus: the pure core of the epoch this replica restarts in,
    // hosted with the cores of the epochs to come.
    let auth = cluster.request_auth;
    let mut crypto_for: CryptoFor<Ed25519Crypto> = {
        let (key, verified, client_keys) = (key.clone(), verified.clone(), client_keys.clone());
        Box::new(move |c: &Configuration| {
            Ed25519Crypto::new(me, key.clone(), c, auth, verified.clone(), client_keys.clone())
        })
    };
    if let Some(link) = &records_link {
        chain.extend(vec![link.clone()]).map_err(|e| format!("the epoch the log names: {e}"))?;
    }
    let restart = match (restart, cfg.start) {
        (Some(restart), _) => Some(restart),
        (None, Start::Fresh) => None,
        (None, Start::LostVotes) => {
            Some(Restart { votes_lost: true, executed: SeqNo(0), executed_state: genesis, nonce, records: Vec::new() })
        }
    };
    // In `log` mode replies wait until their batch is logged as decided,
    // which a tentative batch is not: tentative execution would only add
    // work there.
    let mut protocol_cfg = cfg.protocol.clone();
    protocol_cfg.tentative_execution &= cfg.durability != Durability::Log;
    // The clients' side of the cluster's contract: they send to every
    // replica, so backups forward late rather than at once.
    protocol_cfg.requests_to_all = cluster.requests_to_all;
    #[cfg(feature = "byzantine")]
    if let Some(mode) = cfg.misbehave {
        mode.tune(&mut protocol_cfg);
    }
    let host = match restart {
        Some(restart) => {
            let e = exec.read();
            let (config, since) = e.configuration_since().unwrap_or((&genesis_config, SeqNo(0)));
            let state = (config, since, e.pending_configuration().map(|(_, b)| b));
            let plan = plan_restart(restart, records_link.as_ref(), state, (&genesis_config, genesis), chain.links())?;
            drop(e);
            EpochHost::restarting(plan, me, protocol_cfg, crypto_for)
        }
        None => {
            let mut protocol = protocol_cfg.clone();
            protocol.membership = genesis_config.membership();
            let core = Replica::new(protocol, me, crypto_for(&genesis_config), genesis);
            EpochHost::new(core, genesis_config.clone(), protocol_cfg, crypto_for)
        }
    }
    .knowing(chain.links().to_vec());
    // The storage stage and the snapshot writer, when the replica keeps a disk.
    let mut threads = Vec::new();
    let marks = disk.as_ref().map(|_| Arc::new(DurableMarks::default()));
    let mut journal_link = None;
    let mut delivery_disk = None;
    if let (Some((snapshot_files, journal)), Some(marks)) = (disk, &marks) {
        let b_storage = Bell::default();
        let (tx_storage, rx_storage) = queue(cfg.storage_queue, &b_storage, Some(&b_consensus));
        gauge(&metrics, "storage_queue", &rx_storage);
        let last = recovery.as_ref().and_then(|r| r.snapshot).map_or(SeqNo(0), |(s, _)| s);
        let (snapshots, writer) = SnapshotWriter::spawn(
            snapshot_files,
            SnapshotPolicy { interval: cfg.snapshot_interval, last, duty_percent: cfg.snapshot_duty_percent },
            marks.clone(),
            metrics.clone(),
            stop.clone(),
            b_delivery.clone(),
        );
        threads.push(writer);
        delivery_disk = Some(DeliveryDisk {
            hold_replies: cfg.durability == Durability::Log,
            marks: marks.clone(),
            snapshots,
            held: Default::default(),
            held_tentative: Default::default(),
            forced: None,
        });
        journal_link = Some(JournalLink {
            tx: Outflow::new(tx_storage),
            marks: marks.clone(),
            votes: cfg.durability.logs_votes(),
            batches: cfg.durability.logs_batches(),
            submitted: 0,
            pending: Vec::new(),
        });
        let stage = StorageStage {
            journal,
            rx: rx_storage,
            egress: egress.clone(),
            marks: marks.clone(),
            metrics: metrics.clone(),
            wake: b_delivery.clone(),
            stop: stop.clone(),
            drain_max: cfg.drain_max,
            snapshot_applied: last.0,
        };
        let stop = stop.clone();
        let stage = Timed::wrap(Box::new(stage), &metrics);
        threads.push(spawn("storage", move || run_stages(vec![stage], b_storage, stop)));
    }
    stages.push((
        b_consensus,
        Box::new(Consensus {
            host,
            membership: ConsensusMembership {
                cluster: cluster.clone(),
                chain: published,
                keep_in: cfg.data_dir.clone().filter(|_| cfg.durability != Durability::None),
                peer_epochs: Vec::new(),
                published: 0,
            },
            journal: journal_link,
            rx_peer,
            rx_requests,
            rx_control,
            rx_tick,
            tx_delivery: Outflow::new(tx_delivery),
            tx_reply: tx_reply.clone(),
            egress: egress.clone(),
            view,
            metrics: metrics.clone(),
            drain_max: cfg.drain_max,
            outbox: Outbox::new(),
            started: false,
            links: net.links.clone(),
            links_told: Default::default(),
            credits: signing.then(|| credits.clone()),
            #[cfg(feature = "byzantine")]
            forged_request: cfg.forged_request.clone(),
            #[cfg(feature = "byzantine")]
            misbehave,
            #[cfg(feature = "byzantine")]
            starved: None,
        }),
    ));

    // Delivery.
    stages.push((
        b_delivery,
        Box::new(Delivery {
            rx: rx_delivery,
            host: execution,
            tx_control: Outflow::new(tx_control),
            tx_reply: Outflow::new(tx_reply),
            egress: egress.clone(),
            metrics: metrics.clone(),
            drain_max: cfg.drain_max,
            disk: delivery_disk,
            delivered: 0,
            fetch_logged: 0,
        }),
    ));

    // Reply sending.
    stages.push((
        b_reply,
        Box::new(Replier {
            rx: rx_reply,
            egress,
            metrics: metrics.clone(),
            drain_max: cfg.drain_max,
            outbox: Outbox::new(),
            linger: crate::stages::Linger {
                max: std::time::Duration::from_millis(cfg.reply_linger_ms),
                min_batch: cfg.reply_linger_min_batch,
            },
            held: Default::default(),
        }),
    ));

    // The ticker.
    stages.push((
        b_ticker,
        Box::new(Ticker { tx: tx_tick, period: Duration::from_millis(cfg.tick_ms), next: std::time::Instant::now() }),
    ));

    let stages: Vec<(Bell, Box<dyn Stage>)> = stages.into_iter().map(|(b, s)| (b, Timed::wrap(s, &metrics))).collect();
    // The network stage, on its own actix system thread (with the CPU
    // stages when they run there).
    let on_network = if cfg.stage_threads == StageThreads::Dedicated {
        for (bell, stage) in stages {
            let stop = stop.clone();
            threads.push(spawn(stage.name(), move || run_stages(vec![stage], bell, stop)));
        }
        None
    } else {
        let all: Vec<Box<dyn Stage>> = stages.into_iter().map(|(_, s)| s).collect();
        if cfg.stage_threads == StageThreads::Network {
            Some(all)
        } else {
            let (bell, stop) = (shared.clone(), stop.clone());
            threads.push(spawn("stages", move || run_stages(all, bell, stop)));
            None
        }
    };
    let (tx_system, rx_system) = std::sync::mpsc::channel();
    {
        let (net, key, stop) = (net.clone(), key.clone(), stop.clone());
        threads.push(spawn("net", move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let _ = tx_system.send(actix_rt::System::current());
                let listener = tokio::net::TcpListener::from_std(listener).expect("a bound listener converts");
                let key = Arc::new(key);
                actix_rt::spawn(net::listen(listener, net.clone(), (*key).clone()));
                actix_rt::spawn(net::dial_members(net.clone(), key.clone()));
                if let Some(stages) = on_network {
                    actix_rt::spawn(run_stages_on_network(stages, shared, stop));
                }
            });
            let _ = system.run();
        }));
    }
    let system =
        rx_system.recv_timeout(Duration::from_secs(10)).map_err(|_| "the network stage did not start".to_string())?;

    Ok(ReplicaHandle {
        id: me,
        metrics,
        stop,
        system: Some(system),
        threads,
        recovery,
        marks,
        leave_grace: Duration::from_millis(cfg.leave_grace_ms),
        removed_at: parking_lot::Mutex::new(None),
    })
}
