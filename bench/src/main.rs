//! `palisade-bench`: BFT-SMaRt's throughput/latency experiment for Palisade.
//!
//! With no arguments it starts 4 echo replicas as separate processes on
//! loopback, drives them with closed-loop clients (0-byte requests and
//! replies) for 30 s after a 5 s warm-up, measures the unreplicated
//! baseline the same way, prints a table and the `BENCH` line, writes
//! results.json and SVG charts, and stops everything it started.

mod andrew;
mod cli;
mod cores;
mod experiment;
mod flood;
mod load;
mod processes;
mod report;
mod server;

use clap::Parser;
use cli::{Cli, RoleCmd};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.role {
        Some(RoleCmd::Server {
            config,
            id,
            service,
            metrics_file,
            rejoin,
            join,
            byzantine,
            byzantine_trigger,
            tuning,
        }) => {
            let byzantine = byzantine.map(|mode| (mode, byzantine_trigger));
            server::replica(&config, id, &service, metrics_file, (rejoin, join), byzantine, &tuning)
        }
        Some(RoleCmd::BaselineServer { config, service }) => server::baseline(&config, &service),
        Some(RoleCmd::Andrew(a)) => andrew::run(a),
        Some(RoleCmd::Flood { config, kind, start_unix_ms, seconds }) => {
            flood::run(&config, kind, start_unix_ms, seconds)
        }
        Some(RoleCmd::Generate(g)) => load::generate(&cli.run, &g),
        None => experiment::run(cli.run),
    }
}
