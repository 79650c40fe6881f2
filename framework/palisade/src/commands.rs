//! The `palisade` subcommands other than `keygen`.

use crate::registry::Registered;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use palisade_client::{Client, ClientOptions};
use palisade_core::ReplicaId;
use palisade_host::Durability;
use palisade_runtime::{RuntimeConfig, Start};
use palisade_services::counter::CounterClient;
use palisade_services::kv::{KvClient, KvError};
use palisade_wire::envelope::MemberRole;
use palisade_wire::{keys, ClusterConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// How a replica writes its log to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line an event.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Structured logs on stderr, filtered by RUST_LOG (default `info`).
/// Call once, before starting a replica.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().flatten_event(true).try_init(),
    };
}

/// Exit code when the cluster could not answer.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when a replica's disk failed (full, read-only, unreadable).
pub const EXIT_DISK: u8 = 4;

pub(crate) fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("palisade: {msg}");
    ExitCode::from(code)
}

fn load(dir: &Path) -> Result<ClusterConfig, ExitCode> {
    ClusterConfig::load(dir).map_err(|e| fail(EXIT_USAGE, e))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Whether this replica may vote at once when its data directory holds no
/// journal (with one, recovery decides). The directory holds a marker that
/// the replica has started before. A replica starting for the first time
/// never voted and may; one that started before without a journal
/// (`--durability none`, or a lost journal), or whose disk was replaced
/// (`--rejoin`), rejoins without voting until that is safe.
fn start_mode(data_dir: &Path, rejoin: bool) -> Result<Start, String> {
    let marker = data_dir.join("started");
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let started_before = marker.exists();
    if !started_before {
        let f = std::fs::File::create(&marker).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        f.sync_all().map_err(|e| format!("cannot sync {}: {e}", marker.display()))?;
        if let Ok(dir) = std::fs::File::open(data_dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(if started_before || rejoin { Start::LostVotes } else { Start::Fresh })
}

/// How `palisade replica` runs.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaOptions {
    /// Print the replica's state every 10 seconds.
    pub verbose: bool,
    /// Rejoin without votes when the data directory is empty.
    pub rejoin: bool,
    /// What the replica writes to disk.
    pub durability: Durability,
    /// Whether prepared batches execute tentatively.
    pub tentative: bool,
    /// Periodic leader change period, ms (0: off).
    pub leader_rotation_ms: u64,
    /// Requests a second per client, at most (0: unpaced).
    pub client_rate_max: u32,
    /// Misbehave this way (test builds only).
    #[cfg(feature = "byzantine")]
    pub byzantine: Option<palisade_runtime::byzantine::Misbehaviour>,
    /// Not a member yet: wait to be admitted.
    pub join: bool,
    /// How long a removed replica serves on before exiting.
    pub leave_grace_ms: u64,
    /// Where to serve Prometheus metrics and health probes.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where to listen, when not at the configured address.
    pub listen: Option<std::net::SocketAddr>,
}

/// `palisade replica`: runs one replica until SIGINT or SIGTERM, or until
/// a reconfiguration removed it and its grace period ended.
pub fn replica(config: &Path, id: u32, service: &Registered, data_dir: &Path, opts: ReplicaOptions) -> ExitCode {
    let ReplicaOptions { verbose, rejoin, durability, tentative, join, leave_grace_ms, metrics_addr, listen, .. } =
        opts;
    let cluster = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Links a client saved beside the configuration: a joiner asks the
    // newest members first.
    let chain = match palisade_wire::chain::Chain::load(config, cluster.genesis()) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let me = ReplicaId(id);
    let key_file = crate::keygen::replica_key_file(config, me);
    let key = match keys::read_secret(&key_file) {
        Ok(k) => k,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let mut rt_cfg = RuntimeConfig::for_cluster(&cluster);
    rt_cfg.start = match start_mode(data_dir, rejoin) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let start = rt_cfg.start;
    rt_cfg.durability = durability;
    rt_cfg.protocol.tentative_execution = tentative;
    rt_cfg.protocol.leader_rotation_ms = opts.leader_rotation_ms;
    rt_cfg.client_rate_max = opts.client_rate_max;
    #[cfg(feature = "byzantine")]
    {
        rt_cfg.misbehave = opts.byzantine;
    }
    rt_cfg.data_dir = Some(data_dir.to_path_buf());
    rt_cfg.links = chain.links().to_vec();
    rt_cfg.leave_grace_ms = leave_grace_ms;
    rt_cfg.bind = listen;
    if join {
        // A joiner binds at --listen when given (its admitted address is
        // its name); otherwise where its joining file says.
        rt_cfg.listen = match listen.map(Ok).unwrap_or_else(|| crate::keygen::joining_address(config, me)) {
            Ok(a) => Some(a),
            Err(e) => return fail(EXIT_USAGE, e),
        };
    }
    let handle = (service.spawn)(&cluster, me, key, rt_cfg);
    let handle = match handle {
        Ok(h) => h,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    // The consensus stage publishes its epoch after its first wake-up.
    let since = std::time::Instant::now();
    let mut c = handle.metrics().core.lock().clone();
    while c.members.is_empty() && since.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        c = handle.metrics().core.lock().clone();
    }
    tracing::info!(
        replica = me.0,
        cluster = cluster.cluster_id,
        epoch = c.epoch,
        replicas = c.members.len(),
        f = c.f,
        durability = %durability,
        "replica started"
    );
    let report = handle.recovery().cloned().filter(|r| r.found_anything());
    if let Some(r) = &report {
        tracing::info!(replica = me.0, %durability, "recovered from {}: {r}", data_dir.display());
    }
    // Without anything on disk, the start mode says; else what recovery found.
    let votes_lost = report.as_ref().map_or(start == Start::LostVotes, |r| r.votes_lost);
    if votes_lost {
        tracing::warn!(
            replica = me.0,
            "restarted without its votes: it catches up and votes again once its stable checkpoint passes \
             what it may have voted on before"
        );
    }
    let _metrics_server = match metrics_addr {
        None => None,
        Some(addr) => match palisade_runtime::exporter::MetricsServer::start(addr, handle.metrics().clone()) {
            Ok(server) => {
                tracing::info!(replica = me.0, addr = %server.local_addr(), "serving metrics on /metrics, probes on /healthz and /readyz");
                Some(server)
            }
            Err(e) => {
                handle.stop();
                return fail(EXIT_USAGE, format!("cannot serve metrics on {addr}: {e}"));
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a signal runtime");
    runtime.block_on(async {
        let status = async {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let c = handle.metrics().core.lock().clone();
                let queues: Vec<String> = handle.queue_depths().iter().map(|(q, d)| format!("{q}={d}")).collect();
                let counters: Vec<String> = handle
                    .metrics()
                    .counters
                    .snapshot()
                    .into_iter()
                    .filter(|(_, v)| *v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let rejoining = match (c.rejoining, c.rejoin_mark) {
                    (false, _) => String::new(),
                    (true, Some(mark)) => format!(" (rejoining until stable {mark})"),
                    (true, None) => " (rejoining: asking peers how far they got)".to_string(),
                };
                tracing::info!(
                    "replica {me}: epoch {} view {}{}{}{rejoining} delivered {} stable {} pending {} | queues {} | {}",
                    c.epoch,
                    c.view,
                    if c.primary { " (primary)" } else { "" },
                    if c.normal { "" } else { " (changing view)" },
                    c.delivered,
                    c.stable,
                    c.pending_requests,
                    queues.join(" "),
                    counters.join(" ")
                );
            }
        };
        let failed = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if handle.failure().is_some() {
                    return;
                }
            }
        };
        // Says what a joiner waits for, once, then when it is admitted;
        // returns when a removed replica's grace period is over.
        let membership = async {
            let mut said = None;
            loop {
                let c = handle.metrics().core.lock().clone();
                let now = (c.role, c.epoch);
                if said != Some(now) {
                    match c.role {
                        MemberRole::Joining => tracing::info!(
                            replica = me.0,
                            "not a member yet: waiting to be admitted (palisade admin add --id {id} ...), \
                             asking the members of the newest epoch known"
                        ),
                        MemberRole::Member if said.is_some() => tracing::info!(
                            replica = me.0,
                            epoch = c.epoch,
                            replicas = c.members.len(),
                            f = c.f,
                            "a member"
                        ),
                        MemberRole::Removed => tracing::warn!(
                            replica = me.0,
                            removed_in = c.removed_in.unwrap_or(c.epoch + 1),
                            leave_grace_ms,
                            "removed: it serves laggards and redirects clients for the grace period, then exits"
                        ),
                        MemberRole::Member => {}
                    }
                    said = Some(now);
                }
                if handle.removed().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if verbose {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = status => {}
                _ = failed => {}
                _ = membership => {}
            }
        } else {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = failed => {}
                _ = membership => {}
            }
        }
    });
    let failure = handle.failure();
    let removed = handle.removed();
    tracing::info!(replica = me.0, "stopping");
    handle.stop();
    match (failure, removed) {
        (Some(why), _) => fail(EXIT_DISK, format!("replica {me} stopped: {why}")),
        (None, Some(epoch)) => {
            tracing::info!(replica = me.0, removed_in = epoch, "left the cluster: its grace period is over");
            ExitCode::SUCCESS
        }
        (None, None) => ExitCode::SUCCESS,
    }
}

/// The client identity: `DIR/client.key` when present, else a fresh one.
pub(crate) fn client_key(config: &Path) -> Result<SigningKey, ExitCode> {
    let path = crate::keygen::client_key_file(config);
    if path.exists() {
        keys::read_secret(&path).map_err(|e| fail(EXIT_USAGE, e))
    } else {
        Ok(keys::generate(&mut rand_core::OsRng))
    }
}

fn connect(config: &Path, timeout_ms: u64) -> Result<(tokio::runtime::Runtime, Client), ExitCode> {
    let cluster = load(config)?;
    // The membership may have moved on since cluster.toml: the links saved
    // beside it say where, and the client keeps any it learns.
    let chain = palisade_wire::chain::Chain::load(config, cluster.genesis()).map_err(|e| fail(EXIT_USAGE, e))?;
    let key = client_key(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(EXIT_USAGE, e))?;
    let opts = ClientOptions { timeout_ms, keep_chain_in: Some(config.to_path_buf()), ..ClientOptions::default() };
    let client = runtime.block_on(async { Client::connect_at(cluster, chain, key, opts) });
    Ok((runtime, client))
}

/// Mounts the file system of the cluster in `config` at `mountpoint` and
/// serves it until it is unmounted or the process is told to stop (then
/// it unmounts). Each mount is a client of its own, with a fresh key.
/// A `max_write` of 0 takes the largest write the cluster accepts.
pub fn fs_mount(config: &Path, mountpoint: &Path, mut opts: crate::fsmount::MountOptions, timeout_ms: u64) -> ExitCode {
    let cluster = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if opts.max_write == 0 {
        opts.max_write = crate::fsmount::MountOptions::for_cluster(&cluster).max_write;
    }
    let chain = match palisade_wire::chain::Chain::load(config, cluster.genesis()) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let key = keys::generate(&mut rand_core::OsRng);
    let copts = ClientOptions { timeout_ms, keep_chain_in: Some(config.to_path_buf()), ..ClientOptions::default() };
    let client = runtime.block_on(async { Client::connect_at(cluster, chain, key, copts) });
    let fs = palisade_services::fs::FsClient::new(client).with_max_write(opts.max_write as usize);
    // Fail early, with a reason, rather than mount something that answers EIO.
    if let Err(e) = runtime.block_on(fs.statfs()) {
        return fail(EXIT_USAGE, format!("the cluster in {} does not answer as a file system: {e}", config.display()));
    }
    let mounted = match crate::fsmount::mount(fs, runtime.handle().clone(), mountpoint, opts) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_USAGE, format!("cannot mount at {}: {e}", mountpoint.display())),
    };
    eprintln!("mounted at {}; Ctrl-C or `palisade fs umount {0}` unmounts", mountpoint.display());
    runtime.block_on(async {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = async {
                while !mounted.ended() {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            } => {}
        }
    });
    match mounted.unmount() {
        Ok(()) => ExitCode::SUCCESS,
        // Unmounted from outside already.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_USAGE, format!("unmounting {}: {e}", mountpoint.display())),
    }
}

/// Unmounts a file system `palisade fs mount` mounted.
pub fn fs_umount(mountpoint: &Path) -> ExitCode {
    match crate::fsmount::unmount(mountpoint) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_USAGE, format!("cannot unmount {}: {e}", mountpoint.display())),
    }
}

/// A key-value command.
#[derive(Clone, Debug)]
pub enum KvCommand {
    /// Set a key.
    Put(String, String),
    /// Read a key.
    Get(String),
    /// Remove a key.
    Remove(String),
    /// List keys.
    Keys,
    /// Count keys.
    Size,
}

fn show(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `palisade kv ...`: prints the result on stdout, one line per value.
pub fn kv(config: &Path, cmd: KvCommand, timeout_ms: u64) -> ExitCode {
    let (runtime, client) = match connect(config, timeout_ms) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let kv = KvClient::new(client);
    // `Ok(None)` means the key was not there (exit code 1).
    let (key, result): (Option<String>, Result<Option<Vec<Bytes>>, KvError>) = runtime.block_on(async {
        match cmd {
            KvCommand::Put(k, v) => (None, kv.put(k, v).await.map(|old| Some(old.into_iter().collect()))),
            KvCommand::Get(k) => (Some(k.clone()), kv.get(k).await.map(|v| v.map(|v| vec![v]))),
            KvCommand::Remove(k) => (Some(k.clone()), kv.remove(k).await.map(|v| v.map(|v| vec![v]))),
            KvCommand::Keys => (None, kv.keys().await.map(Some)),
            KvCommand::Size => (None, kv.size().await.map(|n| Some(vec![Bytes::from(n.to_string())]))),
        }
    });
    match result {
        Ok(Some(lines)) => {
            for line in lines {
                println!("{}", show(&line));
            }
            ExitCode::SUCCESS
        }
        Ok(None) => fail(1, format!("key {:?} not found", key.unwrap_or_default())),
        Err(e) => fail(EXIT_UNAVAILABLE, e),
    }
}

/// `palisade counter inc|get`: prints the value on stdout.
pub fn counter(config: &Path, add: Option<u64>, timeout_ms: u64) -> ExitCode {
    let (runtime, client) = match connect(config, timeout_ms) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let counter = CounterClient::new(client);
    let result = runtime.block_on(async {
        match add {
            Some(n) => counter.add(n).await,
            None => counter.get().await,
        }
    });
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_UNAVAILABLE, e),
    }
}

/// `palisade cluster up`: a local cluster on loopback, one process per
/// replica, until SIGINT or SIGTERM.
pub fn cluster_up(
    dir: PathBuf,
    replicas: usize,
    service: &str,
    mode: palisade_core::Mode,
    base_port: u16,
    durability: Durability,
) -> ExitCode {
    if !dir.join(palisade_wire::config::CLUSTER_FILE).exists() {
        let opts = crate::keygen::KeygenOptions {
            replicas,
            out: dir.clone(),
            mode,
            f: None,
            addresses: vec![],
            base_port,
            cluster_id: None,
            request_auth: palisade_wire::RequestAuth::default(),
            requests_to_all: false,
        };
        if let Err(e) = crate::keygen::keygen(&opts) {
            return fail(EXIT_USAGE, e);
        }
    }
    let cluster = match load(&dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let mut children = Vec::new();
    for id in cluster.replicas.keys() {
        let child = std::process::Command::new(&exe)
            .arg("replica")
            .arg("--config")
            .arg(&dir)
            .arg("--id")
            .arg(id.0.to_string())
            .arg("--service")
            .arg(service)
            .arg("--durability")
            .arg(durability.to_string())
            .spawn();
        match child {
            Ok(c) => children.push((*id, c)),
            Err(e) => return fail(EXIT_USAGE, format!("cannot start replica {id}: {e}")),
        }
    }
    let d = dir.display();
    println!(
        "cluster of {} replicas (f = {}) running the {service} service, durability {durability}, configuration in {d}",
        cluster.membership.n(),
        cluster.membership.f()
    );
    for (id, r) in &cluster.replicas {
        println!(
            "  replica {id}: {} (pid {})",
            r.address,
            children.iter().find(|(i, _)| i == id).map(|(_, c)| c.id()).unwrap_or(0)
        );
    }
    match service {
        "kv" => println!("try:  palisade kv put hello world --config {d}\n      palisade kv get hello --config {d}"),
        "counter" => println!("try:  palisade counter inc --config {d}\n      palisade counter get --config {d}"),
        _ => {}
    }
    println!("stop with Ctrl-C");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a signal runtime");
    runtime.block_on(shutdown_signal());
    for (_, c) in &mut children {
        #[cfg(unix)]
        {
            // SIGTERM lets each replica close its connections cleanly.
            let _ = std::process::Command::new("kill").arg(c.id().to_string()).status();
        }
        #[cfg(not(unix))]
        let _ = c.kill();
    }
    for (_, c) in &mut children {
        let _ = c.wait();
    }
    ExitCode::SUCCESS
}
