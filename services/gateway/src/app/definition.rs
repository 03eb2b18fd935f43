//! The app definition: Marathon's v2 app, as read (leniently), stored and written.
//!
//! Written JSON is Marathon 1.4's shape, which clients of every Marathon era read: canonical
//! fields (`portDefinitions`, `fetch`, `container.docker.image`, `container.portMappings`,
//! `version`, `versionInfo`) alongside the legacy ones derived from them (`ports`, `uris`,
//! `container.docker.portMappings`). Reading that JSON back gives the same definition, so
//! it is also the stored form.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::constraints::Constraint;
use super::decode;
use super::path::PathId;
use super::time::Timestamp;

pub const DEFAULT_INSTANCES: i64 = 1;
pub const DEFAULT_CPUS: f64 = 1.0;
pub const DEFAULT_MEM: f64 = 128.0;
pub const DEFAULT_DISK: f64 = 0.0;
pub const DEFAULT_GPUS: i64 = 0;
pub const DEFAULT_BACKOFF_SECONDS: i64 = 1;
pub const DEFAULT_BACKOFF_FACTOR: f64 = 1.15;
/// Marathon 1.x: one hour (`AppDefinition.DefaultMaxLaunchDelay`, app.raml `default: 3600`).
pub const DEFAULT_MAX_LAUNCH_DELAY_SECONDS: i64 = 3600;
/// Marathon 1.x: `UnreachableEnabled.DefaultInactiveAfter` (5 minutes).
pub const DEFAULT_INACTIVE_AFTER_SECONDS: i64 = 300;
/// Marathon 1.x: `UnreachableEnabled.DefaultExpungeAfter` (10 minutes).
pub const DEFAULT_EXPUNGE_AFTER_SECONDS: i64 = 600;
/// The label that marks a single-instance app (at most one instance, never two at once).
pub const LABEL_SINGLE_INSTANCE_APP: &str = "MARATHON_SINGLE_INSTANCE_APP";

/// A Marathon v2 app. Built by [`super::parse_app`] (read, normalized, validated) or
/// [`AppDefinition::new`]; every field holds its Marathon default when the JSON left it out.
#[derive(Debug, Clone, PartialEq)]
pub struct AppDefinition {
    pub id: PathId,
    /// Run with `/bin/sh -c`. An empty `cmd` reads as none.
    pub cmd: Option<String>,
    /// Run without a shell (or as the image entrypoint's arguments). Empty reads as none.
    pub args: Option<Vec<String>>,
    pub user: Option<String>,
    pub env: BTreeMap<String, EnvValue>,
    /// Signed, so that a negative count reaches validation and is reported at `/instances`.
    pub instances: i64,
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    pub gpus: i64,
    /// Marathon's executor selector (`""`, `//cmd` or a path); stored, the agent decides.
    pub executor: String,
    pub constraints: Vec<Constraint>,
    /// What to download into the sandbox; `uris` are read into this.
    pub fetch: Vec<FetchUri>,
    pub store_urls: Vec<String>,
    /// Host ports (host networking); the legacy `ports` are read into this.
    pub port_definitions: Vec<PortDefinition>,
    pub require_ports: bool,
    pub backoff_seconds: i64,
    pub backoff_factor: f64,
    pub max_launch_delay_seconds: i64,
    pub container: Option<Container>,
    pub health_checks: Vec<HealthCheck>,
    pub readiness_checks: Vec<ReadinessCheck>,
    /// Absolute; relative ones are resolved against the app's parent group.
    pub dependencies: Vec<PathId>,
    pub upgrade_strategy: UpgradeStrategy,
    pub labels: BTreeMap<String, String>,
    /// `None`: any role. An empty list reads as `None`.
    pub accepted_resource_roles: Option<Vec<String>>,
    /// Set by [`super::stamp`] when the gateway stores the app.
    pub version: Option<Timestamp>,
    pub version_info: Option<VersionInfo>,
    pub kill_selection: KillSelection,
    pub unreachable_strategy: UnreachableStrategy,
    pub task_kill_grace_period_seconds: Option<i64>,
    /// Marathon 1.5's networks, stored as given (empty: unspecified, i.e. host or
    /// `container.docker.network`).
    pub networks: Vec<Network>,
    /// Marathon 1.x's deprecated IP-per-task request; accepted and stored only.
    pub ip_address: Option<Value>,
    /// Resident-task settings; accepted and stored only.
    pub residency: Option<Value>,
    /// Secret definitions (`{"name": {"source": "..."}}`); accepted and stored only.
    pub secrets: BTreeMap<String, Value>,
}

/// An environment variable: a value, or a reference to a secret (stored, not resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    Value(String),
    Secret { secret: String },
}

/// One artifact to fetch. `uris` entries become `{uri, extract: <is archive>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchUri {
    pub uri: String,
    pub extract: bool,
    pub executable: bool,
    pub cache: bool,
    /// The copy's name in the sandbox (Mesos' `output_file`); `destPath` is read as this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
}

impl FetchUri {
    /// A `uris` entry: extracted if it names an archive, as Marathon does.
    pub fn from_uri(uri: String) -> Self {
        const ARCHIVES: [&str; 7] = [".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz", ".zip"];
        let extract = ARCHIVES.iter().any(|ext| uri.ends_with(ext));
        FetchUri { uri, extract, executable: false, cache: false, output_file: None }
    }
}

/// A port protocol: `tcp`, `udp`, or both (written `udp,tcp`; `tcp,udp` is read too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "udp")]
    Udp,
    #[serde(rename = "udp,tcp")]
    UdpTcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortDefinition {
    /// 0: any free port.
    pub port: u16,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl PortDefinition {
    pub fn new(port: u16) -> Self {
        PortDefinition { port, protocol: Protocol::Tcp, name: None, labels: BTreeMap::new() }
    }
}

/// How the app's tasks are containerized, as Marathon says it.
///
/// `DOCKER` runs the image on the agents' Docker runtime. `MESOS` with a `docker.image`
/// (Marathon's "universal containerizer": an image run without the Docker daemon) runs it on
/// the agents' containerd runtime; `MESOS` without one is a command. Marina once wrote the
/// containerd choice `CONTAINERD`, which Marathon's clients cannot parse: it is still read,
/// as `MESOS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerType {
    Docker,
    Mesos,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Written `type`.
    pub kind: ContainerType,
    pub docker: Option<DockerContainer>,
    /// An AppC image (Mesos containerizer); accepted and stored only.
    pub appc: Option<Value>,
    /// Volumes, stored as given.
    pub volumes: Vec<Value>,
    /// `container.portMappings`, or else `container.docker.portMappings` (read into this).
    /// (Marathon 0.x's `container.options`, `docker run` options, are read into
    /// `docker.parameters`, as Marathon 1.x has them.)
    pub port_mappings: Option<Vec<PortMapping>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DockerContainer {
    /// Without any `docker://` scheme.
    pub image: String,
    pub network: Option<DockerNetwork>,
    pub privileged: bool,
    pub parameters: Vec<DockerParameter>,
    pub force_pull_image: bool,
    /// Registry credential (Mesos containerizer); accepted and stored only.
    pub credential: Option<Value>,
}

impl DockerContainer {
    pub fn new(image: impl Into<String>) -> Self {
        DockerContainer {
            image: image.into(),
            network: None,
            privileged: false,
            parameters: Vec::new(),
            force_pull_image: false,
            credential: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DockerNetwork {
    Bridge,
    Host,
    None,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerParameter {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// 0: the same as the host port.
    pub container_port: u16,
    /// 0: any free port. `None` (container networks only): no host port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    pub service_port: u16,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthCheckProtocol {
    Http,
    Https,
    Tcp,
    Command,
    MesosHttp,
    MesosHttps,
    MesosTcp,
}

impl HealthCheckProtocol {
    /// Checks Marathon runs itself (port-indexed); the others run next to the task.
    pub fn is_marathon_check(self) -> bool {
        matches!(self, HealthCheckProtocol::Http | HealthCheckProtocol::Https | HealthCheckProtocol::Tcp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum IpProtocol {
    IPv4,
    IPv6,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub protocol: HealthCheckProtocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Index into the app's ports (port mappings if any, else port definitions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_index: Option<u32>,
    /// A fixed port, instead of `port_index`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// For `COMMAND` checks; a check with a command is a `COMMAND` check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandCheck>,
    pub grace_period_seconds: u32,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    pub max_consecutive_failures: u32,
    pub delay_seconds: u32,
    pub ignore_http1xx: bool,
    pub ip_protocol: IpProtocol,
}

impl HealthCheck {
    /// Marathon's defaults: HTTP, grace 300 s, every 60 s, timeout 20 s, 3 failures, delay 15 s.
    pub fn new(protocol: HealthCheckProtocol) -> Self {
        HealthCheck {
            protocol,
            path: None,
            port_index: None,
            port: None,
            command: None,
            grace_period_seconds: 300,
            interval_seconds: 60,
            timeout_seconds: 20,
            max_consecutive_failures: 3,
            delay_seconds: 15,
            ignore_http1xx: false,
            ip_protocol: IpProtocol::IPv4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandCheck {
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HttpScheme {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessCheck {
    pub name: String,
    pub protocol: HttpScheme,
    pub path: String,
    /// A port name from the app's port definitions or mappings.
    pub port_name: String,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    pub http_status_codes_for_ready: Vec<u16>,
    pub preserve_last_response: bool,
}

impl Default for ReadinessCheck {
    /// Marathon's defaults.
    fn default() -> Self {
        ReadinessCheck {
            name: "readinessCheck".to_owned(),
            protocol: HttpScheme::Http,
            path: "/".to_owned(),
            port_name: "http-api".to_owned(),
            interval_seconds: 30,
            timeout_seconds: 10,
            http_status_codes_for_ready: vec![200],
            preserve_last_response: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStrategy {
    /// Fraction of `instances` kept healthy during an upgrade, 0 to 1.
    pub minimum_health_capacity: f64,
    /// Fraction of `instances` started beyond `instances` during an upgrade, 0 to 1.
    pub maximum_over_capacity: f64,
}

impl Default for UpgradeStrategy {
    fn default() -> Self {
        UpgradeStrategy { minimum_health_capacity: 1.0, maximum_over_capacity: 1.0 }
    }
}

/// Which instances go first when scaling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KillSelection {
    #[default]
    YoungestFirst,
    OldestFirst,
}

/// What to do with instances on unreachable agents: written `"disabled"` or as the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnreachableStrategy {
    Disabled,
    Enabled {
        /// Replace an instance unreachable this long (seconds).
        inactive_after_seconds: i64,
        /// Forget (and kill if it returns) an instance unreachable this long (seconds).
        expunge_after_seconds: i64,
    },
}

impl Default for UnreachableStrategy {
    fn default() -> Self {
        UnreachableStrategy::Enabled {
            inactive_after_seconds: DEFAULT_INACTIVE_AFTER_SECONDS,
            expunge_after_seconds: DEFAULT_EXPUNGE_AFTER_SECONDS,
        }
    }
}

impl Serialize for UnreachableStrategy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            UnreachableStrategy::Disabled => serializer.serialize_str("disabled"),
            UnreachableStrategy::Enabled { inactive_after_seconds, expunge_after_seconds } => json!({
                "inactiveAfterSeconds": inactive_after_seconds,
                "expungeAfterSeconds": expunge_after_seconds,
            })
            .serialize(serializer),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The last change of any kind (scale, restart, or configuration).
    pub last_scaling_at: Timestamp,
    /// The last change of configuration (not just `instances`).
    pub last_config_change_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum NetworkMode {
    #[serde(rename = "container")]
    Container,
    #[serde(rename = "container/bridge")]
    ContainerBridge,
    #[serde(rename = "host")]
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub mode: NetworkMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl AppDefinition {
    /// An app with every Marathon default, no command and no container (so not yet valid).
    pub fn new(id: PathId) -> Self {
        AppDefinition {
            id,
            cmd: None,
            args: None,
            user: None,
            env: BTreeMap::new(),
            instances: DEFAULT_INSTANCES,
            cpus: DEFAULT_CPUS,
            mem: DEFAULT_MEM,
            disk: DEFAULT_DISK,
            gpus: DEFAULT_GPUS,
            executor: String::new(),
            constraints: Vec::new(),
            fetch: Vec::new(),
            store_urls: Vec::new(),
            port_definitions: vec![PortDefinition::new(0)],
            require_ports: false,
            backoff_seconds: DEFAULT_BACKOFF_SECONDS,
            backoff_factor: DEFAULT_BACKOFF_FACTOR,
            max_launch_delay_seconds: DEFAULT_MAX_LAUNCH_DELAY_SECONDS,
            container: None,
            health_checks: Vec::new(),
            readiness_checks: Vec::new(),
            dependencies: Vec::new(),
            upgrade_strategy: UpgradeStrategy::default(),
            labels: BTreeMap::new(),
            accepted_resource_roles: None,
            version: None,
            version_info: None,
            kill_selection: KillSelection::default(),
            unreachable_strategy: UnreachableStrategy::default(),
            task_kill_grace_period_seconds: None,
            networks: Vec::new(),
            ip_address: None,
            residency: None,
            secrets: BTreeMap::new(),
        }
    }

    /// The container image, if the app runs one.
    pub fn image(&self) -> Option<&str> {
        self.container.as_ref()?.docker.as_ref().map(|d| d.image.as_str())
    }

    /// True unless the app asks for bridge or container networking (via `networks` or
    /// `container.docker.network`); only host-networked apps use `portDefinitions`.
    pub fn is_host_networked(&self) -> bool {
        let docker_network = self.container.as_ref().and_then(|c| c.docker.as_ref()).and_then(|d| d.network);
        // Marathon 1.4's `ipAddress` asks for IP-per-task, as a container network does.
        if matches!(docker_network, Some(DockerNetwork::Bridge | DockerNetwork::User)) || self.ip_address.is_some() {
            return false;
        }
        self.networks.iter().all(|n| n.mode == NetworkMode::Host)
    }

    /// The container's port mappings, if it has any (then they are the app's ports).
    pub fn port_mappings(&self) -> Option<&[PortMapping]> {
        self.container.as_ref()?.port_mappings.as_deref().filter(|m| !m.is_empty())
    }

    /// How many ports the app's tasks get; health checks' `portIndex` address these.
    pub fn port_count(&self) -> usize {
        self.port_mappings().map_or(self.port_definitions.len(), <[PortMapping]>::len)
    }

    /// The app's port names, in port order (`None` for unnamed ports).
    pub fn port_names(&self) -> Vec<Option<&str>> {
        match self.port_mappings() {
            Some(mappings) => mappings.iter().map(|m| m.name.as_deref()).collect(),
            None => self.port_definitions.iter().map(|p| p.name.as_deref()).collect(),
        }
    }

    /// Marathon's JSON for this app (see the module documentation for its shape).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        let mut put = |key: &str, value: Value| {
            out.insert(key.to_owned(), value);
        };
        put("id", json!(self.id));
        if let Some(cmd) = &self.cmd {
            put("cmd", json!(cmd));
        }
        if let Some(args) = &self.args {
            put("args", json!(args));
        }
        if let Some(user) = &self.user {
            put("user", json!(user));
        }
        put("env", json!(self.env));
        put("instances", json!(self.instances));
        put("cpus", json!(self.cpus));
        put("mem", json!(self.mem));
        put("disk", json!(self.disk));
        put("gpus", json!(self.gpus));
        put("executor", json!(self.executor));
        put("constraints", json!(self.constraints));
        put("uris", json!(self.fetch.iter().map(|f| &f.uri).collect::<Vec<_>>()));
        put("fetch", json!(self.fetch));
        put("storeUrls", json!(self.store_urls));
        put("ports", json!(self.port_definitions.iter().map(|p| p.port).collect::<Vec<_>>()));
        put("portDefinitions", json!(self.port_definitions));
        put("requirePorts", json!(self.require_ports));
        put("backoffSeconds", json!(self.backoff_seconds));
        put("backoffFactor", json!(self.backoff_factor));
        put("maxLaunchDelaySeconds", json!(self.max_launch_delay_seconds));
        if let Some(container) = &self.container {
            put("container", container.to_json());
        }
        put("healthChecks", json!(self.health_checks));
        put("readinessChecks", json!(self.readiness_checks));
        put("dependencies", json!(self.dependencies));
        put("upgradeStrategy", json!(self.upgrade_strategy));
        put("labels", json!(self.labels));
        if let Some(roles) = &self.accepted_resource_roles {
            put("acceptedResourceRoles", json!(roles));
        }
        if let Some(version) = self.version {
            put("version", json!(version));
        }
        if let Some(info) = self.version_info {
            put("versionInfo", json!(info));
        }
        put("killSelection", json!(self.kill_selection));
        put("unreachableStrategy", json!(self.unreachable_strategy));
        if let Some(grace) = self.task_kill_grace_period_seconds {
            put("taskKillGracePeriodSeconds", json!(grace));
        }
        if !self.networks.is_empty() {
            put("networks", json!(self.networks));
        }
        if let Some(ip_address) = &self.ip_address {
            put("ipAddress", ip_address.clone());
        }
        if let Some(residency) = &self.residency {
            put("residency", residency.clone());
        }
        if !self.secrets.is_empty() {
            put("secrets", json!(self.secrets));
        }
        Value::Object(out)
    }
}

impl Container {
    fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("type".to_owned(), json!(self.kind));
        if let Some(docker) = &self.docker {
            let mut d = Map::new();
            d.insert("image".to_owned(), json!(docker.image));
            if let Some(network) = docker.network {
                d.insert("network".to_owned(), json!(network));
            }
            if let Some(mappings) = &self.port_mappings {
                d.insert("portMappings".to_owned(), json!(mappings));
            }
            d.insert("privileged".to_owned(), json!(docker.privileged));
            d.insert("parameters".to_owned(), json!(docker.parameters));
            d.insert("forcePullImage".to_owned(), json!(docker.force_pull_image));
            if let Some(credential) = &docker.credential {
                d.insert("credential".to_owned(), credential.clone());
            }
            out.insert("docker".to_owned(), Value::Object(d));
        }
        if let Some(appc) = &self.appc {
            out.insert("appc".to_owned(), appc.clone());
        }
        out.insert("volumes".to_owned(), json!(self.volumes));
        if let Some(mappings) = &self.port_mappings {
            out.insert("portMappings".to_owned(), json!(mappings));
        }
        Value::Object(out)
    }
}

impl Serialize for AppDefinition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// Reads any JSON the gateway accepts (leniently, without validating), so that the stored
/// form (the written JSON) reads back as the same app.
impl<'de> Deserialize<'de> for AppDefinition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        decode::decode_app(&value, &PathId::root(), None).map_err(|violations| {
            let details: Vec<String> =
                violations.iter().map(|v| format!("{}: {}", v.path, v.errors.join(", "))).collect();
            serde::de::Error::custom(format!("invalid app definition: {}", details.join("; ")))
        })
    }
}
