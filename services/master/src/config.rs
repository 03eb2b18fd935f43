//! `marina-master` configuration: defaults < TOML (`--config`) < `MARINA_MASTER_*` < flags.

use std::path::PathBuf;
use std::time::Duration;

use marina_coord_client::CoordUrl;
use marina_daemon::ServerLimits;
use marina_daemon::config::{ConfigError, check};
use marina_daemon::telemetry::LogConfig;
use marina_daemon::tls::TlsConfig;
use serde::{Deserialize, Serialize};

pub const DEFAULT_PORT: u16 = 5050;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where gRPC and HTTP are served.
    pub listen: String,
    /// The address agents, schedulers and redirects use. Default: `listen`.
    pub advertise: Option<String>,
    /// The quorum.
    pub coord: CoordUrl,
    /// Local state: this master's stable id.
    pub work_dir: PathBuf,
    /// The coord session backing the candidacy: a leader frozen or cut off for this long
    /// loses leadership.
    pub session_ttl_ms: u64,
    /// A killed leader's session ends this long after its connection closes.
    pub session_disconnect_grace_ms: u64,
    /// After a failover, how long registered agents have to re-register before they are
    /// marked unreachable (and their tasks reported `TASK_UNREACHABLE`).
    pub agent_reregister_timeout_ms: u64,
    /// How often agents heartbeat.
    pub agent_ping_interval_ms: u64,
    /// Missed heartbeats before an agent is unreachable: with the interval, 16 s by default.
    /// Busy agents were measured sending heartbeats nearly 4 s late (the placement benchmark:
    /// a thousand agents on two saturated cores), so 5 s marked healthy agents unreachable
    /// under load; 16 s leaves four times that, still well below Kubernetes' 40 s and
    /// Mesos' 75 s. (The gateway, as Marathon, replaces an unreachable task only after its
    /// app's `unreachableStrategy.inactiveAfterSeconds`, 5 minutes by default.)
    pub max_agent_ping_timeouts: u32,
    /// Period of the allocation round.
    pub allocation_interval_ms: u64,
    /// An offer not accepted or declined within this time is rescinded.
    pub offer_timeout_ms: u64,
    /// Refuse filter applied to resources left over by an accept or decline without one.
    pub default_refuse_seconds: f64,
    /// How often schedulers receive a heartbeat event.
    pub scheduler_heartbeat_ms: u64,
    /// Events queued for a scheduler that has not read them yet. More ends its subscription
    /// (it subscribes again and reconciles): nothing is dropped, and a scheduler that stops
    /// reading cannot take the master's memory. The default holds a reconciliation of
    /// 200,000 tasks with updates still coming; the queue takes memory only as it fills.
    pub scheduler_queue_events: usize,
    /// What the port bounds: concurrent requests, request timeout, gRPC message sizes.
    pub server: ServerLimits,
    pub log: LogConfig,
    /// Mutual TLS: the cluster CA, this service's certificate and key (`marina certs`).
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            advertise: None,
            coord: "coord://127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183/marina".parse().expect("valid default URL"),
            work_dir: PathBuf::from("/var/lib/marina/master"),
            session_ttl_ms: 5_000,
            session_disconnect_grace_ms: 300,
            agent_reregister_timeout_ms: 60_000,
            agent_ping_interval_ms: 2_000,
            max_agent_ping_timeouts: 8,
            allocation_interval_ms: 100,
            offer_timeout_ms: 30_000,
            default_refuse_seconds: 5.0,
            scheduler_heartbeat_ms: 5_000,
            scheduler_queue_events: 262_144,
            server: ServerLimits::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        check::listen(&self.listen)?;
        if let Some(advertise) = &self.advertise {
            check::address("advertise", advertise)?;
        }
        check::dir("work_dir", &self.work_dir)?;
        self.server.validate()?;
        check::session(self.session_ttl_ms, self.session_disconnect_grace_ms)?;
        check::positive(&[
            ("agent_reregister_timeout_ms", self.agent_reregister_timeout_ms),
            ("agent_ping_interval_ms", self.agent_ping_interval_ms),
            ("allocation_interval_ms", self.allocation_interval_ms),
            ("offer_timeout_ms", self.offer_timeout_ms),
            ("scheduler_heartbeat_ms", self.scheduler_heartbeat_ms),
            ("scheduler_queue_events", self.scheduler_queue_events as u64),
            ("max_agent_ping_timeouts", u64::from(self.max_agent_ping_timeouts)),
        ])?;
        if !self.default_refuse_seconds.is_finite() || self.default_refuse_seconds < 0.0 {
            return Err(ConfigError::value("default_refuse_seconds", "must be a non-negative number"));
        }
        Ok(())
    }

    pub fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

impl marina_daemon::cli::ServiceConfig for Config {
    const SERVICE: &'static str = "master";

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
