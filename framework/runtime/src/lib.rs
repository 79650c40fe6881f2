//! Palisade's replica runtime: the staged pipeline around the protocol core.
//!
//! ```text
//!  clients ──► [network: actix connection actors] ──flume──► [verification: rayon batches]
//!                     │                                              │ crossbeam
//!                     │ peer messages                                 ▼
//!                     └──────────────────────────────────────► [proposing: reply cache, stale ids]
//!                                                                     │
//!  [request timers: ticks] ──────────────────────────────────────────►▼
//!                                                          [consensus: the pure core]
//!                          peers ◄── connection mailboxes ◄──┤        │ decisions
//!                                                                     ▼
//!                                         [delivery: service, snapshots] ──► [reply sending] ──► clients
//! ```
//!
//! [`spawn_replica`] wires it, top to bottom. Every arrow is a bounded
//! queue whose capacity and overload policy are in [`RuntimeConfig`].

#![deny(missing_docs)]

pub mod config;
pub mod crypto;
pub mod metrics;
pub mod net;
pub mod stages;
pub mod storage;

pub use config::RuntimeConfig;
pub use metrics::{CoreSnapshot, RuntimeMetrics};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use palisade_core::{Digest, Executor, Replica, ReplicaId, Service};
use palisade_wire::handshake::Keyring;
use palisade_wire::verify::VerifyLimits;
use palisade_wire::ClusterConfig;
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
}

impl ReplicaHandle {
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
        self.metrics.gauges.lock().iter().map(|(n, f)| (*n, f())).collect()
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

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(name.to_string()).spawn(f).expect("spawn a stage thread")
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
    let info = cluster.replicas.get(&me).ok_or_else(|| format!("replica {me} is not in cluster.toml"))?;
    if info.public_key != key.verifying_key() {
        return Err(format!(
            "the key file does not belong to replica {me}: its public key is not the one in cluster.toml"
        ));
    }
    let metrics = Arc::new(RuntimeMetrics::default());
    let stop = Arc::new(AtomicBool::new(false));

    // The queues, in pipeline order.
    let (tx_verify, rx_verify) = flume::bounded(cfg.verify_queue);
    let (tx_propose, rx_propose) = flume::bounded(cfg.propose_queue);
    let (tx_requests, rx_requests) = crossbeam_channel::bounded(cfg.request_queue);
    let (tx_peer, rx_peer) = crossbeam_channel::bounded(cfg.peer_queue);
    let (tx_tick, rx_tick) = crossbeam_channel::bounded(4);
    let (tx_delivery, rx_delivery) = crossbeam_channel::bounded(cfg.delivery_queue);
    let (tx_control, rx_control) = crossbeam_channel::bounded(cfg.control_queue());
    let (tx_reply, rx_reply) = crossbeam_channel::bounded(cfg.reply_queue);
    {
        let (a, b, c, d, e, f) = (
            rx_verify.clone(),
            rx_propose.clone(),
            rx_requests.clone(),
            rx_peer.clone(),
            rx_delivery.clone(),
            rx_reply.clone(),
        );
        metrics.gauge("verify_queue", move || a.len());
        metrics.gauge("propose_queue", move || b.len());
        metrics.gauge("request_queue", move || c.len());
        metrics.gauge("peer_queue", move || d.len());
        metrics.gauge("delivery_queue", move || e.len());
        metrics.gauge("reply_queue", move || f.len());
    }

    // The network stage, on its own actix system thread.
    // Without client signatures the verification stage has nothing left to
    // check (connection actors check size and client id), so requests skip
    // that hop and go straight to proposing.
    let tx_from_net = if cluster.client_signatures { tx_verify.clone() } else { tx_propose.clone() };
    // With client signatures, PRE-PREPAREs pass through verification too,
    // so the consensus stage never checks a signature one at a time.
    let (tx_preprepare, rx_preprepare) = crossbeam_channel::bounded(cfg.peer_queue);
    let verified = Arc::new(crypto::VerifiedRequests::new(cfg.verified_cache));
    let net = Arc::new(net::Net::new(
        me,
        cluster.cluster_id,
        cluster.max_frame_bytes,
        &cfg,
        tx_peer.clone(),
        tx_from_net,
        cluster.client_signatures.then(|| tx_preprepare.clone()),
        metrics.clone(),
    ));
    let listener =
        std::net::TcpListener::bind(info.address).map_err(|e| format!("cannot listen on {}: {e}", info.address))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let keyring = Keyring::from_config(cluster);
    let peers: Vec<(ReplicaId, std::net::SocketAddr)> =
        cluster.replicas.iter().filter(|(id, _)| **id != me).map(|(id, r)| (*id, r.address)).collect();
    let (tx_system, rx_system) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    {
        let (net, key, keyring) = (net.clone(), key.clone(), keyring.clone());
        threads.push(spawn("net", move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let _ = tx_system.send(actix_rt::System::current());
                let listener = tokio::net::TcpListener::from_std(listener).expect("a bound listener converts");
                let key = Arc::new(key);
                let keyring = Arc::new(keyring);
                actix_rt::spawn(net::listen(listener, net.clone(), (*key).clone(), (*keyring).clone()));
                for (id, address) in peers {
                    actix_rt::spawn(net::dial_forever(net.clone(), id, address, key.clone(), keyring.clone()));
                }
            });
            let _ = system.run();
        }));
    }
    let system =
        rx_system.recv_timeout(Duration::from_secs(10)).map_err(|_| "the network stage did not start".to_string())?;

    // Execution state, shared by proposing (reply cache) and delivery.
    let exec = Arc::new(RwLock::new(Executor::new(service, cfg.protocol.client_window)));
    let genesis: Bytes = exec.read().snapshot();
    let genesis_digest = Digest::of(&genesis);

    // Request verification (when clients sign): client requests, and the
    // requests inside PRE-PREPAREs, on one rayon pool.
    if cluster.client_signatures {
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(cfg.verify_threads)
                .thread_name(|i| format!("verify-{i}"))
                .build()
                .map_err(|e| e.to_string())?,
        );
        let limits = VerifyLimits { max_operation_bytes: cfg.max_operation_bytes, ..VerifyLimits::default() };
        {
            let (tx_reply, metrics, stop, drain, pool, verified) =
                (tx_reply.clone(), metrics.clone(), stop.clone(), cfg.drain_max, pool.clone(), verified.clone());
            threads.push(spawn("verify", move || {
                stages::verifier(rx_verify, tx_propose, tx_reply, verified, limits, pool, metrics, me, drain, stop)
            }));
        }
        {
            let (metrics, stop, drain, verified) = (metrics.clone(), stop.clone(), cfg.drain_max, verified.clone());
            threads.push(spawn("verify-pp", move || {
                stages::preprepare_verifier(rx_preprepare, tx_peer, verified, limits, pool, metrics, drain, stop)
            }));
        }
    }

    // Batch proposing.
    {
        let (tx_reply, exec, metrics, stop, drain) =
            (tx_reply.clone(), exec.clone(), metrics.clone(), stop.clone(), cfg.drain_max);
        threads.push(spawn("propose", move || {
            stages::proposer(rx_propose, tx_requests, tx_reply, exec, metrics, me, drain, stop)
        }));
    }

    // Request timers.
    {
        let (stop, period) = (stop.clone(), Duration::from_millis(cfg.tick_ms));
        threads.push(spawn("timers", move || stages::ticker(tx_tick, period, stop)));
    }

    // Consensus: the pure core.
    {
        let replicas = cluster.replicas.iter().map(|(id, r)| (*id, r.public_key)).collect();
        let crypto = crypto::Ed25519Crypto::new(key, replicas, cluster.client_signatures, verified);
        let consensus = stages::Consensus {
            core: Replica::new(cfg.protocol.clone(), me, crypto, genesis_digest),
            storage: Box::new(storage::MemoryStorage::default()),
            rx_peer,
            rx_requests,
            rx_control,
            rx_tick,
            tx_delivery,
            tx_reply: tx_reply.clone(),
            net: net.clone(),
            metrics: metrics.clone(),
            drain_max: cfg.drain_max,
            stop: stop.clone(),
            outbox: Default::default(),
        };
        threads.push(spawn("consensus", move || consensus.run()));
    }

    // Delivery.
    {
        let (net, metrics, stop, k) = (net.clone(), metrics.clone(), stop.clone(), cfg.protocol.checkpoint_interval);
        let digests = cfg.reply_digests.then(|| cluster.membership.clone());
        threads.push(spawn("delivery", move || {
            stages::delivery(rx_delivery, exec, tx_control, tx_reply, net, metrics, k, genesis, digests, stop)
        }));
    }

    // Reply sending.
    {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        let drain = cfg.drain_max;
        threads.push(spawn("reply", move || stages::replier(rx_reply, net, metrics, drain, stop)));
    }

    Ok(ReplicaHandle { id: me, metrics, stop, system: Some(system), threads })
}
