//! Marathon's rules for an app definition, reported at Marathon's paths in Marathon's words.

use std::collections::HashSet;

use regex::Regex;

use super::definition::*;
use super::violation::{Problems, Violation, field_path, item_path};

/// Marathon's pattern for `executor`, quoted as-is in its error message.
const EXECUTOR_PATTERN: &str = "^(//cmd)|(/?[^/]+(/[^/]+)*)|$";

/// Checks `app` against Marathon's rules; on failure, every violation found.
pub fn validate(app: &AppDefinition) -> Result<(), Vec<Violation>> {
    let mut p = Problems::default();
    id_rules(app, &mut p);
    command_rules(app, &mut p);
    resource_rules(app, &mut p);
    port_rules(app, &mut p);
    container_rules(app, &mut p);
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
    for name in app.env.keys() {
        if name.is_empty() {
            p.add(&item_path("/env", name), "must not be empty");
        } else if name.len() >= 255 {
            p.add(&item_path("/env", name), "variable name must be 254 chars or less");
        }
    }
    for name in app.labels.keys().filter(|k| k.is_empty()) {
        p.add(&item_path("/labels", name), "must not be empty");
    }
    scheduling_rules(app, &mut p);
    p.into_result()
}

fn id_rules(app: &AppDefinition, p: &mut Problems) {
    if app.id.is_root() {
        p.add("/id", "Path must contain at least one path element");
    }
    for problem in app.id.problems() {
        p.add("/id", problem);
    }
}

fn command_rules(app: &AppDefinition, p: &mut Problems) {
    let (cmd, args) = (app.cmd.is_some(), app.args.is_some());
    let container = app.container.as_ref().is_some_and(|c| match c.kind {
        ContainerType::Docker | ContainerType::Containerd => c.docker.is_some(),
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
    at_least(p, "/instances", app.instances, 0);
    at_least(p, "/cpus", app.cpus, 0.0);
    at_least(p, "/mem", app.mem, 0.0);
    at_least(p, "/disk", app.disk, 0.0);
    at_least(p, "/gpus", app.gpus, 0);
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
        at_least(p, "/unreachableStrategy/inactiveAfterSeconds", inactive_after_seconds, 0);
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

fn container_rules(app: &AppDefinition, p: &mut Problems) {
    let Some(container) = &app.container else { return };
    match container.kind {
        ContainerType::Docker | ContainerType::Containerd if container.docker.is_none() => {
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

/// `got -1.0, expected 0.0 or more`.
fn at_least<T: Shown>(p: &mut Problems, path: &str, value: T, min: T) {
    if value < min {
        p.add(path, format!("got {}, expected {} or more", value.shown(), min.shown()));
    }
}

/// `got 1.2, expected between 0.0 and 1.0`.
fn between<T: Shown>(p: &mut Problems, path: &str, value: T, min: T, max: T) {
    if value < min || value > max {
        p.add(path, format!("got {}, expected between {} and {}", value.shown(), min.shown(), max.shown()));
    }
}

fn has_duplicates<T: Eq + std::hash::Hash>(mut items: impl Iterator<Item = T>) -> bool {
    let mut seen = HashSet::new();
    !items.all(|item| seen.insert(item))
}
