//! The harness end to end, briefly: four replica processes, the load, the
//! unreplicated baseline, the table, the summary line and results.json.
//! It measures nothing worth quoting (a debug build, one second); it proves
//! that every part of the default run works together.

use std::process::Command;

#[test]
fn a_short_default_run_prints_its_table_summary_line_and_results() {
    let out = std::env::temp_dir().join(format!("palisade-bench-test-{}", std::process::id()));
    let base_port = palisade_testkit::loopback::port_block(20);
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(["--duration", "1", "--warmup", "0.5", "--clients", "2", "--outstanding", "8"])
        .args(["--base-port", &base_port.to_string(), "--out", out.to_str().unwrap()])
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "exit {:?}\n{stdout}\n{}", run.status, String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("palisade 2x8"), "the table has the run's row:\n{stdout}");
    assert!(stdout.contains("baseline"), "and the baseline's:\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let fields: Vec<(&str, &str)> = last
        .strip_prefix("BENCH ")
        .expect("the last line is the summary")
        .split(' ')
        .filter_map(|f| f.split_once('='))
        .collect();
    let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["ops_per_sec", "p50_us", "p99_us", "baseline_ratio", "steal_pct", "idle_pct"], "{last}");
    let ops: f64 = fields[0].1.parse().unwrap();
    let ratio: f64 = fields[3].1.parse().unwrap();
    assert!(ops > 0.0 && ratio > 0.0, "{last}");
    let (steal, idle): (f64, f64) = (fields[4].1.parse().unwrap(), fields[5].1.parse().unwrap());
    assert!((0.0..=100.0).contains(&steal) && (0.0..=100.0).contains(&idle), "{last}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["levels"][0]["palisade"]["errors"], 0, "no operation failed");
    assert!(results["baseline"]["completed"].as_u64().unwrap() > 0, "the baseline served the same client");
    assert_eq!(results["baseline"]["errors"], 0);
    for run in [&results["levels"][0]["palisade"], &results["baseline"]] {
        let cpu = run["machine"]["generator_cpu_percent"].as_f64().expect("the generator's CPU is recorded");
        assert!(cpu > 0.0, "the load generator used no CPU: {run}");
        assert!(run["machine"]["steal_percent"].as_f64().is_some());
    }
    assert!(out.join("timeline.svg").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// Repetitions alternate the replicated run and the baseline, and each
/// run's load comes from two generator processes whose counts add up.
#[test]
fn repeated_runs_with_two_generator_processes_report_the_spread() {
    let out = std::env::temp_dir().join(format!("palisade-bench-repeat-{}", std::process::id()));
    let base_port = palisade_testkit::loopback::port_block(20);
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(["--duration", "1", "--warmup", "0.5", "--clients", "3", "--outstanding", "4"])
        .args(["--repeat", "2", "--generators", "2", "--durability", "none"])
        .args(["--base-port", &base_port.to_string(), "--out", out.to_str().unwrap()])
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "exit {:?}\n{stdout}\n{}", run.status, String::from_utf8_lossy(&run.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("repeat ")).count(), 2, "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("BENCH repeat=2 ops_per_sec="), "{last}");
    assert!(
        last.contains(" baseline_ratio=") && last.contains(" ratio_min=") && last.contains(" ratio_max="),
        "{last}"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = results["repeat"]["rows"].as_array().expect("every repetition is kept");
    assert_eq!(rows.len(), 2);
    let ratio = &results["repeat"]["baseline_ratio"];
    let (min, median, max) =
        (ratio["min"].as_f64().unwrap(), ratio["median"].as_f64().unwrap(), ratio["max"].as_f64().unwrap());
    assert!(0.0 < min && min <= median && median <= max, "{ratio}");
    for run in [&results["levels"][0]["palisade"], &results["baseline"]] {
        assert_eq!(run["generators"], 2, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
        let timeline: u64 = run["timeline"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).sum();
        assert!(timeline >= run["completed"].as_u64().unwrap(), "the generators' timelines add up: {run}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_run_that_kills_and_restarts_the_primary_loses_no_operation_and_marks_both_events() {
    let out = std::env::temp_dir().join(format!("palisade-bench-kill-{}", std::process::id()));
    let base_port = palisade_testkit::loopback::port_block(20);
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(["--duration", "4", "--warmup", "0.5", "--clients", "2", "--outstanding", "4", "--no-baseline"])
        .args(["--kill-primary-at", "0.5", "--restart-at", "1"])
        .args(["--base-port", &base_port.to_string(), "--out", out.to_str().unwrap()])
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "exit {:?}\n{stdout}\n{}", run.status, String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("killed the primary (replica 0)"), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["events"]["killed"], 0);
    let level = &results["levels"][0];
    assert_eq!(level["palisade"]["errors"], 0, "clients rode through the view change");
    assert!(level["palisade"]["completed"].as_u64().unwrap() > 0);
    // The restarted replica is measured in its new process, which runs.
    let r0 = &level["replicas"][0];
    assert!(r0["peak_rss_mib"].as_f64().unwrap() > 0.0, "{r0}");
    let svg = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
    assert!(svg.contains("primary (r0) killed") && svg.contains("restarted"));
    let _ = std::fs::remove_dir_all(&out);
}
