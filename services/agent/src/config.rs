//! `marina-agent` configuration: defaults < TOML (`--config`) < `MARINA_AGENT_*` < flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use marina_coord_client::CoordUrl;
use marina_daemon::config::ConfigError;
use marina_daemon::telemetry::LogConfig;
use marina_proto::agent::v1::{Attribute, Range};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PORT: u16 = 5051;

/// Which runtime runs the tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// Docker if an engine answers, else containerd if it answers, else host processes.
    #[default]
    Auto,
    Docker,
    Containerd,
    Process,
    /// No side effects: for scale tests only. Never chosen by `auto`.
    Sim,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the agent API (gRPC + HTTP) listens.
    pub listen: String,
    /// The address masters and operators reach this agent at. Default: `listen`.
    pub advertise: Option<String>,
    /// The host name reported to schedulers (and used for health checks). Default: the
    /// machine's host name.
    pub hostname: Option<String>,
    /// The quorum, e.g. `coord://127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183/marina`.
    pub coord: CoordUrl,
    /// Checkpoints and task sandboxes.
    pub work_dir: PathBuf,
    pub runtime: RuntimeChoice,
    pub docker: DockerConfig,
    pub containerd: ContainerdConfig,
    pub resources: ResourcesConfig,
    /// Attributes offered with the resources, `name:value` separated by `;` (Mesos' syntax),
    /// e.g. `rack:r1;zone:a`.
    pub attributes: String,
    /// SIGTERM → this long → SIGKILL, for tasks that do not set their own.
    pub kill_grace_seconds: u64,
    /// First retry of an unacknowledged status update; doubles up to 10 s. A new master link
    /// resends every pending update at once, so this only covers updates lost on a live
    /// link; too short, and a busy cluster (acknowledgements slower than this) receives
    /// every update twice and gets busier still. (Mesos waits 10 s.)
    pub update_retry_ms: u64,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdConfig {
    /// Default: the first of /run/containerd/containerd.sock and
    /// /run/docker/containerd/containerd.sock that answers.
    pub socket: Option<PathBuf>,
    pub namespace: String,
}

/// What the agent offers. Unset values are detected from the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesConfig {
    pub cpus: Option<f64>,
    pub mem_mb: Option<f64>,
    pub disk_mb: Option<f64>,
    /// Host port ranges, e.g. `31000-32000` or `8000-8100,9000-9100`.
    pub ports: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            advertise: None,
            hostname: None,
            coord: "coord://127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183/marina".parse().expect("valid default URL"),
            work_dir: PathBuf::from("/var/lib/marina/agent"),
            runtime: RuntimeChoice::Auto,
            docker: DockerConfig::default(),
            containerd: ContainerdConfig::default(),
            resources: ResourcesConfig::default(),
            attributes: String::new(),
            kill_grace_seconds: 5,
            update_retry_ms: 2_000,
            log: LogConfig::default(),
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self { socket: PathBuf::from("/var/run/docker.sock") }
    }
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self { socket: None, namespace: "marina".into() }
    }
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        Self { cpus: None, mem_mb: None, disk_mb: None, ports: "31000-32000".into() }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::value("listen", format!("{:?} is not host:port ({e})", self.listen)))?;
        if self.work_dir.as_os_str().is_empty() {
            return Err(ConfigError::value("work_dir", "must be set"));
        }
        for (key, value) in [
            ("resources.cpus", self.resources.cpus),
            ("resources.mem_mb", self.resources.mem_mb),
            ("resources.disk_mb", self.resources.disk_mb),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(ConfigError::value(key, "must be a non-negative number"));
            }
        }
        parse_port_ranges(&self.resources.ports)?;
        parse_attributes(&self.attributes)?;
        Ok(())
    }
}

/// Parses `31000-32000,33000-33010` (single ports allowed: `8080`).
pub fn parse_port_ranges(text: &str) -> Result<Vec<Range>, ConfigError> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (begin, end) = part.split_once('-').unwrap_or((part, part));
        let parse = |v: &str| v.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let (Some(begin), Some(end)) = (parse(begin), parse(end)) else {
            return Err(ConfigError::value("resources.ports", format!("{part:?} is not a port or port range")));
        };
        if begin > end {
            return Err(ConfigError::value("resources.ports", format!("{part:?}: the range is reversed")));
        }
        ranges.push(Range { begin: u64::from(begin), end: u64::from(end) });
    }
    Ok(ranges)
}

/// Parses `rack:r1;zone:a`.
pub fn parse_attributes(text: &str) -> Result<Vec<Attribute>, ConfigError> {
    let mut attributes = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once(':') else {
            return Err(ConfigError::value("attributes", format!("{part:?} is not name:value")));
        };
        if name.trim().is_empty() {
            return Err(ConfigError::value("attributes", format!("{part:?} has an empty name")));
        }
        attributes.push(Attribute { name: name.trim().to_owned(), value: value.trim().to_owned() });
    }
    Ok(attributes)
}

impl marina_daemon::cli::ServiceConfig for Config {
    const SERVICE: &'static str = "agent";

    fn validate(&self) -> Result<(), ConfigError> {
        Config::validate(self)
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }

    fn listen(&self) -> &str {
        &self.listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_and_attributes_parse_with_clear_errors() {
        let ranges = parse_port_ranges("31000-32000, 8080").unwrap();
        assert_eq!(ranges, vec![Range { begin: 31000, end: 32000 }, Range { begin: 8080, end: 8080 }]);
        assert!(parse_port_ranges("9-1").unwrap_err().to_string().contains("reversed"));
        assert!(parse_port_ranges("a-b").unwrap_err().to_string().contains("resources.ports"));
        let attributes = parse_attributes("rack:r1; zone:eu-1").unwrap();
        assert_eq!(attributes[1], Attribute { name: "zone".into(), value: "eu-1".into() });
        assert!(parse_attributes("rack").unwrap_err().to_string().contains("`attributes`"));
        Config::default().validate().unwrap();
    }
}
