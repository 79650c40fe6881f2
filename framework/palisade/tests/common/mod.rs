//! Helpers shared by the process tests.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use palisade_client::{Client, ClientOptions};
use palisade_services::kv::KvClient;
use palisade_wire::{keys, ClusterConfig};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A scratch directory removed when the test ends, failed or not, so that
/// failing runs do not fill the disk with replicas' preallocated logs.
pub struct Scratch(PathBuf);

impl Scratch {
    /// An empty directory path under the system's temporary directory,
    /// unique to this test process and `tag`.
    pub fn new(prefix: &str, tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("palisade-{prefix}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Scratch(d)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to its end and asserts that it succeeded; its output.
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Writers that put keys until stopped, each in its own thread with its
/// own client, recording every acknowledged put: what must be there at
/// the end, whatever happened to the cluster meanwhile.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A key-value client of `config` with a fresh key, patient enough to
/// wait through a view change.
pub fn kv_client(config: &ClusterConfig) -> KvClient {
    let opts = ClientOptions { timeout_ms: 60_000, ..ClientOptions::default() };
    KvClient::new(Client::connect(config.clone(), keys::generate(&mut rand_core::OsRng), opts))
}

/// A runtime for one thread's client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

impl Load {
    /// `writers` writers putting `w<writer>-<i>` keys.
    pub fn start(config: &ClusterConfig, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..writers)
            .map(|w| {
                let (stop, acked, config) = (stop.clone(), acked.clone(), config.clone());
                std::thread::spawn(move || {
                    rt().block_on(async {
                        let kv = kv_client(&config);
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let key = format!("w{w}-{i}");
                            if kv.put(key.clone(), "v").await.is_ok() {
                                acked.lock().push(key);
                            }
                            i += 1;
                        }
                    })
                })
            })
            .collect();
        Load { stop, acked, threads }
    }

    /// Acknowledged puts so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().len()
    }

    /// Waits for `more` acknowledgements past those so far; `why` says
    /// what to show if they do not come within a minute.
    pub fn progress(&self, more: usize, why: impl Fn() -> String) {
        let target = self.acked() + more;
        let start = Instant::now();
        while self.acked() < target {
            assert!(start.elapsed() < Duration::from_secs(60), "{target} acknowledged puts not within 60 s\n{}", why());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the writers; returns every acknowledged key.
    pub fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner()
    }

    /// Stops the writers and asserts that every acknowledged put is in
    /// `config`'s cluster; returns how many there were.
    pub fn stop_and_check(self, config: &ClusterConfig) -> usize {
        let acked = self.stop();
        let stored: std::collections::BTreeSet<String> = rt()
            .block_on(async { kv_client(config).keys().await })
            .expect("the cluster lists its keys")
            .into_iter()
            .map(|k| String::from_utf8(k.to_vec()).unwrap())
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|k| !stored.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged puts lost: {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        acked.len()
    }
}

/// Waits for `ok`, for at most `within`; `why` says what to show if not.
pub fn wait_for(what: &str, within: Duration, why: impl Fn() -> String, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}\n{}", why());
        std::thread::sleep(Duration::from_millis(200));
    }
}
