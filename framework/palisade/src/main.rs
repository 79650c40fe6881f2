//! The `palisade` command.

use clap::{Parser, Subcommand, ValueEnum};
use palisade::admin::AdminCommand;
use palisade::commands::{self, KvCommand, LogFormat};
use palisade::keygen::{keygen, KeygenOptions};
use palisade::registry;
use palisade_core::Mode;
use palisade_host::Durability;
use palisade_wire::address::HostPort;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "palisade", version, about = "Byzantine fault tolerant state machine replication")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Bft,
    Cft,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Bft => Mode::Bft,
            ModeArg::Cft => Mode::Cft,
        }
    }
}

#[derive(Subcommand)]
enum KvOp {
    /// Set KEY to VALUE; prints the previous value, if any.
    Put { key: String, value: String },
    /// Print KEY's value (exit code 1 if it has none).
    Get { key: String },
    /// Remove KEY; prints the removed value (exit code 1 if it had none).
    Remove { key: String },
    /// Print every key, one per line.
    Keys,
    /// Print the number of keys.
    Size,
}

#[derive(Subcommand)]
enum AdminOp {
    /// Admit a replica; prints the new epoch's members and f.
    Add {
        /// Its id.
        #[arg(long)]
        id: u32,
        /// Where it listens, host:port.
        #[arg(long)]
        address: String,
        /// Its public key, hex (printed by `keygen --new-replica`).
        #[arg(long)]
        public_key: String,
    },
    /// Remove a member; prints the new epoch's members and f.
    Remove {
        /// Its id.
        #[arg(long)]
        id: u32,
    },
    /// Set the faults the cluster tolerates (f follows n otherwise).
    SetF {
        /// The new f.
        f: usize,
    },
    /// Every replica's epoch, view, primary, delivered and stable sequence
    /// numbers; exits non-zero when fewer than a quorum are healthy.
    Status,
}

#[derive(Subcommand)]
enum FsOp {
    /// Mount the replicated file system and serve it until unmounted or
    /// interrupted (Ctrl-C, SIGTERM): then it unmounts.
    Mount {
        /// Where to mount it (an existing, empty directory).
        mountpoint: PathBuf,
        /// Milliseconds the kernel may use attributes between opens before
        /// asking again (every open asks; docs/fs.md); 0 asks at every use.
        #[arg(long, default_value_t = 1000)]
        attr_ttl_ms: u64,
        /// Milliseconds the kernel may resolve a name before asking again.
        #[arg(long, default_value_t = 1000)]
        entry_ttl_ms: u64,
        /// Kernel requests served at once.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Let other users use the mount (root only; permissions are still checked).
        #[arg(long)]
        allow_other: bool,
        /// Send every write(2) to the cluster before it returns, instead of
        /// gathering a file's writes until it is closed, synced or looked
        /// at (docs/fs.md).
        #[arg(long)]
        sync_writes: bool,
    },
    /// Unmount a mounted file system.
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
}

#[derive(Subcommand)]
enum CounterOp {
    /// Add to the counter (1 by default); prints the new value.
    Inc {
        #[arg(long, default_value_t = 1)]
        by: u64,
    },
    /// Print the counter.
    Get,
}

#[derive(Subcommand)]
enum ClusterOp {
    /// Start a local cluster on loopback, one process per replica, until Ctrl-C.
    Up {
        /// Number of replicas.
        #[arg(long, default_value_t = 4)]
        replicas: usize,
        /// Configuration directory (generated if it has no cluster.toml).
        #[arg(long, default_value = "palisade-cluster")]
        dir: PathBuf,
        /// Service every replica runs.
        #[arg(long, default_value = "kv", value_parser = service_names())]
        service: String,
        /// Fault model.
        #[arg(long, value_enum, default_value = "bft")]
        mode: ModeArg,
        /// First port.
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// What each replica writes to disk: none, log or full (the only
        /// mode that loses nothing when every replica crashes at once).
        #[arg(long, default_value = "full")]
        durability: Durability,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Generate keys and a ready-to-run cluster configuration directory.
    Keygen {
        /// Number of replicas.
        #[arg(long, required_unless_present = "new_replica")]
        replicas: Option<usize>,
        /// Write only the key of a replica to add to a running cluster
        /// (with --id and --address), and print the command that admits it.
        #[arg(long, requires_all = ["id", "address"], conflicts_with = "replicas")]
        new_replica: bool,
        /// The new replica's id (with --new-replica).
        #[arg(long)]
        id: Option<u32>,
        /// Where the new replica listens, host:port (with --new-replica).
        #[arg(long)]
        address: Option<String>,
        /// Directory to write (created if missing; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Byzantine (n >= 3f+1) or crash (n >= 2f+1) fault tolerance.
        #[arg(long, value_enum, default_value = "bft")]
        mode: ModeArg,
        /// Faults to tolerate [default: the most the mode allows].
        #[arg(long)]
        f: Option<usize>,
        /// Comma-separated ip:port or host:port per replica [default: 127.0.0.1 from --base-port].
        #[arg(long, value_delimiter = ',', value_parser = HostPort::parse)]
        addresses: Vec<HostPort>,
        /// First port of the loopback addresses.
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// Cluster id [default: random].
        #[arg(long)]
        cluster_id: Option<u64>,
        /// How backups know a request the primary proposes came from its
        /// client: authenticators (a MAC per replica, signatures checked by
        /// the primary), signatures (checked by every replica), or
        /// trust-primary (nothing: a faulty primary can forge requests).
        #[arg(long, default_value_t = palisade_wire::RequestAuth::default())]
        request_auth: palisade_wire::RequestAuth,
        /// Clients send every request to every replica, as BFT-SMaRt's do:
        /// backups then see the load the primary is offered and suspect one
        /// whose batches keep leaving requests out (docs/protocol.md), at
        /// the price of every replica receiving every request.
        #[arg(long)]
        requests_to_all: bool,
    },
    /// Run one replica until SIGINT or SIGTERM.
    Replica {
        /// Configuration directory (cluster.toml and replica-<id>.key).
        #[arg(long, env = "PALISADE_CONFIG")]
        config: PathBuf,
        /// This replica's id (in a Kubernetes StatefulSet, the pod's
        /// ordinal through the downward API).
        #[arg(long, env = "PALISADE_ID")]
        id: u32,
        /// Service to run.
        #[arg(long, value_parser = service_names())]
        service: String,
        /// Print the replica's state every 10 seconds.
        #[arg(long)]
        verbose: bool,
        /// Where this replica keeps what must outlive it [default: CONFIG/data-ID].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start as a replica that lost its votes when the data directory
        /// holds nothing of it: after a disk was lost or replaced.
        #[arg(long)]
        rejoin: bool,
        /// What the replica writes to its data directory: none, log or full
        /// (the only mode that loses nothing when every replica crashes at
        /// once).
        #[arg(long, default_value = "full")]
        durability: Durability,
        /// Execute a prepared batch before it commits and answer at once
        /// (PBFT's tentative execution): a round less on each request's
        /// path where network hops dominate. Clients then need a quorum of
        /// such answers. Every replica should agree.
        #[arg(long)]
        tentative: bool,
        /// Periodic leader change (BFT-SMaRt): every view ends after this
        /// many ms, so a primary too subtle to be suspected leads only its
        /// share of the time. 0 turns it off. Every replica should agree.
        #[arg(long, default_value_t = 0)]
        leader_rotation_ms: u64,
        /// Requests a second one client may send this replica; past it its
        /// connections pause reading (nothing is dropped). Bounds what a
        /// client flooding with valid requests takes of ordering; set it
        /// above what any correct client sends. 0 paces nobody.
        #[arg(long, default_value_t = 0)]
        client_rate_max: u32,
        /// Misbehave, to measure what a faulty replica costs: slow-primary,
        /// tiny-batches, starve:CLIENT, mute, equivocate, wrong-replies,
        /// withhold-full or flood (docs/operations.md).
        #[cfg(feature = "byzantine")]
        #[arg(long, value_parser = palisade_runtime::byzantine::Misbehaviour::parse)]
        byzantine: Option<palisade_runtime::byzantine::Misbehaviour>,
        /// Start a replica that is not a member yet: it listens where
        /// `keygen --new-replica` said, waits for `admin add` to admit it,
        /// fetches the state and serves.
        #[arg(long)]
        join: bool,
        /// Once removed from the cluster, serve laggards and redirect
        /// clients this long before exiting.
        #[arg(long, default_value_t = 30_000)]
        leave_grace_ms: u64,
        /// Serve Prometheus metrics (`/metrics`) and health probes
        /// (`/healthz`, `/readyz`) over HTTP on this address.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// Bind here instead of at the address the configuration lists
        /// (or, with --join, the joining file): a container binds
        /// 0.0.0.0:7000 while peers reach it by its host name.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// How the replica logs to stderr: text, or json (one object a
        /// line). RUST_LOG filters, as `info` (the default), `debug`, or
        /// `palisade_runtime=debug`.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// One line per replica: reachable, epoch, view, primary, delivered
    /// and stable sequence numbers, connections and the fullest queue, read
    /// over the authenticated channel. Exits 3 when fewer than a quorum of
    /// members are healthy (in the newest epoch, in normal operation), so
    /// that it serves as a health check.
    Status {
        /// Configuration directory.
        #[arg(long, env = "PALISADE_CONFIG", default_value = "palisade-cluster")]
        config: PathBuf,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Change the membership, signed with view-manager.key, or show it.
    Admin {
        #[command(subcommand)]
        op: AdminOp,
        /// Configuration directory.
        #[arg(long, global = true, env = "PALISADE_CONFIG", default_value = "palisade-cluster")]
        config: PathBuf,
        /// Give up after this many milliseconds.
        #[arg(long, global = true, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Use a key-value cluster.
    Kv {
        #[command(subcommand)]
        op: KvOp,
        /// Configuration directory.
        #[arg(long, global = true, env = "PALISADE_CONFIG", default_value = "palisade-cluster")]
        config: PathBuf,
        /// Give up after this many milliseconds.
        #[arg(long, global = true, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Mount a file system cluster (`--service fs`) with FUSE.
    Fs {
        #[command(subcommand)]
        op: FsOp,
        /// Configuration directory.
        #[arg(long, global = true, env = "PALISADE_CONFIG", default_value = "palisade-cluster")]
        config: PathBuf,
        /// Give up on a file system call after this many milliseconds
        /// (the program then sees EIO).
        #[arg(long, global = true, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Use a counter cluster.
    Counter {
        #[command(subcommand)]
        op: CounterOp,
        /// Configuration directory.
        #[arg(long, global = true, env = "PALISADE_CONFIG", default_value = "palisade-cluster")]
        config: PathBuf,
        /// Give up after this many milliseconds.
        #[arg(long, global = true, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Manage a local cluster.
    Cluster {
        #[command(subcommand)]
        op: ClusterOp,
    },
}

/// `--service`'s possible values, each with its one-line description.
fn service_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        registry::SERVICES.iter().map(|s| clap::builder::PossibleValue::new(s.name).help(s.about)),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { new_replica: true, id: Some(id), address: Some(address), out, .. } => {
            palisade::admin::new_replica(&out, id, &address, &out)
        }
        Command::Keygen {
            replicas,
            out,
            mode,
            f,
            addresses,
            base_port,
            cluster_id,
            request_auth,
            requests_to_all,
            ..
        } => {
            let opts = KeygenOptions {
                replicas: replicas.unwrap_or(0),
                out: out.clone(),
                mode: mode.into(),
                f,
                addresses,
                base_port,
                cluster_id,
                request_auth,
                requests_to_all,
            };
            match keygen(&opts) {
                Ok(c) => {
                    if c.membership.f() == 0 {
                        eprintln!(
                            "palisade keygen: warning: {} replicas tolerate no faults in this mode \
                             (BFT needs 4 for f = 1, CFT needs 3)",
                            c.membership.n()
                        );
                    }
                    println!(
                        "wrote {} (cluster {}, {} replicas, f = {}) and secret keys to {}",
                        palisade_wire::config::CLUSTER_FILE,
                        c.cluster_id,
                        c.membership.n(),
                        c.membership.f(),
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("palisade keygen: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Replica {
            config,
            id,
            service,
            verbose,
            data_dir,
            rejoin,
            durability,
            tentative,
            leader_rotation_ms,
            client_rate_max,
            #[cfg(feature = "byzantine")]
            byzantine,
            join,
            leave_grace_ms,
            metrics_addr,
            listen,
            log_format,
        } => {
            commands::init_logging(log_format);
            let data_dir = data_dir.unwrap_or_else(|| config.join(format!("data-{id}")));
            let service = registry::find(&service).expect("clap checked the name");
            let opts = commands::ReplicaOptions {
                verbose,
                rejoin,
                durability,
                tentative,
                leader_rotation_ms,
                client_rate_max,
                #[cfg(feature = "byzantine")]
                byzantine,
                join,
                leave_grace_ms,
                metrics_addr,
                listen,
            };
            commands::replica(&config, id, service, &data_dir, opts)
        }
        Command::Status { config, timeout_ms } => palisade::admin::admin(&config, AdminCommand::Status, timeout_ms),
        Command::Admin { op, config, timeout_ms } => {
            let cmd = match op {
                AdminOp::Add { id, address, public_key } => AdminCommand::Add { id, address, public_key },
                AdminOp::Remove { id } => AdminCommand::Remove { id },
                AdminOp::SetF { f } => AdminCommand::SetF { f },
                AdminOp::Status => AdminCommand::Status,
            };
            palisade::admin::admin(&config, cmd, timeout_ms)
        }
        Command::Kv { op, config, timeout_ms } => {
            let cmd = match op {
                KvOp::Put { key, value } => KvCommand::Put(key, value),
                KvOp::Get { key } => KvCommand::Get(key),
                KvOp::Remove { key } => KvCommand::Remove(key),
                KvOp::Keys => KvCommand::Keys,
                KvOp::Size => KvCommand::Size,
            };
            commands::kv(&config, cmd, timeout_ms)
        }
        Command::Fs { op: FsOp::Umount { mountpoint }, .. } => commands::fs_umount(&mountpoint),
        Command::Fs {
            op: FsOp::Mount { mountpoint, attr_ttl_ms, entry_ttl_ms, threads, allow_other, sync_writes },
            config,
            timeout_ms,
        } => {
            let opts = palisade::fsmount::MountOptions {
                attr_ttl: std::time::Duration::from_millis(attr_ttl_ms),
                entry_ttl: std::time::Duration::from_millis(entry_ttl_ms),
                threads,
                allow_other,
                max_write: 0,
                write_behind: !sync_writes,
            };
            commands::fs_mount(&config, &mountpoint, opts, timeout_ms)
        }
        Command::Counter { op, config, timeout_ms } => {
            let add = match op {
                CounterOp::Inc { by } => Some(by),
                CounterOp::Get => None,
            };
            commands::counter(&config, add, timeout_ms)
        }
        Command::Cluster { op: ClusterOp::Up { replicas, dir, service, mode, base_port, durability } } => {
            commands::cluster_up(dir, replicas, &service, mode.into(), base_port, durability)
        }
    }
}
