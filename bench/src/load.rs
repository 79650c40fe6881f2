//! The load: closed-loop clients, each keeping a number of requests
//! outstanding (echo requests, or YCSB-style reads and updates of a
//! key-value store), timed into a latency histogram and a 100 ms timeline.

use crate::cli::{Level, RunArgs, ServiceArg};
use bytes::Bytes;
use hdrhistogram::Histogram;
use palisade_bench::procstat::{self, MachineTimes};
use palisade_client::{Client, ClientOptions};
use palisade_services::echo;
use palisade_services::kv::KvOp;
use palisade_wire::{keys, ClusterConfig};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// The machine over the measurement window.
    pub(crate) machine: Option<MachineWindow>,
}

/// What else the machine did while a run was measured: figures from a
/// shared machine mean little without them.
#[derive(Clone, Copy, Debug, Default, Serialize)]
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
async fn request_loop(c: Client, work: Workload, w: Window, errors: Arc<AtomicU64>, seed: u64) -> Histogram<u64> {
    let mut local = histogram();
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
                    let _ = local.record((t1 - t0).as_micros().max(1) as u64);
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

/// Drives the cluster at `level` for the warm-up and measurement of `a`.
pub(crate) async fn run_load(cluster: &ClusterConfig, a: &RunArgs, level: Level, progress_label: &str) -> LoadResult {
    let work = Workload::of(a);
    let opts = ClientOptions { timeout_ms: 30_000, sign_group_max: a.sign_group_max, ..ClientOptions::default() };
    let clients: Vec<Client> = (0..level.clients)
        .map(|_| Client::connect(cluster.clone(), keys::generate(&mut rand_core::OsRng), opts.clone()))
        .collect();
    // Wait until every client gets an answer: the cluster is up and connected.
    for c in &clients {
        let _ = work.invoke(c, &mut 1).await;
    }
    let (warmup, duration) = (Duration::from_secs_f64(a.warmup), Duration::from_secs_f64(a.duration));
    let window = Window::new(warmup, duration);
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let mut tasks = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for o in 0..level.outstanding {
            let (c, work, w, errors, hist) = (c.clone(), work.clone(), window.clone(), errors.clone(), hist.clone());
            let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul((ci * 1000 + o + 1) as u64);
            tasks.push(tokio::spawn(async move {
                let local = request_loop(c, work, w, errors, seed).await;
                hist.lock().add(&local).expect("same bounds");
            }));
        }
    }
    let progress = show_progress(window.clone(), progress_label.to_string(), (warmup + duration).as_secs_f64());
    let machine = tokio::spawn(measure_machine(window.clone()));
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    eprintln!();
    let machine = machine.await.ok().flatten();
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
        timeline: window.timeline.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        preload_s: None,
        machine,
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
