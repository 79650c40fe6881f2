//! Membership changes on replica processes on loopback, under load, with
//! nothing acknowledged lost: a replica joins (started with `--join`,
//! admitted by `palisade admin add`), the primary is removed and exits
//! after its grace period, the cluster grows to f = 2 and shrinks back, and
//! a client that only ever read the epoch-0 `cluster.toml` finds the
//! cluster through the chain of epochs. Forged and replayed requests are
//! refused and counted, and two concurrent requests both get an answer.
//!
//! The replicas run `test-replica` (`palisade replica --service kv`).

use palisade::admin::{reconfigure, write_new_replica};
use palisade_client::{Client, ClientOptions};
use palisade_core::reconfig::{AdminBody, AdminOp, AdminOutcome, Rejection};
use palisade_core::{Mode, ReplicaId};
use palisade_services::kv::KvClient;
use palisade_wire::{keys, ClusterConfig};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::Cluster;

impl Cluster {
    /// `n` replicas started, each serving laggards `grace_ms` after it is
    /// removed.
    fn new(tag: &str, n: usize, mode: Mode, port: u16, grace_ms: u64) -> Cluster {
        let mut c = Cluster::configure(&format!("reconf-{tag}"), n, mode, port);
        c.flags = vec!["--leave-grace-ms".into(), grace_ms.to_string()];
        for id in 0..n as u32 {
            c.start(id, &[]);
        }
        c
    }

    /// Writes replica `id`'s key, starts it to join, and admits it.
    fn add(&mut self, id: u32) -> AdminOutcome {
        let op = self.joiner(id);
        reconfigure(&self.dir, vec![op], 30_000).unwrap()
    }

    /// Writes replica `id`'s key and starts it to join; returns the
    /// operation that admits it.
    fn joiner(&mut self, id: u32) -> AdminOp {
        let address = format!("127.0.0.1:{}", self.port + id as u16);
        write_new_replica(&self.dir, id, &address).unwrap();
        self.start(id, &["--join"]);
        let key = keys::read_secret(&self.dir.join(format!("replica-{id}.key"))).unwrap();
        AdminOp::Add { id: ReplicaId(id), address, public_key: key.verifying_key().to_bytes() }
    }

    /// Carries out `ops` in one request; returns the new epoch's (n, f).
    fn change(&mut self, ops: Vec<AdminOp>) -> (u64, usize, usize) {
        match reconfigure(&self.dir, ops.clone(), 30_000).unwrap() {
            AdminOutcome::Accepted { next, .. } => (next.epoch, next.members.len(), next.f),
            other => panic!("{ops:?}: {other:?}"),
        }
    }

    /// Waits until every replica in `ids` reports epoch `epoch`.
    fn wait_epoch(&self, ids: &[u32], epoch: u64, within: Duration) {
        let start = Instant::now();
        while !ids.iter().all(|id| self.counter(*id, "epoch") >= epoch) {
            let at: Vec<(u32, u64)> = ids.iter().map(|id| (*id, self.counter(*id, "epoch"))).collect();
            assert!(
                start.elapsed() < within,
                "epochs {at:?}, waiting for {epoch}; last replica's log:\n{}",
                self.stderr(*ids.last().unwrap())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client that knows only `cluster.toml` (and keeps no chain).
    fn client(&self) -> KvClient {
        let config = ClusterConfig::load(&self.dir).unwrap();
        let opts = ClientOptions { timeout_ms: 60_000, ..ClientOptions::default() };
        KvClient::new(Client::connect(config, keys::generate(&mut rand_core::OsRng), opts))
    }

    /// Whether process `id` has exited, and how.
    fn exited(&mut self, id: u32) -> Option<std::process::ExitStatus> {
        self.procs.get_mut(&id).and_then(|p| p.0.try_wait().ok().flatten())
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Writers that keep putting keys until stopped; every put acknowledged is
/// recorded, to be read back at the end.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Cluster, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..writers)
            .map(|w| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let config = ClusterConfig::load(&c.dir).unwrap();
                std::thread::spawn(move || {
                    let rt = rt();
                    rt.block_on(async {
                        let opts = ClientOptions { timeout_ms: 60_000, ..ClientOptions::default() };
                        let kv = KvClient::new(Client::connect(config, keys::generate(&mut rand_core::OsRng), opts));
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let key = format!("w{w}-{i}");
                            if kv.put(key.clone(), "v").await.is_ok() {
                                acked.lock().push(key);
                            }
                            i += 1;
                        }
                    });
                })
            })
            .collect();
        Load { stop, acked, threads }
    }

    fn acked(&self) -> usize {
        self.acked.lock().len()
    }

    /// Stops the writers; returns every acknowledged key.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let keys = self.acked.lock().clone();
        keys
    }
}

/// Waits until the load has made `more` acknowledged puts since now.
fn progress(load: &Load, more: usize, within: Duration, what: &str) {
    let (start, base) = (Instant::now(), load.acked());
    while load.acked() < base + more {
        assert!(start.elapsed() < within, "no progress {what}: {} acknowledged", load.acked() - base);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_replica_joins_the_primary_leaves_and_nothing_acknowledged_is_lost() {
    let port = palisade_testkit::loopback::port_block(20);
    let mut c = Cluster::new("replace", 4, Mode::Bft, port, 2_000);
    let load = Load::start(&c, 2);
    progress(&load, 50, Duration::from_secs(30), "before any change");

    // Add replica 4: it waits for admission, then fetches the state.
    match c.add(4) {
        AdminOutcome::Accepted { next, .. } => assert_eq!((next.epoch, next.members.len(), next.f), (1, 5, 1)),
        other => panic!("add 4: {other:?}"),
    }
    c.wait_epoch(&[0, 1, 2, 3, 4], 1, Duration::from_secs(30));
    assert!(c.stderr(4).contains("waiting to be admitted"), "the joiner said what it waits for");
    progress(&load, 50, Duration::from_secs(30), "after adding replica 4");

    // Remove replica 0, the primary of epoch 1's view 0.
    let outcome = reconfigure(&c.dir, vec![AdminOp::Remove { id: ReplicaId(0) }], 30_000).unwrap();
    assert!(
        matches!(&outcome, AdminOutcome::Accepted { next, .. } if next.epoch == 2 && next.member(ReplicaId(0)).is_none()),
        "{outcome:?}"
    );
    c.wait_epoch(&[1, 2, 3, 4], 2, Duration::from_secs(30));
    progress(&load, 50, Duration::from_secs(30), "after removing the primary");

    // Replica 0 serves laggards for its grace period, then exits cleanly.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = c.exited(0) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "replica 0 did not exit:\n{}", c.stderr(0));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "replica 0 exited with {status}:\n{}", c.stderr(0));
    assert!(c.stderr(0).contains("left the cluster"), "{}", c.stderr(0));

    // A replayed request (the same signed bytes again) and a forged one
    // change nothing, and the replicas count them.
    let vm = keys::read_secret(&c.dir.join("view-manager.key")).unwrap();
    let cluster = ClusterConfig::load(&c.dir).unwrap().cluster_id;
    let forged = {
        let thief = keys::generate(&mut rand_core::OsRng);
        let body = AdminBody { cluster, epoch: 2, nonce: u64::MAX, ops: vec![AdminOp::Remove { id: ReplicaId(1) }] };
        palisade_wire::verify::sign_admin(&thief, body)
    };
    let stale = palisade_wire::verify::sign_admin(
        &vm,
        AdminBody { cluster, epoch: 0, nonce: u64::MAX, ops: vec![AdminOp::Remove { id: ReplicaId(1) }] },
    );
    rt().block_on(async {
        let (genesis, chain) = {
            let g = ClusterConfig::load(&c.dir).unwrap();
            let chain = palisade_wire::chain::Chain::load(&c.dir, g.genesis()).unwrap();
            (g, chain)
        };
        let client = Client::connect_at(genesis, chain, vm.clone(), ClientOptions::default());
        for (request, why) in [(forged, "forged"), (stale, "stale")] {
            let got = client.invoke_ordered(request.encode()).await.unwrap();
            match AdminOutcome::decode(&got) {
                Some(AdminOutcome::Rejected(r)) => match why {
                    "forged" => assert_eq!(r, Rejection::BadSignature),
                    _ => assert_eq!(r, Rejection::WrongEpoch { current: 2 }),
                },
                other => panic!("{why}: {other:?}"),
            }
        }
    });
    // Counted by every member (the counters file is written every 100 ms).
    let start = Instant::now();
    while c.counter(1, "admin_requests_rejected") < 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "rejections are counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.counter(1, "admin_requests_accepted"), 2);

    // A member restarted from its disk comes back in epoch 2 with its
    // votes, and is then needed: with replica 3 gone too, epoch 2's
    // quorum of 3 includes it.
    c.kill(2);
    c.start(2, &[]);
    c.wait_epoch(&[2], 2, Duration::from_secs(30));
    let start = Instant::now();
    while c.counter(2, "delivered") < c.counter(1, "delivered") || c.counter(2, "rejoining") == 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "replica 2 did not catch up:\n{}", c.stderr(2));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.stderr(2).contains("recovered from"), "{}", c.stderr(2));
    assert!(!c.stderr(2).contains("without its votes"), "{}", c.stderr(2));
    c.kill(3);
    progress(&load, 30, Duration::from_secs(30), "with the restarted replica needed for a quorum");

    let acked = load.finish();
    // A client that only read cluster.toml finds the current members.
    all_readable(&c, &acked);
    assert!(acked.len() > 150);
}

/// A client that knows only `cluster.toml` reads every acknowledged key.
fn all_readable(c: &Cluster, acked: &[String]) {
    rt().block_on(async {
        let kv = c.client();
        for key in acked {
            assert!(kv.get(key.clone()).await.unwrap().is_some(), "acknowledged {key} was lost");
        }
    });
}

/// Every replica of `epoch`'s members reports it, then the load moves on.
fn settled(c: &Cluster, load: &Load, members: &[u32], epoch: u64, what: &str) {
    c.wait_epoch(members, epoch, Duration::from_secs(30));
    progress(load, 30, Duration::from_secs(30), what);
}

#[test]
fn a_cluster_grows_to_f_2_and_shrinks_back_under_load() {
    let port = palisade_testkit::loopback::port_block(20);
    let mut c = Cluster::new("grow", 4, Mode::Bft, port, 2_000);
    let load = Load::start(&c, 2);
    progress(&load, 30, Duration::from_secs(30), "before any change");

    let add4 = c.joiner(4);
    assert_eq!(c.change(vec![add4]), (1, 5, 1));
    settled(&c, &load, &[0, 1, 2, 3, 4], 1, "at 5 replicas");
    // Two at once: 7 replicas tolerate 2 faults, and f follows n.
    let (add5, add6) = (c.joiner(5), c.joiner(6));
    assert_eq!(c.change(vec![add5, add6]), (2, 7, 2));
    settled(&c, &load, &[0, 1, 2, 3, 4, 5, 6], 2, "at 7 replicas");
    // Shrinking below what f = 2 needs must say so.
    let refused = reconfigure(&c.dir, vec![AdminOp::Remove { id: ReplicaId(6) }], 30_000).unwrap();
    assert!(matches!(refused, AdminOutcome::Rejected(Rejection::WouldLowerF { .. })), "{refused:?}");
    let shrink =
        vec![AdminOp::Remove { id: ReplicaId(6) }, AdminOp::Remove { id: ReplicaId(5) }, AdminOp::SetF { f: 1 }];
    assert_eq!(c.change(shrink), (3, 5, 1));
    settled(&c, &load, &[0, 1, 2, 3, 4], 3, "back at 5 replicas");
    assert_eq!(c.change(vec![AdminOp::Remove { id: ReplicaId(4) }]), (4, 4, 1));
    settled(&c, &load, &[0, 1, 2, 3], 4, "back at 4 replicas");

    // Two view managers at once (BFT-SMaRt's #58 hung one of them): each
    // gets an answer; while one change is pending the other is refused
    // as such, or, once it took effect, retried in the new epoch.
    let answers: Vec<AdminOutcome> = std::thread::scope(|s| {
        let dir = &c.dir;
        let both: Vec<_> =
            (0..2).map(|_| s.spawn(move || reconfigure(dir, vec![AdminOp::SetF { f: 1 }], 30_000).unwrap())).collect();
        both.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<u64> = answers
        .iter()
        .filter_map(|a| match a {
            AdminOutcome::Accepted { next, .. } => Some(next.epoch),
            AdminOutcome::Rejected(Rejection::ChangePending { .. }) => None,
            other => panic!("concurrent change answered {other:?}"),
        })
        .collect();
    assert!(!accepted.is_empty(), "{answers:?}");
    let last = *accepted.iter().max().unwrap();
    assert_eq!(last, 4 + accepted.len() as u64, "{answers:?}");
    settled(&c, &load, &[0, 1, 2, 3], last, "after two concurrent changes");

    let acked = load.finish();
    all_readable(&c, &acked);
}

#[test]
fn a_crash_tolerant_cluster_grows_and_replaces_every_original_member() {
    let port = palisade_testkit::loopback::port_block(20);
    // Removed replicas stay long enough to show a stale client the way.
    let mut c = Cluster::new("cft", 3, Mode::Cft, port, 30_000);
    let load = Load::start(&c, 2);
    progress(&load, 30, Duration::from_secs(30), "before any change");

    // 3 to 5 replicas: f goes from 1 to 2.
    // (One change at a time: the next is sent once the last is handed
    // over, or it is refused with ChangePending.)
    let add3 = c.joiner(3);
    assert_eq!(c.change(vec![add3]), (1, 4, 1));
    c.wait_epoch(&[1, 2, 3], 1, Duration::from_secs(30));
    let add4 = c.joiner(4);
    assert_eq!(c.change(vec![add4]), (2, 5, 2));
    settled(&c, &load, &[0, 1, 2, 3, 4], 2, "at 5 replicas");
    // Then every original member goes.
    assert_eq!(c.change(vec![AdminOp::Remove { id: ReplicaId(0) }, AdminOp::SetF { f: 1 }]), (3, 4, 1));
    c.wait_epoch(&[1, 2, 3, 4], 3, Duration::from_secs(30));
    assert_eq!(c.change(vec![AdminOp::Remove { id: ReplicaId(1) }]), (4, 3, 1));
    c.wait_epoch(&[2, 3, 4], 4, Duration::from_secs(30));
    let add5 = c.joiner(5);
    assert_eq!(c.change(vec![add5]), (5, 4, 1));
    c.wait_epoch(&[2, 3, 4, 5], 5, Duration::from_secs(30));
    assert_eq!(c.change(vec![AdminOp::Remove { id: ReplicaId(2) }]), (6, 3, 1));
    settled(&c, &load, &[3, 4, 5], 6, "with no original member");

    let acked = load.finish();
    // A client that knows only the epoch-0 cluster.toml, where no member of
    // today is listed, learns the chain from a removed replica and reads
    // every acknowledged write from the members of epoch 6.
    all_readable(&c, &acked);
    assert!(acked.len() > 100);
}

#[test]
fn a_crashed_primary_is_replaced_by_a_change_ordered_during_the_view_change() {
    let port = palisade_testkit::loopback::port_block(20);
    let mut c = Cluster::new("viewchange", 4, Mode::Bft, port, 2_000);
    let load = Load::start(&c, 2);
    progress(&load, 30, Duration::from_secs(30), "before the crash");
    // The primary dies; the request to replace it is sent at once, while
    // the backups still wait for it, and is ordered by the next view.
    drop(c.procs.remove(&0));
    let add4 = c.joiner(4);
    assert_eq!(c.change(vec![add4]), (1, 5, 1));
    c.wait_epoch(&[1, 2, 3, 4], 1, Duration::from_secs(30));
    assert_eq!(c.change(vec![AdminOp::Remove { id: ReplicaId(0) }]), (2, 4, 1));
    settled(&c, &load, &[1, 2, 3, 4], 2, "without the crashed primary");
    let acked = load.finish();
    all_readable(&c, &acked);
}
