//! `marina-gateway`: Marina's Marathon-compatible apps service.

use clap::Parser;
use marina_daemon::cli::{ConfigFlags, MemberFlags};
use marina_gateway::Config;
use serde::Serialize;

/// Flags are the configuration keys of the TOML file; each overrides file and environment.
#[derive(Parser, Serialize)]
#[command(name = "marina-gateway", version, about = "Marina's gateway: Marathon's REST API (default port 8080)")]
struct Flags {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlags,
    #[command(flatten)]
    #[serde(flatten)]
    member: MemberFlags,
    #[command(flatten)]
    #[serde(skip_serializing_if = "AuthFlags::is_empty")]
    auth: AuthFlags,
}

/// The `[auth]` section as flags.
#[derive(clap::Args, Serialize, Default)]
struct AuthFlags {
    /// `user:password` allowed to call the API (Marathon's --http_credentials); repeat it, or
    /// separate pairs with commas. Without any, anyone who reaches the port may.
    #[arg(long = "http-credentials", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    http_credentials: Vec<String>,
}

impl AuthFlags {
    fn is_empty(&self) -> bool {
        self.http_credentials.is_empty()
    }
}

#[global_allocator]
static ALLOCATOR: marina_daemon::Allocator = marina_daemon::Allocator;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let result =
        marina_daemon::cli::run::<Config, _, _, _>(&flags.config, &flags, |config, listener, shutdown| async move {
            let running = marina_gateway::spawn(config, listener, shutdown).await?;
            Ok(async move { running.wait().await.map_err(std::io::Error::other) })
        })
        .await;
    marina_daemon::cli::exit("marina-gateway", result)
}
