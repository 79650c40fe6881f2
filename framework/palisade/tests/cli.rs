//! The `palisade` binary as an operator uses it: keygen, one process per
//! replica, the CLI as a client, and a replica killed with SIGKILL.

mod common;

use common::Scratch;
use palisade_testkit::scrape::{http_get, sample};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

fn palisade(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run palisade")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tempdir(tag: &str) -> Scratch {
    Scratch::new("cli", tag)
}

fn start(dir: &Path, n: usize, service: &str) -> Processes {
    Processes(
        (0..n)
            .map(|i| {
                Command::new(BIN)
                    .args(["replica", "--config", dir.to_str().unwrap(), "--id", &i.to_string(), "--service", service])
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("start a replica")
            })
            .collect(),
    )
}

#[test]
fn a_four_process_cluster_serves_the_cli_and_survives_kill_9_of_its_primary() {
    let dir = tempdir("kv");
    let port = palisade_testkit::loopback::port_block(10);
    let d = dir.to_str().unwrap();
    let keygen = palisade(&["keygen", "--replicas", "4", "--out", d, "--base-port", &port.to_string()]);
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    let mut replicas = start(&dir, 4, "kv");

    let put = palisade(&["kv", "put", "greeting", "hello", "--config", d]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(stdout(&palisade(&["kv", "get", "greeting", "--config", d])), "hello");
    let missing = palisade(&["kv", "get", "nobody", "--config", d]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // SIGKILL the primary of view 0; the cluster moves on without it.
    replicas.0[0].kill().unwrap();
    let put = palisade(&["kv", "put", "after", "crash", "--config", d]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(stdout(&palisade(&["kv", "get", "greeting", "--config", d])), "hello", "acknowledged data survives");
    assert_eq!(stdout(&palisade(&["kv", "keys", "--config", d])), "after\ngreeting");
    assert_eq!(stdout(&palisade(&["kv", "size", "--config", d])), "2");

    // A second failure exceeds f = 1: the CLI says so instead of hanging.
    replicas.0[1].kill().unwrap();
    let stuck = palisade(&["kv", "put", "x", "y", "--config", d, "--timeout-ms", "1500"]);
    assert_eq!(stuck.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&stuck.stderr).contains("no answer from the cluster"));
    drop(replicas);
}

#[test]
fn configuration_mistakes_get_a_clear_message_and_exit_code_2() {
    let dir = tempdir("bad");
    let out = palisade(&["kv", "get", "k", "--config", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("palisade keygen"));
    std::fs::create_dir_all(&*dir).unwrap();
    std::fs::write(dir.join("cluster.toml"), "cluster_id = 1\nmode = \"bft\"\nf = 1\n").unwrap();
    let out = palisade(&["counter", "get", "--config", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.toml"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = palisade(&["replica", "--config", dir.to_str().unwrap(), "--id", "0", "--service", "kv"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--listen` moves where a replica binds, never whether it may join: one
/// that no configuration lists is refused without `--join`, and with it
/// waits to be admitted at the `--listen` address, no joining file needed
/// (how a pod added to a Kubernetes StatefulSet starts).
#[test]
fn a_replica_not_in_the_configuration_joins_only_when_told_even_with_listen() {
    let dir = tempdir("listen");
    let port = palisade_testkit::loopback::port_block(10);
    let d = dir.to_str().unwrap();
    assert!(palisade(&["keygen", "--replicas", "4", "--out", d, "--base-port", &port.to_string()]).status.success());
    let name = format!("localhost:{}", port + 9);
    let new = palisade(&["keygen", "--new-replica", "--id", "9", "--address", &name, "--out", d]);
    assert!(new.status.success(), "{}", String::from_utf8_lossy(&new.stderr));
    std::fs::remove_file(dir.join("joining-9.toml")).unwrap();
    let bind = format!("127.0.0.1:{}", port + 8);
    let refused = palisade(&["replica", "--config", d, "--id", "9", "--service", "kv", "--listen", &bind]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--join"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let joiner = Processes(vec![Command::new(BIN)
        .args(["replica", "--config", d, "--id", "9", "--service", "kv", "--join", "--listen", &bind])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()]);
    let start = Instant::now();
    while std::net::TcpStream::connect(&bind).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "the joiner never listened at {bind}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(joiner);
}

#[test]
fn a_counter_cluster_in_cft_mode() {
    let dir = tempdir("cft");
    let port = palisade_testkit::loopback::port_block(10);
    let d = dir.to_str().unwrap();
    assert!(palisade(&["keygen", "--replicas", "3", "--mode", "cft", "--out", d, "--base-port", &port.to_string()])
        .status
        .success());
    let mut replicas = start(&dir, 3, "counter");
    for i in 1..=5 {
        assert_eq!(stdout(&palisade(&["counter", "inc", "--config", d])), i.to_string());
    }
    replicas.0[0].kill().unwrap();
    assert_eq!(stdout(&palisade(&["counter", "inc", "--by", "10", "--config", d])), "15");
    assert_eq!(stdout(&palisade(&["counter", "get", "--config", d])), "15");
    drop(replicas);
}

/// Starts replica `id` again with `extra` arguments; returns its process,
/// whether its stderr said `expect` (and never `never`) within ten seconds,
/// and what it said meanwhile (for the failure message).
fn restart_saying(
    d: &str,
    id: &str,
    extra: &[&str],
    expect: &str,
    never: &str,
) -> (std::process::Child, bool, Vec<String>) {
    let mut again = Command::new(BIN)
        .args(["replica", "--config", d, "--id", id, "--service", "counter"])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the replica again");
    let stderr = again.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    let said = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(never) => {
                lines.push(line);
                break false;
            }
            Ok(line) if line.contains(expect) => break true,
            Ok(line) => lines.push(line),
            Err(_) => break false,
        }
    };
    (again, said, lines)
}

/// Whether a log segment in `data` holds at least one entry.
fn has_log_entries(data: &std::path::Path) -> bool {
    let Ok(files) = std::fs::read_dir(data) else { return false };
    files.filter_map(Result::ok).any(|f| {
        f.file_name().to_string_lossy().starts_with("wal-")
            && std::fs::read(f.path())
                .is_ok_and(|bytes| palisade_storage::wal::entries_end(&bytes) > palisade_storage::wal::HEADER_BYTES)
    })
}

#[test]
fn a_restarted_replica_recovers_its_votes_from_disk_and_without_a_disk_rejoins_without_them() {
    let dir = tempdir("rejoin");
    let port = palisade_testkit::loopback::port_block(10);
    let d = dir.to_str().unwrap();
    assert!(palisade(&["keygen", "--replicas", "4", "--out", d, "--base-port", &port.to_string()]).status.success());
    let mut replicas = start(&dir, 4, "counter");
    assert_eq!(stdout(&palisade(&["counter", "inc", "--config", d])), "1");
    assert!(dir.join("data-3").join("started").exists(), "the first start leaves its mark in the data directory");
    // Replica 3 need not be in the quorum that answered: wait until it has
    // logged something, or a restart rightly finds no votes to recover.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !has_log_entries(&dir.join("data-3")) {
        assert!(Instant::now() < deadline, "replica 3 logged nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The default keeps everything: a kill -9 and a restart lose no vote.
    replicas.0[3].kill().unwrap();
    let _ = replicas.0[3].wait();
    let (again, said, lines) = restart_saying(d, "3", &[], "recovered from", "without its votes");
    replicas.0[3] = again;
    assert!(said, "the restarted replica did not say what it recovered, or said it lost its votes: {lines:?}");
    assert_eq!(stdout(&palisade(&["counter", "inc", "--config", d])), "2");
    // Without durability the same restart must rejoin without its votes.
    replicas.0[3].kill().unwrap();
    let _ = replicas.0[3].wait();
    let (again, said, lines) =
        restart_saying(d, "3", &["--durability", "none"], "restarted without its votes", "recovered from");
    replicas.0[3] = again;
    assert!(said, "the restarted replica did not say it rejoins without its votes: {lines:?}");
    assert_eq!(stdout(&palisade(&["counter", "inc", "--config", d])), "3");
    drop(replicas);
}

#[test]
fn admin_commands_change_the_membership_and_explain_refusals() {
    let dir = tempdir("admin");
    let port = palisade_testkit::loopback::port_block(10);
    let d = dir.to_str().unwrap();
    assert!(palisade(&["keygen", "--replicas", "4", "--out", d, "--base-port", &port.to_string()]).status.success());
    let mut replicas = start(&dir, 4, "kv");
    assert!(palisade(&["kv", "put", "k", "v", "--config", d]).status.success());

    // A new replica: its key and address, then it waits to be admitted.
    let address = format!("127.0.0.1:{}", port + 4);
    let keygen = palisade(&["keygen", "--new-replica", "--id", "4", "--address", &address, "--out", d]);
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    assert!(stdout(&keygen).contains("palisade admin add --id 4"), "{}", stdout(&keygen));
    let joiner = Command::new(BIN)
        .args(["replica", "--config", d, "--id", "4", "--service", "kv", "--join", "--leave-grace-ms", "1000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    replicas.0.push(joiner);
    let public = std::fs::read_to_string(dir.join("replica-4.pub")).unwrap();
    let add =
        palisade(&["admin", "add", "--id", "4", "--address", &address, "--public-key", public.trim(), "--config", d]);
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    assert!(stdout(&add).contains("epoch 1: 5 members, f = 1"), "{}", stdout(&add));

    // Refusals say why, with exit code 1; usage errors exit with 2. Until
    // epoch 1 starts (the primary fills epoch 0 up to its boundary first),
    // any change is refused as pending; an operator retries, as here.
    let started = Instant::now();
    let again = loop {
        let again = palisade(&[
            "admin",
            "add",
            "--id",
            "4",
            "--address",
            &address,
            "--public-key",
            public.trim(),
            "--config",
            d,
        ]);
        if !String::from_utf8_lossy(&again.stderr).contains("pending") || started.elapsed() > Duration::from_secs(20) {
            break again;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"), "{}", String::from_utf8_lossy(&again.stderr));
    let nobody = palisade(&["admin", "remove", "--id", "9", "--config", d]);
    assert_eq!(nobody.status.code(), Some(1));
    let too_many_faults = palisade(&["admin", "set-f", "3", "--config", d]);
    assert_eq!(too_many_faults.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&too_many_faults.stderr).contains("rejected"));
    let bad_key = palisade(&["admin", "add", "--id", "5", "--address", &address, "--public-key", "zz", "--config", d]);
    assert_eq!(bad_key.status.code(), Some(2));

    // Every member answers the status question, in the new epoch.
    let status = palisade(&["admin", "status", "--config", d]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let table = stdout(&status);
    assert!(table.starts_with("epoch 1: 5 members, f = 1"), "{table}");
    assert_eq!(table.lines().filter(|l| l.ends_with("member")).count(), 5, "{table}");

    // Remove replica 0; the CLI's clients follow to the new membership.
    let remove = palisade(&["admin", "remove", "--id", "0", "--config", d]);
    assert!(remove.status.success(), "{}", String::from_utf8_lossy(&remove.stderr));
    assert!(stdout(&remove).contains("epoch 2: 4 members, f = 1"), "{}", stdout(&remove));
    assert_eq!(stdout(&palisade(&["kv", "get", "k", "--config", d])), "v");
    assert!(dir.join("chain.bin").exists(), "the CLI keeps the chain beside cluster.toml");

    // Without the view manager's key nothing can be changed.
    std::fs::remove_file(dir.join("view-manager.key")).unwrap();
    let unsigned = palisade(&["admin", "remove", "--id", "1", "--config", d]);
    assert_eq!(unsigned.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("view manager"));
    drop(replicas);
}

/// What an operator watches: the metrics endpoint, the JSON log and
/// `palisade status`, before and after the primary is killed.
#[test]
fn an_operator_scrapes_metrics_reads_json_logs_and_checks_health_through_a_primary_crash() {
    let dir = tempdir("ops");
    let port = palisade_testkit::loopback::port_block(10);
    let d = dir.to_str().unwrap();
    let keygen = palisade(&["keygen", "--replicas", "4", "--out", d, "--base-port", &port.to_string()]);
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    let metrics: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", port + 5 + i)).collect();
    let log = |i: usize| dir.join(format!("log-{i}.json"));
    let mut replicas = Processes(
        (0..4)
            .map(|i| {
                Command::new(BIN)
                    .args(["replica", "--config", d, "--id", &i.to_string(), "--service", "kv"])
                    .args(["--metrics-addr", &metrics[i], "--log-format", "json"])
                    .stderr(std::fs::File::create(log(i)).unwrap())
                    .spawn()
                    .expect("start a replica")
            })
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = palisade_wire::ClusterConfig::load(&dir).unwrap();
    let _in_runtime = rt.enter();
    let kv = palisade_services::kv::KvClient::new(palisade_client::Client::connect(
        config,
        palisade_wire::keys::generate(&mut rand_core::OsRng),
        palisade_client::ClientOptions { timeout_ms: 30_000, ..Default::default() },
    ));
    let puts = |from: usize, to: usize| {
        rt.block_on(async {
            for i in from..to {
                kv.put(format!("k{i}"), "v").await.unwrap();
            }
        })
    };
    puts(0, 200);

    let (status, scrape) = http_get(&metrics[0], "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&scrape, "palisade_is_primary"), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, "palisade_view"), Some(0.0));
    assert_eq!(sample(&scrape, "palisade_peers_connected"), Some(3.0));
    assert!(sample(&scrape, "palisade_delivered_seq").unwrap() > 0.0);
    assert!(sample(&scrape, "palisade_requests_executed_total").unwrap() >= 200.0);
    // One request in 16 is timed from arrival to execution.
    assert!(sample(&scrape, "palisade_ordering_seconds_count").unwrap() >= 200.0 / 16.0 - 1.0, "{scrape}");
    assert!(sample(&scrape, "palisade_stage_seconds_count{stage=\"consensus\"}").unwrap() > 0.0);
    assert_eq!(sample(&scrape, "palisade_queue_capacity{queue=\"peer_queue\"}").map(|c| c > 0.0), Some(true));
    for m in &metrics {
        assert_eq!(http_get(m, "/readyz").0, 200);
    }
    let status = palisade(&["status", "--config", d]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(stdout(&status).lines().filter(|l| l.contains(" yes ")).count(), 4, "{}", stdout(&status));

    // SIGKILL the primary: the others change view, and say so.
    replicas.0[0].kill().unwrap();
    puts(200, 210);
    let (_, scrape) = http_get(&metrics[1], "/metrics");
    assert!(sample(&scrape, "palisade_view").unwrap() >= 1.0, "{scrape}");
    assert!(sample(&scrape, "palisade_view_changes_total").unwrap() >= 1.0);
    assert_eq!(sample(&scrape, "palisade_normal"), Some(1.0));
    assert_eq!(sample(&scrape, "palisade_peers_connected"), Some(2.0));
    let status = palisade(&["status", "--config", d]);
    assert!(status.status.success(), "three of four are a quorum: {}", stdout(&status));
    assert!(stdout(&status).lines().any(|l| l.trim() == "0        no"), "{}", stdout(&status));

    // Every log line is a JSON object, and the view change is in it once
    // started and once completed, with its reason.
    let text = std::fs::read_to_string(log(1)).unwrap();
    let events: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let said = |msg: &str| events.iter().filter(|e| e["message"] == msg).collect::<Vec<_>>();
    let started = said("view change started");
    assert!(!started.is_empty(), "{text}");
    assert_eq!(started[0]["from"], 0);
    assert!(started[0]["reason"].is_string());
    assert!(!said("view change completed").is_empty(), "{text}");
    assert!(
        said("connection to a replica").iter().any(|e| e["peer"] == 0 && e["state"] == "down"),
        "the lost connection is logged: {text}"
    );
    assert!(said("replica started").iter().all(|e| e["replica"] == 1));

    // A second failure leaves two healthy replicas of four: not a quorum.
    replicas.0[1].kill().unwrap();
    let status = palisade(&["status", "--config", d, "--timeout-ms", "3000"]);
    assert_eq!(status.status.code(), Some(3), "{}", stdout(&status));
    assert!(String::from_utf8_lossy(&status.stderr).contains("fewer than a quorum"));
    drop(replicas);
}
