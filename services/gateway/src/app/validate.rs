//! Marathon's rules for an app definition, reported at Marathon's paths in Marathon's words,
//! and the bounds Marina adds where a value would otherwise become an unbounded path,
//! allocation, loop or arithmetic (each says why where it is checked).

use std::cmp::Ordering;
use std::collections::HashSet;

use regex::Regex;

use super::definition::*;
use super::violation::{Problems, Violation, field_path, item_path};

/// Marathon's pattern for `executor`, quoted as-is in its error message.
const EXECUTOR_PATTERN: &str = "^(//cmd)|(/?[^/]+(/[^/]+)*)|$";

/// The longest app id: its task ids (`<id with / as _>.<uuid>`) must fit Mesos' 255 bytes,
/// which the master enforces and the agent's sandbox directory names need.
pub const MAX_APP_ID_BYTES: usize =
    marina_proto::checks::MAX_ID_BYTES - ".00000000-0000-0000-0000-000000000000".len() + 1;

/// Most entries of any list or map in an app (ports, checks, fetch URIs, env, labels...).
/// Each is walked per task launched; a 1 MiB body could otherwise hold tens of thousands.
pub const MAX_ITEMS: usize = 1000;

/// Most constraints: each is evaluated for every offer and every instance placed.
pub const MAX_CONSTRAINTS: usize = 100;

/// The largest number of seconds any duration field takes: Marathon's `int32`.
const MAX_SECONDS: i64 = i32::MAX as i64;

/// Checks `app` against Marathon's rules; on failure, every violation found.
pub fn validate(app: &AppDefinition) -> Result<(), Vec<Violation>> {
    let mut p = Problems::default();
    id_rules(app, &mut p);
    command_rules(app, &mut p);
    resource_rules(app, &mut p);
    port_rules(app, &mut p);
    container_rules(app, &mut p);
    network_rules(app, &mut p);
    health_check_rules(app, &mut p);
    readiness_check_rules(app, &mut p);
    for (i, constraint) in app.constraints.iter().enumerate() {
        for problem in constraint.problems() {
            p.add(&item_path("/constraints", i), problem);
        }
    }
    for (i, dependency) in app.dependencies.iter().enumerate() {
        for problem in dependency.problems() {
            p.add(&item_path("/dependencies", i), problem);
        }
        if dependency.is_root() {
            p.add(&item_path("/dependencies", i), "Path must contain at least one path element");
        }
    }
    env_rules(app, &mut p);
    for name in app.labels.keys().filter(|k| k.is_empty()) {
        p.add(&item_path("/labels", name), "must not be empty");
    }
    scheduling_rules(app, &mut p);
    size_rules(app, &mut p);
    p.into_result()
}

fn id_rules(app: &AppDefinition, p: &mut Problems) {
    if app.id.is_root() {
        p.add("/id", "Path must contain at least one path element");
    }
    for problem in app.id.problems() {
        p.add("/id", problem);
    }
    let length = app.id.to_string().len();
    if length > MAX_APP_ID_BYTES {
        p.add(
            "/id",
            format!(
                "got {length} characters, expected {MAX_APP_ID_BYTES} or less (its task ids must fit in {} bytes)",
                marina_proto::checks::MAX_ID_BYTES
            ),
        );
    }
}

/// What the agents' fetcher can download, into a place inside the sandbox (the agents check
/// it again; here it is refused at the field).
fn fetch_rules(app: &AppDefinition, p: &mut Problems) {
    for (i, fetch) in app.fetch.iter().enumerate() {
        if let Err(why) = marina_proto::checks::check_fetch_uri(&crate::model::fetch_uri(fetch)) {
            p.add(&item_path("/fetch", i), why);
        }
    }
}

/// Names a process can be given. POSIX forbids only `=` in a name (and NUL, which ends it);
/// it asks applications to tolerate other characters, and Marathon validates apps' names
/// leniently (non-empty, under 255 characters; only pods are held to letters, digits and
/// `_`), so `spring.profiles.active` keeps working. Values must not hold NUL, which `execve`
/// cannot pass.
fn env_rules(app: &AppDefinition, p: &mut Problems) {
    fetch_rules(app, p);
    for (name, value) in &app.env {
        let path = item_path("/env", name);
        if name.is_empty() {
            p.add(&path, "must not be empty");
        } else if name.len() >= 255 {
            p.add(&path, "variable name must be 254 chars or less");
        } else if name.contains(['=', '\0']) {
            p.add(&path, "must not contain '=' or a NUL character");
        }
        if let EnvValue::Value(value) = value
            && value.contains('\0')
        {
            p.add(&path, "must not contain a NUL character");
        }
    }
}

/// How many items each list may hold, and no NUL where a string becomes a process's
/// argument, user or image.
fn size_rules(app: &AppDefinition, p: &mut Problems) {
    let counts = [
        ("/constraints", app.constraints.len(), MAX_CONSTRAINTS),
        ("/portDefinitions", app.port_definitions.len(), MAX_ITEMS),
        ("/container/portMappings", app.port_mappings().map_or(0, <[PortMapping]>::len), MAX_ITEMS),
        ("/healthChecks", app.health_checks.len(), MAX_ITEMS),
        ("/fetch", app.fetch.len(), marina_proto::checks::MAX_FETCH_URIS),
        ("/storeUrls", app.store_urls.len(), MAX_ITEMS),
        ("/dependencies", app.dependencies.len(), MAX_ITEMS),
        ("/env", app.env.len(), MAX_ITEMS),
        ("/labels", app.labels.len(), MAX_ITEMS),
        ("/args", app.args.as_ref().map_or(0, Vec::len), MAX_ITEMS),
        ("/networks", app.networks.len(), MAX_ITEMS),
        ("/acceptedResourceRoles", app.accepted_resource_roles.as_ref().map_or(0, Vec::len), MAX_ITEMS),
        ("/container/volumes", app.container.as_ref().map_or(0, |c| c.volumes.len()), MAX_ITEMS),
        (
            "/container/docker/parameters",
            app.container.as_ref().and_then(|c| c.docker.as_ref()).map_or(0, |d| d.parameters.len()),
            MAX_ITEMS,
        ),
    ];
    for (path, count, max) in counts {
        if count > max {
            p.add(path, format!("got {count} items, expected {max} or less"));
        }
    }
    let nul = |s: &str| s.contains('\0');
    if app.cmd.as_deref().is_some_and(nul) {
        p.add("/cmd", "must not contain a NUL character");
    }
    if app.args.iter().flatten().any(|a| nul(a)) {
        p.add("/args", "must not contain a NUL character");
    }
    if app.user.as_deref().is_some_and(nul) {
        p.add("/user", "must not contain a NUL character");
    }
    if app.image().is_some_and(nul) {
        p.add("/container/docker/image", "must not contain a NUL character");
    }
}

fn command_rules(app: &AppDefinition, p: &mut Problems) {
    let (cmd, args) = (app.cmd.is_some(), app.args.is_some());
    let container = app.container.as_ref().is_some_and(|c| match c.kind {
        ContainerType::Docker => c.docker.is_some(),
        ContainerType::Mesos => c.docker.is_some() != c.appc.is_some(),
    });
    if !((cmd ^ args) || (!(cmd && args) && container)) {
        p.add("", "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.");
    }
    let valid_executor = Regex::new(&format!("^(?:{EXECUTOR_PATTERN})$")).is_ok_and(|re| re.is_match(&app.executor));
    if !valid_executor {
        p.add("/executor", format!("must fully match regular expression '{EXECUTOR_PATTERN}'"));
    }
}

fn resource_rules(app: &AppDefinition, p: &mut Problems) {
    use marina_proto::checks::{MAX_CPUS, MAX_MEGABYTES};
    at_least(p, "/instances", app.instances, 0);
    // Marathon's minimums; the maximums are Marina's, so that sums over every instance
    // stay finite (the master refuses tasks beyond them anyway).
    at_least(p, "/cpus", app.cpus, 0.0);
    at_most(p, "/cpus", app.cpus, MAX_CPUS);
    at_least(p, "/mem", app.mem, 0.0);
    at_most(p, "/mem", app.mem, MAX_MEGABYTES);
    at_least(p, "/disk", app.disk, 0.0);
    at_most(p, "/disk", app.disk, MAX_MEGABYTES);
    at_least(p, "/gpus", app.gpus, 0);
    at_most(p, "/gpus", app.gpus, 1024);
    at_least(p, "/backoffSeconds", app.backoff_seconds, 0);
    at_least(p, "/backoffFactor", app.backoff_factor, 1.0);
    at_least(p, "/maxLaunchDelaySeconds", app.max_launch_delay_seconds, 0);
    if let Some(grace) = app.task_kill_grace_period_seconds {
        at_least(p, "/taskKillGracePeriodSeconds", grace, 0);
    }
    let strategy = app.upgrade_strategy;
    between(p, "/upgradeStrategy/minimumHealthCapacity", strategy.minimum_health_capacity, 0.0, 1.0);
    between(p, "/upgradeStrategy/maximumOverCapacity", strategy.maximum_over_capacity, 0.0, 1.0);
    if let UnreachableStrategy::Enabled { inactive_after_seconds, expunge_after_seconds } = app.unreachable_strategy {
        // Marathon reads these as int64; beyond int32's seconds (68 years) they mean nothing.
        at_least(p, "/unreachableStrategy/inactiveAfterSeconds", inactive_after_seconds, 0);
        at_most(p, "/unreachableStrategy/inactiveAfterSeconds", inactive_after_seconds, MAX_SECONDS);
        at_most(p, "/unreachableStrategy/expungeAfterSeconds", expunge_after_seconds, MAX_SECONDS);
        if inactive_after_seconds > expunge_after_seconds {
            p.add(
                "/unreachableStrategy/inactiveAfterSeconds",
                format!("got {inactive_after_seconds}, expected {expunge_after_seconds} or less"),
            );
        }
    }
    if app.gpus > 0 && app.container.as_ref().is_some_and(|c| c.kind == ContainerType::Docker) {
        p.add("", "GPU resources only work with the Mesos containerizer");
    }
}

fn port_rules(app: &AppDefinition, p: &mut Problems) {
    let ports: Vec<u16> = app.port_definitions.iter().map(|d| d.port).filter(|&port| port != 0).collect();
    if has_duplicates(ports.iter()) {
        p.add("/portDefinitions", "Ports must be unique.");
    }
    if has_duplicates(app.port_definitions.iter().filter_map(|d| d.name.as_ref())) {
        p.add("/portDefinitions", "Port names must be unique.");
    }
    if app.require_ports
        && app.is_host_networked()
        && let Some(i) = app.port_definitions.iter().position(|d| d.port == 0)
    {
        p.add("/requirePorts", format!("requirePorts needs fixed, non-zero ports, but port {i} is dynamic (0)"));
    }
}

/// Marathon's rules for `networks`: host alone and unnamed, one `container/bridge` alone and
/// unnamed, or named `container` networks (Marina has no default network name), no name
/// twice; a `hostPort` mapping only with at most one container network.
fn network_rules(app: &AppDefinition, p: &mut Problems) {
    let count = |mode| app.networks.iter().filter(|n| n.mode == mode).count();
    let (host, bridge, container) =
        (count(NetworkMode::Host), count(NetworkMode::ContainerBridge), count(NetworkMode::Container));
    if host + bridge > 1 || (host + bridge == 1 && app.networks.len() > 1) {
        p.add("/networks", "host and container/bridge networking may not be combined with other networks");
    }
    for (i, network) in app.networks.iter().enumerate() {
        let path = item_path("/networks", i);
        match (network.mode, &network.name) {
            (NetworkMode::Container, None) => p.add(&path, "container networks must name their network"),
            (NetworkMode::Host | NetworkMode::ContainerBridge, Some(_)) => {
                p.add(&path, "only container networks have a name")
            }
            _ => {}
        }
        let named_before = app.networks[..i].iter().any(|other| other.name.is_some() && other.name == network.name);
        if named_before {
            p.add(&path, "names a network twice");
        }
    }
    let host_ports = app.port_mappings().is_some_and(|mappings| mappings.iter().any(|m| m.host_port.is_some()));
    if container > 1 && host_ports {
        p.add("/container/portMappings", "hostPort needs a single container network to map from");
    }
}

fn container_rules(app: &AppDefinition, p: &mut Problems) {
    let Some(container) = &app.container else { return };
    match container.kind {
        ContainerType::Docker if container.docker.is_none() => {
            p.add("/container/docker", "not defined");
        }
        ContainerType::Mesos if container.docker.is_some() && container.appc.is_some() => {
            p.add("/container", "mesos containers should specify, at most, a single image type");
        }
        _ => {}
    }
    if let Some(mappings) = &container.port_mappings
        && has_duplicates(mappings.iter().filter_map(|m| m.name.as_ref()))
    {
        p.add("/container/portMappings", "Port names must be unique.");
    }
}

fn health_check_rules(app: &AppDefinition, p: &mut Problems) {
    let port_count = app.port_count();
    for (i, check) in app.health_checks.iter().enumerate() {
        let path = item_path("/healthChecks", i);
        // Marathon's minimum is 0, which would run the check in a tight loop.
        at_least(p, &field_path(&path, "intervalSeconds"), i64::from(check.interval_seconds), 1);
        if check.protocol == HealthCheckProtocol::Command {
            if check.command.as_ref().is_none_or(|c| c.value.trim().is_empty()) {
                p.add(&field_path(&path, "command"), "COMMAND health checks need a command with a non-empty value");
            }
        } else if check.protocol.is_marathon_check() {
            let addressable = match check.port_index {
                Some(index) => (index as usize) < port_count,
                None => check.port.is_some(),
            };
            if !addressable {
                p.add(
                    &path,
                    "Health check port indices must address an element of the ports array or container port mappings.",
                );
            }
        }
    }
    let mesos_checks = app.health_checks.iter().filter(|c| !c.protocol.is_marathon_check()).count();
    let command_checks = app.health_checks.iter().filter(|c| c.protocol == HealthCheckProtocol::Command).count();
    // Marathon tolerates several COMMAND checks (older versions stored them), but at most one
    // other check run by Mesos.
    if mesos_checks - command_checks > 1 {
        p.add("", "AppDefinition can contain at most one Mesos health check");
    }
}

fn readiness_check_rules(app: &AppDefinition, p: &mut Problems) {
    if app.readiness_checks.len() > 1 {
        p.add("/readinessChecks", format!("got {}, expected 1 or less", app.readiness_checks.len()));
    }
    let names: HashSet<&str> = app.port_names().into_iter().flatten().collect();
    for (i, check) in app.readiness_checks.iter().enumerate() {
        let path = item_path("/readinessChecks", i);
        if !names.contains(check.port_name.as_str()) {
            p.add(
                &field_path(&path, "portName"),
                format!("No port definition reference for portName {}", check.port_name),
            );
        }
        if check.protocol == HttpScheme::Https {
            // The gateway probes over plain HTTP only; refusing beats a deployment that can
            // never finish.
            p.add(&field_path(&path, "protocol"), "HTTPS readiness checks are not supported by Marina; use HTTP");
        }
        if check.http_status_codes_for_ready.len() > MAX_ITEMS {
            p.add(
                &field_path(&path, "httpStatusCodesForReady"),
                format!("got {} items, expected {MAX_ITEMS} or less", check.http_status_codes_for_ready.len()),
            );
        }
        if check.timeout_seconds >= check.interval_seconds {
            p.add(
                &field_path(&path, "timeoutSeconds"),
                format!("got {}, expected less than {}", check.timeout_seconds, check.interval_seconds),
            );
        }
    }
}

fn scheduling_rules(app: &AppDefinition, p: &mut Problems) {
    if app.labels.get(LABEL_SINGLE_INSTANCE_APP).is_some_and(|v| v == "true") {
        if app.instances > 1 {
            p.add("", "Single instance app may only have one instance");
        }
        let strategy = app.upgrade_strategy;
        if strategy.minimum_health_capacity != 0.0 {
            p.add(
                "/upgradeStrategy/minimumHealthCapacity",
                format!("got {:?}, expected 0.0", strategy.minimum_health_capacity),
            );
        }
        if strategy.maximum_over_capacity != 0.0 {
            p.add(
                "/upgradeStrategy/maximumOverCapacity",
                format!("got {:?}, expected 0.0", strategy.maximum_over_capacity),
            );
        }
    }
}

/// Numbers as Marathon (Scala) prints them in messages: `-1.0`, `1.15`, `-3`.
trait Shown: PartialOrd + Copy {
    fn shown(self) -> String;
}

impl Shown for f64 {
    fn shown(self) -> String {
        format!("{self:?}")
    }
}

impl Shown for i64 {
    fn shown(self) -> String {
        self.to_string()
    }
}

/// `got -1.0, expected 0.0 or more`. A value that does not compare (NaN) is refused too.
fn at_least<T: Shown>(p: &mut Problems, path: &str, value: T, min: T) {
    if matches!(value.partial_cmp(&min), None | Some(Ordering::Less)) {
        p.add(path, format!("got {}, expected {} or more", value.shown(), min.shown()));
    }
}

/// `got 2000000.0, expected 1000000.0 or less`.
fn at_most<T: Shown>(p: &mut Problems, path: &str, value: T, max: T) {
    if value.partial_cmp(&max) == Some(Ordering::Greater) {
        p.add(path, format!("got {}, expected {} or less", value.shown(), max.shown()));
    }
}

/// `got 1.2, expected between 0.0 and 1.0`. A value that does not compare (NaN) is refused.
fn between<T: Shown>(p: &mut Problems, path: &str, value: T, min: T, max: T) {
    let below = matches!(value.partial_cmp(&min), None | Some(Ordering::Less));
    if below || value.partial_cmp(&max) == Some(Ordering::Greater) {
        p.add(path, format!("got {}, expected between {} and {}", value.shown(), min.shown(), max.shown()));
    }
}

fn has_duplicates<T: Eq + std::hash::Hash>(mut items: impl Iterator<Item = T>) -> bool {
    let mut seen = HashSet::new();
    !items.all(|item| seen.insert(item))
}
