//! Replicas on separate hosts, as far as the network can tell: each in its
//! own network namespace with its own address, joined through a bridge
//! by links `tc` limits to 1 Gbit/s (`deploy/netns/netns.sh`). Under load,
//! a backup's cable is pulled and plugged back, then the primary is
//! partitioned from the other replicas (clients still reach it) and
//! healed. The cluster serves throughout and loses nothing, and `palisade
//! status` and the metrics show what happened (a pulled cable sends no FIN:
//! the peers notice the silence within seconds).
//!
//! It needs root, iproute2 and nft; `.ci/run` runs it with
//! `cargo test -p palisade --test netns -- --ignored`.

mod common;

use common::{run_ok, wait_for, Load, Scratch};
use palisade_testkit::scrape::metric;
use palisade_wire::ClusterConfig;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const N: usize = 4;

fn script() -> String {
    format!("{}/../../deploy/netns/netns.sh", env!("CARGO_MANIFEST_DIR"))
}

/// The namespaces, links and replica processes; all removed when dropped.
struct Hosts {
    prefix: String,
    net: String,
    procs: Vec<Option<Child>>,
    dir: Scratch,
}

impl Hosts {
    fn netns(&self, args: &[&str]) -> Output {
        run_ok(
            Command::new(script()).args(args).env("PALISADE_NETNS", &self.prefix).env("PALISADE_NETNS_NET", &self.net),
        )
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.net, 10 + i)
    }

    fn metrics(&self, i: usize) -> String {
        format!("{}:9100", self.addr(i))
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::File::create(self.dir.join(format!("replica-{i}.log"))).unwrap();
        let child = Command::new(script())
            .env("PALISADE_NETNS", &self.prefix)
            .env("PALISADE_NETNS_NET", &self.net)
            .args(["exec", &i.to_string(), BIN, "replica", "--config", self.dir.to_str().unwrap()])
            .args(["--id", &i.to_string(), "--service", "kv", "--metrics-addr", &self.metrics(i)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a replica");
        self.procs[i] = Some(child);
    }

    fn logs(&self) -> String {
        (0..N)
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.join(format!("replica-{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                format!("replica {i}:\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect()
    }

    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        metric(&self.metrics(i), name)
    }

    /// `palisade status` from this (the clients') namespace: its exit
    /// code and the replicas it found reachable.
    fn status(&self) -> (Option<i32>, Vec<usize>) {
        let out = Command::new(BIN)
            .args(["status", "--config", self.dir.to_str().unwrap(), "--timeout-ms", "3000"])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        let reachable = table
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let id = words.next()?.parse().ok()?;
                (words.next()? == "yes").then_some(id)
            })
            .collect();
        (out.status.code(), reachable)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(script()).arg("down").env("PALISADE_NETNS", &self.prefix).output();
    }
}

#[test]
#[ignore = "needs root, iproute2 and nft; .ci/run runs it"]
fn replicas_on_separate_hosts_serve_through_a_cut_cable_and_a_partitioned_primary() {
    let mut h = Hosts {
        prefix: format!("pt{}", std::process::id() % 10_000),
        net: "10.78.0".into(),
        procs: (0..N).map(|_| None).collect(),
        dir: Scratch::new("netns", "cluster"),
    };
    h.netns(&["up", &N.to_string(), "1000"]);
    let addresses: Vec<String> = (0..N).map(|i| format!("{}:7000", h.addr(i))).collect();
    let keygen = Command::new(BIN)
        .args(["keygen", "--replicas", "4", "--out", h.dir.to_str().unwrap(), "--addresses", &addresses.join(",")])
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    for i in 0..N {
        h.start(i);
    }
    let config = ClusterConfig::load(&h.dir).unwrap();
    let logs = || h.logs();
    let load = Load::start(&config, 4);
    load.progress(300, logs);
    assert_eq!(h.status(), (Some(0), vec![0, 1, 2, 3]));

    // A backup's cable is pulled: the rest serve on, and status says who
    // is missing. Plugged back, it catches up.
    h.netns(&["cut", "2"]);
    load.progress(300, logs);
    assert_eq!(h.status(), (Some(0), vec![0, 1, 3]));
    // The cable sends no FIN: the others notice the silence and say so.
    wait_for("the cut backup counted as disconnected", Duration::from_secs(30), logs, || {
        h.metric(0, "palisade_peers_connected") == Some(2.0)
    });
    let lead = h.metric(0, "palisade_delivered_seq").unwrap();
    h.netns(&["heal", "2"]);
    wait_for("the reconnected backup caught up", Duration::from_secs(60), logs, || {
        h.metric(2, "palisade_delivered_seq").unwrap_or(0.0) >= lead
    });

    // The primary is partitioned from its peers, though clients still
    // reach it: the others change view and serve on.
    assert_eq!(h.metric(0, "palisade_is_primary"), Some(1.0));
    h.netns(&["partition", "0"]);
    wait_for("a view change reported by the others", Duration::from_secs(30), logs, || {
        (1..N).all(|i| h.metric(i, "palisade_view").unwrap_or(0.0) >= 1.0)
    });
    load.progress(300, logs);
    let primary = h.metric(1, "palisade_primary").unwrap();
    assert_ne!(primary, 0.0);
    assert!(h.metric(1, "palisade_view_changes_total").unwrap() >= 1.0);
    // Status, from the clients' side, still reaches the old primary.
    assert_eq!(h.status(), (Some(0), vec![0, 1, 2, 3]));
    h.netns(&["unpartition", "0"]);
    wait_for("the old primary back in the new view", Duration::from_secs(60), logs, || {
        h.metric(0, "palisade_view") == h.metric(1, "palisade_view") && h.metric(0, "palisade_normal") == Some(1.0)
    });
    load.progress(300, logs);
    let acked = load.stop_and_check(&config);
    eprintln!("{acked} puts acknowledged, none lost");
    let (code, reachable) = h.status();
    assert_eq!((code, reachable), (Some(0), vec![0, 1, 2, 3]));
}
