//! Planted bugs prove the simulator can see: each known-bad change to the
//! protocol must make it report violations within a few hundred seeds,
//! and the same seeds must be clean without it. Some of them are the holes
//! a protocol review found, reverted one at a time. Each sweep is a few
//! times longer than its bug needs: the first seeds that caught them were
//! 5 (weak quorums), 0 (an unchecked NEW-VIEW), 2 (amnesiac votes), 38 (a
//! torn NEW-VIEW), 82 (void batches) and 0 for the others.

use palisade_core::planted::PlantedBugs;
use palisade_sim::{run_many, summarize, ByzantineChoice, SimConfig, Summary};

fn sweep(planted: PlantedBugs, seeds: std::ops::Range<u64>, tweak: impl Fn(&mut SimConfig)) -> Summary {
    let configs = seeds
        .map(|seed| {
            let mut c = SimConfig::new(seed);
            c.planted = planted;
            tweak(&mut c);
            c
        })
        .collect();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    summarize(&run_many(configs, threads))
}

fn named(strategy: &str) -> impl Fn(&mut SimConfig) + '_ {
    move |c| c.byzantine = ByzantineChoice::Named(strategy.into())
}

#[test]
fn executing_batches_ordered_past_an_epochs_end_is_caught() {
    let planted = PlantedBugs { execute_void_batches: true, ..PlantedBugs::default() };
    let reconfigure = |c: &mut SimConfig| c.reconfigure = true;
    let found = sweep(planted, 0..250, reconfigure).safety_violations;
    assert!(found > 0, "batches of an ended epoch executed unnoticed over 250 seeds");
    assert_eq!(sweep(PlantedBugs::default(), 0..250, reconfigure).safety_violations, 0);
}

#[test]
fn quorums_of_2f_are_caught() {
    let planted = PlantedBugs { weak_quorum: true, ..PlantedBugs::default() };
    let found = sweep(planted, 0..80, |_| {}).safety_violations;
    assert!(found > 0, "quorums of 2f went unnoticed over 80 seeds");
}

#[test]
fn skipping_the_new_view_proof_check_is_caught() {
    let planted = PlantedBugs { skip_new_view_check: true, ..PlantedBugs::default() };
    let found = sweep(planted, 0..80, named("new-view-tamper")).safety_violations;
    assert!(found > 0, "an unchecked NEW-VIEW went unnoticed over 80 seeds");
}

#[test]
fn a_new_view_written_as_separate_records_is_caught() {
    // A replica that crashes between the view and its re-proposals comes
    // back in the view without them: as primary it proposes something else
    // where its own NEW-VIEW chose a batch.
    let planted = PlantedBugs { torn_new_view: true, ..PlantedBugs::default() };
    let found = sweep(planted, 0..120, |c| c.amnesia = Some(false)).safety_violations;
    assert!(found > 0, "a torn NEW-VIEW went unnoticed over 120 seeds");
}

#[test]
fn a_replica_that_votes_right_after_losing_its_votes_is_caught() {
    let planted = PlantedBugs { amnesiac_votes: true, ..PlantedBugs::default() };
    let found = sweep(planted, 0..150, |c| c.amnesia = Some(true)).safety_violations;
    assert!(found > 0, "votes cast again after amnesia went unnoticed over 150 seeds");
}

#[test]
fn a_request_timeout_that_never_doubles_is_caught_on_a_slow_network() {
    let planted = PlantedBugs { fixed_request_timeout: true, ..PlantedBugs::default() };
    let slow = |c: &mut SimConfig| {
        c.byzantine = ByzantineChoice::None;
        c.slow_network_ms = 700;
        c.liveness_bound_ms = palisade_sim::config::slow_network_bound_ms(700);
    };
    let s = sweep(planted, 0..6, slow);
    assert!(s.liveness_failures > 0, "a fixed request timeout kept up with a slow network");
    assert_eq!(sweep(PlantedBugs::default(), 0..6, slow).liveness_failures, 0);
}

#[test]
fn backups_that_trust_the_primary_with_requests_are_caught() {
    let planted = PlantedBugs { trust_proposed_requests: true, ..PlantedBugs::default() };
    for strategy in ["tampered-requests", "forged-requests"] {
        let found = sweep(planted, 0..30, named(strategy)).safety_violations;
        assert!(found > 0, "{strategy}: executed requests no client sent went unnoticed over 30 seeds");
        assert_eq!(sweep(PlantedBugs::default(), 0..30, named(strategy)).safety_violations, 0);
    }
}

/// Without the primary's signature check, a faulty client whose MACs are
/// valid for some replicas only splits the correct replicas and changes
/// views at will (Aardvark's attack); with it, the views stay put.
#[test]
fn a_primary_that_proposes_unchecked_requests_lets_a_faulty_client_change_views() {
    let views = |planted: PlantedBugs| -> u64 {
        let configs = (0..40)
            .map(|seed| {
                let mut c = SimConfig::new(seed);
                c.planted = planted;
                c.byzantine = ByzantineChoice::None;
                c.byzantine_clients = Some(1);
                c
            })
            .collect();
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        run_many(configs, threads).iter().map(|r| r.max_view).sum()
    };
    let (with_bug, without) =
        (views(PlantedBugs { unchecked_proposals: true, ..PlantedBugs::default() }), views(PlantedBugs::default()));
    assert!(with_bug > 4 * without.max(1), "{with_bug} views with the bug, {without} without");
}

#[test]
fn the_same_seeds_are_clean_without_the_bugs() {
    // The control: what the planted runs flag is the bug, not the seeds.
    let clean = |s: Summary| s.safety_violations + s.liveness_failures;
    assert_eq!(clean(sweep(PlantedBugs::default(), 0..80, |_| {})), 0);
    assert_eq!(clean(sweep(PlantedBugs::default(), 0..80, named("new-view-tamper"))), 0);
    assert_eq!(clean(sweep(PlantedBugs::default(), 0..120, |c| c.amnesia = Some(false))), 0);
    assert_eq!(clean(sweep(PlantedBugs::default(), 0..150, |c| c.amnesia = Some(true))), 0);
}
