//! `palisade-bench`: BFT-SMaRt's throughput/latency experiment for Palisade.
//!
//! With no arguments it starts 4 echo replicas as separate processes on
//! loopback, drives them with closed-loop clients (0-byte requests and
//! replies) for 30 s after a 5 s warm-up, measures the unreplicated
//! baseline the same way, prints a table and the `BENCH` line, writes
//! results.json and SVG charts, and stops everything it started.

use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use palisade::keygen::{keygen, KeygenOptions};
use palisade_bench::{baseline, procstat, svg};
use palisade_client::{Client, ClientOptions};
use palisade_core::{Mode, ReplicaId};
use palisade_runtime::{spawn_replica, RuntimeConfig, StageThreads};
use palisade_services::echo::{self, Echo};
use palisade_wire::{keys, ClusterConfig};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "palisade-bench", about = "Throughput and latency of a Palisade cluster")]
struct Cli {
    #[command(subcommand)]
    role: Option<RoleCmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Debug)]
#[serde(rename_all = "lowercase")]
enum ModeArg {
    Bft,
    Cft,
}

#[derive(Subcommand)]
enum RoleCmd {
    /// Run one echo replica (what the harness starts; also for multi-machine runs).
    Server {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: u32,
        /// Write the replica's metrics here as JSON every 250 ms.
        #[arg(long)]
        metrics_file: Option<PathBuf>,
        #[command(flatten)]
        tuning: ReplicaTuning,
    },
    /// Run the unreplicated baseline server of a 1-replica configuration.
    BaselineServer {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args, Clone, Debug, Serialize)]
struct RunArgs {
    /// Replicas.
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// Fault model.
    #[arg(long, value_enum, default_value = "bft")]
    mode: ModeArg,
    /// Request size in bytes.
    #[arg(long, default_value_t = 0)]
    request_bytes: usize,
    /// Reply size in bytes.
    #[arg(long, default_value_t = 0)]
    reply_bytes: u32,
    /// Closed-loop clients (each with its own key and connections).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Requests each client keeps outstanding.
    #[arg(long, default_value_t = 64)]
    outstanding: usize,
    /// Measurement length in seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Clients sign every request (ed25519, verified in rayon batches).
    #[arg(long)]
    client_signatures: bool,
    #[command(flatten)]
    #[serde(flatten)]
    tuning: ReplicaTuning,
    /// Load levels to sweep, as CLIENTSxOUTSTANDING[,...] (for example 1x1,4x16,8x64).
    #[arg(long)]
    sweep: Option<String>,
    /// Skip the unreplicated baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Kill the current primary this many seconds into the measurement.
    #[arg(long)]
    kill_primary_at: Option<f64>,
    /// Restart the killed replica this many seconds into the measurement.
    #[arg(long)]
    restart_at: Option<f64>,
    /// Run the load against an existing cluster (its configuration directory) instead of starting one.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Where to write results.json and the charts.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// First port of the replicas started (the baseline uses this + 100).
    #[arg(long, default_value_t = 7600)]
    base_port: u16,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
}

// ----- server roles -------------------------------------------------------------------

/// Where a replica's CPU stages run; see `palisade_runtime::StageThreads`.
#[derive(Clone, Copy, ValueEnum, Serialize, Debug)]
#[serde(rename_all = "lowercase")]
enum StageThreadsArg {
    /// One thread per stage.
    Dedicated,
    /// One thread for all stages, beside the network thread.
    Shared,
    /// On the network thread.
    Network,
}

impl From<StageThreadsArg> for StageThreads {
    fn from(a: StageThreadsArg) -> StageThreads {
        match a {
            StageThreadsArg::Dedicated => StageThreads::Dedicated,
            StageThreadsArg::Shared => StageThreads::Shared,
            StageThreadsArg::Network => StageThreads::Network,
        }
    }
}

/// How the replicas are tuned: given to a run, passed on to each server.
#[derive(Args, Clone, Debug, Serialize)]
struct ReplicaTuning {
    /// Requests per batch, at most.
    #[arg(long, default_value_t = 1024)]
    batch_max: usize,
    /// Batches the primary keeps proposed but not yet delivered.
    #[arg(long, default_value_t = 4)]
    in_flight: u64,
    /// Where the replicas' CPU stages run (default: chosen for the machine).
    #[arg(long, value_enum)]
    stage_threads: Option<StageThreadsArg>,
}

impl ReplicaTuning {
    /// The same options on a server's command line.
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![format!("--batch-max={}", self.batch_max), format!("--in-flight={}", self.in_flight)];
        if let Some(t) = self.stage_threads {
            args.push(format!("--stage-threads={}", format!("{t:?}").to_lowercase()));
        }
        args
    }
}

fn server(config: &Path, id: u32, metrics_file: Option<PathBuf>, s: &ReplicaTuning) -> ExitCode {
    let cluster = match ClusterConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-bench server: {e}");
            return ExitCode::from(2);
        }
    };
    let me = ReplicaId(id);
    let key = match keys::read_secret(&palisade::keygen::replica_key_file(config, me)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("palisade-bench server: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = RuntimeConfig::for_cluster(&cluster);
    cfg.protocol.batch_max_requests = s.batch_max;
    cfg.protocol.max_in_flight = s.in_flight;
    if let Some(t) = s.stage_threads {
        cfg.stage_threads = t.into();
    }
    let handle = match spawn_replica(&cluster, me, key, Echo, cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("palisade-bench server: {e}");
            return ExitCode::from(2);
        }
    };
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(path) = &metrics_file {
            let c = handle.metrics().core.lock().clone();
            let snapshot = serde_json::json!({
                "view": c.view,
                "primary": c.primary,
                "normal": c.normal,
                "delivered": c.delivered,
                "delivered_requests": c.delivered_requests,
                "proposed_batches": c.proposed_batches,
                "view_changes": c.view_changes,
                "state_transfers": c.state_transfers,
                "timers_restarted": c.timers_restarted,
                "counters": handle.metrics().counters.snapshot().into_iter().collect::<BTreeMap<_, _>>(),
                "queues": handle.queue_depths().into_iter().collect::<BTreeMap<_, _>>(),
            });
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, snapshot.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
}

fn baseline_server(config: &Path) -> ExitCode {
    let cluster = match ClusterConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-bench baseline-server: {e}");
            return ExitCode::from(2);
        }
    };
    let key = keys::read_secret(&palisade::keygen::replica_key_file(config, ReplicaId(0))).expect("baseline key");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    match rt.block_on(baseline::serve(cluster, key)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-bench baseline-server: {e}");
            ExitCode::from(2)
        }
    }
}

// ----- processes ------------------------------------------------------------------------

struct Procs {
    children: BTreeMap<u32, Child>,
}

impl Procs {
    fn kill(&mut self, id: u32) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
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

fn start_replica(dir: &Path, id: u32, a: &RunArgs) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .args(["server", "--config", dir.to_str().expect("utf-8 path"), "--id", &id.to_string()])
        .args(["--metrics-file", dir.join(format!("metrics-{id}.json")).to_str().expect("utf-8 path")])
        .args(a.tuning.to_args())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a replica process")
}

fn read_metrics(dir: &Path, id: u32) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("metrics-{id}.json"))).ok()?).ok()
}

fn current_primary(dir: &Path, ids: &[u32]) -> Option<u32> {
    ids.iter().copied().find(|id| read_metrics(dir, *id).is_some_and(|m| m["primary"] == true))
}

// ----- the load -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Serialize)]
struct Level {
    clients: usize,
    outstanding: usize,
}

#[derive(Debug, Default, Serialize)]
struct Latency {
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    mean_us: f64,
}

#[derive(Debug, Default, Serialize)]
struct LoadResult {
    ops_per_sec: f64,
    completed: u64,
    errors: u64,
    latency: Latency,
    /// Completions per 100 ms from the start of the warm-up.
    timeline: Vec<u64>,
}

async fn run_load(cluster: &ClusterConfig, a: &RunArgs, level: Level, progress_label: &str) -> LoadResult {
    let op = echo::request(a.request_bytes, a.reply_bytes);
    let opts = ClientOptions { timeout_ms: 30_000, ..ClientOptions::default() };
    let clients: Vec<Client> = (0..level.clients)
        .map(|_| Client::connect(cluster.clone(), keys::generate(&mut rand_core::OsRng), opts.clone()))
        .collect();
    // Wait until every client gets an answer: the cluster is up and connected.
    for c in &clients {
        let _ = c.invoke_ordered(op.clone()).await;
    }
    let warmup = Duration::from_secs_f64(a.warmup);
    let duration = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let buckets = ((warmup + duration).as_millis() / 100 + 1) as usize;
    let timeline: Arc<Vec<AtomicU64>> = Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in &clients {
        for _ in 0..level.outstanding {
            let (c, op, timeline, hist, errors) =
                (c.clone(), op.clone(), timeline.clone(), hist.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    match c.invoke_ordered(op.clone()).await {
                        Ok(_) => {
                            let t1 = Instant::now();
                            let bucket = ((t1 - start).as_millis() / 100) as usize;
                            if let Some(b) = timeline.get(bucket) {
                                b.fetch_add(1, Ordering::Relaxed);
                            }
                            if t0 >= measure_from && t1 <= end {
                                let _ = local.record((t1 - t0).as_micros().max(1) as u64);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist.lock().add(&local).expect("same bounds");
            }));
        }
    }
    // Progress, on one line.
    let progress = {
        let timeline = timeline.clone();
        let label = progress_label.to_string();
        let total = (warmup + duration).as_secs_f64();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let t = start.elapsed().as_secs_f64().min(total);
                let b = (t * 10.0) as usize;
                let recent: u64 =
                    (b.saturating_sub(10)..b).filter_map(|i| timeline.get(i)).map(|x| x.load(Ordering::Relaxed)).sum();
                let filled = (t / total * 30.0) as usize;
                eprint!(
                    "\r{label} [{}{}] {:5.1}/{:.0}s {:>9} ops/s ",
                    "#".repeat(filled),
                    ".".repeat(30 - filled.min(30)),
                    t,
                    total,
                    recent
                );
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    eprintln!();
    let hist = hist.lock();
    let completed = hist.len();
    LoadResult {
        ops_per_sec: completed as f64 / duration.as_secs_f64(),
        completed,
        errors: errors.load(Ordering::Relaxed),
        latency: Latency {
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            mean_us: hist.mean(),
        },
        timeline: timeline.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
    }
}

// ----- an experiment ----------------------------------------------------------------------

#[derive(Debug, Default, Serialize)]
struct ReplicaStat {
    id: u32,
    cpu_percent: f64,
    peak_rss_mib: f64,
    /// View changes this replica started or joined since it started.
    view_changes: u64,
}

#[derive(Debug, Serialize)]
struct LevelReport {
    level: Level,
    palisade: LoadResult,
    primary_ordered_per_sec: Option<f64>,
    mean_batch_size: Option<f64>,
    replicas: Vec<ReplicaStat>,
    queue_depth_max: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Events {
    kill_primary_at_s: Option<f64>,
    killed: Option<u32>,
    restart_at_s: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    command: String,
    git_revision: String,
    date_unix: u64,
    cpu_model: String,
    cores: usize,
    args: RunArgs,
    levels: Vec<LevelReport>,
    baseline: Option<LoadResult>,
    baseline_ratio: Option<f64>,
    events: Events,
}

fn parse_sweep(s: &str) -> Result<Vec<Level>, String> {
    s.split(',')
        .map(|p| {
            let (c, o) = p.trim().split_once('x').ok_or(format!("bad load level {p:?}: use CLIENTSxOUTSTANDING"))?;
            Ok(Level {
                clients: c.parse().map_err(|_| format!("bad client count in {p:?}"))?,
                outstanding: o.parse().map_err(|_| format!("bad outstanding count in {p:?}"))?,
            })
        })
        .collect()
}

fn git_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn run(a: RunArgs) -> ExitCode {
    let levels = match &a.sweep {
        Some(s) => match parse_sweep(s) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("palisade-bench: {e}");
                return ExitCode::from(2);
            }
        },
        None => vec![Level { clients: a.clients, outstanding: a.outstanding }],
    };
    let mode = match a.mode {
        ModeArg::Bft => Mode::Bft,
        ModeArg::Cft => Mode::Cft,
    };
    let work = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (dir, procs) = match &a.cluster {
        Some(d) => (d.clone(), None),
        None => {
            let dir = work.join("cluster");
            let opts = KeygenOptions {
                replicas: a.replicas,
                out: dir.clone(),
                mode,
                f: None,
                addresses: vec![],
                base_port: a.base_port,
                cluster_id: None,
                client_signatures: a.client_signatures,
            };
            if let Err(e) = keygen(&opts) {
                eprintln!("palisade-bench: {e}");
                return ExitCode::from(2);
            }
            let children = (0..a.replicas as u32).map(|i| (i, start_replica(&dir, i, &a))).collect();
            (dir, Some(Procs { children }))
        }
    };
    let cluster = match ClusterConfig::load(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let ids: Vec<u32> = cluster.replicas.keys().map(|r| r.0).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.client_threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let (model, cores) = procstat::machine();
    let mut reports = Vec::new();
    let mut events = Events { kill_primary_at_s: a.kill_primary_at, killed: None, restart_at_s: a.restart_at };
    let killed: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(None));
    let procs_shared: Arc<Mutex<Option<Procs>>> = Arc::new(Mutex::new(procs));
    for level in &levels {
        let label = format!("palisade n={} {}x{}", cluster.membership.n(), level.clients, level.outstanding);
        // Sample the replicas at the start and end of the measurement window.
        let pids: Vec<(u32, u32)> = procs_shared
            .lock()
            .as_ref()
            .map(|p| p.children.iter().map(|(i, c)| (*i, c.id())).collect())
            .unwrap_or_default();
        let sampler = {
            let (dir, ids, pids) = (dir.clone(), ids.clone(), pids.clone());
            let warmup = Duration::from_secs_f64(a.warmup + 0.5);
            let duration = Duration::from_secs_f64(a.duration);
            let (procs_shared, killed) = (procs_shared.clone(), killed.clone());
            let (kill_at, restart_at) = (a.kill_primary_at, a.restart_at);
            let run_args = a.clone();
            rt.spawn(async move {
                tokio::time::sleep(warmup).await;
                let t0 = Instant::now();
                let cpu0: BTreeMap<u32, f64> =
                    pids.iter().filter_map(|(i, p)| procstat::cpu_seconds(*p).map(|c| (*i, c))).collect();
                let m0: BTreeMap<u32, serde_json::Value> =
                    ids.iter().filter_map(|i| read_metrics(&dir, *i).map(|m| (*i, m))).collect();
                let mut queue_max: BTreeMap<String, u64> = BTreeMap::new();
                let mut did_kill = kill_at.is_none();
                let mut did_restart = restart_at.is_none();
                while t0.elapsed() < duration {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let t = t0.elapsed().as_secs_f64();
                    if !did_kill && t >= kill_at.unwrap_or(f64::MAX) {
                        did_kill = true;
                        if let Some(p) = current_primary(&dir, &ids) {
                            if let Some(procs) = procs_shared.lock().as_mut() {
                                procs.kill(p);
                            }
                            *killed.lock() = Some(p);
                        }
                    }
                    if !did_restart && t >= restart_at.unwrap_or(f64::MAX) {
                        did_restart = true;
                        if let Some(p) = *killed.lock() {
                            if let Some(procs) = procs_shared.lock().as_mut() {
                                procs.children.insert(p, start_replica(&dir, p, &run_args));
                            }
                        }
                    }
                    for i in &ids {
                        if let Some(m) = read_metrics(&dir, *i) {
                            if let Some(q) = m["queues"].as_object() {
                                for (k, v) in q {
                                    let e = queue_max.entry(k.clone()).or_default();
                                    *e = (*e).max(v.as_u64().unwrap_or(0));
                                }
                            }
                        }
                    }
                }
                let secs = t0.elapsed().as_secs_f64();
                let replicas: Vec<ReplicaStat> = pids
                    .iter()
                    .map(|(i, p)| ReplicaStat {
                        id: *i,
                        cpu_percent: match (cpu0.get(i), procstat::cpu_seconds(*p)) {
                            (Some(a), Some(b)) => (b - a) / secs * 100.0,
                            _ => 0.0,
                        },
                        peak_rss_mib: procstat::peak_rss_kib(*p).unwrap_or(0) as f64 / 1024.0,
                        view_changes: read_metrics(&dir, *i).and_then(|m| m["view_changes"].as_u64()).unwrap_or(0),
                    })
                    .collect();
                // The primary of the window's start: ordered requests and batches
                // (meaningless if it was killed and restarted during the window).
                let primary =
                    m0.iter().find(|(_, m)| m["primary"] == true).map(|(i, _)| *i).filter(|_| kill_at.is_none());
                let (ordered, batch) = match primary.and_then(|p| Some((m0.get(&p)?.clone(), read_metrics(&dir, p)?))) {
                    Some((a0, a1)) => {
                        let dr = a1["delivered_requests"].as_f64().unwrap_or(0.0)
                            - a0["delivered_requests"].as_f64().unwrap_or(0.0);
                        let db = a1["delivered"].as_f64().unwrap_or(0.0) - a0["delivered"].as_f64().unwrap_or(0.0);
                        (Some(dr / secs), (db > 0.0).then(|| dr / db))
                    }
                    None => (None, None),
                };
                (replicas, ordered, batch, queue_max)
            })
        };
        let result = rt.block_on(run_load(&cluster, &a, *level, &label));
        let (replicas, ordered, batch, queue_max) = rt.block_on(sampler).unwrap_or_default();
        reports.push(LevelReport {
            level: *level,
            palisade: result,
            primary_ordered_per_sec: ordered,
            mean_batch_size: batch,
            replicas,
            queue_depth_max: queue_max,
        });
    }
    events.killed = *killed.lock();
    drop(procs_shared.lock().take());

    // The baseline, at the level of the best result, in the same invocation.
    let best = reports
        .iter()
        .max_by(|x, y| x.palisade.ops_per_sec.total_cmp(&y.palisade.ops_per_sec))
        .map(|r| r.level)
        .expect("at least one level");
    let baseline = if a.no_baseline {
        None
    } else {
        let bdir = work.join("baseline");
        let opts = KeygenOptions {
            replicas: 1,
            out: bdir.clone(),
            mode: Mode::Cft,
            f: Some(0),
            addresses: vec![],
            base_port: a.base_port + 100,
            cluster_id: None,
            client_signatures: a.client_signatures,
        };
        keygen(&opts).expect("baseline configuration");
        let child = Command::new(std::env::current_exe().expect("own path"))
            .args(["baseline-server", "--config", bdir.to_str().expect("utf-8 path")])
            .stderr(Stdio::null())
            .spawn()
            .expect("start the baseline server");
        let _guard = Procs { children: BTreeMap::from([(0, child)]) };
        let bcluster = ClusterConfig::load(&bdir).expect("baseline configuration loads");
        Some(rt.block_on(run_load(&bcluster, &a, best, &format!("baseline {}x{}", best.clients, best.outstanding))))
    };
    let headline = reports
        .iter()
        .find(|r| r.level.clients == best.clients && r.level.outstanding == best.outstanding)
        .expect("best");
    let ratio = baseline.as_ref().map(|b| headline.palisade.ops_per_sec / b.ops_per_sec.max(1.0));

    print_table(&a, &cluster, &reports, baseline.as_ref(), ratio, &events, &model, cores);
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_revision: git_revision(),
        date_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        cpu_model: model,
        cores,
        args: a.clone(),
        levels: reports,
        baseline,
        baseline_ratio: ratio,
        events,
    };
    write_outputs(&a.out, &report);
    let _ = std::fs::remove_dir_all(&work);
    let h = report
        .levels
        .iter()
        .find(|r| r.level.clients == best.clients && r.level.outstanding == best.outstanding)
        .expect("best");
    let mut line = format!(
        "BENCH ops_per_sec={:.0} p50_us={} p99_us={}",
        h.palisade.ops_per_sec, h.palisade.latency.p50_us, h.palisade.latency.p99_us
    );
    if let Some(r) = ratio {
        line += &format!(" baseline_ratio={r:.3}");
    }
    println!("{line}");
    ExitCode::SUCCESS
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    a: &RunArgs,
    cluster: &ClusterConfig,
    reports: &[LevelReport],
    baseline: Option<&LoadResult>,
    ratio: Option<f64>,
    events: &Events,
    model: &str,
    cores: usize,
) {
    println!();
    println!(
        "palisade-bench: n={} {:?} f={}, {}/{} bytes, signatures {}, {:.0} s after {:.0} s warm-up, on {cores} cores ({model})",
        cluster.membership.n(),
        a.mode,
        cluster.membership.f(),
        a.request_bytes,
        a.reply_bytes,
        if a.client_signatures { "on" } else { "off" },
        a.duration,
        a.warmup
    );
    println!(
        "{:<18} {:>11} {:>9} {:>9} {:>9} {:>10} {:>8} {:>12} {:>10}",
        "load", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "errors", "primary/s", "batch"
    );
    for r in reports {
        let l = &r.palisade.latency;
        println!(
            "{:<18} {:>11.0} {:>9} {:>9} {:>9} {:>10} {:>8} {:>12} {:>10}",
            format!("palisade {}x{}", r.level.clients, r.level.outstanding),
            r.palisade.ops_per_sec,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            r.palisade.errors,
            r.primary_ordered_per_sec.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            r.mean_batch_size.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
        );
    }
    if let Some(b) = baseline {
        let l = &b.latency;
        println!(
            "{:<18} {:>11.0} {:>9} {:>9} {:>9} {:>10} {:>8}",
            "baseline", b.ops_per_sec, l.p50_us, l.p90_us, l.p99_us, l.p999_us, b.errors
        );
    }
    if let Some(r) = ratio {
        println!("replicated / unreplicated throughput: {r:.3}");
    }
    if let Some(r) = reports.last() {
        let stats: Vec<String> = r
            .replicas
            .iter()
            .map(|s| {
                format!(
                    "r{}: {:.0}% cpu, {:.1} MiB peak, {} view changes",
                    s.id, s.cpu_percent, s.peak_rss_mib, s.view_changes
                )
            })
            .collect();
        if !stats.is_empty() {
            println!("replicas: {}", stats.join("; "));
        }
        let q: Vec<String> = r.queue_depth_max.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !q.is_empty() {
            println!("largest queue depths seen: {}", q.join(" "));
        }
    }
    if let Some(k) = events.killed {
        println!(
            "killed the primary (replica {k}) at {:.1} s; restart at {:?} s",
            events.kill_primary_at_s.unwrap_or(0.0),
            events.restart_at_s
        );
    }
}

fn write_outputs(out: &Path, report: &Report) {
    if std::fs::create_dir_all(out).is_err() {
        eprintln!("palisade-bench: cannot create {}", out.display());
        return;
    }
    let json = serde_json::to_string_pretty(report).expect("the report serializes");
    let _ = std::fs::write(out.join("results.json"), json);
    let warmup = report.args.warmup;
    let mut series: Vec<svg::Series> = report
        .levels
        .iter()
        .map(|r| svg::Series {
            name: format!("palisade {}x{}", r.level.clients, r.level.outstanding),
            points: r.palisade.timeline.iter().enumerate().map(|(i, c)| (i as f64 / 10.0, *c as f64 * 10.0)).collect(),
        })
        .collect();
    if let Some(b) = &report.baseline {
        series.push(svg::Series {
            name: "baseline (unreplicated)".into(),
            points: b.timeline.iter().enumerate().map(|(i, c)| (i as f64 / 10.0, *c as f64 * 10.0)).collect(),
        });
    }
    let mut events = vec![svg::Event { x: warmup, label: "measurement starts".into() }];
    if let (Some(k), Some(at)) = (report.events.killed, report.events.kill_primary_at_s) {
        events.push(svg::Event { x: warmup + at, label: format!("primary (r{k}) killed") });
    }
    if let (Some(_), Some(at)) = (report.events.killed, report.events.restart_at_s) {
        events.push(svg::Event { x: warmup + at, label: "restarted".into() });
    }
    let title = format!(
        "Throughput over time: n={} {:?}, {}/{} bytes",
        report.args.replicas, report.args.mode, report.args.request_bytes, report.args.reply_bytes
    );
    let _ = std::fs::write(
        out.join("timeline.svg"),
        svg::line_chart(&title, "time (s)", "ops/s (100 ms buckets)", &series, &events),
    );
    if report.levels.len() > 1 {
        let curve = svg::Series {
            name: "palisade".into(),
            points: report
                .levels
                .iter()
                .map(|r| (r.palisade.ops_per_sec, r.palisade.latency.p50_us as f64 / 1000.0))
                .collect(),
        };
        let title = format!(
            "Throughput vs latency: n={} {:?}, {}/{} bytes",
            report.args.replicas, report.args.mode, report.args.request_bytes, report.args.reply_bytes
        );
        let _ = std::fs::write(
            out.join("curve.svg"),
            svg::line_chart(&title, "throughput (ops/s)", "p50 latency (ms)", &[curve], &[]),
        );
    }
    eprintln!("palisade-bench: wrote {}", out.display());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.role {
        Some(RoleCmd::Server { config, id, metrics_file, tuning }) => server(&config, id, metrics_file, &tuning),
        Some(RoleCmd::BaselineServer { config }) => baseline_server(&config),
        None => run(cli.run),
    }
}
