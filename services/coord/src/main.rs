//! `marina-coord`: one node of Marina's quorum.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use marina_coord::Config;
use serde::Serialize;

/// Flags are the configuration keys of the TOML file; each overrides file and environment.
#[derive(Parser, Serialize)]
#[command(name = "marina-coord", version, about = "A node of Marina's Raft quorum (default port 2181)")]
struct Flags {
    /// TOML configuration file.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
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
    #[serde(rename = "log", skip_serializing_if = "LogFlags::is_empty")]
    log: LogFlags,
}

#[derive(clap::Args, Serialize)]
struct LogFlags {
    /// `text` or `json`.
    #[arg(long = "log-format", value_parser = ["text", "json"])]
    #[serde(rename = "format", skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    /// A tracing filter such as `info` or `info,marina_coord=debug`.
    #[arg(long = "log-level")]
    #[serde(rename = "level", skip_serializing_if = "Option::is_none")]
    level: Option<String>,
}

impl LogFlags {
    fn is_empty(&self) -> bool {
        self.format.is_none() && self.level.is_none()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config: Config = marina_daemon::config::load("coord", flags.config.as_deref(), &flags)?;
    if flags.print_config {
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
