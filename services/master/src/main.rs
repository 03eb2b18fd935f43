//! `marina-master`: one of Marina's masters (one leads; the others stand by).

use clap::Parser;
use marina_daemon::cli::{ConfigFlags, MemberFlags};
use marina_master::Config;
use serde::Serialize;

/// Flags are the configuration keys of the TOML file; each overrides file and environment.
#[derive(Parser, Serialize)]
#[command(name = "marina-master", version, about = "Marina's master (default port 5050)")]
struct Flags {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlags,
    #[command(flatten)]
    #[serde(flatten)]
    member: MemberFlags,
}

#[global_allocator]
static ALLOCATOR: marina_daemon::Allocator = marina_daemon::Allocator;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let result =
        marina_daemon::cli::run::<Config, _, _, _>(&flags.config, &flags, |config, listener, shutdown| async move {
            let running = marina_master::spawn(config, listener, shutdown).await?;
            Ok(async move { running.wait().await.map_err(std::io::Error::other) })
        })
        .await;
    marina_daemon::cli::exit("marina-master", result)
}
