//! The replica processes the process tests start (`test-replica`, which
//! is `palisade replica`'s own code), and what they report.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use palisade::keygen::{keygen, KeygenOptions};
use palisade_core::Mode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_test-replica");

/// A replica process; SIGKILLed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cluster's configuration directory (removed when dropped, failed test
/// or not) and its replica processes.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub procs: BTreeMap<u32, Proc>,
    /// Extra flags every replica starts with.
    pub flags: Vec<String>,
}

impl Cluster {
    /// Writes a configuration of `n` replicas on loopback from `port` in a
    /// fresh temporary directory named by `tag`; starts no replica.
    pub fn configure(tag: &str, n: usize, mode: Mode, port: u16) -> Cluster {
        let dir = std::env::temp_dir().join(format!("palisade-proc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = KeygenOptions {
            replicas: n,
            out: dir.clone(),
            mode,
            f: None,
            addresses: vec![],
            base_port: port,
            cluster_id: None,
            request_auth: palisade_wire::RequestAuth::default(),
            requests_to_all: false,
        };
        keygen(&opts).unwrap();
        Cluster { dir, port, procs: BTreeMap::new(), flags: Vec::new() }
    }

    /// Starts replica `id` with `flags`; its stderr goes to `stderr-<id>.txt`.
    pub fn start(&mut self, id: u32, flags: &[&str]) {
        // What a previous process wrote must not pass for this one's.
        let _ = std::fs::remove_file(self.dir.join(format!("counters-{id}.txt")));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("stderr-{id}.txt")))
            .unwrap();
        let child = Command::new(BIN)
            .args(["--config", self.dir.to_str().unwrap(), "--id", &id.to_string()])
            .args(&self.flags)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a replica");
        self.procs.insert(id, Proc(child));
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u32) {
        drop(self.procs.remove(&id));
    }

    /// What replica `id` wrote to its stderr.
    pub fn stderr(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("stderr-{id}.txt"))).unwrap_or_default()
    }

    /// The counters replica `id` last wrote.
    pub fn counters(&self, id: u32) -> BTreeMap<String, u64> {
        let text = std::fs::read_to_string(self.dir.join(format!("counters-{id}.txt"))).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// One of them (0 when not written yet).
    pub fn counter(&self, id: u32, name: &str) -> u64 {
        self.counters(id).get(name).copied().unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
