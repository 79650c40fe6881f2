//! The compose cluster of `deploy/compose.yaml`, in real containers of the
//! image `deploy/build-image.sh` builds: under load, the primary's
//! container is killed, a backup is cut off the network and reconnected,
//! the killed one comes back, and another restarts. No acknowledged put is
//! lost, and the metrics endpoints report the view change.
//!
//! It needs a Docker engine, `docker-compose` and the image, which
//! `.ci/run` installs, starts and builds before running it with
//! `cargo test -p palisade --test containers -- --ignored`.

mod common;

use common::{run_ok, wait_for, Load};
use palisade::keygen::{keygen, KeygenOptions};
use palisade_core::Mode;
use palisade_testkit::scrape::{http_get, metric};
use palisade_wire::address::HostPort;
use palisade_wire::ClusterConfig;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const N: usize = 4;

/// Replica `i`'s address on the compose network, as seen from this host.
fn ip(i: usize) -> String {
    format!("172.30.77.{}", 10 + i)
}

/// Replica `i`'s metrics endpoint, published on the host's loopback.
fn metrics(i: usize) -> String {
    format!("127.0.0.1:{}", 9100 + i)
}

/// A compose project in a scratch directory; taken down, volumes and all,
/// when dropped.
struct Project {
    dir: PathBuf,
    name: String,
    user: String,
}

impl Project {
    fn compose(&self, args: &[&str]) -> Output {
        let file = self.dir.join("compose.yaml");
        run_ok(
            Command::new("docker-compose")
                .args(["-f", file.to_str().unwrap(), "-p", &self.name])
                .args(args)
                .env("PALISADE_USER", &self.user),
        )
    }

    /// The container id of replica `i`.
    fn container(&self, i: usize) -> String {
        let out = self.compose(&["ps", "-q", &format!("replica-{i}")]);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn network(&self) -> String {
        format!("{}_palisade", self.name)
    }

    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "30"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let file = self.dir.join("compose.yaml");
        let _ = Command::new("docker-compose")
            .args(["-f", file.to_str().unwrap(), "-p", &self.name, "down", "-v", "--timeout", "2"])
            .env("PALISADE_USER", &self.user)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn docker(args: &[&str]) {
    run_ok(Command::new("docker").args(args));
}

fn setup() -> (Project, ClusterConfig) {
    let dir = std::env::temp_dir().join(format!("palisade-compose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compose.yaml");
    std::fs::copy(&compose, dir.join("compose.yaml")).unwrap();
    let cluster = dir.join("cluster");
    // The addresses replicas give each other: service names, looked up at
    // every connection attempt.
    let opts = KeygenOptions {
        replicas: N,
        out: cluster.clone(),
        mode: Mode::Bft,
        f: None,
        addresses: (0..N).map(|i| HostPort::parse(&format!("replica-{i}:7000")).unwrap()).collect(),
        base_port: 7000,
        cluster_id: None,
        request_auth: palisade_wire::RequestAuth::default(),
        requests_to_all: false,
    };
    keygen(&opts).unwrap();
    for i in 0..N {
        std::fs::create_dir_all(cluster.join(format!("data-{i}"))).unwrap();
    }
    // The replicas run as the image's unprivileged user when this test may
    // hand it the files (as root, in CI), else as the files' owner.
    let user = match chown_all(&cluster, 65532) {
        Ok(()) => "65532:65532".to_string(),
        Err(_) => {
            let meta = std::fs::metadata(&cluster).unwrap();
            format!("{}:{}", meta.uid(), meta.gid())
        }
    };
    let project = Project { dir, name: format!("palisade{}", std::process::id()), user };
    // This host reaches the replicas at their static addresses.
    let mut config = ClusterConfig::load(&cluster).unwrap();
    for (id, r) in config.replicas.iter_mut() {
        r.address = HostPort::parse(&format!("{}:7000", ip(id.0 as usize))).unwrap();
    }
    (project, config)
}

fn chown_all(dir: &Path, id: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(id), Some(id))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            chown_all(&path, id)?;
        } else {
            std::os::unix::fs::chown(&path, Some(id), Some(id))?;
        }
    }
    Ok(())
}

/// Each replica's view, as its metrics endpoint reports it.
fn views() -> Vec<Option<f64>> {
    (0..N).map(|i| metric(&metrics(i), "palisade_view")).collect()
}

#[test]
#[ignore = "needs a Docker engine, docker-compose and the palisade image; .ci/run runs it"]
fn a_compose_cluster_survives_a_killed_primary_a_cut_cable_and_restarts_and_loses_nothing() {
    let (p, config) = setup();
    p.compose(&["up", "-d"]);
    let logs = || p.logs();
    wait_for("every replica ready", Duration::from_secs(60), logs, || {
        (0..N).all(|i| http_get(&metrics(i), "/readyz").0 == 200)
    });
    let load = Load::start(&config, 4);
    load.progress(200, logs);
    let primary = metric(&metrics(1), "palisade_primary").expect("a primary") as usize;
    assert_eq!(metric(&metrics(primary), "palisade_is_primary"), Some(1.0));

    // The primary's container dies; the others change view and carry on.
    docker(&["kill", &p.container(primary)]);
    let others: Vec<usize> = (0..N).filter(|i| *i != primary).collect();
    wait_for("a view change reported by the others", Duration::from_secs(30), logs, || {
        others.iter().all(|i| metric(&metrics(*i), "palisade_view_changes_total").unwrap_or(0.0) >= 1.0)
    });
    load.progress(200, logs);
    let new_primary = metric(&metrics(others[0]), "palisade_primary").unwrap() as usize;
    assert_ne!(new_primary, primary, "views: {:?}", views());

    // The killed replica starts again from its disk and catches up. Then a
    // backup loses its network cable: the other three go on without it.
    // It comes back at a new IP address, which its peers find by its name
    // once their connections to the old one time out, and catches up.
    docker(&["start", &p.container(primary)]);
    wait_for("the restarted primary ready again", Duration::from_secs(60), logs, || {
        http_get(&metrics(primary), "/readyz").0 == 200
    });
    let cut = (0..N).find(|i| *i != primary && *i != new_primary).unwrap();
    let container = p.container(cut);
    docker(&["network", "disconnect", &p.network(), &container]);
    load.progress(200, logs);
    // Its peers notice the silence and drop their connections to the old
    // address, so that a count of three below means new connections.
    wait_for("the cut replica counted as disconnected", Duration::from_secs(30), logs, || {
        (0..N).filter(|i| *i != cut).all(|i| metric(&metrics(i), "palisade_peers_connected") == Some(2.0))
    });
    let moved = format!("172.30.77.{}", 30 + cut);
    let alias = format!("replica-{cut}");
    docker(&["network", "connect", "--ip", &moved, "--alias", &alias, &p.network(), &container]);
    let lead = metric(&metrics(new_primary), "palisade_delivered_seq").unwrap();
    wait_for("the reconnected replica caught up", Duration::from_secs(60), logs, || {
        metric(&metrics(cut), "palisade_delivered_seq").unwrap_or(0.0) >= lead
    });
    // Each peer dials by name: all three reach the new address.
    wait_for("every peer connected to the moved replica", Duration::from_secs(60), logs, || {
        (0..N).filter(|i| *i != cut).all(|i| metric(&metrics(i), "palisade_peers_connected") == Some(3.0))
    });

    // A graceful restart (SIGTERM, then start) of another replica.
    let restarted = (0..N).find(|i| *i != cut && *i != new_primary).unwrap();
    docker(&["restart", "--time", "5", &p.container(restarted)]);
    load.progress(200, logs);
    // Nothing acknowledged is lost, and the cluster answers through the
    // client service inside the network too.
    let acked = load.stop_and_check(&config);
    assert!(acked >= 800, "{acked}");
    // `palisade status` exits non-zero below a healthy quorum.
    let status = p.compose(&["run", "--rm", "-T", "client", "status"]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert_eq!(table.lines().filter(|l| l.contains(" yes ")).count(), N, "{table}");
    eprintln!("{acked} puts acknowledged, none lost; views {:?}", views());
}
