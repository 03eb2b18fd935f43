//! `marina-gateway` configuration: defaults < TOML (`--config`) < `MARINA_GATEWAY_*` < flags.

use std::path::PathBuf;

use marina_coord_client::CoordUrl;

use crate::admission::AdmissionLimits;
use crate::app::AppLimits;
use crate::auth::AuthConfig;
use marina_daemon::ServerLimits;
use marina_daemon::config::{ConfigError, check};
use marina_daemon::telemetry::LogConfig;
use marina_daemon::tls::TlsConfig;
use marina_proto::policy::ContainerPolicy;
use serde::{Deserialize, Serialize};

pub const DEFAULT_PORT: u16 = 8080;

/// Coord's default `limits.max_path_bytes`, which the gateway's paths must fit.
const COORD_MAX_PATH_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// REST, gRPC and the web UI, on one port.
    pub listen: String,
    /// The address other gateways proxy to and `/v2/leader` reports. Default: `listen`.
    pub advertise: Option<String>,
    pub coord: CoordUrl,
    /// Local state: this gateway's stable id.
    pub work_dir: PathBuf,
    /// The framework name the gateway registers with the master (Marathon's is "marathon").
    pub framework_name: String,
    /// Coord session backing the gateway's leadership.
    pub session_ttl_ms: u64,
    pub session_disconnect_grace_ms: u64,
    /// How often the leader reconciles all its tasks with the master (also on every new
    /// subscription). Marathon's default: each round costs two answers per task.
    pub reconcile_interval_ms: u64,
    /// How often each app's desired and actual state are compared.
    pub converge_interval_ms: u64,
    /// A task not RUNNING this long after launch is killed and replaced.
    pub task_launch_timeout_ms: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// What one app may ask for: `max_instances`, `min_cpus`, `min_mem_mb`.
    pub limits: AppLimits,
    /// What containers may ask of their hosts beyond the default confinement (the agents'
    /// `policy`, so that an app no agent would run is refused with a 422).
    pub policy: ContainerPolicy,
    /// Who may call the API: `http_credentials` (`user:password`, Marathon's
    /// `--http_credentials`) and bearer `tokens` with a role. None: anyone who reaches the
    /// port (a gateway on loopback).
    pub auth: AuthConfig,
    /// What the port bounds: concurrent requests, request timeout, gRPC message sizes.
    pub server: ServerLimits,
    /// Backpressure on the apps service's writes (changes of apps, groups, deployments;
    /// task kills; REST and gRPC alike): `max_inflight_writes` (16) run at once,
    /// `max_queued_writes` (256) more wait their turn for at most `max_queue_wait_ms`
    /// (10 s); beyond that a write is refused at once, unchanged, with HTTP 429 and
    /// `Retry-After` (gRPC `RESOURCE_EXHAUSTED` with `retry-after`). Reads are never held.
    /// Must fit inside `server`: in-flight plus queued below `max_concurrent_requests`,
    /// the wait below `request_timeout_ms`.
    pub admission: AdmissionLimits,
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
            work_dir: PathBuf::from("/var/lib/marina/gateway"),
            framework_name: "marathon".into(),
            session_ttl_ms: 5_000,
            session_disconnect_grace_ms: 300,
            reconcile_interval_ms: 600_000,
            converge_interval_ms: 200,
            task_launch_timeout_ms: 300_000,
            max_body_bytes: 1 << 20,
            limits: AppLimits::default(),
            policy: ContainerPolicy::default(),
            auth: AuthConfig::default(),
            server: ServerLimits::default(),
            admission: AdmissionLimits::default(),
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
        if self.framework_name.trim().is_empty() {
            return Err(ConfigError::value("framework_name", "must not be empty"));
        }
        check::session(self.session_ttl_ms, self.session_disconnect_grace_ms)?;
        check::positive(&[
            ("reconcile_interval_ms", self.reconcile_interval_ms),
            ("converge_interval_ms", self.converge_interval_ms),
            ("task_launch_timeout_ms", self.task_launch_timeout_ms),
        ])?;
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::value("max_body_bytes", "must be at least 1024"));
        }
        self.server.validate()?;
        if let Some((key, problem)) = self.admission.problem(&self.server) {
            return Err(ConfigError::value(key, problem));
        }
        if let Some((key, problem)) = self.limits.problem() {
            return Err(ConfigError::value(key, problem));
        }
        if let Some((key, problem)) = self.auth.problem() {
            return Err(ConfigError::value(key, problem));
        }
        // The longest coord path the gateway writes: an instance record named by a task id
        // of the longest app id, or a version of that app. Checked here, once, rather than
        // found out as a refused write that stops every launch.
        let longest = crate::store::LONGEST_PATH_BELOW_ROOT + self.coord.root.len();
        if longest > COORD_MAX_PATH_BYTES {
            return Err(ConfigError::value(
                "coord",
                format!(
                    "the root {:?} is too long: paths under it would reach {longest} bytes, beyond coord's {COORD_MAX_PATH_BYTES}",
                    self.coord.root
                ),
            ));
        }
        Ok(())
    }
}

impl marina_daemon::cli::ServiceConfig for Config {
    const SERVICE: &'static str = "gateway";

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

    /// Its callers need no certificate: without credentials, anyone could change apps.
    fn open_to_anyone(&self) -> Option<&'static str> {
        self.auth.is_open().then_some("with no credentials configured (auth.http_credentials, auth.tokens)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_admission_is_checked_against_the_port() {
        Config::default().validate().expect("the defaults are valid");
        let mut config = Config::default();
        config.server.request_timeout_ms = 5_000;
        let error = config.validate().expect_err("a queue wait beyond the request timeout").to_string();
        assert!(error.contains("admission.max_queue_wait_ms") && error.contains("5000"), "{error}");
        let mut config = Config::default();
        config.admission.max_inflight_writes = 0;
        let error = config.validate().expect_err("no write could run").to_string();
        assert!(error.contains("admission.max_inflight_writes"), "{error}");
    }

    #[test]
    fn admission_reads_with_defaults_for_what_is_left_out() {
        let config: Config =
            serde_json::from_value(serde_json::json!({ "admission": { "max_queued_writes": 8 } })).unwrap();
        assert_eq!(config.admission, AdmissionLimits { max_queued_writes: 8, ..AdmissionLimits::default() });
    }
}
