//! `marina-agent`: runs tasks on this machine for Marina's masters.

use clap::Parser;
use marina_agent::Config;
use marina_daemon::cli::{ConfigFlags, MemberFlags};
use serde::Serialize;

/// Flags are the configuration keys of the TOML file; each overrides file and environment.
#[derive(Parser, Serialize)]
#[command(name = "marina-agent", version, about = "Marina's agent (default port 5051)")]
struct Flags {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlags,
    #[command(flatten)]
    #[serde(flatten)]
    member: MemberFlags,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    /// auto (every runtime that answers), docker, containerd, process or sim, or several:
    /// `docker,process` (images in Docker, commands as host processes).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<String>,
    /// Attributes, e.g. `rack:r1;zone:a`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<String>,
}

// The agent keeps the system allocator, unlike the other services (`marina_daemon::Allocator`):
// it runs on every host, where its footprint matters more than its allocation speed (idle,
// 15.7 MB resident with glibc's allocator, 32.4 MB with mimalloc; the target is 20 MB).
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let result =
        marina_daemon::cli::run::<Config, _, _, _>(&flags.config, &flags, |config, listener, shutdown| async move {
            let running = marina_agent::spawn(config, listener, shutdown).await?;
            Ok(async move { running.wait().await.map_err(std::io::Error::other) })
        })
        .await;
    marina_daemon::cli::exit("marina-agent", result)
}
