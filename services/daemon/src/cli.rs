//! Command-line pieces every service binary shares. Flags carry the same keys as the TOML
//! file; unset flags serialize to nothing, so they only override what they set.

use std::path::PathBuf;

use serde::Serialize;

/// `--config` and `--print-config`.
#[derive(clap::Args, Debug)]
pub struct ConfigFlags {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (defaults < file < environment < flags) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The `[log]` section as flags.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct LogFlags {
    /// `text` or `json`.
    #[arg(long = "log-format", value_parser = ["text", "json"])]
    #[serde(rename = "format", skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A tracing filter such as `info` or `info,marina_master=debug`.
    #[arg(long = "log-level")]
    #[serde(rename = "level", skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl LogFlags {
    pub fn is_empty(&self) -> bool {
        self.format.is_none() && self.level.is_none()
    }
}
