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
    assert_eq!(names, ["ops_per_sec", "p50_us", "p99_us", "baseline_ratio"], "{last}");
    let ops: f64 = fields[0].1.parse().unwrap();
    let ratio: f64 = fields[3].1.parse().unwrap();
    assert!(ops > 0.0 && ratio > 0.0, "{last}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["levels"][0]["palisade"]["errors"], 0, "no operation failed");
    assert!(results["baseline"]["completed"].as_u64().unwrap() > 0, "the baseline served the same client");
    assert_eq!(results["baseline"]["errors"], 0);
    assert!(out.join("timeline.svg").exists());
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
