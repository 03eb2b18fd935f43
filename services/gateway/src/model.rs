//! From an app definition to what the engine, placement and the agent need: the app's
//! plan, its resource demand, and the `TaskInfo` of one instance.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use marina_proto::agent::v1 as agent;
use serde_json::{Value, json};

use crate::app::{
    AppDefinition, ContainerType, DockerNetwork, EnvValue, FetchUri, HealthCheckProtocol, KillSelection, NetworkMode,
    Protocol, UnreachableStrategy,
};
use crate::engine::AppPlan;

/// The engine's view of an app.
pub fn plan(app: &AppDefinition) -> AppPlan {
    AppPlan {
        id: app.id.to_string(),
        instances: app.instances.max(0) as u32,
        config_version: config_version(app),
        has_health_checks: !app.health_checks.is_empty(),
        has_readiness_checks: !app.readiness_checks.is_empty(),
        minimum_health_capacity: app.upgrade_strategy.minimum_health_capacity,
        maximum_over_capacity: app.upgrade_strategy.maximum_over_capacity,
        kill_youngest_first: app.kill_selection == KillSelection::YoungestFirst,
        inactive_after: match app.unreachable_strategy {
            UnreachableStrategy::Disabled => None,
            UnreachableStrategy::Enabled { inactive_after_seconds, .. } => {
                Some(Duration::from_secs(inactive_after_seconds.max(0) as u64))
            }
        },
    }
}

/// The version of the app's configuration: instances launched under another are replaced.
pub fn config_version(app: &AppDefinition) -> String {
    app.version_info
        .map(|info| info.last_config_change_at.to_string())
        .or_else(|| app.version.map(|v| v.to_string()))
        .unwrap_or_default()
}

pub fn version(app: &AppDefinition) -> String {
    app.version.map(|v| v.to_string()).unwrap_or_default()
}

/// How an app's tasks are networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Networking {
    /// The agent's network: tasks bind the host ports they are given.
    Host,
    /// The runtime's bridge: container ports mapped to host ports.
    Bridge,
    /// No network at all (`docker.network: NONE`).
    None,
    /// IP-per-task: the named network the operator made, where each task has an address of
    /// its own and its container ports are reachable at it; host ports only where a port
    /// mapping asks for one. `None`: a container network without a name, which no agent
    /// can join (the task fails saying so).
    Container(Option<String>),
}

/// How `app`'s tasks are networked, from Marathon 1.5's `networks` (`container` with a
/// name, `container/bridge`, `host`), else the older forms Marathon 1.5 translates the same
/// way: 1.4's `ipAddress` (`networkName`; with `docker.network: USER` for Docker), then
/// `docker.network`; without any of them, a bridge where the container maps ports, the
/// host's network otherwise.
pub fn networking(app: &AppDefinition) -> Networking {
    if let Some(network) = app.networks.iter().find(|n| n.mode == NetworkMode::Container) {
        return Networking::Container(network.name.clone().filter(|name| !name.is_empty()));
    }
    if app.networks.iter().any(|n| n.mode == NetworkMode::ContainerBridge) {
        return Networking::Bridge;
    }
    if !app.networks.is_empty() {
        return Networking::Host;
    }
    if let Some(ip_address) = &app.ip_address {
        let name = ip_address.get("networkName").and_then(Value::as_str).filter(|name| !name.is_empty());
        return Networking::Container(name.map(str::to_owned));
    }
    let docker_network = app.container.as_ref().and_then(|c| c.docker.as_ref()).and_then(|d| d.network);
    match docker_network {
        Some(DockerNetwork::Host) => Networking::Host,
        Some(DockerNetwork::None) => Networking::None,
        Some(DockerNetwork::Bridge) => Networking::Bridge,
        Some(DockerNetwork::User) => Networking::Container(None),
        None if app.container.is_some() && app.port_mappings().is_some() => Networking::Bridge,
        None => Networking::Host,
    }
}

/// Whether `app`'s tasks have addresses of their own on a container network.
fn on_container_network(app: &AppDefinition) -> bool {
    matches!(networking(app), Networking::Container(_))
}

/// The container ports of an IP-per-task app, in port order (those its health checks'
/// `portIndex` address): its port mappings', else Marathon 1.4's `ipAddress.discovery.ports`.
fn container_ports(app: &AppDefinition) -> Vec<u16> {
    if let Some(mappings) = app.port_mappings() {
        return mappings.iter().map(|m| m.container_port).collect();
    }
    let discovered = app.ip_address.as_ref().and_then(|ip| ip.pointer("/discovery/ports")).and_then(Value::as_array);
    discovered
        .map(|ports| {
            ports
                .iter()
                .map(|port| port.get("number").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()))
                .map(Option::unwrap_or_default)
                .collect()
        })
        .unwrap_or_default()
}

/// Host ports each instance needs, and which are fixed (0: any). On a container network
/// only the port mappings that ask for a host port need one; `portDefinitions` are the host
/// network's, so they need none there (Marathon ignores them).
pub fn port_needs(app: &AppDefinition) -> Vec<u32> {
    match app.port_mappings() {
        Some(mappings) => mappings.iter().filter_map(|m| m.host_port).map(u32::from).collect(),
        None if on_container_network(app) => Vec::new(),
        None if app.require_ports => app.port_definitions.iter().map(|p| u32::from(p.port)).collect(),
        None => vec![0; app.port_definitions.len()],
    }
}

/// The names of the host ports [`port_needs`] asks for, in the same order: mappings without
/// a host port get none.
pub fn host_port_names(app: &AppDefinition) -> Vec<Option<&str>> {
    match app.port_mappings() {
        Some(mappings) => mappings.iter().filter(|m| m.host_port.is_some()).map(|m| m.name.as_deref()).collect(),
        None if on_container_network(app) => Vec::new(),
        None => app.port_definitions.iter().map(|p| p.name.as_deref()).collect(),
    }
}

/// Marathon's `ipAddresses` of a task (in its JSON and its `status_update_event`), from the
/// addresses its agent reported: `[{"ipAddress": "172.18.0.5", "protocol": "IPv4"}]`.
pub fn ip_addresses_json(addresses: &[String]) -> Vec<Value> {
    addresses
        .iter()
        .filter_map(|address| {
            let protocol = match address.parse::<IpAddr>().ok()? {
                IpAddr::V4(_) => "IPv4",
                IpAddr::V6(_) => "IPv6",
            };
            Some(json!({ "ipAddress": address, "protocol": protocol }))
        })
        .collect()
}

/// The agent runtimes that can run the app (the agents' `runtime` attribute): an image in a
/// `DOCKER` container needs an image runtime (Docker, or containerd where there is no
/// Docker); an image in a `MESOS` container (Marathon's universal containerizer) needs
/// containerd.
///
/// Only Docker joins container networks (containerd has no CNI here, host processes share
/// the host's network): an IP-per-task app needs a `DOCKER` container, and waits with
/// `NoCapableRuntime` otherwise.
pub fn runtimes(app: &AppDefinition) -> &'static [&'static str] {
    if on_container_network(app) {
        let docker = app.image().is_some() && app.container.as_ref().is_some_and(|c| c.kind == ContainerType::Docker);
        return if docker { &["docker", "sim"] } else { &["sim"] };
    }
    match app.container.as_ref().map(|container| container.kind) {
        Some(ContainerType::Mesos) if app.image().is_some() => &["containerd", "sim"],
        _ if app.image().is_some() => &["docker", "containerd", "sim"],
        // A bare command runs as a host process (Mesos' command executor).
        _ => &["process", "sim"],
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::UdpTcp => "tcp",
    }
}

/// The `TaskInfo` of one instance of `app` on the given host ports.
pub fn task_info(app: &AppDefinition, task_id: &str, host_ports: &[u32]) -> agent::TaskInfo {
    let mut environment: HashMap<String, String> = app
        .env
        .iter()
        .filter_map(|(key, value)| match value {
            EnvValue::Value(value) => Some((key.clone(), value.clone())),
            EnvValue::Secret { .. } => None,
        })
        .collect();
    let app_id = app.id.to_string();
    environment.insert("MARATHON_APP_ID".into(), app_id.clone());
    environment.insert("MARATHON_APP_VERSION".into(), version(app));
    environment.insert("MARATHON_APP_RESOURCE_CPUS".into(), app.cpus.to_string());
    environment.insert("MARATHON_APP_RESOURCE_MEM".into(), app.mem.to_string());
    environment.insert("MARATHON_APP_RESOURCE_DISK".into(), app.disk.to_string());
    if let Some(image) = app.image() {
        environment.insert("MARATHON_APP_DOCKER_IMAGE".into(), image.to_owned());
    }
    let (shell, value, arguments) = match (&app.cmd, &app.args) {
        (Some(cmd), _) => (true, cmd.clone(), Vec::new()),
        (None, Some(args)) => (false, String::new(), args.clone()),
        (None, None) => (false, String::new(), Vec::new()),
    };
    let user = app.user.clone().unwrap_or_default();
    let command = Some(agent::CommandSpec { shell, value, arguments, environment, user });
    let port_mappings: Vec<agent::PortMapping> = match app.port_mappings() {
        Some(mappings) => mappings
            .iter()
            .filter(|m| m.host_port.is_some())
            .zip(host_ports)
            .map(|(mapping, host)| agent::PortMapping {
                container_port: if mapping.container_port == 0 { *host } else { u32::from(mapping.container_port) },
                host_port: *host,
                protocol: protocol_name(mapping.protocol).into(),
                name: mapping.name.clone().unwrap_or_default(),
            })
            .collect(),
        None if on_container_network(app) => Vec::new(),
        None => app
            .port_definitions
            .iter()
            .zip(host_ports)
            .map(|(definition, host)| agent::PortMapping {
                container_port: 0,
                host_port: *host,
                protocol: protocol_name(definition.protocol).into(),
                name: definition.name.clone().unwrap_or_default(),
            })
            .collect(),
    };
    let networking = networking(app);
    let (network, network_name) = match &networking {
        Networking::Host => ("host", String::new()),
        Networking::Bridge => ("bridge", String::new()),
        Networking::None => ("none", String::new()),
        Networking::Container(name) => ("container", name.clone().unwrap_or_default()),
    };
    let container = app.container.as_ref().map(|container| {
        let docker = container.docker.as_ref();
        let mut parameters: Vec<agent::Parameter> = docker
            .map(|d| {
                d.parameters.iter().map(|p| agent::Parameter { key: p.key.clone(), value: p.value.clone() }).collect()
            })
            .unwrap_or_default();
        parameters.retain(|p| !p.key.is_empty());
        agent::ContainerSpec {
            image: docker.map(|d| d.image.clone()).unwrap_or_default(),
            force_pull: docker.is_some_and(|d| d.force_pull_image),
            network: network.into(),
            port_mappings: port_mappings.clone(),
            privileged: docker.is_some_and(|d| d.privileged),
            parameters,
            network_name: network_name.clone(),
        }
    });
    let container = container.or_else(|| {
        let ip_per_task = matches!(networking, Networking::Container(_));
        (!port_mappings.is_empty() || ip_per_task).then(|| agent::ContainerSpec {
            port_mappings: port_mappings.clone(),
            network: if ip_per_task { network.into() } else { "host".into() },
            network_name: network_name.clone(),
            ..Default::default()
        })
    });
    // On a container network a task is checked at its own address and container port, as
    // Marathon checks IP-per-task apps: the agent is given that port.
    let check_ports = if matches!(networking, Networking::Container(_)) { container_ports(app) } else { Vec::new() };
    let health_checks = app
        .health_checks
        .iter()
        .map(|check| {
            let protocol = match check.protocol {
                HealthCheckProtocol::Http | HealthCheckProtocol::MesosHttp => agent::health_check::Protocol::Http,
                // No TLS client on the agent: an HTTPS endpoint is checked by connecting.
                HealthCheckProtocol::Https | HealthCheckProtocol::MesosHttps => agent::health_check::Protocol::Tcp,
                HealthCheckProtocol::Tcp | HealthCheckProtocol::MesosTcp => agent::health_check::Protocol::Tcp,
                HealthCheckProtocol::Command => agent::health_check::Protocol::Command,
            };
            agent::HealthCheck {
                protocol: protocol as i32,
                path: check.path.clone().unwrap_or_else(|| "/".into()),
                port_index: check.port_index.unwrap_or(0),
                port: check
                    .port
                    .or_else(|| check_ports.get(check.port_index? as usize).copied())
                    .map(u32::from)
                    .unwrap_or(0),
                command: check.command.as_ref().map(|c| c.value.clone()).unwrap_or_default(),
                grace_period_seconds: check.grace_period_seconds,
                interval_seconds: check.interval_seconds,
                timeout_seconds: check.timeout_seconds,
                max_consecutive_failures: check.max_consecutive_failures,
            }
        })
        .collect();
    let mut labels: HashMap<String, String> = app.labels.clone().into_iter().collect();
    labels.insert("MARATHON_APP_ID".into(), app_id.clone());
    labels.insert("MARATHON_APP_VERSION".into(), version(app));
    agent::TaskInfo {
        task_id: task_id.to_owned(),
        framework_id: String::new(),
        name: app_id,
        resources: Some(agent::Resources {
            cpus: app.cpus,
            mem_mb: app.mem,
            disk_mb: app.disk,
            ports: host_ports.iter().map(|p| agent::Range { begin: u64::from(*p), end: u64::from(*p) }).collect(),
        }),
        command,
        container,
        health_checks,
        labels,
        kill_grace_period_seconds: app.task_kill_grace_period_seconds.unwrap_or(0).max(0) as u32,
        fetch: app.fetch.iter().map(fetch_uri).collect(),
    }
}

/// An app's `fetch` entry as the agents' fetcher takes it.
pub fn fetch_uri(fetch: &FetchUri) -> agent::FetchUri {
    agent::FetchUri {
        uri: fetch.uri.clone(),
        extract: fetch.extract,
        executable: fetch.executable,
        cache: fetch.cache,
        output_file: fetch.output_file.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(json: Value) -> AppDefinition {
        serde_json::from_value(json).expect("an app")
    }

    fn docker(extra: Value) -> AppDefinition {
        let mut json = json!({
            "id": "/net/web",
            "container": {"type": "DOCKER", "docker": {"image": "busybox"}},
            "healthChecks": [{"protocol": "HTTP", "portIndex": 0}],
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        app(json)
    }

    #[test]
    fn a_named_container_network_runs_ip_per_task_on_docker() {
        let web = docker(json!({
            "networks": [{"mode": "container", "name": "dev"}],
            "container": {"type": "DOCKER", "docker": {"image": "busybox"},
                          "portMappings": [{"containerPort": 8080, "name": "http"}]},
        }));
        assert_eq!(networking(&web), Networking::Container(Some("dev".into())));
        assert!(port_needs(&web).is_empty() && host_port_names(&web).is_empty(), "no host port asked for");
        assert_eq!(runtimes(&web), ["docker", "sim"]);
        let task = task_info(&web, "web.1", &[]);
        let container = task.container.expect("a container");
        assert_eq!((container.network.as_str(), container.network_name.as_str()), ("container", "dev"));
        assert!(container.port_mappings.is_empty());
        assert!(task.resources.unwrap().ports.is_empty());
        assert_eq!(task.health_checks[0].port, 8080, "checked at the task's own address and container port");

        // A mapping that asks for a host port gets one, and keeps its container port.
        let mapped = docker(json!({
            "networks": [{"mode": "container", "name": "dev"}],
            "container": {"type": "DOCKER", "docker": {"image": "busybox"},
                          "portMappings": [{"containerPort": 8080, "hostPort": 0}, {"containerPort": 9090}]},
        }));
        assert_eq!(port_needs(&mapped), [0]);
        let container = task_info(&mapped, "web.2", &[31005]).container.unwrap();
        assert_eq!(
            container.port_mappings.iter().map(|m| (m.host_port, m.container_port)).collect::<Vec<_>>(),
            [(31005, 8080)]
        );
    }

    #[test]
    fn marathon_1_4_ip_per_task_is_a_container_network() {
        let legacy = docker(json!({
            "container": {"type": "DOCKER", "docker": {"image": "busybox", "network": "USER"}},
            "ipAddress": {"networkName": "legacy", "discovery": {"ports": [{"number": 80, "name": "http"}]}},
        }));
        assert_eq!(networking(&legacy), Networking::Container(Some("legacy".into())));
        assert!(port_needs(&legacy).is_empty(), "portDefinitions are the host network's");
        let task = task_info(&legacy, "web.1", &[]);
        assert_eq!(task.container.as_ref().unwrap().network_name, "legacy");
        assert!(task.container.unwrap().port_mappings.is_empty());
        assert_eq!(task.health_checks[0].port, 80);

        // USER without a name: the agent refuses the task saying so.
        let unnamed =
            docker(json!({"container": {"type": "DOCKER", "docker": {"image": "busybox", "network": "USER"}}}));
        assert_eq!(networking(&unnamed), Networking::Container(None));
        let container = task_info(&unnamed, "web.1", &[]).container.unwrap();
        assert_eq!((container.network.as_str(), container.network_name.as_str()), ("container", ""));
    }

    #[test]
    fn other_modes_keep_their_ports_and_only_docker_joins_container_networks() {
        let bridged = docker(json!({
            "networks": [{"mode": "container/bridge"}],
            "container": {"type": "DOCKER", "docker": {"image": "busybox"}, "portMappings": [{"containerPort": 80}]},
        }));
        assert_eq!(networking(&bridged), Networking::Bridge);
        assert_eq!(port_needs(&bridged), [0]);
        let task = task_info(&bridged, "web.1", &[31000]);
        assert_eq!(task.container.as_ref().unwrap().network, "bridge");
        assert_eq!(task.health_checks[0].port, 0, "bridge checks use the mapped host port");
        let host = app(json!({"id": "/h", "cmd": "sleep 1", "networks": [{"mode": "host"}]}));
        assert_eq!((networking(&host), port_needs(&host)), (Networking::Host, vec![0]));

        let command = app(json!({"id": "/c", "cmd": "sleep 1", "networks": [{"mode": "container", "name": "dev"}]}));
        assert_eq!(runtimes(&command), ["sim"], "no runtime here runs a command on a container network");
        let container = task_info(&command, "c.1", &[]).container.expect("the network is said");
        assert_eq!((container.network.as_str(), container.network_name.as_str()), ("container", "dev"));
        let universal = app(json!({"id": "/u", "networks": [{"mode": "container", "name": "dev"}],
                                   "container": {"type": "MESOS", "docker": {"image": "busybox"}}}));
        assert_eq!(runtimes(&universal), ["sim"], "containerd has no CNI");
    }

    #[test]
    fn ip_addresses_are_shown_as_marathon_shows_them() {
        let shown = ip_addresses_json(&["172.18.0.5".into(), "fd00::5".into(), "not an address".into()]);
        assert_eq!(
            shown,
            [
                json!({"ipAddress": "172.18.0.5", "protocol": "IPv4"}),
                json!({"ipAddress": "fd00::5", "protocol": "IPv6"})
            ]
        );
    }
}
