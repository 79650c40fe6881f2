//! The server processes a run starts, and what they report.

use crate::cli::RunArgs;
use palisade_bench::metrics_file::ReplicaMetrics;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Child processes by replica id, killed when dropped.
pub(crate) struct Procs {
    pub(crate) children: BTreeMap<u32, Child>,
}

impl Procs {
    pub(crate) fn kill(&mut self, id: u32) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Process ids by replica id.
    pub(crate) fn pids(&self) -> Vec<(u32, u32)> {
        self.children.iter().map(|(i, c)| (*i, c.id())).collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let ids: Vec<u32> = self.children.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

fn metrics_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("metrics-{id}.json"))
}

/// Starts replica `id` of the cluster in `dir` as a server process;
/// `again` when it ran before and so lost its votes.
pub(crate) fn start_replica(dir: &Path, id: u32, a: &RunArgs, again: bool) -> Child {
    start_server(dir, id, a, if again { Some("--rejoin") } else { None })
}

/// Starts replica `id`, not yet a member, to join the cluster in `dir`.
pub(crate) fn start_joiner(dir: &Path, id: u32, a: &RunArgs) -> Child {
    start_server(dir, id, a, Some("--join"))
}

/// The file whose creation starts a Byzantine replica's misbehaviour.
pub(crate) fn byzantine_trigger(dir: &Path) -> PathBuf {
    dir.join("byzantine.start")
}

/// The `--byzantine-replica` as (id, mode), if well formed.
pub(crate) fn byzantine_replica(a: &RunArgs) -> Result<Option<(u32, String)>, String> {
    let Some(spec) = &a.byzantine_replica else { return Ok(None) };
    let (id, mode) = spec.split_once(':').ok_or_else(|| format!("--byzantine-replica takes ID:MODE, not {spec:?}"))?;
    let id = id.parse().map_err(|_| format!("--byzantine-replica: bad replica id {id:?}"))?;
    Ok(Some((id, mode.to_string())))
}

fn start_server(dir: &Path, id: u32, a: &RunArgs, flag: Option<&str>) -> Child {
    let mut byzantine = Vec::new();
    if let Ok(Some((bad, mode))) = byzantine_replica(a) {
        if bad == id {
            byzantine.extend(["--byzantine".to_string(), mode]);
            if a.byzantine_at.is_some() {
                let trigger = byzantine_trigger(dir);
                byzantine.extend(["--byzantine-trigger".to_string(), trigger.to_str().expect("utf-8 path").into()]);
            }
        }
    }
    Command::new(std::env::current_exe().expect("own path"))
        .args(["server", "--config", dir.to_str().expect("utf-8 path"), "--id", &id.to_string()])
        .args(["--metrics-file", metrics_path(dir, id).to_str().expect("utf-8 path")])
        .args(["--service", a.service.name()])
        .args(flag)
        .args(byzantine)
        .args(a.tuning.to_args())
        .stderr(replica_log(id))
        .spawn()
        .expect("start a replica process")
}

/// Where a replica's messages go: nowhere, unless `PALISADE_BENCH_LOGS`
/// names a directory, where each replica appends to `replica-ID.log` (a
/// restarted replica's lines follow its first life's).
fn replica_log(id: u32) -> Stdio {
    let Some(dir) = std::env::var_os("PALISADE_BENCH_LOGS") else { return Stdio::null() };
    let path = std::path::Path::new(&dir).join(format!("replica-{id}.log"));
    let file =
        std::fs::create_dir_all(&dir).and_then(|_| std::fs::OpenOptions::new().create(true).append(true).open(&path));
    match file {
        Ok(f) => Stdio::from(f),
        Err(e) => {
            eprintln!("palisade-bench: cannot write {}: {e}", path.display());
            Stdio::null()
        }
    }
}

/// Starts the unreplicated baseline server of the configuration in `dir`.
pub(crate) fn start_baseline(dir: &Path) -> Procs {
    let child = Command::new(std::env::current_exe().expect("own path"))
        .args(["baseline-server", "--config", dir.to_str().expect("utf-8 path")])
        .stderr(Stdio::null())
        .spawn()
        .expect("start the baseline server");
    Procs { children: BTreeMap::from([(0, child)]) }
}

/// What replica `id` last reported.
pub(crate) fn read_metrics(dir: &Path, id: u32) -> Option<ReplicaMetrics> {
    ReplicaMetrics::read(&metrics_path(dir, id))
}

/// The replica that last said it is primary.
pub(crate) fn current_primary(dir: &Path, ids: &[u32]) -> Option<u32> {
    ids.iter().copied().find(|id| read_metrics(dir, *id).is_some_and(|m| m.primary))
}
