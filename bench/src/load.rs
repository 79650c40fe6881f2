//! The load: closed-loop clients, each keeping a number of requests
//! outstanding (echo requests, or YCSB-style reads and updates of a
//! key-value store), timed into a latency histogram and a 100 ms timeline.

use crate::cli::{GenerateArgs, Level, RunArgs, ServiceArg};
use bytes::Bytes;
use hdrhistogram::Histogram;
use palisade_bench::procstat::{self, MachineTimes};
use palisade_client::{Client, ClientOptions, Resends};
use palisade_services::echo;
use palisade_services::kv::KvOp;
use palisade_wire::{keys, ClusterConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Latency quantiles of the measurement window, in microseconds.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) mean_us: f64,
}

/// What one load level achieved.
#[derive(Debug, Default, Serialize)]
pub(crate) struct LoadResult {
    pub(crate) ops_per_sec: f64,
    pub(crate) completed: u64,
    pub(crate) errors: u64,
    pub(crate) latency: Latency,
    /// Completions per 100 ms from the start of the warm-up.
    pub(crate) timeline: Vec<u64>,
    /// kv: seconds it took to write every key before the warm-up.
    pub(crate) preload_s: Option<f64>,
    /// The machine over the measurement window (the generators' CPU
    /// summed over their processes).
    pub(crate) machine: Option<MachineWindow>,
    /// Load generator processes (1: the harness itself).
    pub(crate) generators: usize,
    /// Each client's p99 latency, in microseconds, in the order of the
    /// generators' clients.
    pub(crate) client_p99_us: Vec<u64>,
    /// Requests the clients sent again to every replica (warm-up included).
    #[serde(default)]
    pub(crate) resends: Resends,
}

/// What else the machine did while a run was measured: figures from a
/// shared machine mean little without them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct MachineWindow {
    /// Percent of all cores idle (or waiting on I/O).
    pub(crate) idle_percent: f64,
    /// Percent of all cores the hypervisor gave to other guests.
    pub(crate) steal_percent: f64,
    /// CPU of this process, the load generator, in percent of one core.
    pub(crate) generator_cpu_percent: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// When the current level's window (its warm-up) started in this
/// process: the sampler's clock starts from it, so that the events it
/// injects and the timeline's buckets share one origin.
pub(crate) static WINDOW_STARTED: Mutex<Option<Instant>> = Mutex::new(None);

/// The window a run measures, shared by every request loop.
#[derive(Clone)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Completions per 100 ms bucket since `start`.
    timeline: Arc<Vec<AtomicU64>>,
}

impl Window {
    fn new(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now();
        let buckets = ((warmup + duration).as_millis() / 100 + 1) as usize;
        Window {
            start,
            measure_from: start + warmup,
            end: start + warmup + duration,
            timeline: Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    fn completions_per_second_before(&self, t: f64) -> u64 {
        let b = (t * 10.0) as usize;
        (b.saturating_sub(10)..b).filter_map(|i| self.timeline.get(i)).map(|x| x.load(Ordering::Relaxed)).sum()
    }
}

/// What one request loop sends.
#[derive(Clone)]
enum Workload {
    /// The same echo request every time.
    Echo(Bytes),
    /// Reads (`read_percent` of them, by the read-only path) and updates
    /// of keys drawn uniformly from `keys`, values of `value_bytes`.
    Kv { keys: u64, value: Bytes, read_percent: u8 },
}

/// The key for number `i`: fixed width, so every key has the same size.
fn key(i: u64) -> Bytes {
    Bytes::from(format!("user{i:012}"))
}

impl Workload {
    fn of(a: &RunArgs) -> Workload {
        match a.service {
            ServiceArg::Echo => Workload::Echo(echo::request(a.request_bytes, a.reply_bytes)),
            ServiceArg::Kv => Workload::Kv {
                keys: a.keys.max(1),
                value: Bytes::from((0..a.value_bytes).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()),
                read_percent: a.read_percent.min(100),
            },
        }
    }

    /// The next operation, from the loop's own generator.
    async fn invoke(&self, c: &Client, rng: &mut u64) -> Result<Bytes, palisade_client::InvokeError> {
        match self {
            Workload::Echo(op) => c.invoke_ordered(op.clone()).await,
            Workload::Kv { keys, value, read_percent } => {
                // xorshift64*: a few instructions, no shared state.
                *rng ^= *rng >> 12;
                *rng ^= *rng << 25;
                *rng ^= *rng >> 27;
                let r = rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
                let k = key((r >> 8) % keys);
                if (r % 100) < u64::from(*read_percent) {
                    c.invoke_unordered(KvOp::Get(k).encode()).await
                } else {
                    c.invoke_ordered(KvOp::Put(k, value.clone()).encode()).await
                }
            }
        }
    }
}

/// Writes every key of a kv workload once, from `clients` clients with
/// `outstanding` requests each, before any measurement (and before the
/// sampler's clock starts); returns how long it took, or `None` for echo.
pub(crate) async fn preload(cluster: &ClusterConfig, a: &RunArgs, level: Level) -> Option<f64> {
    let Workload::Kv { keys, value, .. } = Workload::of(a) else { return None };
    let opts = ClientOptions { timeout_ms: 30_000, sign_group_max: a.sign_group_max, ..ClientOptions::default() };
    let clients: Vec<Client> = (0..level.clients.max(1))
        .map(|_| Client::connect(cluster.clone(), keys::generate(&mut rand_core::OsRng), opts.clone()))
        .collect();
    let t0 = Instant::now();
    let loops = (clients.len() * level.outstanding.max(1)) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..loops {
        let (c, next, value) = (clients[i as usize % clients.len()].clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return;
                }
                let _ = c.invoke_ordered(KvOp::Put(key(k), value.clone()).encode()).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let s = t0.elapsed().as_secs_f64();
    eprintln!("preload: wrote {} keys of {} bytes in {s:.1} s", a.keys, a.value_bytes);
    Some(s)
}

/// One outstanding request, reissued as soon as it completes, until the
/// window ends. Returns its latencies inside the window.
/// Runs one outstanding request slot until the window ends; returns the
/// latencies it measured, in microseconds. A plain list: thousands of
/// slots each with a histogram of their own (a quarter of a MiB apiece,
/// touched page by page) cost the load generator more than the requests.
async fn request_loop(c: Client, work: Workload, w: Window, errors: Arc<AtomicU64>, seed: u64) -> Vec<u64> {
    let mut local = Vec::new();
    let mut rng = seed | 1;
    loop {
        let t0 = Instant::now();
        if t0 >= w.end {
            return local;
        }
        match work.invoke(&c, &mut rng).await {
            Ok(_) => {
                let t1 = Instant::now();
                let bucket = ((t1 - w.start).as_millis() / 100) as usize;
                if let Some(b) = w.timeline.get(bucket) {
                    b.fetch_add(1, Ordering::Relaxed);
                }
                if t0 >= w.measure_from && t1 <= w.end {
                    local.push((t1 - t0).as_micros().max(1) as u64);
                }
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Shows progress on one line of stderr until aborted.
fn show_progress(w: Window, label: String, total: f64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t = w.start.elapsed().as_secs_f64().min(total);
            let filled = ((t / total * 30.0) as usize).min(30);
            eprint!(
                "\r{label} [{}{}] {:5.1}/{:.0}s {:>9} ops/s ",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                t,
                total,
                w.completions_per_second_before(t)
            );
        }
    })
}

/// What one process's request loops measured.
#[derive(Serialize, Deserialize)]
pub(crate) struct Share {
    /// Latencies recorded in the window, as (microseconds, count).
    latencies: Vec<(u64, u64)>,
    errors: u64,
    /// Completions per 100 ms from the shared start.
    timeline: Vec<u64>,
    machine: Option<MachineWindow>,
    /// Milliseconds this process started after the shared start (its
    /// clients were still connecting).
    late_ms: u64,
    /// Each client's p99, in microseconds.
    #[serde(default)]
    client_p99_us: Vec<u64>,
    /// Requests its clients sent again to every replica, over the warm-up
    /// and the window.
    #[serde(default)]
    resends: Resends,
}

/// The resends of `clients`, summed.
fn resends_of(clients: &[Client]) -> Resends {
    let mut r = Resends::default();
    for c in clients {
        r += c.resends();
    }
    r
}

/// Drives the cluster at `level` for the warm-up and measurement of `a`:
/// in this process, or with `--generators N` in N processes of this
/// harness that split the clients between them (on this machine; the same
/// command drives a cluster elsewhere with `--cluster`).
pub(crate) async fn run_load(
    dir: &Path,
    cluster: &ClusterConfig,
    a: &RunArgs,
    level: Level,
    progress_label: &str,
) -> LoadResult {
    let flooder = a.flood_client.map(|kind| {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        std::process::Command::new(std::env::current_exe().expect("own path"))
            .arg("flood")
            .arg("--config")
            .arg(dir)
            .args(["--kind", &format!("{kind:?}").to_lowercase(), "--start-unix-ms", &now_ms.to_string()])
            .args(["--seconds", &(a.warmup + a.duration + 60.0).to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
    });
    *WINDOW_STARTED.lock() = None;
    let shares = if a.generators > 1 {
        generate_elsewhere(dir, a, level, progress_label).await
    } else {
        vec![drive(cluster, a, level, Some(progress_label), None).await]
    };
    match flooder {
        Some(Ok(mut child)) => {
            let _ = child.kill();
            let _ = child.wait();
        }
        Some(Err(e)) => eprintln!("palisade-bench: the flooding client did not start ({e}): this run had no flood"),
        None => {}
    }
    summarize(shares, a)
}

/// This process's part of a run: `level`'s clients, from `start` (a wall
/// clock time every generator process shares) or at once.
async fn drive(
    cluster: &ClusterConfig,
    a: &RunArgs,
    level: Level,
    progress_label: Option<&str>,
    start: Option<SystemTime>,
) -> Share {
    let work = Workload::of(a);
    let opts = ClientOptions { timeout_ms: 30_000, sign_group_max: a.sign_group_max, ..ClientOptions::default() };
    let clients: Vec<Client> = (0..level.clients)
        .map(|_| Client::connect(cluster.clone(), keys::generate(&mut rand_core::OsRng), opts.clone()))
        .collect();
    // Wait until every client gets an answer: the cluster is up and connected.
    for c in &clients {
        let _ = work.invoke(c, &mut 1).await;
    }
    let mut late_ms = 0;
    if let Some(start) = start {
        match start.duration_since(SystemTime::now()) {
            Ok(wait) => tokio::time::sleep(wait).await,
            Err(e) => late_ms = e.duration().as_millis() as u64,
        }
    }
    let (warmup, duration) = (Duration::from_secs_f64(a.warmup), Duration::from_secs_f64(a.duration));
    let window = Window::new(warmup, duration);
    if progress_label.is_some() {
        *WINDOW_STARTED.lock() = Some(window.start);
    }
    let errors = Arc::new(AtomicU64::new(0));
    let resends_before = resends_of(&clients);
    let hist = Arc::new(Mutex::new(histogram()));
    let per_client: Vec<Arc<Mutex<Histogram<u64>>>> =
        (0..clients.len()).map(|_| Arc::new(Mutex::new(histogram()))).collect();
    let mut tasks = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for o in 0..level.outstanding {
            let (c, work, w, errors, hist) = (c.clone(), work.clone(), window.clone(), errors.clone(), hist.clone());
            let mine = per_client[ci].clone();
            let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul((ci * 1000 + o + 1) as u64);
            tasks.push(tokio::spawn(async move {
                let local = request_loop(c, work, w, errors, seed).await;
                let (mut all, mut mine) = (hist.lock(), mine.lock());
                for us in local {
                    let _ = all.record(us);
                    let _ = mine.record(us);
                }
            }));
        }
    }
    let progress =
        progress_label.map(|l| show_progress(window.clone(), l.to_string(), (warmup + duration).as_secs_f64()));
    let machine = tokio::spawn(measure_machine(window.clone()));
    for t in tasks {
        let _ = t.await;
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let machine = machine.await.ok().flatten();
    let latencies = hist.lock().iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
    Share {
        latencies,
        errors: errors.load(Ordering::Relaxed),
        timeline: window.timeline.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        machine,
        late_ms,
        resends: resends_of(&clients).since(resends_before),
        // A client that completed nothing in the window is starved: its
        // p99 is the whole window.
        client_p99_us: per_client
            .iter()
            .map(|h| {
                let h = h.lock();
                if h.is_empty() {
                    (a.warmup + a.duration) as u64 * 1_000_000
                } else {
                    h.value_at_quantile(0.99)
                }
            })
            .collect(),
    }
}

/// The shares of every generator process, as one result: latencies merged,
/// timelines added, the generators' CPU summed.
fn summarize(shares: Vec<Share>, a: &RunArgs) -> LoadResult {
    let mut hist = histogram();
    let mut timeline: Vec<u64> = Vec::new();
    let mut errors = 0;
    let mut resends = Resends::default();
    for s in &shares {
        resends += s.resends;
        for &(v, n) in &s.latencies {
            let _ = hist.record_n(v, n);
        }
        if timeline.len() < s.timeline.len() {
            timeline.resize(s.timeline.len(), 0);
        }
        for (t, x) in timeline.iter_mut().zip(&s.timeline) {
            *t += x;
        }
        errors += s.errors;
    }
    let machine = shares.iter().filter_map(|s| s.machine).reduce(|mut m, o| {
        m.generator_cpu_percent += o.generator_cpu_percent;
        m
    });
    let completed = hist.len();
    LoadResult {
        ops_per_sec: completed as f64 / a.duration.max(1e-9),
        completed,
        errors,
        latency: Latency {
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            mean_us: hist.mean(),
        },
        timeline,
        preload_s: None,
        machine,
        generators: shares.len(),
        resends,
        client_p99_us: shares.iter().flat_map(|s| s.client_p99_us.iter().copied()).collect(),
    }
}

/// Runs `level` in `a.generators` processes of this harness against the
/// cluster configured in `dir`, the clients split between them, all
/// starting their windows at the same wall-clock time.
async fn generate_elsewhere(dir: &Path, a: &RunArgs, level: Level, label: &str) -> Vec<Share> {
    let n = a.generators.clamp(1, level.clients.max(1));
    // Time for every process to start and connect its clients.
    let lead = Duration::from_millis(2_000 + 20 * level.clients as u64);
    let start = SystemTime::now() + lead;
    let start_ms = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    *WINDOW_STARTED.lock() = Some(Instant::now() + start.duration_since(SystemTime::now()).unwrap_or_default());
    let exe = std::env::current_exe().expect("own path");
    let scratch = std::env::temp_dir().join(format!("palisade-bench-gen-{}-{start_ms}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    eprintln!("{label}: {n} generator processes, {} clients", level.clients);
    let mut children = Vec::new();
    for i in 0..n {
        let clients = level.clients / n + usize::from(i < level.clients % n);
        let out = scratch.join(format!("share-{i}.json"));
        let child = std::process::Command::new(&exe)
            .args(a.workload_args())
            .arg("generate")
            .arg("--config")
            .arg(dir)
            .args(["--clients", &clients.to_string(), "--outstanding", &level.outstanding.to_string()])
            .args(["--start-unix-ms", &start_ms.to_string(), "--out"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn();
        children.push((i, out, child));
    }
    let mut shares = Vec::new();
    for (i, out, child) in children {
        let ok = match child {
            Ok(mut c) => {
                tokio::task::spawn_blocking(move || c.wait()).await.is_ok_and(|r| r.is_ok_and(|s| s.success()))
            }
            Err(_) => false,
        };
        let share = std::fs::read(&out).ok().and_then(|b| serde_json::from_slice::<Share>(&b).ok());
        match share {
            Some(s) if ok => {
                if s.late_ms > 0 {
                    eprintln!("{label}: generator {i} started {} ms late", s.late_ms);
                }
                shares.push(s);
            }
            _ => eprintln!("{label}: generator {i} failed; its share is missing"),
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    shares
}

/// `palisade-bench generate`: one generator process's share of a run, for
/// a harness that runs several.
pub(crate) fn generate(a: &RunArgs, g: &GenerateArgs) -> ExitCode {
    let cluster = match ClusterConfig::load(&g.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-bench generate: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(rt) =
        tokio::runtime::Builder::new_multi_thread().worker_threads(a.client_threads.max(1)).enable_all().build()
    else {
        return ExitCode::from(2);
    };
    let level = Level { clients: g.clients, outstanding: g.outstanding };
    let start = UNIX_EPOCH + Duration::from_millis(g.start_unix_ms);
    let share = rt.block_on(drive(&cluster, a, level, None, Some(start)));
    let json = serde_json::to_vec(&share).expect("a share serializes");
    match std::fs::write(&g.out, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-bench generate: writing {}: {e}", g.out.display());
            ExitCode::from(2)
        }
    }
}

/// The machine's idle and stolen time and this process's CPU over the
/// measurement window of `w`.
async fn measure_machine(w: Window) -> Option<MachineWindow> {
    let me = std::process::id();
    tokio::time::sleep_until(tokio::time::Instant::from_std(w.measure_from)).await;
    let (m0, c0, t0) = (MachineTimes::now()?, procstat::cpu_seconds(me)?, Instant::now());
    tokio::time::sleep_until(tokio::time::Instant::from_std(w.end)).await;
    let (m1, c1) = (MachineTimes::now()?, procstat::cpu_seconds(me)?);
    let (idle_percent, steal_percent) = m1.percent_since(&m0);
    let generator_cpu_percent = 100.0 * (c1 - c0) / t0.elapsed().as_secs_f64().max(1e-3);
    Some(MachineWindow { idle_percent, steal_percent, generator_cpu_percent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn share(latencies: Vec<(u64, u64)>, timeline: Vec<u64>, cpu: f64) -> Share {
        let machine = MachineWindow { idle_percent: 20.0, steal_percent: 1.0, generator_cpu_percent: cpu };
        let resends = Resends { timeouts: 1, full_result: 2, primary_lost: 0, moved: 0 };
        Share { latencies, errors: 1, timeline, machine: Some(machine), late_ms: 0, client_p99_us: vec![], resends }
    }

    #[test]
    fn generator_shares_merge_into_one_result() {
        let a = crate::cli::Cli::try_parse_from(["palisade-bench", "--duration", "2"]).unwrap().run;
        let r = summarize(
            vec![share(vec![(100, 3), (1000, 1)], vec![5, 5], 30.0), share(vec![(100, 4)], vec![1, 2, 3], 50.0)],
            &a,
        );
        assert_eq!(r.completed, 8);
        assert_eq!(r.ops_per_sec, 4.0);
        assert_eq!(r.errors, 2);
        assert_eq!(r.timeline, vec![6, 7, 3]);
        assert_eq!(r.latency.p50_us, 100);
        assert!(r.latency.p999_us >= 999, "{}", r.latency.p999_us);
        assert_eq!(r.generators, 2);
        assert_eq!(r.resends, Resends { timeouts: 2, full_result: 4, primary_lost: 0, moved: 0 });
        assert_eq!(r.machine.unwrap().generator_cpu_percent, 80.0);
    }
}
