//! The harness's command line: what to run, how hard, and how the replicas
//! it starts are tuned.

use clap::{Args, Parser, Subcommand, ValueEnum};
use palisade_core::Mode;
use palisade_host::Durability;
use palisade_runtime::StageThreads;
use palisade_wire::RequestAuth;
use serde::Serialize;

use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "palisade-bench", about = "Throughput and latency of a Palisade cluster")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) role: Option<RoleCmd>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Clone, Copy, ValueEnum, Serialize, Debug)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ModeArg {
    Bft,
    Cft,
}

#[derive(Subcommand)]
pub(crate) enum RoleCmd {
    /// Flood a cluster as one client (what `--flood-client` starts).
    Flood {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum)]
        kind: crate::flood::FloodKind,
        /// Wall-clock time (Unix milliseconds) to start at.
        #[arg(long, default_value_t = 0)]
        start_unix_ms: u64,
        /// How long to flood.
        #[arg(long)]
        seconds: f64,
    },
    /// Run one replica (what the harness starts; also for multi-machine runs).
    Server {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        id: u32,
        /// The service it runs.
        #[arg(long, default_value = "echo", value_parser = clap::builder::PossibleValuesParser::new(palisade::registry::names()))]
        service: String,
        /// Write the replica's metrics here as JSON every 250 ms.
        #[arg(long)]
        metrics_file: Option<PathBuf>,
        /// This replica ran before and lost its votes: it rejoins before voting.
        #[arg(long)]
        rejoin: bool,
        /// Not a member yet: listen where `joining-<id>.toml` says and wait
        /// to be admitted.
        #[arg(long)]
        join: bool,
        /// Misbehave this way (builds with the `byzantine` feature only).
        #[arg(long)]
        byzantine: Option<String>,
        /// With `--byzantine`: behave until this file exists.
        #[arg(long)]
        byzantine_trigger: Option<PathBuf>,
        #[command(flatten)]
        tuning: ReplicaTuning,
    },
    /// The Andrew-style file system benchmark: local directory, and the
    /// FUSE mount over one unreplicated server, BFT and CFT clusters.
    Andrew(crate::andrew::AndrewArgs),
    /// One load generator's share of a run (what `--generators` starts).
    Generate(GenerateArgs),
    /// Run the unreplicated baseline server of a 1-replica configuration.
    BaselineServer {
        #[arg(long)]
        config: PathBuf,
        /// The service it runs.
        #[arg(long, default_value = "echo", value_parser = clap::builder::PossibleValuesParser::new(palisade::registry::names()))]
        service: String,
    },
}

#[derive(Args, Clone, Debug, Serialize)]
pub(crate) struct RunArgs {
    /// Replicas.
    #[arg(long, default_value_t = 4)]
    pub(crate) replicas: usize,
    /// Fault model.
    #[arg(long, value_enum, default_value = "bft")]
    pub(crate) mode: ModeArg,
    /// Request size in bytes.
    #[arg(long, default_value_t = 0)]
    pub(crate) request_bytes: usize,
    /// Reply size in bytes.
    #[arg(long, default_value_t = 0)]
    pub(crate) reply_bytes: u32,
    /// Closed-loop clients (each with its own key and connections).
    #[arg(long, default_value_t = 4)]
    pub(crate) clients: usize,
    /// Requests each client keeps outstanding.
    #[arg(long, default_value_t = 64)]
    pub(crate) outstanding: usize,
    /// Measurement length in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) duration: f64,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) warmup: f64,
    /// How replicas know a proposed request came from its client:
    /// authenticators (the default of `keygen`), signatures (every replica
    /// checks every one) or trust-primary (clients do not sign; a faulty
    /// primary could forge requests).
    #[arg(long, default_value_t = RequestAuth::default())]
    pub(crate) request_auth: RequestAuth,
    /// Clients send every request to every replica (`requests_to_all` in
    /// cluster.toml), which arms the backups' watch on the primary's
    /// batches; without it they send to the primary alone.
    #[arg(long)]
    pub(crate) requests_to_all: bool,
    /// Most requests a client covers with one signature (requests issued
    /// together are signed as a group); 1 signs each request alone.
    #[arg(long, default_value_t = palisade_client::ClientOptions::default().sign_group_max)]
    pub(crate) sign_group_max: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) tuning: ReplicaTuning,
    /// Load levels to sweep, as CLIENTSxOUTSTANDING[,...] (for example 1x1,4x16,8x64).
    #[arg(long)]
    pub(crate) sweep: Option<String>,
    /// Skip the unreplicated baseline.
    #[arg(long)]
    pub(crate) no_baseline: bool,
    /// Measure the same load once per durability mode listed (for example
    /// none,log,full), each on a fresh cluster, in turn for `--rounds`
    /// rounds, and print each mode's median throughput and its ratio to the
    /// first mode's, pair by pair.
    #[arg(long, value_delimiter = ',')]
    pub(crate) compare_durability: Vec<Durability>,
    /// Like `--compare-durability`, for request authentication modes (for
    /// example trust-primary,authenticators,signatures).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip)]
    pub(crate) compare_auth: Vec<RequestAuth>,
    /// Like `--compare-durability`, with tentative execution off and then
    /// on: the latency it saves, side by side.
    #[arg(long)]
    #[serde(skip)]
    pub(crate) compare_tentative: bool,
    /// Run the experiment (the replicated run, then the unreplicated
    /// baseline) this many times in a row, A B A B ..., and report the
    /// median and spread of each and of their ratio, pair by pair: one run
    /// on a shared machine can be off by half.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeat: usize,
    /// Make one replica Byzantine, as ID:MODE (for example 0:slow-primary;
    /// modes: slow-primary, tiny-batches, starve:CLIENT, mute, equivocate,
    /// wrong-replies, withhold-full, flood). Needs a build with
    /// `--features byzantine`.
    #[arg(long)]
    pub(crate) byzantine_replica: Option<String>,
    /// Start the `--byzantine-replica`'s misbehaviour this many seconds
    /// into the measurement (tiny-batches always starts at once); without
    /// it, from the start.
    #[arg(long)]
    pub(crate) byzantine_at: Option<f64>,
    /// One more client, in its own process, floods the replicas with
    /// requests it never waits for: valid ones, or ones whose signatures
    /// fail. The throughput reported is the honest clients'.
    #[arg(long, value_enum)]
    pub(crate) flood_client: Option<crate::flood::FloodKind>,
    /// Like `--compare-durability`: without the `--flood-client`, then
    /// with it, in turn for `--rounds`.
    #[arg(long)]
    #[serde(skip)]
    pub(crate) compare_flood: bool,
    /// Like `--compare-durability`: a fault-free cluster, then one with the
    /// `--byzantine-replica`, in turn for `--rounds`.
    #[arg(long)]
    #[serde(skip)]
    pub(crate) compare_byzantine: bool,
    /// Rounds of `--compare-durability` or `--compare-auth`.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Kill the current primary this many seconds into the measurement.
    #[arg(long)]
    pub(crate) kill_primary_at: Option<f64>,
    /// Kill every replica (SIGKILL) this many seconds into the measurement;
    /// `--restart-at` starts them all again from their data directories.
    #[arg(long)]
    pub(crate) kill_all_at: Option<f64>,
    /// Restart the killed replica this many seconds into the measurement.
    #[arg(long)]
    pub(crate) restart_at: Option<f64>,
    /// The killed replica restarts with an empty data directory (a replaced
    /// disk): it fetches the whole state from its peers and rejoins.
    #[arg(long)]
    pub(crate) restart_empty: bool,
    /// Admit a new replica (id = `--replicas`, started to join) this many
    /// seconds into the measurement, with a request signed by the view
    /// manager.
    #[arg(long)]
    pub(crate) add_at: Option<f64>,
    /// Remove replica `--remove-id` this many seconds into the measurement.
    #[arg(long)]
    pub(crate) remove_at: Option<f64>,
    /// The replica `--remove-at` removes.
    #[arg(long, default_value_t = 3)]
    pub(crate) remove_id: u32,
    /// Grow the cluster to this many replicas before the measurement, by
    /// one request of the view manager (to compare with a cluster started
    /// that size).
    #[arg(long)]
    pub(crate) grow_to: Option<usize>,
    /// Run the load against an existing cluster (its configuration directory) instead of starting one.
    #[arg(long)]
    pub(crate) cluster: Option<PathBuf>,
    /// Where to write results.json and the charts.
    #[arg(long, default_value = "bench-results")]
    pub(crate) out: PathBuf,
    /// First port of the replicas started (the baseline uses this + 100).
    #[arg(long, default_value_t = 7600)]
    pub(crate) base_port: u16,
    /// Threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) client_threads: usize,
    /// Load generator processes: with more than one, the clients are split
    /// between that many processes of this harness, so that the generator
    /// scales out (and is measured apart) instead of sharing the harness's
    /// process.
    #[arg(long, default_value_t = 1)]
    pub(crate) generators: usize,
    /// The workload: echo (request and reply of the sizes above) or kv
    /// (YCSB-style reads and updates of random keys).
    #[arg(long, value_enum, default_value = "echo")]
    pub(crate) service: ServiceArg,
    /// kv: keys, all written once before the warm-up.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) keys: u64,
    /// kv: bytes per value.
    #[arg(long, default_value_t = 100)]
    pub(crate) value_bytes: usize,
    /// kv: percentage of operations that read (YCSB A: 50, B: 95, C: 100);
    /// the rest update.
    #[arg(long, default_value_t = 50)]
    pub(crate) read_percent: u8,
}

/// The workloads.
#[derive(Clone, Copy, ValueEnum, Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ServiceArg {
    /// The echo service: the 0/0 ... 4096/4096 microbenchmarks.
    Echo,
    /// The key-value store.
    Kv,
}

impl ServiceArg {
    /// The registry name of the service the replicas run.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ServiceArg::Echo => "echo",
            ServiceArg::Kv => "kv",
        }
    }
}

// ----- server roles -------------------------------------------------------------------

/// Where a replica's CPU stages run; see `palisade_runtime::StageThreads`.
#[derive(Clone, Copy, ValueEnum, Serialize, Debug)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StageThreadsArg {
    /// One thread per stage.
    Dedicated,
    /// One thread for all stages, beside the network thread.
    Shared,
    /// On the network thread.
    Network,
}

impl From<StageThreadsArg> for StageThreads {
    fn from(a: StageThreadsArg) -> StageThreads {
        match a {
            StageThreadsArg::Dedicated => StageThreads::Dedicated,
            StageThreadsArg::Shared => StageThreads::Shared,
            StageThreadsArg::Network => StageThreads::Network,
        }
    }
}

/// What a generator process is given besides the workload options.
#[derive(Args, Clone, Debug)]
pub(crate) struct GenerateArgs {
    /// The cluster's configuration directory.
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// Clients of this process.
    #[arg(long)]
    pub(crate) clients: usize,
    /// Requests each keeps outstanding.
    #[arg(long)]
    pub(crate) outstanding: usize,
    /// Wall-clock time (Unix milliseconds) at which every generator starts
    /// its warm-up.
    #[arg(long)]
    pub(crate) start_unix_ms: u64,
    /// Where to write what it measured (JSON).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

impl RunArgs {
    /// The options a generator process needs to send the same requests
    /// for as long.
    pub(crate) fn workload_args(&self) -> Vec<String> {
        vec![
            format!("--service={}", format!("{:?}", self.service).to_lowercase()),
            format!("--request-bytes={}", self.request_bytes),
            format!("--reply-bytes={}", self.reply_bytes),
            format!("--keys={}", self.keys),
            format!("--value-bytes={}", self.value_bytes),
            format!("--read-percent={}", self.read_percent),
            format!("--sign-group-max={}", self.sign_group_max),
            format!("--warmup={}", self.warmup),
            format!("--duration={}", self.duration),
            format!("--client-threads={}", self.client_threads),
        ]
    }
}

/// How the replicas are tuned: given to a run, passed on to each server.
#[derive(Args, Clone, Debug, Serialize)]
pub(crate) struct ReplicaTuning {
    /// Requests per batch, at most.
    #[arg(long, default_value_t = 1024)]
    pub(crate) batch_max: usize,
    /// Batches the primary keeps proposed but not yet delivered.
    #[arg(long, default_value_t = 4)]
    pub(crate) in_flight: u64,
    /// Requests that must wait, per batch already in flight, before the
    /// primary proposes another (the protocol's `pipeline_min_batch`).
    #[arg(long, default_value_t = 64)]
    pub(crate) pipeline_min_batch: usize,
    /// Where the replicas' CPU stages run (default: chosen for the machine).
    #[arg(long, value_enum)]
    pub(crate) stage_threads: Option<StageThreadsArg>,
    /// What the replicas write to disk: none, log or full (the default of
    /// `palisade replica`, and so of this harness).
    #[arg(long, default_value = "full")]
    pub(crate) durability: Durability,
    /// Execute prepared batches tentatively (`palisade replica --tentative`).
    #[arg(long)]
    pub(crate) tentative: bool,
    /// Periodic leader change: every view ends after this many ms (0: off).
    #[arg(long, default_value_t = 0)]
    pub(crate) leader_rotation_ms: u64,
    /// Keep the request timeout at its configured value instead of
    /// adapting it to measured rounds (to measure what adaptation buys).
    #[arg(long)]
    pub(crate) fixed_request_timeout: bool,
    /// Under saturation, how long a busy client's answers may be held for
    /// the next batch's (the runtime's `reply_linger_ms`; 0: never).
    #[arg(long, default_value_t = 10)]
    pub(crate) reply_linger_ms: u64,
    /// Requests a second one client may send each replica (the runtime's
    /// `client_rate_max`; 0: unpaced).
    #[arg(long, default_value_t = 0)]
    pub(crate) client_rate_max: u32,
}

impl ReplicaTuning {
    /// The same options on a server's command line.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--batch-max={}", self.batch_max),
            format!("--in-flight={}", self.in_flight),
            format!("--pipeline-min-batch={}", self.pipeline_min_batch),
            format!("--durability={}", self.durability),
        ];
        if let Some(t) = self.stage_threads {
            args.push(format!("--stage-threads={}", format!("{t:?}").to_lowercase()));
        }
        if self.tentative {
            args.push("--tentative".into());
        }
        if self.leader_rotation_ms > 0 {
            args.push(format!("--leader-rotation-ms={}", self.leader_rotation_ms));
        }
        if self.fixed_request_timeout {
            args.push("--fixed-request-timeout".into());
        }
        args.push(format!("--reply-linger-ms={}", self.reply_linger_ms));
        args.push(format!("--client-rate-max={}", self.client_rate_max));
        args
    }
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Bft => Mode::Bft,
            ModeArg::Cft => Mode::Cft,
        }
    }
}

/// A load level: clients, each with this many requests outstanding.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Level {
    pub(crate) clients: usize,
    pub(crate) outstanding: usize,
}

/// Parses `CLIENTSxOUTSTANDING[,...]`.
pub(crate) fn parse_sweep(s: &str) -> Result<Vec<Level>, String> {
    s.split(',')
        .map(|p| {
            let (c, o) = p.trim().split_once('x').ok_or(format!("bad load level {p:?}: use CLIENTSxOUTSTANDING"))?;
            Ok(Level {
                clients: c.parse().map_err(|_| format!("bad client count in {p:?}"))?,
                outstanding: o.parse().map_err(|_| format!("bad outstanding count in {p:?}"))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generator_process_parses_the_workload_it_was_given() {
        let parent = Cli::try_parse_from([
            "palisade-bench",
            "--service",
            "kv",
            "--keys",
            "77",
            "--value-bytes",
            "9",
            "--read-percent",
            "95",
            "--duration",
            "2.5",
            "--warmup",
            "0.5",
            "--sign-group-max",
            "3",
        ])
        .unwrap()
        .run;
        let mut argv = vec!["palisade-bench".to_string()];
        argv.extend(parent.workload_args());
        argv.extend(
            ["generate", "--config", "c", "--clients", "2", "--outstanding", "8", "--start-unix-ms", "5", "--out", "o"]
                .map(String::from),
        );
        let child = Cli::try_parse_from(argv).unwrap();
        let Some(RoleCmd::Generate(g)) = child.role else { panic!("not a generator") };
        assert_eq!((g.clients, g.outstanding, g.start_unix_ms), (2, 8, 5));
        let c = child.run;
        assert_eq!(c.service, ServiceArg::Kv);
        assert_eq!((c.keys, c.value_bytes, c.read_percent, c.sign_group_max), (77, 9, 95, 3));
        assert_eq!((c.duration, c.warmup), (2.5, 0.5));
    }

    #[test]
    fn load_levels_parse_and_bad_ones_say_why() {
        let l = parse_sweep("1x1, 8x64").unwrap();
        assert_eq!((l[1].clients, l[1].outstanding), (8, 64));
        assert!(parse_sweep("8*64").unwrap_err().contains("CLIENTSxOUTSTANDING"));
        assert!(parse_sweep("ax1").unwrap_err().contains("client count"));
    }
}
