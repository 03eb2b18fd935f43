//! `marina`: the operator CLI.

mod certs;
mod coord;
mod dev;
mod operator;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "marina", version, about = "Marina: a highly available container cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the cluster's CA and the certificates of its services and operators.
    Certs(certs::CertsArgs),
    /// Inspect and change the coord quorum.
    Coord(coord::CoordArgs),
    /// Run a whole HA cluster on this machine: 3 coord nodes, 2 masters, agents, 2 gateways.
    Dev(dev::DevArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Certs(args) => certs::run(args),
        Command::Coord(args) => coord::run(args).await,
        Command::Dev(args) => dev::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}`: the whole cause chain on one line, no backtrace: this is for operators.
            eprintln!("marina: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
