//! One run of the harness: start (or join) a cluster, drive each load
//! level while sampling the replicas and injecting the faults asked for,
//! measure the unreplicated baseline at the best level, and report.

use crate::cli::{parse_sweep, Level, RunArgs};
use crate::load::{run_load, LoadResult};
use crate::processes::{current_primary, read_metrics, start_baseline, start_joiner, start_replica, Procs};
use crate::report::{
    git_revision, Change, Events, LevelReport, RepeatRow, RepeatSummary, ReplicaStat, Report, WindowStats,
};
use palisade::keygen::{keygen, KeygenOptions};
use palisade_bench::metrics_file::ReplicaMetrics;
use palisade_bench::procstat;
use palisade_core::reconfig::AdminOp;
use palisade_core::Mode;
use palisade_core::ReplicaId;
use palisade_wire::ClusterConfig;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the experiment `a` describes; exit code 2 on a usage or setup error.
pub(crate) fn run(a: RunArgs) -> ExitCode {
    let comparisons = usize::from(!a.compare_durability.is_empty())
        + usize::from(!a.compare_auth.is_empty())
        + usize::from(a.compare_tentative)
        + usize::from(a.compare_byzantine)
        + usize::from(a.compare_flood);
    if comparisons > 1 {
        eprintln!(
            "palisade-bench: compare durability, request authentication, tentative execution or a Byzantine replica, one at a time"
        );
        return ExitCode::from(2);
    }
    match crate::processes::byzantine_replica(&a) {
        Err(e) => {
            eprintln!("palisade-bench: {e}");
            return ExitCode::from(2);
        }
        Ok(None) if a.compare_byzantine => {
            eprintln!("palisade-bench: --compare-byzantine needs --byzantine-replica ID:MODE");
            return ExitCode::from(2);
        }
        Ok(Some((id, mode))) => {
            if id as usize >= a.replicas || a.cluster.is_some() {
                eprintln!("palisade-bench: --byzantine-replica needs a replica this run starts (id below --replicas)");
                return ExitCode::from(2);
            }
            #[cfg(feature = "byzantine")]
            if let Err(e) = palisade_runtime::byzantine::Misbehaviour::parse(&mode) {
                eprintln!("palisade-bench: {e}");
                return ExitCode::from(2);
            }
            #[cfg(not(feature = "byzantine"))]
            {
                eprintln!(
                    "palisade-bench: Byzantine mode {mode:?} needs a build with the byzantine feature: cargo build --release -p palisade-bench --features byzantine"
                );
                return ExitCode::from(2);
            }
        }
        Ok(None) => {}
    }
    if a.compare_byzantine {
        return compare(a, vec![Variant::Byzantine(false), Variant::Byzantine(true)]);
    }
    if a.compare_flood {
        if a.flood_client.is_none() {
            eprintln!("palisade-bench: --compare-flood needs --flood-client valid|invalid");
            return ExitCode::from(2);
        }
        return compare(a, vec![Variant::Flood(false), Variant::Flood(true)]);
    }
    if a.compare_tentative {
        return compare(a, vec![Variant::Tentative(false), Variant::Tentative(true)]);
    }
    if !a.compare_durability.is_empty() {
        let variants = a.compare_durability.iter().map(|d| Variant::Durability(*d)).collect();
        return compare(a, variants);
    }
    if !a.compare_auth.is_empty() {
        let variants = a.compare_auth.iter().map(|m| Variant::Auth(*m)).collect();
        return compare(a, variants);
    }
    if a.repeat > 1 {
        return repeat(a);
    }
    match in_scratch(&a, "") {
        Ok(report) => {
            report.print_table();
            report.write_outputs(&a.out);
            println!("{}", report.bench_line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("palisade-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// The experiment `a.repeat` times in a row, each a replicated run and then
/// its baseline (A B A B ...), each on a fresh cluster; reports every
/// repetition and the spread, and writes the last one's outputs with the
/// repetitions in results.json.
fn repeat(a: RunArgs) -> ExitCode {
    let mut rows = Vec::new();
    let mut last = None;
    for i in 0..a.repeat {
        match in_scratch(&a, &format!("-r{i}")) {
            Ok(report) => {
                println!("repeat {i}: {}", report.bench_line());
                let best = Report::best(&report.levels).expect("at least one level");
                rows.push(RepeatRow {
                    ops_per_sec: best.palisade.ops_per_sec,
                    baseline_ops_per_sec: report.baseline.as_ref().map(|b| b.ops_per_sec),
                    baseline_ratio: report.baseline_ratio,
                    machine: best.palisade.machine,
                    baseline_machine: report.baseline.as_ref().and_then(|b| b.machine),
                });
                last = Some(report);
            }
            Err(e) => {
                eprintln!("palisade-bench: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(mut report) = last else { return ExitCode::from(2) };
    report.repeat = Some(RepeatSummary::new(rows));
    report.print_table();
    report.write_outputs(&a.out);
    println!("{}", report.bench_line());
    ExitCode::SUCCESS
}

/// Runs the experiment `a` describes in a fresh scratch directory (named
/// with `tag`), removed afterwards.
fn in_scratch(a: &RunArgs, tag: &str) -> Result<Report, String> {
    let work = std::env::temp_dir().join(format!("palisade-bench-{}{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = experiment(a, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// One setting a comparison varies.
#[derive(Clone, Copy, Debug)]
enum Variant {
    Durability(palisade_host::Durability),
    Auth(palisade_wire::RequestAuth),
    Tentative(bool),
    /// Whether the `--byzantine-replica` misbehaves.
    Byzantine(bool),
    /// Whether the `--flood-client` floods.
    Flood(bool),
}

impl Variant {
    fn kind(&self) -> &'static str {
        match self {
            Variant::Durability(_) => "durability",
            Variant::Auth(_) => "request_auth",
            Variant::Tentative(_) => "tentative",
            Variant::Byzantine(_) => "byzantine",
            Variant::Flood(_) => "flood",
        }
    }

    fn apply(&self, run: &mut RunArgs) {
        match *self {
            Variant::Durability(d) => run.tuning.durability = d,
            Variant::Auth(m) => run.request_auth = m,
            Variant::Tentative(on) => run.tuning.tentative = on,
            Variant::Byzantine(on) => {
                if !on {
                    run.byzantine_replica = None;
                }
            }
            Variant::Flood(on) => {
                if !on {
                    run.flood_client = None;
                }
            }
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Variant::Durability(d) => d.fmt(f),
            Variant::Auth(m) => m.fmt(f),
            Variant::Tentative(on) | Variant::Byzantine(on) | Variant::Flood(on) => {
                f.write_str(if *on { "on" } else { "off" })
            }
        }
    }
}

/// The same load on a fresh cluster per variant (durability mode, or
/// request authentication), the variants in turn for several rounds, so
/// that a drifting machine affects every one alike; ratios are taken within
/// a round, to the first.
fn compare(a: RunArgs, modes: Vec<Variant>) -> ExitCode {
    let mut ops: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut p99: Vec<Vec<u64>> = vec![Vec::new(); modes.len()];
    let mut p50: Vec<Vec<u64>> = vec![Vec::new(); modes.len()];
    for round in 0..a.rounds.max(1) {
        for (i, mode) in modes.iter().enumerate() {
            let mut run = a.clone();
            mode.apply(&mut run);
            run.no_baseline = true;
            run.compare_durability.clear();
            run.compare_auth.clear();
            run.compare_tentative = false;
            run.compare_byzantine = false;
            run.compare_flood = false;
            match in_scratch(&run, &format!("-{round}-{i}")) {
                Ok(report) => {
                    let best = Report::best(&report.levels).expect("at least one level");
                    println!("round {round} {} {mode}: {}", mode.kind(), report.bench_line());
                    if let (Variant::Byzantine(true) | Variant::Flood(true), Some((worst, median))) =
                        (mode, report.client_p99_spread())
                    {
                        println!(
                            "round {round} clients' p99: worst {worst} us, median {median} us ({:.2}x)",
                            worst as f64 / median.max(1) as f64
                        );
                    }
                    if let (Variant::Byzantine(true), Some(acted)) = (mode, report.events.view_change_at_s) {
                        let after = report.mean_ops(acted + 0.5, a.duration).unwrap_or(0.0);
                        let from = report.events.byzantine_at_s.unwrap_or(0.0);
                        println!(
                            "round {round} byzantine: acted {:.1} s after it began; {after:.0} ops/s after, {:.3} of fault-free",
                            acted - from,
                            after / ops[0].last().copied().unwrap_or(1.0).max(1.0)
                        );
                    }
                    ops[i].push(best.palisade.ops_per_sec);
                    p99[i].push(best.palisade.latency.p99_us);
                    p50[i].push(best.palisade.latency.p50_us);
                }
                Err(e) => {
                    eprintln!("palisade-bench: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!();
    let kind = modes.first().map_or("variant", Variant::kind);
    println!(
        "{:<14} {:>12} {:>8} {:>8} {:>28} {:>10}",
        kind, "ops/s (med)", "p50 us", "p99 us", "ratio to first (min med max)", "p50 ratio"
    );
    let mid = |mut v: Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    for (i, mode) in modes.iter().enumerate() {
        let ratios: Vec<f64> = ops[i].iter().zip(&ops[0]).map(|(x, b)| x / b.max(1.0)).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        // Latency ratios round by round, as throughput's are.
        let p50_ratio = median(p50[i].iter().zip(&p50[0]).map(|(x, b)| *x as f64 / (*b).max(1) as f64).collect());
        println!(
            "{:<14} {:>12.0} {:>8} {:>8} {:>10.3} {:>8.3} {:>8.3} {:>10.3}",
            mode.to_string(),
            median(ops[i].clone()),
            mid(p50[i].clone()),
            mid(p99[i].clone()),
            sorted[0],
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            p50_ratio
        );
        println!(
            "BENCH {kind}={mode} ops_per_sec={:.0} ratio={:.3} p50_us={} p50_ratio={:.3}",
            median(ops[i].clone()),
            sorted[sorted.len() / 2],
            mid(p50[i].clone()),
            p50_ratio
        );
    }
    ExitCode::SUCCESS
}

fn levels(a: &RunArgs) -> Result<Vec<Level>, String> {
    match &a.sweep {
        Some(s) => parse_sweep(s),
        None => Ok(vec![Level { clients: a.clients, outstanding: a.outstanding }]),
    }
}

/// Writes a configuration of `replicas` replicas into `dir`.
fn configure(
    dir: &Path,
    replicas: usize,
    mode: Mode,
    f: Option<usize>,
    base_port: u16,
    a: &RunArgs,
) -> Result<(), String> {
    let opts = KeygenOptions {
        replicas,
        out: dir.to_path_buf(),
        mode,
        f,
        addresses: vec![],
        base_port,
        cluster_id: None,
        request_auth: a.request_auth,
        requests_to_all: a.requests_to_all,
    };
    keygen(&opts).map(drop).map_err(|e| e.to_string())
}

/// The cluster a run measures: its configuration directory, and the
/// replica processes if the run started them.
fn cluster(a: &RunArgs, work: &Path) -> Result<(PathBuf, Option<Procs>), String> {
    if let Some(d) = &a.cluster {
        return Ok((d.clone(), None));
    }
    let dir = work.join("cluster");
    configure(&dir, a.replicas, a.mode.into(), None, a.base_port, a)?;
    let children = (0..a.replicas as u32).map(|i| (i, start_replica(&dir, i, a, false))).collect();
    let mut procs = Procs { children };
    if let Some(n) = a.grow_to.filter(|n| *n > a.replicas) {
        grow(&dir, a, &mut procs, n)?;
    }
    Ok((dir, Some(procs)))
}

/// The newest membership the replicas' kept chains show (`cluster.toml`'s
/// when none moved on).
fn newest_membership(dir: &Path, cluster: &ClusterConfig) -> palisade_core::Membership {
    let genesis = cluster.genesis();
    let newest = (0..256u32)
        .filter_map(|id| palisade_wire::chain::Chain::load(&dir.join(format!("data-{id}")), genesis.clone()).ok())
        .map(|c| c.newest().clone())
        .max_by_key(|c| c.epoch);
    newest.map_or_else(|| cluster.membership.clone(), |c| c.membership())
}

/// Grows the cluster in `dir` to `n` replicas with one request of the view
/// manager, and waits until every member serves the new epoch.
fn grow(dir: &Path, a: &RunArgs, procs: &mut Procs, n: usize) -> Result<(), String> {
    let new: Vec<u32> = (a.replicas as u32..n as u32).collect();
    let ops = new.iter().map(|id| joiner(dir, *id, a, procs)).collect::<Result<Vec<_>, _>>()?;
    let next = match palisade::admin::reconfigure(dir, ops, 60_000).map_err(|e| e.to_string())? {
        palisade_core::reconfig::AdminOutcome::Accepted { next, .. } => next,
        palisade_core::reconfig::AdminOutcome::Rejected(why) => return Err(format!("growing to {n}: {why}")),
    };
    let start = Instant::now();
    let all: Vec<u32> = next.members.iter().map(|m| m.id.0).collect();
    while !all.iter().all(|id| read_metrics(dir, *id).is_some_and(|m| m.epoch == next.epoch)) {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("the members of epoch {} did not all start it within 60 s", next.epoch));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Writes replica `id`'s key and starts it to join; returns the operation
/// that admits it.
fn joiner(dir: &Path, id: u32, a: &RunArgs, procs: &mut Procs) -> Result<AdminOp, String> {
    let address = format!("127.0.0.1:{}", a.base_port + id as u16);
    let (_, public) = palisade::admin::write_new_replica(dir, id, &address)?;
    let key = palisade_wire::keys::parse_public(&public, "key").map_err(|e| e.to_string())?;
    procs.children.insert(id, start_joiner(dir, id, a));
    Ok(AdminOp::Add { id: ReplicaId(id), address, public_key: key.to_bytes() })
}

fn experiment(a: &RunArgs, work: &Path) -> Result<Report, String> {
    let levels = levels(a)?;
    let (dir, procs) = cluster(a, work)?;
    // Clients start from cluster.toml and learn any later membership (a
    // grown cluster's) from the replicas; the report names the newest.
    let cluster = ClusterConfig::load(&dir).map_err(|e| e.to_string())?;
    let newest = newest_membership(&dir, &cluster);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let (cpu_model, cores) = procstat::machine();
    let shared = Shared {
        procs: Arc::new(Mutex::new(procs)),
        killed: Arc::new(Mutex::new(None)),
        killed_all: Arc::new(Mutex::new(false)),
        caught_up_at: Arc::new(Mutex::new(None)),
        changes: Arc::new(Mutex::new(Vec::new())),
        view_change_at: Arc::new(Mutex::new(None)),
    };
    let ids: Vec<u32> = cluster.replicas.keys().map(|r| r.0).collect();
    let mut reports = Vec::new();
    let preload_s = match levels.first() {
        Some(first) => rt.block_on(crate::load::preload(&cluster, a, *first)),
        None => None,
    };
    for level in levels {
        let label = format!("palisade n={} {}x{}", newest.n(), level.clients, level.outstanding);
        let pids = shared.procs.lock().as_ref().map(Procs::pids).unwrap_or_default();
        let sampler = Sampler { dir: dir.clone(), ids: ids.clone(), pids, args: a.clone(), shared: shared.clone() };
        let sampler = rt.spawn(sampler.run());
        let mut result = rt.block_on(run_load(&dir, &cluster, a, level, &label));
        result.preload_s = preload_s;
        let window = rt.block_on(sampler).unwrap_or_default();
        reports.push(LevelReport::new(level, result, window));
    }
    let events = Events {
        kill_primary_at_s: a.kill_primary_at,
        killed: *shared.killed.lock(),
        restart_at_s: a.restart_at,
        caught_up_at_s: *shared.caught_up_at.lock(),
        changes: shared.changes.lock().clone(),
        byzantine: crate::processes::byzantine_replica(a).ok().flatten().map(|(id, mode)| format!("r{id} {mode}")),
        byzantine_at_s: a.byzantine_at.filter(|_| a.byzantine_replica.is_some()),
        view_change_at_s: *shared.view_change_at.lock(),
    };
    drop(shared.procs.lock().take());

    let best = Report::best(&reports).expect("at least one level");
    // The unreplicated baseline serves the echo workload only.
    let with_baseline = !a.no_baseline && a.service == crate::cli::ServiceArg::Echo;
    let baseline = if with_baseline { Some(baseline(a, work, best.level, &rt)?) } else { None };
    let baseline_ratio = baseline.as_ref().map(|b| best.palisade.ops_per_sec / b.ops_per_sec.max(1.0));
    let mut report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_revision: git_revision(),
        date_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        cpu_model,
        cores,
        n: newest.n(),
        f: newest.f(),
        args: a.clone(),
        levels: reports,
        baseline,
        baseline_ratio,
        events,
        repeat: None,
    };
    report.measure_stalls();
    Ok(report)
}

/// The unreplicated baseline at `level`, in the same invocation.
fn baseline(a: &RunArgs, work: &Path, level: Level, rt: &tokio::runtime::Runtime) -> Result<LoadResult, String> {
    let dir = work.join("baseline");
    configure(&dir, 1, Mode::Cft, Some(0), a.base_port + 100, a)?;
    let _server = start_baseline(&dir);
    let cluster = ClusterConfig::load(&dir).map_err(|e| e.to_string())?;
    let label = format!("baseline {}x{}", level.clients, level.outstanding);
    Ok(rt.block_on(run_load(&dir, &cluster, a, level, &label)))
}

/// What the levels of a run share: the replica processes (a fault may
/// kill and restart one) and which replica was killed.
#[derive(Clone)]
struct Shared {
    procs: Arc<Mutex<Option<Procs>>>,
    killed: Arc<Mutex<Option<u32>>>,
    killed_all: Arc<Mutex<bool>>,
    caught_up_at: Arc<Mutex<Option<f64>>>,
    /// Membership changes made during the measurement.
    changes: Arc<Mutex<Vec<Change>>>,
    /// When a replica first changed view during the measurement (after the
    /// Byzantine replica began, if it began late).
    view_change_at: Arc<Mutex<Option<f64>>>,
}

/// Samples the replicas over one level's measurement window and injects
/// the run's faults on time.
struct Sampler {
    dir: PathBuf,
    ids: Vec<u32>,
    /// Process ids by replica id, of the replicas this run started.
    pids: Vec<(u32, u32)>,
    args: RunArgs,
    shared: Shared,
}

impl Sampler {
    async fn run(self) -> WindowStats {
        // The clock starts where the load's timeline does: at the end of
        // its warm-up (once every client had its first answer).
        let created = Instant::now();
        let started = loop {
            match *crate::load::WINDOW_STARTED.lock() {
                Some(t) if t >= created => break t,
                // The load never started its window (it failed): measure
                // from now rather than wait forever.
                _ if created.elapsed() > Duration::from_secs(120) => break Instant::now(),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let t0 = started + Duration::from_secs_f64(self.args.warmup);
        tokio::time::sleep(t0.saturating_duration_since(Instant::now())).await;
        let duration = Duration::from_secs_f64(self.args.duration);
        let cpu0: BTreeMap<u32, f64> =
            self.pids.iter().filter_map(|(i, p)| procstat::cpu_seconds(*p).map(|c| (*i, c))).collect();
        let m0: BTreeMap<u32, ReplicaMetrics> =
            self.ids.iter().filter_map(|i| read_metrics(&self.dir, *i).map(|m| (*i, m))).collect();
        let mut queue_depth_max: BTreeMap<String, u64> = BTreeMap::new();
        let (mut kill_at, mut restart_at) = (self.args.kill_primary_at, self.args.restart_at);
        let mut kill_all_at = self.args.kill_all_at;
        let (mut add_at, mut remove_at) = (self.args.add_at, self.args.remove_at);
        let mut byzantine_at = self.args.byzantine_at.filter(|_| self.args.byzantine_replica.is_some());
        let mut views_seen: BTreeMap<u32, u64> = m0.iter().map(|(i, m)| (*i, m.view_changes)).collect();
        while t0.elapsed() < duration {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = t0.elapsed().as_secs_f64();
            if byzantine_at.is_some_and(|at| t >= at) {
                byzantine_at = None;
                views_seen =
                    self.ids.iter().filter_map(|i| read_metrics(&self.dir, *i).map(|m| (*i, m.view_changes))).collect();
                if let Err(e) = std::fs::write(crate::processes::byzantine_trigger(&self.dir), b"") {
                    eprintln!("palisade-bench: cannot start the Byzantine replica: {e}");
                }
            }
            if byzantine_at.is_none() && self.shared.view_change_at.lock().is_none() {
                // The Byzantine replica's own view changes (a tiny-batch
                // backup refuses every batch) say nothing of the defence.
                let bad = crate::processes::byzantine_replica(&self.args).ok().flatten().map(|(id, _)| id);
                let changed = self
                    .ids
                    .iter()
                    .filter(|i| Some(**i) != bad)
                    .filter_map(|i| read_metrics(&self.dir, *i).map(|m| (*i, m.view_changes)))
                    .any(|(i, v)| v > views_seen.get(&i).copied().unwrap_or(0));
                if changed {
                    *self.shared.view_change_at.lock() = Some(t);
                }
            }
            if kill_at.is_some_and(|at| t >= at) {
                kill_at = None;
                self.kill_primary();
            }
            if kill_all_at.is_some_and(|at| t >= at) {
                kill_all_at = None;
                self.kill_all();
            }
            if restart_at.is_some_and(|at| t >= at) {
                restart_at = None;
                self.restart_killed();
            }
            if add_at.is_some_and(|at| t >= at) {
                add_at = None;
                let id = self.args.replicas as u32;
                let op = {
                    let mut procs = self.shared.procs.lock();
                    procs.as_mut().map(|p| joiner(&self.dir, id, &self.args, p))
                };
                match op {
                    Some(Ok(op)) => self.change(t, format!("r{id} added"), op),
                    Some(Err(e)) => eprintln!("palisade-bench: cannot add replica {id}: {e}"),
                    None => {}
                }
            }
            if remove_at.is_some_and(|at| t >= at) {
                remove_at = None;
                let id = self.args.remove_id;
                self.change(t, format!("r{id} removed"), AdminOp::Remove { id: ReplicaId(id) });
            }
            if self.args.restart_at.is_some_and(|at| t > at) && self.shared.caught_up_at.lock().is_none() {
                self.note_caught_up(t);
            }
            for m in self.ids.iter().filter_map(|i| read_metrics(&self.dir, *i)) {
                for (k, v) in m.queues {
                    let e = queue_depth_max.entry(k).or_default();
                    *e = (*e).max(v);
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut stats = self.primary_stats(&m0, secs);
        stats.replicas = self.replica_stats(&cpu0, secs);
        stats.queue_depth_max = queue_depth_max;
        stats
    }

    fn kill_primary(&self) {
        if let Some(p) = current_primary(&self.dir, &self.ids) {
            if let Some(procs) = self.shared.procs.lock().as_mut() {
                procs.kill(p);
            }
            *self.shared.killed.lock() = Some(p);
        }
    }

    /// Sends `op` for the view manager in the background (the sampler keeps
    /// its beat), and notes when it was sent and what the cluster said.
    fn change(&self, t: f64, label: String, op: AdminOp) {
        let (dir, changes) = (self.dir.clone(), self.shared.changes.clone());
        let sent = Instant::now();
        std::thread::spawn(move || {
            let outcome = match palisade::admin::reconfigure(&dir, vec![op], 30_000) {
                Ok(palisade_core::reconfig::AdminOutcome::Accepted { next, boundary }) => {
                    format!(
                        "accepted: epoch {} after {}, {} members, f = {}",
                        next.epoch,
                        boundary.0,
                        next.members.len(),
                        next.f
                    )
                }
                Ok(palisade_core::reconfig::AdminOutcome::Rejected(why)) => format!("rejected: {why}"),
                Err(e) => format!("no outcome: {e}"),
            };
            let answered_s = sent.elapsed().as_secs_f64();
            changes.lock().push(Change { at_s: t, label, outcome, answered_s, stall_s: None });
        });
    }

    /// SIGKILL to every replica at once.
    fn kill_all(&self) {
        if let Some(procs) = self.shared.procs.lock().as_mut() {
            for id in &self.ids {
                procs.kill(*id);
            }
        }
        *self.shared.killed_all.lock() = true;
    }

    /// Notes when the restarted replica has delivered as far as the
    /// slowest of the others (less a checkpoint interval) and votes again.
    fn note_caught_up(&self, t: f64) {
        let Some(p) = *self.shared.killed.lock() else { return };
        let Some(mine) = read_metrics(&self.dir, p) else { return };
        let others = self.ids.iter().filter(|i| **i != p).filter_map(|i| read_metrics(&self.dir, *i));
        let Some(slowest) = others.map(|m| m.delivered).min() else { return };
        if !mine.rejoining && mine.delivered + 128 >= slowest && mine.delivered > 0 {
            *self.shared.caught_up_at.lock() = Some(t);
        }
    }

    fn restart_killed(&self) {
        if *self.shared.killed_all.lock() {
            if let Some(procs) = self.shared.procs.lock().as_mut() {
                for id in &self.ids {
                    let _ = std::fs::remove_file(self.dir.join(format!("metrics-{id}.json")));
                    procs.children.insert(*id, start_replica(&self.dir, *id, &self.args, true));
                }
            }
            return;
        }
        if let Some(p) = *self.shared.killed.lock() {
            if self.args.restart_empty {
                let _ = std::fs::remove_dir_all(self.dir.join(format!("data-{p}")));
            }
            // What the killed process last reported must not pass for the new one's.
            let _ = std::fs::remove_file(self.dir.join(format!("metrics-{p}.json")));
            if let Some(procs) = self.shared.procs.lock().as_mut() {
                procs.children.insert(p, start_replica(&self.dir, p, &self.args, true));
            }
        }
    }

    /// CPU and memory of each replica over the window. A replica a fault
    /// restarted is measured in its new process (whose CPU time all falls
    /// in the window); one killed and not restarted shows nothing.
    fn replica_stats(&self, cpu0: &BTreeMap<u32, f64>, secs: f64) -> Vec<ReplicaStat> {
        let now: BTreeMap<u32, u32> =
            self.shared.procs.lock().as_ref().map(Procs::pids).unwrap_or_default().into_iter().collect();
        self.pids
            .iter()
            .map(|(i, first)| {
                let pid = now.get(i).copied();
                let before = if pid == Some(*first) { cpu0.get(i).copied() } else { Some(0.0) };
                let m = read_metrics(&self.dir, *i);
                ReplicaStat {
                    id: *i,
                    cpu_percent: match (before, pid.and_then(procstat::cpu_seconds)) {
                        (Some(a), Some(b)) => (b - a) / secs * 100.0,
                        _ => 0.0,
                    },
                    peak_rss_mib: pid.and_then(procstat::peak_rss_kib).unwrap_or(0) as f64 / 1024.0,
                    view_changes: m.as_ref().map_or(0, |m| m.view_changes),
                    skip_suspicions: m.as_ref().map_or(0, |m| m.skip_suspicions),
                    late_forwards: m.as_ref().map_or(0, |m| m.late_forwards),
                }
            })
            .collect()
    }

    /// Requests ordered per second and the mean batch, at the primary of
    /// the window's start (meaningless if a fault killed it).
    fn primary_stats(&self, m0: &BTreeMap<u32, ReplicaMetrics>, secs: f64) -> WindowStats {
        let primary =
            m0.iter().find(|(_, m)| m.primary).map(|(i, _)| *i).filter(|_| self.args.kill_primary_at.is_none());
        let Some((a0, a1)) = primary.and_then(|p| Some((m0.get(&p)?, read_metrics(&self.dir, p)?))) else {
            return WindowStats::default();
        };
        let requests = a1.delivered_requests.saturating_sub(a0.delivered_requests) as f64;
        let batches = a1.delivered.saturating_sub(a0.delivered) as f64;
        let verified = |m: &ReplicaMetrics| m.counters.get("client_signatures_verified").copied().unwrap_or(0);
        let signatures = verified(&a1).saturating_sub(verified(a0)) as f64;
        WindowStats {
            primary_ordered_per_sec: Some(requests / secs),
            mean_batch_size: (batches > 0.0).then(|| requests / batches),
            signatures_per_request: (requests > 0.0).then(|| signatures / requests),
            ..WindowStats::default()
        }
    }
}
