//! Replicas as separate processes on loopback, killed with SIGKILL: a
//! replica restarted from its disk catches up and is then needed for
//! progress; a bit flipped in its snapshot and its log is found and
//! repaired from its peers; a replica restarted with an empty disk fetches
//! 200 MB of state, refusing the corrupt chunks a lying peer serves; a
//! primary that forges requests gets none of them executed.
//!
//! The replicas run `test-replica`, which is `palisade replica --service kv`
//! (the same code) writing its counters to a file these tests read.

use palisade_client::{Client, ClientOptions};
use palisade_core::Mode;
use palisade_services::kv::KvClient;
use palisade_wire::{keys, ClusterConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::Cluster;

impl Cluster {
    fn new(tag: &str, port: u16) -> Cluster {
        Cluster::configure(tag, 4, Mode::Bft, port)
    }

    /// Keeps the cluster busy (small puts, so that checkpoints keep coming)
    /// until replica `id` has delivered as far as replica 0 and votes again
    /// (a replica that restarted without its votes rejoins once its stable
    /// checkpoint passes what it may have voted on).
    fn wait_ready(&self, id: u32, within: Duration) {
        let start = Instant::now();
        rt().block_on(async {
            let kv = self.client();
            for n in 0.. {
                let (mine, theirs) = (self.counter(id, "delivered"), self.counter(0, "delivered"));
                if theirs > 0 && mine >= theirs && self.counter(id, "rejoining") == 0 {
                    return;
                }
                assert!(
                    start.elapsed() < within,
                    "replica {id} at {mine} (rejoining: {}) while replica 0 is at {theirs}:\n{}",
                    self.counter(id, "rejoining"),
                    self.stderr(id)
                );
                kv.put(format!("tick{n}"), "t").await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    fn client(&self) -> KvClient {
        let config = ClusterConfig::load(&self.dir).unwrap();
        let opts = ClientOptions { timeout_ms: 60_000, ..ClientOptions::default() };
        KvClient::new(Client::connect(config, keys::generate(&mut rand_core::OsRng), opts))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

/// Puts keys `range` with values of `len` bytes from `clients` clients
/// (one client: one sequence number a put).
fn put_from(c: &Cluster, clients: usize, range: std::ops::Range<usize>, len: usize) {
    rt().block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|t| {
                let kv = c.client();
                let range = range.clone();
                tokio::spawn(async move {
                    for i in range.filter(|i| i % clients == t) {
                        kv.put(format!("k{i}"), value(i, len)).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn put(c: &Cluster, range: std::ops::Range<usize>, len: usize) {
    put_from(c, 4, range, len)
}

/// Reads keys `range` back (every `step`-th), checking each value.
fn check(c: &Cluster, range: std::ops::Range<usize>, step: usize, len: usize) {
    rt().block_on(async {
        let kv = c.client();
        for i in range.step_by(step) {
            let got = kv.get(format!("k{i}")).await.unwrap();
            assert_eq!(got.as_deref(), Some(&value(i, len)[..]), "k{i}");
        }
    });
}

/// Flips one bit of `file` at `offset`.
fn flip(file: &Path, offset: usize) {
    let mut b = std::fs::read(file).unwrap();
    b[offset] ^= 0x10;
    std::fs::write(file, b).unwrap();
}

fn newest(dir: &Path, prefix: &str, oldest: bool) -> PathBuf {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    names.sort();
    let pick = if oldest { names.first() } else { names.last() };
    pick.unwrap_or_else(|| panic!("no {prefix} file in {}", dir.display())).clone()
}

fn port() -> u16 {
    palisade_testkit::loopback::port_block(10)
}

#[test]
fn a_killed_replica_restarts_from_disk_catches_up_and_a_flipped_bit_is_repaired_from_peers() {
    let mut c = Cluster::new("repair", port());
    for id in 0..4 {
        c.start(id, &[]);
    }
    // The 7 MB scenario: 140 values of 60 KB.
    const LEN: usize = 60_000;
    put(&c, 0..140, LEN);
    c.kill(3);
    // 300 sequence numbers: the others' stable checkpoint passes whatever
    // replica 3 logged, so it must fetch the state (18 MB, larger than a
    // frame) from them.
    put_from(&c, 1, 140..440, LEN);
    c.start(3, &[]);
    c.wait_ready(3, Duration::from_secs(60));
    let log = c.stderr(3);
    assert!(log.contains("recovered from"), "{log}");
    assert!(c.counter(3, "state_parts_installed") > 0, "it fetched the state it missed");
    // It is now needed: with replica 2 gone, 0, 1 and 3 make the quorum.
    c.kill(2);
    put(&c, 440..460, LEN);
    check(&c, 0..460, 1, LEN);
    c.start(2, &[]);
    c.wait_ready(2, Duration::from_secs(60));

    // A bit flips in replica 3's newest snapshot pack and in its log while
    // it is down, and the cluster goes on without it.
    c.kill(3);
    let data = c.dir.join("data-3");
    let pack = newest(&data, "pack-", false);
    let len = std::fs::metadata(&pack).unwrap().len() as usize;
    flip(&pack, len / 2);
    flip(&newest(&data, "wal-", true), 40);
    put(&c, 460..540, LEN);
    c.start(3, &[]);
    c.wait_ready(3, Duration::from_secs(60));
    let log = c.stderr(3);
    assert!(log.contains("discarded snap-"), "the damaged snapshot is found: {log}");
    assert!(log.contains("DAMAGED log"), "the damaged log is found: {log}");
    assert!(log.contains("rejoining without its votes"), "{log}");
    assert!(c.counter(3, "state_parts_installed") > 0, "the state came from peers");
    c.kill(2);
    put(&c, 540..560, LEN);
    check(&c, 0..560, 1, LEN);
}

#[test]
fn a_replica_restarted_empty_fetches_200_mb_refusing_a_lying_peers_chunks_and_is_then_needed() {
    let mut c = Cluster::new("transfer", port());
    // Replica 1 votes correctly but serves corrupt state.
    for id in 0..4 {
        c.start(id, if id == 1 { &["--lying"] } else { &[] });
    }
    const LEN: usize = 500 << 10;
    put(&c, 0..400, LEN);
    // Replica 3 loses its disk and starts empty.
    c.kill(3);
    std::fs::remove_dir_all(c.dir.join("data-3")).unwrap();
    c.start(3, &["--rejoin"]);
    c.wait_ready(3, Duration::from_secs(180));
    let parts = c.counter(3, "state_parts_installed");
    let bad = c.counter(3, "state_data_bad");
    assert!(parts > 100, "it fetched the state ({parts} parts)");
    assert!(bad > 0, "the lying peer's chunks were refused and counted");
    eprintln!("replica 3 installed {parts} parts, refused {bad} bad pieces");
    // It is now needed: with replica 2 gone, 0, 1 (the liar) and 3 make the
    // quorum.
    c.kill(2);
    put(&c, 400..410, 1000);
    check(&c, 0..400, 37, LEN);
    check(&c, 400..410, 1, 1000);
}

/// The primary of view 0 adds a request no client sent (adding 1000) to
/// every batch it proposes. With the default request authentication every
/// correct backup refuses those batches, the cluster changes view, and the
/// counter holds exactly the increments clients were told had happened.
#[test]
fn a_primary_that_forges_requests_gets_none_executed() {
    let mut c = Cluster::new("forge", port());
    for id in 0..4 {
        c.start(id, if id == 0 { &["--service", "counter", "--forge"] } else { &["--service", "counter"] });
    }
    let config = ClusterConfig::load(&c.dir).unwrap();
    assert_eq!(config.request_auth, palisade_wire::RequestAuth::Authenticators, "the default");
    let acked = rt().block_on(async {
        let opts = ClientOptions { timeout_ms: 60_000, ..ClientOptions::default() };
        let counter = palisade_services::counter::CounterClient::new(Client::connect(
            config,
            keys::generate(&mut rand_core::OsRng),
            opts,
        ));
        let mut acked = 0u64;
        for _ in 0..30 {
            counter.add(1).await.unwrap();
            acked += 1;
        }
        let value = counter.get().await.unwrap();
        assert_eq!(value, acked, "only the acknowledged increments, none forged");
        acked
    });
    assert_eq!(acked, 30);
    // The counters files are rewritten every 100 ms. Every backup leaves the
    // forging primary's view, and some backup counted a forged batch as proof
    // against the primary. A backup whose connection from the primary was not
    // yet up when the first batches went out may never see a forged one and
    // joins on the others' messages, so the test asks that some backup
    // refused, not every one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused: Vec<u32> =
            (1..4).filter(|&id| c.counter(id, "dropped:pre-prepare-with-an-unauthenticated-request") > 0).collect();
        let moved = (1..4).all(|id| c.counter(id, "view") >= 1);
        if moved && !refused.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backups did not leave the forging primary's view on proof (refused by {refused:?}): {:?}",
            (1..4).map(|id| c.counters(id)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
