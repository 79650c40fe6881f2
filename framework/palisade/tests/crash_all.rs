//! `kill -9` of every replica process at once, under load, with the default
//! durability: started again from their data directories, the replicas hold
//! every acknowledged operation, in every stateful service, and serve on.

mod common;

use common::Scratch;
use palisade_client::{Client, ClientOptions};
use palisade_services::counter::CounterClient;
use palisade_services::kv::KvClient;
use palisade_services::register::{decode_result, RegisterOp};
use palisade_wire::{keys, ClusterConfig};
use parking_lot::Mutex;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

struct Processes(Vec<Child>);

impl Processes {
    fn start(dir: &Path, service: &str) -> Processes {
        Processes(
            (0..4)
                .map(|i| {
                    Command::new(BIN)
                        .args(["replica", "--config", dir.to_str().unwrap(), "--id", &i.to_string()])
                        .args(["--service", service])
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .expect("start a replica")
                })
                .collect(),
        )
    }

    /// SIGKILL to every replica at once.
    fn kill_all(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn setup(tag: &str, port: u16) -> Scratch {
    let dir = Scratch::new("crash-all", tag);
    let out = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--out", dir.to_str().unwrap(), "--base-port", &port.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn client(dir: &Path) -> Client {
    let config = ClusterConfig::load(dir).unwrap();
    let opts = ClientOptions { timeout_ms: 30_000, ..ClientOptions::default() };
    Client::connect(config, keys::generate(&mut rand_core::OsRng), opts)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs `load` from four clients for a while, kills every replica with
/// SIGKILL while it runs, and starts them again.
fn crash_all_under_load<F, Fut>(dir: &Path, service: &str, load: F) -> Processes
where
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = rt();
    let mut replicas = Processes::start(dir, service);
    rt.block_on(async {
        let tasks: Vec<_> = (0..4).map(|t| tokio::spawn(load(client(dir), t))).collect();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        replicas.kill_all();
        // What was in flight now was never acknowledged.
        for t in tasks {
            t.abort();
        }
    });
    drop(replicas);
    Processes::start(dir, service)
}

#[test]
fn every_acknowledged_operation_survives_kill_9_of_every_replica_in_every_service() {
    let port = palisade_testkit::loopback::port_block(15);

    // Key-value map: every acknowledged put is there.
    let dir = setup("kv", port);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let a = acked.clone();
    let replicas = crash_all_under_load(&dir, "kv", move |c, t| {
        let acked = a.clone();
        async move {
            let kv = KvClient::new(c);
            for i in 0.. {
                let key = format!("k{t}-{i}");
                if kv.put(key.clone(), format!("v{i}")).await.is_ok() {
                    acked.lock().push(key);
                }
            }
        }
    });
    let acked = acked.lock().clone();
    assert!(acked.len() > 20, "the kill landed under load ({} acknowledged)", acked.len());
    rt().block_on(async {
        let kv = KvClient::new(client(&dir));
        for key in &acked {
            assert!(kv.get(key.clone()).await.unwrap().is_some(), "acknowledged {key} was lost");
        }
        kv.put("after", "restart").await.unwrap();
    });
    drop(replicas);

    // Counter: the value counts at least every acknowledged add.
    let dir = setup("counter", port + 5);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let a = acked.clone();
    let replicas = crash_all_under_load(&dir, "counter", move |c, _| {
        let acked = a.clone();
        async move {
            let counter = CounterClient::new(c);
            loop {
                if counter.add(1).await.is_ok() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    let acked = acked.load(std::sync::atomic::Ordering::Relaxed);
    assert!(acked > 20, "the kill landed under load ({acked} acknowledged)");
    rt().block_on(async {
        let counter = CounterClient::new(client(&dir));
        let value = counter.get().await.unwrap();
        // Up to four adds were in flight at the kill, and may have executed.
        assert!(value >= acked && value <= acked + 4, "{value} after {acked} acknowledged adds");
    });
    drop(replicas);

    // Register: one writer of increasing values; the value read afterwards
    // is the last acknowledged write or the one in flight after it.
    let dir = setup("register", port + 10);
    let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let l = last.clone();
    let replicas = crash_all_under_load(&dir, "register", move |c, t| {
        let last = l.clone();
        async move {
            if t > 0 {
                return;
            }
            for v in 1.. {
                if c.invoke_ordered(RegisterOp::Write(v).encode()).await.is_ok() {
                    last.store(v, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    let last = last.load(std::sync::atomic::Ordering::Relaxed);
    assert!(last > 10, "the kill landed under load ({last} acknowledged writes)");
    rt().block_on(async {
        let c = client(&dir);
        let value = decode_result(&c.invoke_ordered(RegisterOp::Read.encode()).await.unwrap()).unwrap();
        assert!(value == last || value == last + 1, "read {value} after write {last} was acknowledged");
    });
    drop(replicas);
}
