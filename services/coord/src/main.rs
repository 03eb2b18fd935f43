//! `marina-coord`: one node of Marina's quorum.

use std::path::PathBuf;

use clap::Parser;
use marina_coord::Config;
use marina_daemon::cli::{ConfigFlags, LogFlags, TlsFlags};
use serde::Serialize;

#[global_allocator]
static ALLOCATOR: marina_daemon::Allocator = marina_daemon::Allocator;

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
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsFlags::is_empty")]
    tls: TlsFlags,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let result =
        marina_daemon::cli::run::<Config, _, _, _>(&flags.config, &flags, |config, listener, shutdown| async move {
            let running = marina_coord::spawn(config, listener, shutdown).await?;
            Ok(async move { running.wait().await.map_err(std::io::Error::other) })
        })
        .await;
    marina_daemon::cli::exit("marina-coord", result)
}
