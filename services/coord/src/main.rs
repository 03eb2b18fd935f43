//! `marina-coord`: one node of Marina's quorum.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use marina_coord::Config;
use marina_daemon::cli::{ConfigFlags, LogFlags};
use serde::Serialize;

/// Flags are the configuration keys of the TOML file; each overrides file and environment.
#[derive(Parser, Serialize)]
#[command(name = "marina-coord", version, about = "A node of Marina's Raft quorum (default port 2181)")]
struct Flags {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlags,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    /// Initial voters: `1=host:port,2=host:port,3=host:port`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "LogFlags::is_empty")]
    log: LogFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config: Config = marina_daemon::config::load("coord", flags.config.config.as_deref(), &flags)?;
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
    let node = marina_coord::spawn(config, listener, shutdown.clone()).await?;
    marina_daemon::shutdown::signal().await;
    shutdown.trigger();
    node.wait().await?;
    Ok(())
}
