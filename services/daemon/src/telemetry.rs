//! Logs through `tracing`, as human-readable text or one JSON object per line.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `[log]` section every service's configuration carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,marina_coord=debug`. `RUST_LOG` is not read:
    /// the environment override is `MARINA_<SERVICE>_LOG__LEVEL`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        // openraft narrates every vote and replication step at info.
        Self { format: LogFormat::Text, level: "info,openraft=warn".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid configuration: `log.level` = {level:?}: {source}")]
    BadFilter { level: String, source: tracing_subscriber::filter::ParseError },
}

/// Installs the process-wide subscriber. Calling it again (several services in one process,
/// as `marina dev` and the tests do) keeps the first one.
pub fn init(config: &LogConfig) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&config.level)
        .map_err(|source| TelemetryError::BadFilter { level: config.level.clone(), source })?;
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_span_events(FmtSpan::NONE).with_writer(std::io::stderr);
    let _already_set = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    Ok(())
}
