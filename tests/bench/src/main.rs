//! `marina-bench`: Marina's benchmarks. Each scenario prints a table and a one-line summary.
//!
//!   marina-bench coord [--clients 1,16,64] [--seconds 5]

mod coord;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "marina-bench", about = "Marina's benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// A 3-node coord cluster on loopback: writes, linearizable reads, mixed 90/10.
    Coord(coord::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Coord(args) => coord::run(args).await,
    }
}
