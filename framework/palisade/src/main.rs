//! The `palisade` command.

use clap::{Parser, Subcommand, ValueEnum};
use palisade::keygen::{keygen, KeygenOptions};
use palisade_core::Mode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Byzantine fault tolerant state machine replication"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Bft,
    Cft,
}

#[derive(Subcommand)]
enum Command {
    /// Generate keys and a ready-to-run cluster configuration directory.
    Keygen {
        /// Number of replicas.
        #[arg(long)]
        replicas: usize,
        /// Directory to write (created if missing; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Byzantine (n >= 3f+1) or crash (n >= 2f+1) fault tolerance.
        #[arg(long, value_enum, default_value = "bft")]
        mode: ModeArg,
        /// Faults to tolerate [default: the most the mode allows].
        #[arg(long)]
        f: Option<usize>,
        /// Comma-separated ip:port per replica [default: 127.0.0.1 from --base-port].
        #[arg(long, value_delimiter = ',')]
        addresses: Vec<SocketAddr>,
        /// First port of the loopback addresses.
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// Cluster id [default: random].
        #[arg(long)]
        cluster_id: Option<u64>,
        /// Make clients sign every request (ed25519).
        #[arg(long)]
        client_signatures: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen {
            replicas,
            out,
            mode,
            f,
            addresses,
            base_port,
            cluster_id,
            client_signatures,
        } => {
            let opts = KeygenOptions {
                replicas,
                out: out.clone(),
                mode: match mode {
                    ModeArg::Bft => Mode::Bft,
                    ModeArg::Cft => Mode::Cft,
                },
                f,
                addresses,
                base_port,
                cluster_id,
                client_signatures,
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
    }
}
