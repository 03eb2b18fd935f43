//! `marina`: the operator CLI.

mod app;
mod certs;
mod cluster;
mod coord;
mod deployment;
mod dev;
mod follow;
mod gateway;
mod operator;
mod output;
mod task;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "marina", version, about = "Marina: a highly available container cluster", after_help = output::EXIT_CODES)]
struct Cli {
    /// Which gateway the app, task, deployment, queue, leader and cluster commands call, and how.
    #[command(flatten)]
    gateway: gateway::GatewayOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apps: list, show, deploy from a file, scale, restart, roll back, delete.
    App(app::AppArgs),
    /// Tasks: list, kill, and their output (`marina task logs APP`).
    Task(task::TaskArgs),
    /// Deployments in progress: list, watch, cancel.
    Deployment(deployment::DeploymentArgs),
    /// Apps waiting to launch instances, and why.
    Queue {
        #[arg(long)]
        json: bool,
    },
    /// The leading gateway.
    Leader {
        #[arg(long)]
        json: bool,
    },
    /// The cluster's masters, gateways and agents, with the agents' runtimes and resources.
    Cluster {
        #[arg(long)]
        json: bool,
    },
    /// Prints a shell completion script: `marina completions bash > /etc/bash_completion.d/marina`.
    Completions { shell: clap_complete::Shell },
    /// Make the cluster's CA and the certificates of its services and operators.
    Certs(certs::CertsArgs),
    /// Inspect and change the coord quorum.
    Coord(coord::CoordArgs),
    /// Run a whole HA cluster on this machine: 3 coord nodes, 2 masters, agents, 2 gateways.
    Dev(dev::DevArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let connect = || gateway::Gateway::connect(&cli.gateway);
    match cli.command {
        Command::App(args) => app::run(&connect()?, args).await,
        Command::Task(args) => task::run(&connect()?, args).await,
        Command::Deployment(args) => deployment::run(&connect()?, args).await,
        Command::Queue { json } => deployment::queue(&connect()?, json).await,
        Command::Leader { json } => cluster::leader(&connect()?, json).await,
        Command::Cluster { json } => cluster::cluster(&connect()?, json).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "marina", &mut script);
            output::write_stdout(&script);
            Ok(())
        }
        Command::Certs(args) => certs::run(args),
        Command::Coord(args) => coord::run(args).await,
        Command::Dev(args) => dev::run(args).await,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<output::Exit>() {
            Some(exit) => {
                if !exit.message.is_empty() {
                    eprintln!("marina: {}", exit.message);
                }
                std::process::ExitCode::from(exit.code)
            }
            None => {
                // `{:#}`: the whole cause chain on one line, no backtrace: this is for operators.
                eprintln!("marina: {error:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
