//! From JSON to [`AppDefinition`]: lenient reading, Marathon's defaults, and the
//! normalizations Marathon applies before validating (legacy fields folded into canonical
//! ones, default ports, health-check port indices).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::constraints::{Constraint, Operator, UNKNOWN_OPERATOR};
use super::definition::*;
use super::lenient::{EXPECTED_OBJECT, EXPECTED_STRING, MIN_LENGTH, Reader, get, string};
use super::path::PathId;
use super::violation::{Violation, field_path, item_path};

/// `CONTAINERD` is what Marina once wrote for `MESOS` with an image (see [`ContainerType`]).
const CONTAINER_TYPES: [(&str, ContainerType); 3] =
    [("DOCKER", ContainerType::Docker), ("MESOS", ContainerType::Mesos), ("CONTAINERD", ContainerType::Mesos)];
const DOCKER_NETWORKS: [(&str, DockerNetwork); 4] = [
    ("BRIDGE", DockerNetwork::Bridge),
    ("HOST", DockerNetwork::Host),
    ("NONE", DockerNetwork::None),
    ("USER", DockerNetwork::User),
];
const PROTOCOLS: [(&str, Protocol); 4] =
    [("tcp", Protocol::Tcp), ("udp", Protocol::Udp), ("udp,tcp", Protocol::UdpTcp), ("tcp,udp", Protocol::UdpTcp)];
const HEALTH_PROTOCOLS: [(&str, HealthCheckProtocol); 7] = [
    ("HTTP", HealthCheckProtocol::Http),
    ("HTTPS", HealthCheckProtocol::Https),
    ("TCP", HealthCheckProtocol::Tcp),
    ("COMMAND", HealthCheckProtocol::Command),
    ("MESOS_HTTP", HealthCheckProtocol::MesosHttp),
    ("MESOS_HTTPS", HealthCheckProtocol::MesosHttps),
    ("MESOS_TCP", HealthCheckProtocol::MesosTcp),
];
const IP_PROTOCOLS: [(&str, IpProtocol); 2] = [("IPv4", IpProtocol::IPv4), ("IPv6", IpProtocol::IPv6)];
const HTTP_SCHEMES: [(&str, HttpScheme); 2] = [("HTTP", HttpScheme::Http), ("HTTPS", HttpScheme::Https)];
const KILL_SELECTIONS: [(&str, KillSelection); 2] =
    [("YOUNGEST_FIRST", KillSelection::YoungestFirst), ("OLDEST_FIRST", KillSelection::OldestFirst)];
const NETWORK_MODES: [(&str, NetworkMode); 3] = [
    ("container", NetworkMode::Container),
    ("container/bridge", NetworkMode::ContainerBridge),
    ("host", NetworkMode::Host),
];

/// Reads an app. A relative `id` is resolved against `base`; `id`, if given, replaces the
/// JSON's (the id from a URL). Problems are reported with their Marathon paths.
pub(crate) fn decode_app(value: &Value, base: &PathId, id: Option<&PathId>) -> Result<AppDefinition, Vec<Violation>> {
    let Some(obj) = value.as_object() else {
        return Err(vec![Violation::new("/", EXPECTED_OBJECT)]);
    };
    let mut r = Reader::default();
    let id = match id {
        Some(id) => id.clone(),
        None => match r.required_string(obj, "", "id") {
            Some(raw) => PathId::resolve_unchecked(&raw, base),
            None => PathId::root(),
        },
    };
    let mut app = AppDefinition::new(id);
    app.cmd = r.string(obj, "", "cmd").filter(|c| !c.is_empty());
    app.args = r.strings(obj, "", "args").filter(|a| !a.is_empty());
    app.user = r.string(obj, "", "user");
    app.env = env(&mut r, obj);
    app.instances = r.i32(obj, "", "instances", DEFAULT_INSTANCES);
    app.cpus = r.f64(obj, "", "cpus", DEFAULT_CPUS);
    app.mem = r.f64(obj, "", "mem", DEFAULT_MEM);
    app.disk = r.f64(obj, "", "disk", DEFAULT_DISK);
    app.gpus = r.i32(obj, "", "gpus", DEFAULT_GPUS);
    app.executor = r.string(obj, "", "executor").unwrap_or_default();
    app.constraints = constraints(&mut r, obj);
    app.fetch = fetch(&mut r, obj);
    app.store_urls = r.strings(obj, "", "storeUrls").unwrap_or_default();
    let port_definitions = port_definitions(&mut r, obj);
    app.require_ports = r.bool(obj, "", "requirePorts", false);
    app.backoff_seconds = r.i32(obj, "", "backoffSeconds", DEFAULT_BACKOFF_SECONDS);
    app.backoff_factor = r.f64(obj, "", "backoffFactor", DEFAULT_BACKOFF_FACTOR);
    app.max_launch_delay_seconds = r.i32(obj, "", "maxLaunchDelaySeconds", DEFAULT_MAX_LAUNCH_DELAY_SECONDS);
    app.container = get(obj, "container").and_then(|v| container(&mut r, v, "/container"));
    app.health_checks = r
        .objects(obj, "", "healthChecks")
        .unwrap_or_default()
        .into_iter()
        .map(|(o, path)| health_check(&mut r, o, &path))
        .collect();
    app.readiness_checks = r
        .objects(obj, "", "readinessChecks")
        .unwrap_or_default()
        .into_iter()
        .map(|(o, path)| readiness_check(&mut r, o, &path))
        .collect();
    let group = app.id.parent();
    app.dependencies = r
        .strings(obj, "", "dependencies")
        .unwrap_or_default()
        .iter()
        .map(|d| PathId::resolve_unchecked(d, &group))
        .collect();
    if let Some(strategy) = r.object(obj, "", "upgradeStrategy") {
        let path = "/upgradeStrategy";
        app.upgrade_strategy = UpgradeStrategy {
            minimum_health_capacity: r.f64(strategy, path, "minimumHealthCapacity", 1.0),
            maximum_over_capacity: r.f64(strategy, path, "maximumOverCapacity", 1.0),
        };
    }
    app.labels = r.string_map(obj, "", "labels");
    app.accepted_resource_roles = r.strings(obj, "", "acceptedResourceRoles").filter(|roles| !roles.is_empty());
    app.version = r.timestamp(obj, "", "version");
    if let Some(info) = r.object(obj, "", "versionInfo") {
        let scaled = r.timestamp(info, "/versionInfo", "lastScalingAt");
        let changed = r.timestamp(info, "/versionInfo", "lastConfigChangeAt");
        if let (Some(last_scaling_at), Some(last_config_change_at)) = (scaled.or(app.version), changed.or(app.version))
        {
            app.version_info = Some(VersionInfo { last_scaling_at, last_config_change_at });
        }
    }
    app.kill_selection = r.enumeration(obj, "", "killSelection", &KILL_SELECTIONS).unwrap_or_default();
    app.unreachable_strategy = unreachable_strategy(&mut r, obj);
    // Marathon's int32 fields (app.raml `format: int32`): a larger number is Marathon's
    // `error.expected.int`, and never reaches the backoff or kill arithmetic.
    app.task_kill_grace_period_seconds = r.opt_i32(obj, "", "taskKillGracePeriodSeconds");
    app.networks = r
        .objects(obj, "", "networks")
        .unwrap_or_default()
        .into_iter()
        .map(|(o, path)| Network {
            mode: r.enumeration(o, &path, "mode", &NETWORK_MODES).unwrap_or(NetworkMode::Container),
            name: r.string(o, &path, "name"),
            labels: r.string_map(o, &path, "labels"),
        })
        .collect();
    app.ip_address = r.object(obj, "", "ipAddress").map(|o| Value::Object(o.clone()));
    app.residency = r.object(obj, "", "residency").map(|o| Value::Object(o.clone()));
    app.secrets = r.object(obj, "", "secrets").map(|o| o.clone().into_iter().collect()).unwrap_or_default();
    r.problems.into_result()?;

    normalize_ports(&mut app, port_definitions);
    normalize_health_checks(&mut app);
    Ok(app)
}

/// Env values are strings (numbers and booleans read as their text) or `{"secret": name}`.
fn env(r: &mut Reader, obj: &Map<String, Value>) -> BTreeMap<String, EnvValue> {
    let mut out = BTreeMap::new();
    let Some(entries) = r.object(obj, "", "env") else { return out };
    for (name, value) in entries {
        let path = field_path("/env", name);
        let read = match value {
            Value::Null => continue,
            Value::Object(secret) => match get(secret, "secret").map(string) {
                Some(Ok(secret)) => Ok(EnvValue::Secret { secret }),
                _ => Err(EXPECTED_STRING),
            },
            other => string(other).map(EnvValue::Value),
        };
        match read {
            Ok(value) => {
                out.insert(name.clone(), value);
            }
            Err(error) => r.problem(&path, error),
        }
    }
    out
}

/// `[["hostname", "UNIQUE"], ["rack", "GROUP_BY", "3"]]`. Empty values read as none for
/// operators whose value is optional (old clients send `["hostname", "UNIQUE", ""]`).
fn constraints(r: &mut Reader, obj: &Map<String, Value>) -> Vec<Constraint> {
    let mut out = Vec::new();
    let Some(items) = r.array(obj, "", "constraints") else { return out };
    for (i, item) in items.iter().enumerate() {
        let path = item_path("/constraints", i);
        let parts: Option<Vec<String>> =
            item.as_array().and_then(|parts| parts.iter().map(|p| string(p).ok()).collect());
        let Some(parts) = parts else {
            r.problem(&path, "Constraint definition must be an array of strings in format: <key>, <operator>[, value]");
            continue;
        };
        if !(2..=3).contains(&parts.len()) {
            r.problem(&path, "Each constraint must have either 2 or 3 fields");
            continue;
        }
        let Some(operator) = Operator::parse(&parts[1]) else {
            r.problem(&path, UNKNOWN_OPERATOR);
            continue;
        };
        let value_optional = matches!(operator, Operator::Unique | Operator::Cluster | Operator::GroupBy);
        let value = parts.get(2).cloned().filter(|v| !(v.is_empty() && value_optional));
        out.push(Constraint::new(parts[0].clone(), operator, value));
    }
    out
}

/// `fetch`, or the legacy `uris`; both may be given if they name the same URIs (as the
/// written JSON does).
fn fetch(r: &mut Reader, obj: &Map<String, Value>) -> Vec<FetchUri> {
    let uris = r.strings(obj, "", "uris");
    // As `fetch[].uri`: an empty URI is Marathon's `error.minLength` (and would be written
    // back as a fetch entry that does not read).
    for (i, uri) in uris.iter().flatten().enumerate() {
        if uri.is_empty() {
            r.problem(&item_path("/uris", i), MIN_LENGTH);
        }
    }
    let fetch: Option<Vec<FetchUri>> = r.objects(obj, "", "fetch").map(|items| {
        items
            .into_iter()
            .filter_map(|(o, path)| {
                let uri = r.required_string(o, &path, "uri")?;
                Some(FetchUri {
                    uri,
                    extract: r.bool(o, &path, "extract", true),
                    executable: r.bool(o, &path, "executable", false),
                    cache: r.bool(o, &path, "cache", false),
                    output_file: r.string(o, &path, "outputFile").or_else(|| r.string(o, &path, "destPath")),
                })
            })
            .collect()
    });
    match (uris, fetch) {
        (Some(uris), Some(fetch)) if !uris.is_empty() && !fetch.is_empty() => {
            if !uris.iter().eq(fetch.iter().map(|f| &f.uri)) {
                r.problem("/uris", "may not be set in conjunction with fetch");
            }
            fetch
        }
        (Some(uris), fetch) if fetch.as_ref().is_none_or(Vec::is_empty) => {
            uris.into_iter().map(FetchUri::from_uri).collect()
        }
        (_, fetch) => fetch.unwrap_or_default(),
    }
}

/// `portDefinitions`, or the legacy `ports`; both may be given if they agree. `None`: neither.
fn port_definitions(r: &mut Reader, obj: &Map<String, Value>) -> Option<Vec<PortDefinition>> {
    let ports: Option<Vec<u16>> = r.array(obj, "", "ports").map(|items| {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| r.bounded(v, &item_path("/ports", i), 0, 65_535).map(|p| p as u16))
            .collect()
    });
    let definitions: Option<Vec<PortDefinition>> = r.objects(obj, "", "portDefinitions").map(|items| {
        items
            .into_iter()
            .map(|(o, path)| PortDefinition {
                port: r.opt_port(o, &path, "port").unwrap_or(0),
                protocol: r.enumeration(o, &path, "protocol", &PROTOCOLS).unwrap_or(Protocol::Tcp),
                name: r.string(o, &path, "name"),
                labels: r.string_map(o, &path, "labels"),
            })
            .collect()
    });
    match (ports, definitions) {
        (Some(ports), Some(definitions)) => {
            if !ports.iter().eq(definitions.iter().map(|d| &d.port)) {
                r.problem("", "cannot specify both ports and port definitions");
            }
            Some(definitions)
        }
        (Some(ports), None) => Some(ports.into_iter().map(PortDefinition::new).collect()),
        (None, definitions) => definitions,
    }
}

/// Marathon 0.x's `{"image": "docker:///repo/name", "options": [...]}`, Marathon 1.x's
/// `{"type": "DOCKER", "docker": {...}, "volumes": [...], "portMappings": [...]}`, and
/// Marina's former `"type": "CONTAINERD"` (read as `MESOS`) with the same `docker` fields.
fn container(r: &mut Reader, value: &Value, path: &str) -> Option<Container> {
    let Some(obj) = value.as_object() else {
        r.problem(path, EXPECTED_OBJECT);
        return None;
    };
    let kind = r.enumeration(obj, path, "type", &CONTAINER_TYPES).unwrap_or(ContainerType::Docker);
    let legacy_options = r.strings(obj, path, "options").unwrap_or_default();
    let options_path = field_path(path, "options");
    let legacy_parameters = legacy_parameters(&legacy_options).unwrap_or_else(|(i, problem)| {
        r.problem(&item_path(&options_path, i), problem);
        Vec::new()
    });
    if get(obj, "docker").is_none() && get(obj, "image").is_some() {
        let image_path = field_path(path, "image");
        let raw = r.string(obj, path, "image")?;
        let image = legacy_image(&raw).map_err(|error| r.problem(&image_path, error)).ok()?;
        return Some(Container {
            kind,
            docker: Some(DockerContainer { parameters: legacy_parameters, ..DockerContainer::new(image) }),
            appc: None,
            volumes: Vec::new(),
            port_mappings: None,
        });
    }
    let docker_path = field_path(path, "docker");
    let mut docker_mappings = None;
    let docker = r.object(obj, path, "docker").and_then(|d| {
        docker_mappings = port_mappings(r, d, &docker_path);
        let image = r.required_string(d, &docker_path, "image")?;
        let image = legacy_image(&image).map_err(|e| r.problem(&field_path(&docker_path, "image"), e)).ok()?;
        Some(DockerContainer {
            image,
            network: r.enumeration(d, &docker_path, "network", &DOCKER_NETWORKS),
            privileged: r.bool(d, &docker_path, "privileged", false),
            parameters: r
                .objects(d, &docker_path, "parameters")
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(p, path)| {
                    let key = r.required_string(p, &path, "key")?;
                    Some(DockerParameter { key, value: r.string(p, &path, "value").unwrap_or_default() })
                })
                .collect(),
            force_pull_image: r.bool(d, &docker_path, "forcePullImage", false),
            credential: r.object(d, &docker_path, "credential").map(|c| Value::Object(c.clone())),
        })
    });
    let container_mappings = port_mappings(r, obj, path);
    let port_mappings = match (container_mappings, docker_mappings) {
        (Some(outer), Some(inner)) if !outer.is_empty() && !inner.is_empty() => {
            if outer != inner {
                r.problem(path, "cannot specify both portMappings and docker.portMappings");
            }
            Some(outer)
        }
        (Some(outer), Some(inner)) if outer.is_empty() => Some(inner),
        (outer, inner) => outer.or(inner),
    };
    let volumes = match r.array(obj, path, "volumes") {
        Some(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                if !v.is_object() {
                    r.problem(&item_path(&field_path(path, "volumes"), i), EXPECTED_OBJECT);
                }
                v.is_object().then(|| v.clone())
            })
            .collect(),
        None => Vec::new(),
    };
    let docker = docker.map(|mut docker| {
        docker.parameters.extend(legacy_parameters);
        docker
    });
    Some(Container {
        kind,
        docker,
        appc: r.object(obj, path, "appc").map(|a| Value::Object(a.clone())),
        volumes,
        port_mappings,
    })
}

/// `docker run`'s short options that take a value, by their long names.
const SHORT_OPTIONS: [(&str, &str); 7] = [
    ("e", "env"),
    ("v", "volume"),
    ("p", "publish"),
    ("u", "user"),
    ("w", "workdir"),
    ("h", "hostname"),
    ("l", "label"),
];

/// Marathon 0.x's `container.options` (`docker run` options) as Marathon 1.x's
/// `docker.parameters`: `--key=value` and `--key value` give `{key, value}` (`-e X=1` too,
/// for the short options that take a value), a lone `--flag` gives `{flag, "true"}`.
/// Anything else is refused with its index. Each parameter is then held to the container
/// policy and the Docker runtime's supported subset, as any other.
fn legacy_parameters(options: &[String]) -> Result<Vec<DockerParameter>, (usize, String)> {
    let mut parameters = Vec::new();
    let mut i = 0;
    while i < options.len() {
        let option = &options[i];
        let short = option.strip_prefix('-').and_then(|name| SHORT_OPTIONS.iter().find(|(short, _)| *short == name));
        if let Some((_, long)) = short {
            let Some(value) = options.get(i + 1) else {
                return Err((i, format!("{option:?} needs a value")));
            };
            parameters.push(DockerParameter { key: (*long).to_owned(), value: value.clone() });
            i += 2;
            continue;
        }
        let Some(long) = option.strip_prefix("--").filter(|name| !name.is_empty() && !name.starts_with('-')) else {
            let hint = "docker run options (--key=value, -e/-v/-p/-u/-w/-h/-l VALUE); or container.docker.parameters";
            return Err((i, format!("{option:?}: not one of the {hint}")));
        };
        let (key, value) = match long.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => match options.get(i + 1).filter(|next| !next.starts_with('-')) {
                Some(value) => {
                    i += 1;
                    (long.to_owned(), value.clone())
                }
                None => (long.to_owned(), "true".to_owned()),
            },
        };
        parameters.push(DockerParameter { key, value });
        i += 1;
    }
    Ok(parameters)
}

/// `docker:///libmesos/ubuntu` → `libmesos/ubuntu`; a bare name is kept; other URL schemes
/// (Marathon 0.x's external containerizers) cannot run here.
fn legacy_image(raw: &str) -> Result<String, String> {
    let image = raw.strip_prefix("docker:///").or_else(|| raw.strip_prefix("docker://")).unwrap_or(raw).trim();
    if image.is_empty() {
        return Err(MIN_LENGTH.to_owned());
    }
    if image.contains("://") {
        return Err(format!("unsupported image {raw:?}: only docker:// images (or plain image names) can run"));
    }
    Ok(image.to_owned())
}

fn port_mappings(r: &mut Reader, obj: &Map<String, Value>, path: &str) -> Option<Vec<PortMapping>> {
    let items = r.objects(obj, path, "portMappings")?;
    Some(
        items
            .into_iter()
            .map(|(o, path)| PortMapping {
                container_port: r.opt_port(o, &path, "containerPort").unwrap_or(0),
                host_port: r.opt_port(o, &path, "hostPort"),
                service_port: r.opt_port(o, &path, "servicePort").unwrap_or(0),
                protocol: r.enumeration(o, &path, "protocol", &PROTOCOLS).unwrap_or(Protocol::Tcp),
                name: r.string(o, &path, "name"),
                labels: r.string_map(o, &path, "labels"),
            })
            .collect(),
    )
}

fn health_check(r: &mut Reader, o: &Map<String, Value>, path: &str) -> HealthCheck {
    let defaults = HealthCheck::new(HealthCheckProtocol::Http);
    let command = match get(o, "command") {
        None => None,
        // Some clients send the command line itself.
        Some(Value::String(value)) => Some(CommandCheck { value: value.clone() }),
        Some(_) => r
            .object(o, path, "command")
            .map(|c| CommandCheck { value: r.string(c, &field_path(path, "command"), "value").unwrap_or_default() }),
    };
    HealthCheck {
        protocol: r.enumeration(o, path, "protocol", &HEALTH_PROTOCOLS).unwrap_or(defaults.protocol),
        path: r.string(o, path, "path"),
        port_index: r.opt_bounded(o, path, "portIndex", 0, 65_535).map(|i| i as u32),
        port: r.opt_port(o, path, "port"),
        command,
        grace_period_seconds: r.u32(o, path, "gracePeriodSeconds", defaults.grace_period_seconds),
        interval_seconds: r.u32(o, path, "intervalSeconds", defaults.interval_seconds),
        timeout_seconds: r.u32(o, path, "timeoutSeconds", defaults.timeout_seconds),
        max_consecutive_failures: r.u32(o, path, "maxConsecutiveFailures", defaults.max_consecutive_failures),
        delay_seconds: r.u32(o, path, "delaySeconds", defaults.delay_seconds),
        ignore_http1xx: r.bool(o, path, "ignoreHttp1xx", false),
        ip_protocol: r.enumeration(o, path, "ipProtocol", &IP_PROTOCOLS).unwrap_or(IpProtocol::IPv4),
    }
}

fn readiness_check(r: &mut Reader, o: &Map<String, Value>, path: &str) -> ReadinessCheck {
    let defaults = ReadinessCheck::default();
    let codes_path = field_path(path, "httpStatusCodesForReady");
    let codes: Vec<u16> = r
        .array(o, path, "httpStatusCodesForReady")
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, v)| r.bounded(v, &item_path(&codes_path, i), 100, 999).map(|c| c as u16))
        .collect();
    ReadinessCheck {
        name: r.string(o, path, "name").unwrap_or(defaults.name),
        protocol: r.enumeration(o, path, "protocol", &HTTP_SCHEMES).unwrap_or(defaults.protocol),
        path: r.string(o, path, "path").unwrap_or(defaults.path),
        port_name: r.string(o, path, "portName").unwrap_or(defaults.port_name),
        interval_seconds: r.u32(o, path, "intervalSeconds", defaults.interval_seconds),
        timeout_seconds: r.u32(o, path, "timeoutSeconds", defaults.timeout_seconds),
        http_status_codes_for_ready: if codes.is_empty() { defaults.http_status_codes_for_ready } else { codes },
        preserve_last_response: r.bool(o, path, "preserveLastResponse", false),
    }
}

/// `"disabled"`, or `{inactiveAfterSeconds, expungeAfterSeconds}` with Marathon's defaults.
fn unreachable_strategy(r: &mut Reader, obj: &Map<String, Value>) -> UnreachableStrategy {
    let path = "/unreachableStrategy";
    match get(obj, "unreachableStrategy") {
        None => UnreachableStrategy::default(),
        Some(Value::String(_)) => {
            r.enumeration(obj, "", "unreachableStrategy", &[("disabled", UnreachableStrategy::Disabled)]);
            UnreachableStrategy::Disabled
        }
        Some(Value::Object(o)) => UnreachableStrategy::Enabled {
            inactive_after_seconds: r.i64(o, path, "inactiveAfterSeconds", DEFAULT_INACTIVE_AFTER_SECONDS),
            expunge_after_seconds: r.i64(o, path, "expungeAfterSeconds", DEFAULT_EXPUNGE_AFTER_SECONDS),
        },
        Some(_) => {
            r.problem(path, EXPECTED_OBJECT);
            UnreachableStrategy::default()
        }
    }
}

/// Marathon's port normalization: given port definitions are kept; with none given, a
/// host-networked app without port mappings gets one dynamic port (Marathon 1.0–1.4's
/// default, `[{"port": 0, "protocol": "tcp"}]`). In bridge mode a mapping without a host
/// port gets a dynamic one (0); on named container networks it gets none.
fn normalize_ports(app: &mut AppDefinition, given: Option<Vec<PortDefinition>>) {
    let host_networked = app.is_host_networked();
    let has_mappings = app.port_mappings().is_some();
    app.port_definitions = match given {
        Some(definitions) => definitions,
        None if host_networked && !has_mappings => vec![PortDefinition::new(0)],
        None => Vec::new(),
    };
    let named_network = app.networks.iter().any(|n| n.mode == NetworkMode::Container)
        || app.container.as_ref().and_then(|c| c.docker.as_ref()).and_then(|d| d.network) == Some(DockerNetwork::User);
    if let Some(mappings) = app.container.as_mut().and_then(|c| c.port_mappings.as_mut()) {
        for mapping in mappings.iter_mut().filter(|m| m.host_port.is_none()) {
            if !named_network {
                mapping.host_port = Some(0);
            }
        }
    }
}

/// A check with a command is a `COMMAND` check; a port-based check without `port` or
/// `portIndex` uses the first port when the app has ports (Marathon's normalization).
fn normalize_health_checks(app: &mut AppDefinition) {
    let has_ports = app.port_count() > 0;
    for check in &mut app.health_checks {
        if check.command.is_some() {
            check.protocol = HealthCheckProtocol::Command;
        }
        if check.protocol != HealthCheckProtocol::Command
            && check.port.is_none()
            && check.port_index.is_none()
            && has_ports
        {
            check.port_index = Some(0);
        }
    }
}
