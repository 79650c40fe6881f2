//! `palisade-bench andrew` end to end on a small tree (one Lua version),
//! over the unreplicated server and a BFT cluster whose primary is killed
//! with `kill -9` during the copy phase: the benchmark completes, every
//! copied file matches its source (phase 4 checks each byte), the
//! replicas agree on the state digest after the compile, and the results
//! file and chart are written. It measures nothing worth quoting.
//!
//! It needs root and `/dev/fuse`; `.ci/run` runs it with
//! `cargo test -p palisade-bench --test andrew -- --ignored`.

use std::process::Command;

#[test]
#[ignore = "needs root and /dev/fuse; .ci/run runs it"]
fn the_benchmark_completes_through_a_killed_primary_with_every_file_intact() {
    let out = std::env::temp_dir().join(format!("palisade-andrew-test-{}", std::process::id()));
    let base_port = palisade_testkit::loopback::port_block(40);
    // The registry's Lua sources, one version of them.
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(&std::env::var_os("HOME").unwrap()).join(".cargo"));
    let lua = std::fs::read_dir(home.join("registry/src"))
        .unwrap()
        .flatten()
        .flat_map(|i| std::fs::read_dir(i.path()).unwrap().flatten().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("lua-src-"))
        .max()
        .expect("lua-src in Cargo's registry")
        .join("lua-5.4.9");
    let run = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(["andrew", "--targets", "unreplicated,bft", "--kill-primary-after-files", "20"])
        .args(["--durability", "none", "--source", lua.to_str().unwrap()])
        .args(["--base-port", &base_port.to_string(), "--out", out.to_str().unwrap()])
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "exit {:?}\n{stdout}\n{}", run.status, String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("killed during the copy"), "the primary was killed:\n{stdout}");
    assert!(stdout.contains("bft/nr"), "the table has the ratio:\n{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("andrew.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let bft = runs.iter().find(|r| r["target"] == "bft").unwrap();
    // Phase 3 stats the copy's directory, its 59 files and the Makefile.
    assert_eq!(bft["files"].as_u64(), Some(61));
    assert_eq!(bft["digest"].as_str().map(str::len), Some(64));
    assert!(std::fs::read_to_string(out.join("andrew.svg")).unwrap().contains("<svg"));
    let _ = std::fs::remove_dir_all(&out);
}
