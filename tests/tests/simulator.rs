//! Sweeps of the deterministic simulator. A failure message carries the
//! seed and the `palisade-sim` command that reproduces it.

use palisade_core::Mode;
use palisade_sim::{byzantine, run, run_many, ByzantineChoice, Report, SimConfig};

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn sweep(seeds: std::ops::Range<u64>, replicas: usize, mode: Mode, byz: ByzantineChoice) -> Vec<Report> {
    let configs = seeds
        .map(|seed| {
            let mut c = SimConfig::new(seed);
            c.replicas = replicas;
            c.mode = mode;
            c.byzantine = byz.clone();
            c
        })
        .collect();
    run_many(configs, threads())
}

fn assert_clean(reports: &[Report], replicas: usize, mode: &str) {
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.safety.is_empty() || !r.liveness.is_empty())
        .map(|r| {
            format!(
                "seed {} ({}): {:?} {:?}\n  reproduce: palisade-sim --seeds {}..{} --replicas {replicas} --mode {mode} --byzantine {}",
                r.seed,
                r.faults,
                r.safety.first(),
                r.liveness.first(),
                r.seed,
                r.seed + 1,
                r.strategy.as_deref().unwrap_or("none"),
            )
        })
        .collect();
    assert!(failed.is_empty(), "{} failing runs:\n{}", failed.len(), failed.join("\n"));
    let ops: usize = reports.iter().map(|r| r.ops_completed).sum();
    assert!(ops > reports.len() * 20, "clients barely made progress: {ops} operations in {} runs", reports.len());
}

#[test]
fn four_replicas_with_a_random_byzantine_replica_stay_safe_and_live() {
    let reports = sweep(0..300, 4, Mode::Bft, ByzantineChoice::Random);
    assert_clean(&reports, 4, "bft");
    // The sweep must actually exercise the interesting paths.
    assert!(reports.iter().filter(|r| r.max_view > 0).count() > 100, "too few view changes");
    assert!(reports.iter().filter(|r| r.state_transfers > 0).count() > 50, "too few state transfers");
}

#[test]
fn every_byzantine_strategy_is_survived() {
    for (name, _, _) in byzantine::STRATEGIES {
        let reports = sweep(1_000..1_030, 4, Mode::Bft, ByzantineChoice::Named(name.to_string()));
        assert!(reports.iter().all(|r| r.strategy.as_deref() == Some(*name)));
        assert_clean(&reports, 4, "bft");
    }
}

#[test]
fn seven_replicas_with_two_byzantine_replicas_stay_safe_and_live() {
    let reports = sweep(2_000..2_080, 7, Mode::Bft, ByzantineChoice::Random);
    assert!(reports.iter().all(|r| r.byzantine.len() == 2));
    assert_clean(&reports, 7, "bft");
}

#[test]
fn cft_clusters_survive_crashes_partitions_and_loss() {
    assert_clean(&sweep(3_000..3_200, 3, Mode::Cft, ByzantineChoice::None), 3, "cft");
    assert_clean(&sweep(4_000..4_080, 5, Mode::Cft, ByzantineChoice::None), 5, "cft");
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    let a = run(&SimConfig::new(42));
    let b = run(&SimConfig::new(42));
    assert_eq!(
        (a.messages, a.ops_completed, a.batches, a.max_view, &a.faults, &a.strategy),
        (b.messages, b.ops_completed, b.batches, b.max_view, &b.faults, &b.strategy)
    );
    let c = run(&SimConfig::new(43));
    assert_ne!((a.messages, a.ops_completed), (c.messages, c.ops_completed));
}
