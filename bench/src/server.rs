//! The server roles the harness starts: a replica running a registered
//! service, and the unreplicated baseline.

use crate::cli::ReplicaTuning;
use palisade::registry;
use palisade_bench::baseline;
use palisade_bench::metrics_file::ReplicaMetrics;
use palisade_core::ReplicaId;
use palisade_runtime::{RuntimeConfig, Start};
use palisade_wire::{keys, ClusterConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn fail(role: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("palisade-bench {role}: {e}");
    ExitCode::from(2)
}

/// Runs replica `id` of the cluster in `config`, writing its metrics to
/// `metrics_file` every 250 ms, until killed. `rejoin` says it ran before:
/// unless its data directory brings its votes back, it rejoins before
/// voting again. `join`: it is not a member yet, and waits to be admitted.
pub(crate) fn replica(
    config: &Path,
    id: u32,
    service: &str,
    metrics_file: Option<PathBuf>,
    (rejoin, join): (bool, bool),
    byzantine: Option<(String, Option<PathBuf>)>,
    s: &ReplicaTuning,
) -> ExitCode {
    // Its log goes where `PALISADE_BENCH_LOGS` sends its stderr (else nowhere).
    palisade::commands::init_logging(palisade::commands::LogFormat::Text);
    let cluster = match ClusterConfig::load(config) {
        Ok(c) => c,
        Err(e) => return fail("server", e),
    };
    let me = ReplicaId(id);
    let key = match keys::read_secret(&palisade::keygen::replica_key_file(config, me)) {
        Ok(k) => k,
        Err(e) => return fail("server", e),
    };
    let mut cfg = RuntimeConfig::for_cluster(&cluster);
    cfg.protocol.batch_max_requests = s.batch_max;
    cfg.protocol.max_in_flight = s.in_flight;
    cfg.protocol.pipeline_min_batch = s.pipeline_min_batch;
    if let Some(t) = s.stage_threads {
        cfg.stage_threads = t.into();
    }
    if rejoin {
        cfg.start = Start::LostVotes;
    }
    cfg.durability = s.durability;
    cfg.protocol.tentative_execution = s.tentative;
    cfg.protocol.leader_rotation_ms = s.leader_rotation_ms;
    cfg.reply_linger_ms = s.reply_linger_ms;
    cfg.client_rate_max = s.client_rate_max;
    if s.fixed_request_timeout {
        cfg.protocol.request_timeout_rounds = 0;
    }
    if let Some((mode, trigger)) = byzantine {
        #[cfg(feature = "byzantine")]
        {
            match palisade_runtime::byzantine::Misbehaviour::parse(&mode) {
                Ok(m) => cfg.misbehave = Some(m),
                Err(e) => return fail("server", e),
            }
            cfg.misbehave_trigger = trigger;
        }
        #[cfg(not(feature = "byzantine"))]
        {
            let _ = trigger;
            return fail(
                "server",
                format!(
                    "Byzantine mode {mode:?} needs a build with the byzantine feature: cargo build --release -p palisade-bench --features byzantine"
                ),
            );
        }
    }
    cfg.data_dir = Some(config.join(format!("data-{id}")));
    if join {
        cfg.listen = match palisade::keygen::joining_address(config, me) {
            Ok(a) => Some(a),
            Err(e) => return fail("server", e),
        };
    }
    let service = registry::find(service).expect("clap checked the name");
    let handle = match (service.spawn)(&cluster, me, key, cfg) {
        Ok(h) => h,
        Err(e) => return fail("server", e),
    };
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(path) = &metrics_file {
            let c = handle.metrics().core.lock().clone();
            let metrics = ReplicaMetrics {
                epoch: c.epoch,
                view: c.view,
                primary: c.primary,
                normal: c.normal,
                delivered: c.delivered,
                delivered_requests: c.delivered_requests,
                proposed_batches: c.proposed_batches,
                view_changes: c.view_changes,
                state_transfers: c.state_transfers,
                timers_restarted: c.timers_restarted,
                rejoining: c.rejoining,
                late_forwards: c.late_forwards,
                skip_suspicions: c.skip_suspicions,
                counters: handle.metrics().counters.snapshot().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                queues: handle.queue_depths().into_iter().map(|(k, v)| (k.to_string(), v as u64)).collect(),
            };
            let _ = metrics.write(path);
        }
    }
}

/// Runs the unreplicated baseline server of a 1-replica configuration.
pub(crate) fn baseline(config: &Path, service: &str) -> ExitCode {
    let cluster = match ClusterConfig::load(config) {
        Ok(c) => c,
        Err(e) => return fail("baseline-server", e),
    };
    let key = match keys::read_secret(&palisade::keygen::replica_key_file(config, ReplicaId(0))) {
        Ok(k) => k,
        Err(e) => return fail("baseline-server", e),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    use palisade_services::*;
    let served = match service {
        "echo" => rt.block_on(baseline::serve(cluster, key, echo::Echo)),
        "kv" => rt.block_on(baseline::serve(cluster, key, kv::KvStore::default())),
        "counter" => rt.block_on(baseline::serve(cluster, key, counter::Counter::default())),
        "register" => rt.block_on(baseline::serve(cluster, key, register::Register::default())),
        "fs" => rt.block_on(baseline::serve(cluster, key, fs::FsService::default())),
        other => return fail("baseline-server", format!("no baseline for the service {other}")),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("baseline-server", e),
    }
}
