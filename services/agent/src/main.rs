//! `marina-agent`: runs tasks on this machine for Marina's masters.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use marina_agent::Config;
use marina_daemon::cli::{ConfigFlags, LogFlags};
use serde::Serialize;

/// Flags are the configuration keys of the TOML file; each overrides file and environment.
#[derive(Parser, Serialize)]
#[command(name = "marina-agent", version, about = "Marina's agent (default port 5051)")]
struct Flags {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlags,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    /// The quorum: coord://host:port,host:port,host:port/root.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coord: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    work_dir: Option<PathBuf>,
    /// auto, docker, containerd, process or sim.
    #[arg(long, value_parser = ["auto", "docker", "containerd", "process", "sim"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<String>,
    /// Attributes, e.g. `rack:r1;zone:a`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<String>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "LogFlags::is_empty")]
    log: LogFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config: Config = marina_daemon::config::load("agent", flags.config.config.as_deref(), &flags)?;
    if flags.config.print_config {
        print!("{}", marina_daemon::config::render(&config));
        return Ok(());
    }
    config.validate()?;
    marina_daemon::telemetry::init(&config.log)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = marina_daemon::Shutdown::new();
    let agent = marina_agent::spawn(config, listener, shutdown.clone()).await?;
    marina_daemon::shutdown::signal().await;
    shutdown.trigger();
    agent.wait().await?;
    Ok(())
}
