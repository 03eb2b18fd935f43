//! `marina-gateway`: Marina's Marathon-compatible apps service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use marina_daemon::cli::{ConfigFlags, LogFlags};
use marina_gateway::Config;
use serde::Serialize;

/// Flags are the configuration keys of the TOML file; each overrides file and environment.
#[derive(Parser, Serialize)]
#[command(name = "marina-gateway", version, about = "Marina's gateway: Marathon's REST API (default port 8080)")]
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
    /// The quorum: coord://host:port,host:port,host:port/root.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coord: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    work_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "LogFlags::is_empty")]
    log: LogFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config: Config = marina_daemon::config::load("gateway", flags.config.config.as_deref(), &flags)?;
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
    let gateway = marina_gateway::spawn(config, listener, shutdown.clone()).await?;
    marina_daemon::shutdown::signal().await;
    shutdown.trigger();
    gateway.wait().await?;
    Ok(())
}
