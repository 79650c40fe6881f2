//! `test-replica --config DIR --id N [--service kv|counter] [--lying]
//! [--forge] [--rejoin] [--join] [--leave-grace-ms MS] [--metrics-addr A]
//! [--log-format text|json]`: runs replica N
//! exactly as `palisade replica`
//! does (same code, data in `DIR/data-N`, durability `full`), and every
//! 100 ms writes its counters to `DIR/counters-N.txt` (`name value` lines)
//! for the process tests.
//!
//! With `--lying` (kv) the replica is a Byzantine chunk server: it votes
//! and executes correctly, and certifies correct checkpoint digests, but
//! every record of state it serves to a fetching peer has a flipped bit.
//! With `--forge` (counter) it is a Byzantine primary: every PRE-PREPARE it
//! sends carries an extra request, adding 1000, that no client sent.

use bytes::Bytes;
use palisade::registry::Registered;
use palisade_core::state::{Part, PartedState, RecordSource};
use palisade_core::{Digest, ExecContext, ReplicaId, Service};
use palisade_runtime::{spawn_replica, ReplicaHandle, RuntimeConfig};
use palisade_services::kv::KvStore;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

static COUNTERS: OnceLock<PathBuf> = OnceLock::new();
static FORGE: OnceLock<bool> = OnceLock::new();

/// The key-value store, serving corrupt records.
#[derive(Default)]
struct Lying(KvStore);

struct Flipped(Part);

impl RecordSource for Flipped {
    fn record(&self, j: usize) -> Bytes {
        let mut b = self.0.record(j).to_vec();
        if let Some(x) = b.last_mut() {
            *x ^= 1;
        }
        b.into()
    }
}

impl PartedState for Lying {
    fn part_count(&self) -> u32 {
        self.0.part_count()
    }
    fn take_changed(&mut self) -> Vec<u32> {
        self.0.take_changed()
    }
    fn part(&self, i: u32) -> Part {
        let p = self.0.part(i);
        Part::new(p.record_digests().to_vec(), Arc::new(Flipped(p)))
    }
    fn part_digest(&self, i: u32) -> Digest {
        self.0.part_digest(i)
    }
    fn install_part(&mut self, i: u32, records: Vec<Bytes>) -> Result<(), String> {
        self.0.install_part(i, records)
    }
}

impl Service for Lying {
    fn execute(&mut self, ctx: &ExecContext, operation: &[u8]) -> Bytes {
        self.0.execute(ctx, operation)
    }
    fn execute_unordered(&self, operation: &[u8]) -> Bytes {
        self.0.execute_unordered(operation)
    }
    fn snapshot(&self) -> Bytes {
        self.0.snapshot()
    }
    fn install(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0.install(snapshot)
    }
    fn parted(&self) -> Option<&dyn PartedState> {
        Some(self)
    }
    fn parted_mut(&mut self) -> Option<&mut dyn PartedState> {
        Some(self)
    }
}

/// Writes the replica's counters to the file the tests read, until the
/// process ends.
fn report(handle: &ReplicaHandle) {
    let Some(path) = COUNTERS.get().cloned() else { return };
    let metrics = handle.metrics().clone();
    std::thread::spawn(move || loop {
        let core = metrics.core.lock().clone();
        let mut out = format!(
            "delivered {}\nstable {}\nview {}\nrejoining {}\nepoch {}\nmembers {}\n",
            core.delivered,
            core.stable,
            core.view,
            core.rejoining as u8,
            core.epoch,
            core.members.len()
        );
        for (k, v) in metrics.counters.snapshot() {
            out.push_str(&format!("{k} {v}\n"));
        }
        for (k, v) in &core.dropped {
            out.push_str(&format!("dropped:{} {v}\n", k.replace(' ', "-")));
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, out).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        std::thread::sleep(Duration::from_millis(100));
    });
}

fn spawn<S: Service + Default + Send + Sync + 'static>(
    cluster: &palisade::wire::ClusterConfig,
    me: ReplicaId,
    key: ed25519_dalek::SigningKey,
    mut cfg: RuntimeConfig,
) -> Result<ReplicaHandle, String> {
    if FORGE.get().copied().unwrap_or(false) {
        cfg.forged_request = Some(palisade_core::Request {
            client: palisade_core::ClientId(0x0f0f_0f0f),
            id: palisade_core::RequestId(1),
            read_only: false,
            operation: palisade_services::counter::CounterOp::Add(1000).encode(),
            auth: Bytes::from(vec![0x5a; 96]),
        });
    }
    let handle = spawn_replica(cluster, me, key, S::default(), cfg)?;
    report(&handle);
    Ok(handle)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let (Some(config), Some(id)) = (value("--config"), value("--id").and_then(|s| s.parse::<u32>().ok())) else {
        eprintln!("usage: test-replica --config DIR --id N [--service kv|counter] [--lying] [--forge] [--rejoin]");
        return ExitCode::from(2);
    };
    let config = PathBuf::from(config);
    let _ = COUNTERS.set(config.join(format!("counters-{id}.txt")));
    let _ = FORGE.set(args.iter().any(|a| a == "--forge"));
    let service = if args.iter().any(|a| a == "--lying") {
        Registered { name: "lying-kv", about: "kv serving corrupt state", spawn: spawn::<Lying> }
    } else if value("--service").as_deref() == Some("counter") {
        Registered { name: "counter", about: "counter", spawn: spawn::<palisade_services::counter::Counter> }
    } else {
        Registered { name: "kv", about: "kv", spawn: spawn::<KvStore> }
    };
    let opts = palisade::commands::ReplicaOptions {
        verbose: false,
        rejoin: args.iter().any(|a| a == "--rejoin"),
        durability: palisade_host::Durability::Full,
        tentative: args.iter().any(|a| a == "--tentative"),
        leader_rotation_ms: value("--leader-rotation-ms").and_then(|s| s.parse().ok()).unwrap_or(0),
        client_rate_max: value("--client-rate-max").and_then(|s| s.parse().ok()).unwrap_or(0),
        byzantine: value("--byzantine")
            .map(|m| palisade_runtime::byzantine::Misbehaviour::parse(&m).expect("a Byzantine mode")),
        join: args.iter().any(|a| a == "--join"),
        leave_grace_ms: value("--leave-grace-ms").and_then(|s| s.parse().ok()).unwrap_or(30_000),
        metrics_addr: value("--metrics-addr").and_then(|s| s.parse().ok()),
        listen: value("--listen").and_then(|s| s.parse().ok()),
    };
    let json = value("--log-format").as_deref() == Some("json");
    palisade::commands::init_logging(if json {
        palisade::commands::LogFormat::Json
    } else {
        palisade::commands::LogFormat::Text
    });
    palisade::commands::replica(&config, id, &service, &config.join(format!("data-{id}")), opts)
}
