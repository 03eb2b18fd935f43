//! `marina-agent` configuration: defaults < TOML (`--config`) < `MARINA_AGENT_*` < flags.

use std::path::PathBuf;

use marina_coord_client::CoordUrl;
use marina_daemon::ServerLimits;
use marina_daemon::config::{ConfigError, check};
use marina_daemon::telemetry::LogConfig;
use marina_daemon::tls::TlsConfig;
use marina_proto::agent::v1::{Attribute, Range};
use marina_proto::checks::{MAX_CPUS, MAX_MEGABYTES, check_scalar};
use marina_proto::policy::ContainerPolicy;
use marina_runtime::LogRotation;
use serde::{Deserialize, Serialize};

pub const DEFAULT_PORT: u16 = 5051;

/// The most `task_logs.read_max_bytes` may be: the agent's gRPC responses are sized to hold
/// one read, and every client must accept a message that large.
pub const MAX_TASK_LOG_READ_BYTES: u64 = 64 * 1024 * 1024;

/// What a ReadTaskLog response holds besides the output (protobuf and gRPC framing), so the
/// server's encoding limit is set above the largest read by this much.
pub const TASK_LOG_RESPONSE_OVERHEAD_BYTES: u64 = 4096;

/// The largest `task_logs.max_bytes`: 1 TiB.
pub const MAX_TASK_LOG_FILE_BYTES: u64 = 1 << 40;

/// The longest `gc.delay_seconds`: ten years, far beyond any use, and short enough that no
/// clock arithmetic on it can overflow.
pub const MAX_GC_DELAY_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// A runtime an agent may run tasks with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// Every runtime that answers: Docker if an engine answers, else containerd if it
    /// answers, for image tasks; host processes for commands.
    #[default]
    Auto,
    Docker,
    Containerd,
    Process,
    /// No side effects: for scale tests only. Never chosen by `auto`.
    Sim,
}

impl RuntimeChoice {
    const ALL: [RuntimeChoice; 5] = [
        RuntimeChoice::Auto,
        RuntimeChoice::Docker,
        RuntimeChoice::Containerd,
        RuntimeChoice::Process,
        RuntimeChoice::Sim,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeChoice::Auto => "auto",
            RuntimeChoice::Docker => "docker",
            RuntimeChoice::Containerd => "containerd",
            RuntimeChoice::Process => "process",
            RuntimeChoice::Sim => "sim",
        }
    }

    fn runs_images(self) -> bool {
        matches!(self, RuntimeChoice::Docker | RuntimeChoice::Containerd)
    }
}

/// The runtimes an agent runs tasks with (`runtime`): one (`docker`), several
/// (`docker,process`: images in Docker, commands as host processes, as a Mesos agent with
/// `--containerizers=docker,mesos`), or `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtimes(pub Vec<RuntimeChoice>);

impl Default for Runtimes {
    fn default() -> Self {
        Runtimes(vec![RuntimeChoice::Auto])
    }
}

impl From<RuntimeChoice> for Runtimes {
    fn from(choice: RuntimeChoice) -> Self {
        Runtimes(vec![choice])
    }
}

impl std::fmt::Display for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|choice| choice.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

impl std::str::FromStr for Runtimes {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let choices = value
            .split(',')
            .map(|name| {
                let name = name.trim();
                RuntimeChoice::ALL.into_iter().find(|choice| choice.as_str() == name).ok_or_else(|| {
                    let names: Vec<&str> = RuntimeChoice::ALL.iter().map(|choice| choice.as_str()).collect();
                    format!("{name:?} is not a runtime (one of {}, or a comma-separated list)", names.join(", "))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Runtimes(choices))
    }
}

impl Serialize for Runtimes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Runtimes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

impl Runtimes {
    /// One image runtime at most (which of two would an image go to?), `auto` and `sim`
    /// alone, no runtime twice.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |reason: &str| Err(ConfigError::value("runtime", format!("{self}: {reason}")));
        let alone = [RuntimeChoice::Auto, RuntimeChoice::Sim];
        if self.0.is_empty() {
            return fail("names no runtime");
        }
        if self.0.len() > 1 && self.0.iter().any(|choice| alone.contains(choice)) {
            return fail("auto and sim stand alone");
        }
        if self.0.iter().filter(|choice| choice.runs_images()).count() > 1 {
            return fail("one image runtime per agent (docker or containerd)");
        }
        if self.0.iter().enumerate().any(|(i, choice)| self.0[..i].contains(choice)) {
            return fail("names a runtime twice");
        }
        Ok(())
    }
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
    /// What runs the tasks: `auto`, one runtime, or several (`docker,process`).
    pub runtime: Runtimes,
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
    pub task_logs: TaskLogsConfig,
    pub gc: GcConfig,
    /// Downloading apps' `fetch` URIs into their sandboxes.
    pub fetcher: FetcherConfig,
    /// What tasks may ask of this host beyond the default confinement (privileged, added
    /// capabilities, security options, sysctls, devices, host namespaces and volumes, root
    /// for process tasks), and who process tasks run as by default. Enforced at every launch.
    pub policy: ContainerPolicy,
    /// What the port bounds: concurrent requests, request timeout, gRPC message sizes (the
    /// largest answer is one task-log read of `task_logs.read_max_bytes`).
    pub server: ServerLimits,
    pub log: LogConfig,
    /// Mutual TLS: the cluster CA, this service's certificate and key (`marina certs`).
    pub tls: TlsConfig,
}

/// Tasks' output: how it is kept on disk and how much of it one read returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskLogsConfig {
    /// A task's `stdout` or `stderr` is rotated when it reaches this size (`stdout` →
    /// `stdout.1` → …): by the process runtime's supervisor, containerd's shim (through
    /// `marina-supervise`), or Docker's json-file driver. Default 10 MiB.
    pub max_bytes: u64,
    /// Rotated files kept per stream besides the current one, so a stream takes at most
    /// `(keep + 1) × max_bytes` of disk. Default 3 (40 MiB per stream by default).
    pub keep: u32,
    /// What ReadTaskLog returns when it asks for no particular amount (`tail_bytes` 0): the
    /// last this many bytes. Default 1 MiB, the tail an operator reads.
    pub read_default_bytes: u64,
    /// The most one ReadTaskLog returns, whatever it asks for (the agent's gRPC responses are
    /// sized to hold it, so clients must accept messages this large; tonic accepts 4 MiB by
    /// default). Default 16 MiB, at most 64 MiB.
    pub read_max_bytes: u64,
}

/// Removal of finished tasks' sandboxes (Mesos' `--gc_delay`, `--gc_disk_headroom`,
/// `--disk_watch_interval`). A sandbox may go once its task is terminal and its terminal
/// update was acknowledged (or the agent does not know the task), after it has not been
/// written to for `delay × max(0, 1 − disk_headroom − disk usage)`: a week on an empty disk,
/// sooner as the disk fills, at once when it is more than `1 − disk_headroom` full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// How long a finished task's sandbox is kept on an empty disk. Default 604800 (a week,
    /// Mesos' default).
    pub delay_seconds: u64,
    /// The fraction of the disk kept free: at this much free space or less, sandboxes go as
    /// soon as they may. Default 0.1 (Mesos').
    pub disk_headroom: f64,
    /// How often the disk is looked at and old sandboxes removed. Default 60000 (Mesos' one
    /// minute).
    pub disk_watch_interval_ms: u64,
}

/// Mesos' fetcher: what tasks' `fetch` URIs may be and how they are downloaded and cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetcherConfig {
    /// Where cached downloads are kept (one file per URI). Default `<work_dir>/fetch-cache`.
    pub cache_dir: Option<PathBuf>,
    /// The most the cache holds; the least recently used downloads go first. Default 2048.
    pub cache_max_mb: u64,
    /// The longest one URI's download may take, connecting included. Default 300.
    pub timeout_seconds: u64,
    /// The largest download. Default 1024.
    pub max_download_mb: u64,
    /// The most one archive may unpack to (a small archive can hold a great deal). Default
    /// 4096.
    pub max_extracted_mb: u64,
    /// Directories `file://` URIs may name files in. Default none: a task may not copy the
    /// agent host's files into its sandbox unless the operator says where from.
    pub file_roots: Vec<PathBuf>,
    /// PEM certificates trusted for `https` besides the host's own bundle (for an internal
    /// artifact server).
    pub ca_file: Option<PathBuf>,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            cache_max_mb: 2048,
            timeout_seconds: 300,
            max_download_mb: 1024,
            max_extracted_mb: 4096,
            file_roots: Vec::new(),
            ca_file: None,
        }
    }
}

impl FetcherConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.timeout_seconds) {
            return Err(ConfigError::value("fetcher.timeout_seconds", "must be between 1 and 86400"));
        }
        let max_mb = (MAX_MEGABYTES as u64).min(u64::MAX >> 20);
        for (key, value) in [
            ("fetcher.cache_max_mb", self.cache_max_mb),
            ("fetcher.max_download_mb", self.max_download_mb),
            ("fetcher.max_extracted_mb", self.max_extracted_mb),
        ] {
            if value > max_mb {
                return Err(ConfigError::value(key, format!("must be at most {max_mb}")));
            }
        }
        for root in &self.file_roots {
            if !root.is_absolute() {
                return Err(ConfigError::value("fetcher.file_roots", format!("{}: must be absolute", root.display())));
            }
        }
        Ok(())
    }
}

impl TaskLogsConfig {
    pub fn rotation(&self) -> LogRotation {
        LogRotation { max_bytes: self.max_bytes, keep: self.keep }
    }

    /// How many bytes a ReadTaskLog asking for `tail_bytes` gets at most.
    pub fn read_limit(&self, tail_bytes: u64) -> u64 {
        if tail_bytes == 0 { self.read_default_bytes } else { tail_bytes.min(self.read_max_bytes) }
    }
}

impl Default for TaskLogsConfig {
    fn default() -> Self {
        Self {
            max_bytes: LogRotation::DEFAULT_MAX_BYTES,
            keep: LogRotation::DEFAULT_KEEP,
            read_default_bytes: 1024 * 1024,
            read_max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        Self { delay_seconds: 7 * 24 * 3600, disk_headroom: 0.1, disk_watch_interval_ms: 60_000 }
    }
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
            runtime: Runtimes::default(),
            docker: DockerConfig::default(),
            containerd: ContainerdConfig::default(),
            resources: ResourcesConfig::default(),
            attributes: String::new(),
            kill_grace_seconds: 5,
            update_retry_ms: 2_000,
            task_logs: TaskLogsConfig::default(),
            gc: GcConfig::default(),
            fetcher: FetcherConfig::default(),
            policy: ContainerPolicy::default(),
            server: ServerLimits::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
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
        self.tls.validate()?;
        self.runtime.validate()?;
        check::listen(&self.listen)?;
        if let Some(advertise) = &self.advertise {
            check::address("advertise", advertise)?;
        }
        check::dir("work_dir", &self.work_dir)?;
        if self.policy.default_user.trim().is_empty() {
            return Err(ConfigError::value(
                "policy.default_user",
                "must name a user (tasks run as it when the agent is root)",
            ));
        }
        // The bounds every door checks (the master refuses an agent past them).
        for (key, value, max) in [
            ("resources.cpus", self.resources.cpus, MAX_CPUS),
            ("resources.mem_mb", self.resources.mem_mb, MAX_MEGABYTES),
            ("resources.disk_mb", self.resources.disk_mb, MAX_MEGABYTES),
        ] {
            if let Some(value) = value {
                check_scalar("the value", value, max).map_err(|problem| ConfigError::value(key, problem))?;
            }
        }
        parse_port_ranges(&self.resources.ports)?;
        parse_attributes(&self.attributes)?;
        self.task_logs.validate()?;
        self.gc.validate()?;
        self.fetcher.validate()?;
        self.server.validate()?;
        let largest_answer = self.task_logs.read_max_bytes.saturating_add(TASK_LOG_RESPONSE_OVERHEAD_BYTES);
        if (self.server.max_encoding_message_bytes as u64) < largest_answer {
            return Err(ConfigError::value(
                "server.max_encoding_message_bytes",
                format!(
                    "must hold one task-log read: at least task_logs.read_max_bytes ({}) + {TASK_LOG_RESPONSE_OVERHEAD_BYTES}",
                    self.task_logs.read_max_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl TaskLogsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // Smaller files would rotate at every line; larger ones are past any disk (and
        // Docker's `max-size`, an int64).
        if !(1024..=MAX_TASK_LOG_FILE_BYTES).contains(&self.max_bytes) {
            return Err(ConfigError::value(
                "task_logs.max_bytes",
                format!("must be between 1024 and {MAX_TASK_LOG_FILE_BYTES}"),
            ));
        }
        if self.keep > 100 {
            return Err(ConfigError::value("task_logs.keep", "must be at most 100"));
        }
        if !(1..=MAX_TASK_LOG_READ_BYTES).contains(&self.read_max_bytes) {
            return Err(ConfigError::value(
                "task_logs.read_max_bytes",
                format!("must be between 1 and {MAX_TASK_LOG_READ_BYTES}"),
            ));
        }
        if !(1..=self.read_max_bytes).contains(&self.read_default_bytes) {
            return Err(ConfigError::value(
                "task_logs.read_default_bytes",
                format!("must be between 1 and task_logs.read_max_bytes ({})", self.read_max_bytes),
            ));
        }
        Ok(())
    }
}

impl GcConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.delay_seconds > MAX_GC_DELAY_SECONDS {
            return Err(ConfigError::value("gc.delay_seconds", format!("must be at most {MAX_GC_DELAY_SECONDS}")));
        }
        if !self.disk_headroom.is_finite() || !(0.0..=1.0).contains(&self.disk_headroom) {
            return Err(ConfigError::value("gc.disk_headroom", "must be a fraction between 0 and 1"));
        }
        // Below 100 ms the watch would be busy work; above a day, the disk fills unwatched.
        if !(100..=86_400_000).contains(&self.disk_watch_interval_ms) {
            return Err(ConfigError::value("gc.disk_watch_interval_ms", "must be between 100 and 86400000"));
        }
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

    fn tls(&self) -> &TlsConfig {
        &self.tls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_are_one_several_or_auto() {
        let parse = |value: &str| value.parse::<Runtimes>();
        assert_eq!(parse("docker,process").unwrap().0, [RuntimeChoice::Docker, RuntimeChoice::Process]);
        assert_eq!(parse("auto").unwrap().to_string(), "auto");
        assert!(parse("docker,podman").unwrap_err().contains("\"podman\" is not a runtime"));
        for (bad, why) in [
            ("docker,containerd", "one image runtime per agent"),
            ("auto,process", "stand alone"),
            ("process,process", "twice"),
        ] {
            let error = parse(bad).unwrap().validate().unwrap_err().to_string();
            assert!(error.contains("`runtime`") && error.contains(why), "{bad}: {error}");
        }
    }

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

    #[test]
    fn task_log_and_gc_settings_are_bounded() {
        let invalid = |tune: fn(&mut Config), key: &str| {
            let mut config = Config::default();
            tune(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        };
        invalid(|c| c.task_logs.max_bytes = 0, "task_logs.max_bytes");
        invalid(|c| c.task_logs.max_bytes = u64::MAX, "task_logs.max_bytes");
        invalid(|c| c.resources.cpus = Some(f64::INFINITY), "resources.cpus");
        invalid(|c| c.resources.mem_mb = Some(1e300), "resources.mem_mb");
        invalid(|c| c.task_logs.keep = 1000, "task_logs.keep");
        invalid(|c| c.task_logs.read_max_bytes = 0, "task_logs.read_max_bytes");
        invalid(|c| c.task_logs.read_max_bytes = u64::MAX, "task_logs.read_max_bytes");
        invalid(|c| c.task_logs.read_default_bytes = 32 * 1024 * 1024, "task_logs.read_default_bytes");
        invalid(|c| c.task_logs.read_default_bytes = 0, "task_logs.read_default_bytes");
        invalid(|c| c.gc.delay_seconds = u64::MAX, "gc.delay_seconds");
        invalid(|c| c.gc.disk_headroom = f64::NAN, "gc.disk_headroom");
        invalid(|c| c.gc.disk_headroom = 1.5, "gc.disk_headroom");
        invalid(|c| c.gc.disk_watch_interval_ms = 0, "gc.disk_watch_interval_ms");
        invalid(|c| c.fetcher.timeout_seconds = 0, "fetcher.timeout_seconds");
        invalid(|c| c.fetcher.max_download_mb = u64::MAX, "fetcher.max_download_mb");
        invalid(|c| c.fetcher.file_roots = vec!["relative".into()], "fetcher.file_roots");

        let logs = TaskLogsConfig::default();
        assert_eq!(logs.read_limit(0), 1024 * 1024, "0 asks for the default");
        assert_eq!(logs.read_limit(10), 10);
        assert_eq!(logs.read_limit(u64::MAX), 16 * 1024 * 1024, "capped");
    }
}
