//! A deterministic simulator for the Palisade protocol core.
//!
//! One run puts n replicas and several clients on one thread, driven from
//! one seed: the seed draws the fault mix (loss, duplication and replay,
//! reordering, delay, symmetric and one-way partitions, clogged links,
//! crashes with restarts from durable records) and the Byzantine strategy,
//! and every random choice after that. Checkers judge agreement,
//! exactly-once execution, linearizability and liveness. The same seed
//! always reproduces the same run.

#![deny(missing_docs)]

pub mod byzantine;
pub mod checker;
pub mod config;
pub mod crypto;
pub mod rng;
pub mod service;
pub mod votes;
pub mod world;

pub use config::{ByzantineChoice, SimConfig};
pub use world::{run, Report};

/// Totals over many runs.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Runs.
    pub runs: usize,
    /// Runs with at least one safety violation.
    pub safety_violations: usize,
    /// Runs with at least one liveness failure.
    pub liveness_failures: usize,
    /// Recovery times (ms after the heal) of runs that had work pending at
    /// the heal, within the fault model (the others promise no recovery).
    pub recovery_ms: Vec<u64>,
    /// Runs whose faults exceeded the model, judged on safety only.
    pub beyond_model: usize,
    /// Operations completed, over all runs.
    pub ops_completed: usize,
    /// State transfers completed by correct replicas, over all runs.
    pub state_transfers: u64,
    /// Chain links correct replicas refused, over all runs.
    pub bad_links: u64,
    /// View changes the batch watch started on correct replicas, over all runs.
    pub skip_suspicions: u64,
    /// Requests correct backups forwarded late, over all runs.
    pub late_forwards: u64,
}

/// Runs `configs` on `threads` threads; reports come back in input order.
pub fn run_many(configs: Vec<SimConfig>, threads: usize) -> Vec<Report> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Report>>> = Mutex::new(vec![None; configs.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(cfg) = configs.get(i) else { break };
                let report = std::panic::catch_unwind(|| run(cfg)).unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Report { seed: cfg.seed, safety: vec![format!("panic: {what}")], ..Report::default() }
                });
                results.lock().expect("no poisoned runs")[i] = Some(report);
            });
        }
    });
    results.into_inner().expect("no poisoned runs").into_iter().map(|r| r.expect("every run reports")).collect()
}

/// Adds up reports.
pub fn summarize(reports: &[Report]) -> Summary {
    let mut s = Summary { runs: reports.len(), ..Summary::default() };
    for r in reports {
        s.safety_violations += usize::from(!r.safety.is_empty());
        s.liveness_failures += usize::from(!r.liveness.is_empty());
        s.ops_completed += r.ops_completed;
        s.beyond_model += usize::from(r.beyond_model);
        s.state_transfers += r.state_transfers;
        s.bad_links += r.bad_links;
        s.skip_suspicions += r.skip_suspicions;
        s.late_forwards += r.late_forwards;
        if let Some(ms) = r.recovery_ms.filter(|_| !r.beyond_model) {
            s.recovery_ms.push(ms);
        }
    }
    s.recovery_ms.sort_unstable();
    s
}
