//! Planted bugs prove the simulator can see: each known-bad change to the
//! protocol must make it report safety violations within a few hundred seeds.

use palisade_core::planted::PlantedBugs;
use palisade_sim::{run_many, summarize, ByzantineChoice, SimConfig};

fn violations_with(planted: PlantedBugs, byzantine: ByzantineChoice, seeds: std::ops::Range<u64>) -> usize {
    let configs = seeds
        .map(|seed| {
            let mut c = SimConfig::new(seed);
            c.planted = planted;
            c.byzantine = byzantine.clone();
            c
        })
        .collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    summarize(&run_many(configs, threads)).safety_violations
}

#[test]
fn quorums_of_2f_are_caught() {
    let planted = PlantedBugs { weak_quorum: true, ..PlantedBugs::default() };
    let found = violations_with(planted, ByzantineChoice::Random, 0..300);
    assert!(found > 0, "quorums of 2f went unnoticed over 300 seeds");
}

#[test]
fn skipping_the_new_view_proof_check_is_caught() {
    let planted = PlantedBugs { skip_new_view_check: true, ..PlantedBugs::default() };
    let found = violations_with(planted, ByzantineChoice::Named("new-view-tamper".into()), 0..300);
    assert!(found > 0, "an unchecked NEW-VIEW went unnoticed over 300 seeds");
}

#[test]
fn the_same_seeds_are_clean_without_the_bugs() {
    // The control: what the planted runs flag is the bug, not the seeds.
    assert_eq!(violations_with(PlantedBugs::default(), ByzantineChoice::Random, 0..300), 0);
    assert_eq!(violations_with(PlantedBugs::default(), ByzantineChoice::Named("new-view-tamper".into()), 0..300), 0);
}
