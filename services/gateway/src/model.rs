//! From an app definition to what the engine, placement and the agent need: the app's
//! plan, its resource demand, and the `TaskInfo` of one instance.

use std::collections::HashMap;
use std::time::Duration;

use marina_proto::agent::v1 as agent;

use crate::app::{
    AppDefinition, ContainerType, DockerNetwork, EnvValue, FetchUri, HealthCheckProtocol, KillSelection, Protocol,
    UnreachableStrategy,
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

/// Host ports each instance needs, and which are fixed (0: any).
pub fn port_needs(app: &AppDefinition) -> Vec<u32> {
    match app.port_mappings() {
        Some(mappings) => mappings.iter().filter_map(|m| m.host_port).map(u32::from).collect(),
        None if app.require_ports => app.port_definitions.iter().map(|p| u32::from(p.port)).collect(),
        None => vec![0; app.port_definitions.len()],
    }
}

/// The names of the host ports [`port_needs`] asks for, in the same order: mappings without
/// a host port get none.
pub fn host_port_names(app: &AppDefinition) -> Vec<Option<&str>> {
    match app.port_mappings() {
        Some(mappings) => mappings.iter().filter(|m| m.host_port.is_some()).map(|m| m.name.as_deref()).collect(),
        None => app.port_definitions.iter().map(|p| p.name.as_deref()).collect(),
    }
}

/// The agent runtimes that can run the app (the agents' `runtime` attribute): image apps
/// need an image runtime; `CONTAINERD` apps need containerd. `None`: any runtime.
pub fn runtimes(app: &AppDefinition) -> &'static [&'static str] {
    match app.container.as_ref().map(|container| container.kind) {
        Some(ContainerType::Containerd) => &["containerd", "sim"],
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
    let container = app.container.as_ref().map(|container| {
        let docker = container.docker.as_ref();
        let network = match docker.and_then(|d| d.network) {
            Some(DockerNetwork::Host) => "host",
            Some(DockerNetwork::None) => "none",
            Some(DockerNetwork::Bridge | DockerNetwork::User) => "bridge",
            None if port_mappings.iter().any(|m| m.container_port != 0) => "bridge",
            None => "host",
        };
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
        }
    });
    let container = container.or_else(|| {
        (!port_mappings.is_empty()).then(|| agent::ContainerSpec {
            port_mappings: port_mappings.clone(),
            network: "host".into(),
            ..Default::default()
        })
    });
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
                port: check.port.map(u32::from).unwrap_or(0),
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
