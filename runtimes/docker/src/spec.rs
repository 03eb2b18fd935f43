//! Turning a [`TaskSpec`] into the engine's container-create request.
//!
//! Pure (no engine call), so every refusal happens before anything exists on the engine and
//! the translation is unit tested without Docker. Refusals are `InvalidSpec` (or
//! `Unsupported`) naming what is wrong: a task silently started without the limit or port it
//! asked for is worse than one that fails to start.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, PortBinding};
use marina_runtime::{
    Command, LABEL_TASK_ID, LogRotation, NetworkMode, Protocol, RuntimeError, RuntimeKind, SANDBOX_MOUNT,
    SANDBOX_VARIABLES, TaskSpec,
};

use crate::parameters;

/// Every Marina container's name starts with this, so operators can tell them apart.
pub const NAME_PREFIX: &str = "marina-";

/// The container name of a task: `marina-<task_id>`.
///
/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; other characters become `_`, and then a
/// hash of the original id is appended so that two ids differing only in those characters
/// (`a/b`, `a:b`) cannot collide on one name.
pub fn container_name(task_id: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let sanitized: String = task_id.chars().map(|c| if allowed(c) { c } else { '_' }).collect();
    if sanitized == task_id && !task_id.is_empty() {
        format!("{NAME_PREFIX}{task_id}")
    } else {
        format!("{NAME_PREFIX}{sanitized}-{:016x}", fnv1a(task_id.as_bytes()))
    }
}

/// FNV-1a: tiny and, unlike std's `DefaultHasher`, guaranteed stable across Rust releases —
/// the name must be the same after the agent is upgraded.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Splits an image reference into what the engine's pull API wants: the repository and a tag
/// or digest. A missing tag means `latest` — an empty tag would make the engine pull *every*
/// tag of the repository.
pub(crate) fn split_reference(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_owned(), digest.to_owned());
    }
    // A colon before the last slash belongs to a registry's port (`host:5000/app`).
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => (image[..name_start + colon].to_owned(), image[name_start + colon + 1..].to_owned()),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

/// The container-create body for `spec`; its output rotated as `log_rotation` says, if given.
pub(crate) fn container_body(
    spec: &TaskSpec,
    log_rotation: Option<&OutputRotation>,
) -> Result<ContainerCreateBody, RuntimeError> {
    let image = spec.image.clone().ok_or_else(|| RuntimeError::Unsupported {
        runtime: RuntimeKind::Docker,
        reason: format!("task {} has no image; the docker runtime only runs images", spec.task_id),
    })?;
    let (entrypoint, cmd) = command(spec.command.as_ref())?;

    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    match labels.get(LABEL_TASK_ID) {
        // `list` finds a task's identity in this label, so it must be the task's own.
        Some(labelled) if *labelled != spec.task_id => {
            return Err(RuntimeError::InvalidSpec(format!(
                "label {LABEL_TASK_ID}={labelled} does not match task id {}",
                spec.task_id
            )));
        }
        Some(_) => {}
        None => {
            labels.insert(LABEL_TASK_ID.to_owned(), spec.task_id.clone());
        }
    }

    let mut env = Vec::with_capacity(spec.env.len() + SANDBOX_VARIABLES.len());
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') {
            return Err(RuntimeError::InvalidSpec(format!("invalid environment variable name {key:?}")));
        }
        if !SANDBOX_VARIABLES.contains(&key.as_str()) {
            env.push(format!("{key}={value}"));
        }
    }
    env.extend(SANDBOX_VARIABLES.map(|name| format!("{name}={SANDBOX_MOUNT}")));

    let mut host = HostConfig {
        network_mode: Some(network_mode(&spec.network)?.to_owned()),
        privileged: Some(spec.privileged),
        // No restart policy on purpose: the agent decides whether a task is relaunched.
        restart_policy: None,
        mounts: Some(vec![sandbox_mount(spec)?]),
        ..Default::default()
    };
    resources(spec, &mut host)?;

    let mut body = ContainerCreateBody {
        image: Some(image),
        entrypoint,
        cmd,
        env: Some(env),
        labels: Some(labels),
        // No working directory: the image's stays, as under Mesos' docker containerizer,
        // which mounts the sandbox without entering it (`docker.parameters` `workdir` can).
        working_dir: None,
        ..Default::default()
    };
    ports(spec, &mut body, &mut host)?;
    parameters::apply(&spec.parameters, &mut body, &mut host)?;
    if let Some(rotation) = log_rotation {
        rotate_logs(&mut host, rotation);
    }
    body.host_config = Some(host);
    Ok(body)
}

/// The task's sandbox, bind-mounted read-write at [`SANDBOX_MOUNT`].
///
/// A `Mounts` entry rather than a `Binds` one: the engine refuses a source that does not
/// exist on its host instead of creating an empty directory there, so an agent whose sandbox
/// paths mean something else to the engine (an agent in a container, its work dir not
/// mounted at the same path) fails its tasks' starts loudly rather than losing what they
/// write. Nothing here ties the container to this agent process: a re-adopted container
/// keeps its mount, since the sandbox's path is the same across the agent's restarts.
fn sandbox_mount(spec: &TaskSpec) -> Result<Mount, RuntimeError> {
    let sandbox = spec.sandbox.to_str().filter(|_| spec.sandbox.is_absolute()).ok_or_else(|| {
        RuntimeError::InvalidSpec(format!(
            "the sandbox {} must be an absolute UTF-8 path to be mounted",
            spec.sandbox.display()
        ))
    })?;
    Ok(Mount {
        target: Some(SANDBOX_MOUNT.to_owned()),
        source: Some(sandbox.to_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(false),
        ..Default::default()
    })
}

/// How containers' output rotates on an engine: the agent's rotation, and the logging
/// driver the engine gives a container that names none.
#[derive(Debug, Clone)]
pub(crate) struct OutputRotation {
    pub rotation: LogRotation,
    pub engine_driver: String,
}

/// The drivers that keep output in files on the engine's disk and rotate it themselves with
/// `max-size` and `max-file`.
const FILE_DRIVERS: [&str; 2] = ["json-file", "local"];

/// The file drivers' own rotation (`max-size`, `max-file` counting the current file), so a
/// chatty task cannot fill the engine's disk. Applied to the driver the container will use —
/// the task's own (`docker.parameters`) or else the engine's default — when that driver keeps
/// files; any other (journald, syslog, fluentd: where the operator ships output) is left as
/// it is, since those options are not its own. Options a task set itself win.
fn rotate_logs(host: &mut HostConfig, output: &OutputRotation) {
    let chosen = host.log_config.as_ref().and_then(|log| log.typ.clone());
    let driver = chosen.unwrap_or_else(|| output.engine_driver.clone());
    if !FILE_DRIVERS.contains(&driver.as_str()) {
        return;
    }
    let log = host.log_config.get_or_insert_with(HostConfigLogConfig::default);
    log.typ = Some(driver);
    let options = log.config.get_or_insert_with(Default::default);
    let rotation = output.rotation;
    options.entry("max-size".to_owned()).or_insert_with(|| rotation.max_bytes.max(1).to_string());
    options.entry("max-file".to_owned()).or_insert_with(|| (u64::from(rotation.keep) + 1).to_string());
}

/// A container's `Entrypoint` and `Cmd`; `None` keeps the image's.
type EntrypointAndCmd = (Option<Vec<String>>, Option<Vec<String>>);

/// Marathon's semantics: `cmd` runs through `/bin/sh -c` (replacing the image's entrypoint);
/// `args` replace the image's command but keep its entrypoint; neither runs the image as built.
fn command(command: Option<&Command>) -> Result<EntrypointAndCmd, RuntimeError> {
    match command {
        None => Ok((None, None)),
        Some(Command::Shell(line)) => Ok((Some(vec!["/bin/sh".into(), "-c".into()]), Some(vec![line.clone()]))),
        Some(Command::Argv(argv)) if argv.is_empty() => {
            Err(RuntimeError::InvalidSpec("an argument vector needs at least one element".into()))
        }
        Some(Command::Argv(argv)) => Ok((None, Some(argv.clone()))),
    }
}

/// The engine's `NetworkMode`: a container network is named by itself (the engine resolves
/// names and ids of its networks).
fn network_mode(mode: &NetworkMode) -> Result<&str, RuntimeError> {
    match mode {
        NetworkMode::Bridge => Ok("bridge"),
        NetworkMode::Host => Ok("host"),
        NetworkMode::None => Ok("none"),
        NetworkMode::Container(name) => check_network_name(name).map(|()| name.as_str()),
    }
}

/// A container network's name as Docker names networks (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`). This
/// also keeps out what the engine's `NetworkMode` would read as something else:
/// `container:<id>` (another container's namespace, the task's neighbour's), and `host` or
/// `none`, where the task would have no address of its own.
pub(crate) fn check_network_name(name: &str) -> Result<(), RuntimeError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let well_formed = name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.chars().all(allowed);
    if !well_formed || name.len() > MAX_NETWORK_NAME {
        return Err(RuntimeError::InvalidSpec(format!(
            "container network name {name:?} is not a Docker network's name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most \
             {MAX_NETWORK_NAME} characters)"
        )));
    }
    if matches!(name, "host" | "none") {
        return Err(RuntimeError::InvalidSpec(format!(
            "{name:?} is not a container network (use the network mode {name} instead)"
        )));
    }
    Ok(())
}

/// Longer names are no network's: the engine makes names of a network's interfaces from them.
const MAX_NETWORK_NAME: usize = 128;

fn resources(spec: &TaskSpec, host: &mut HostConfig) -> Result<(), RuntimeError> {
    let resources = &spec.resources;
    for (name, value) in [("cpus", resources.cpus), ("mem_mb", resources.mem_mb)] {
        if !value.is_finite() || value < 0.0 {
            return Err(RuntimeError::InvalidSpec(format!("{name} must be a non-negative number, got {value}")));
        }
    }
    if resources.mem_mb > 0.0 {
        host.memory = Some((resources.mem_mb * 1024.0 * 1024.0).round() as i64);
    }
    if resources.cpus > 0.0 {
        host.nano_cpus = Some((resources.cpus * 1e9).round() as i64);
    }
    Ok(())
}

/// Bridge networking publishes each port on the host's `0.0.0.0:<host_port>`. The port must
/// be listed in `ExposedPorts` too, or the engine silently ignores its binding. With host
/// networking the task binds its host ports itself; with no network there is nothing to map.
/// On a container network every container port is reachable at the task's own address; the
/// ports given here are those also mapped to a host port (Marathon's `hostPort` there).
fn ports(spec: &TaskSpec, body: &mut ContainerCreateBody, host: &mut HostConfig) -> Result<(), RuntimeError> {
    if spec.ports.is_empty() {
        return Ok(());
    }
    match spec.network {
        NetworkMode::Host => return Ok(()),
        NetworkMode::None => {
            return Err(RuntimeError::InvalidSpec("ports cannot be mapped for a task with network mode none".into()));
        }
        NetworkMode::Bridge | NetworkMode::Container(_) => {}
    }
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for port in &spec.ports {
        if port.container_port == 0 {
            return Err(RuntimeError::InvalidSpec(format!("port {:?} has no container port", port.name)));
        }
        let protocol = match port.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let key = format!("{}/{protocol}", port.container_port);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        // Host port 0 lets the engine choose one.
        let host_port = if port.host_port == 0 { String::new() } else { port.host_port.to_string() };
        let binding = PortBinding { host_ip: Some("0.0.0.0".into()), host_port: Some(host_port) };
        bindings.entry(key).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(binding);
    }
    body.exposed_ports = Some(exposed);
    host.port_bindings = Some(bindings);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    use marina_runtime::{PortMapping, Resources, marina_labels};

    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            task_id: "app.1".into(),
            sandbox: PathBuf::from("/tmp/app.1"),
            command: Some(Command::Shell("echo hi".into())),
            image: Some("marina-test/busybox:latest".into()),
            force_pull: false,
            env: BTreeMap::from([("A".into(), "1".into())]),
            resources: Resources { cpus: 0.5, mem_mb: 64.0, disk_mb: 0.0 },
            ports: vec![PortMapping {
                host_port: 31000,
                container_port: 8080,
                protocol: Protocol::Tcp,
                name: Some("http".into()),
            }],
            network: NetworkMode::Bridge,
            privileged: false,
            labels: marina_labels("app.1", "agent", "fw"),
            parameters: Vec::new(),
            user: None,
        }
    }

    #[test]
    fn names_are_docker_safe_and_distinct() {
        assert_eq!(container_name("app.1-x_y"), "marina-app.1-x_y");
        let (slash, colon) = (container_name("a/b"), container_name("a:b"));
        assert!(slash.starts_with("marina-a_b-"), "{slash}");
        assert_ne!(slash, colon);
        assert_eq!(slash, container_name("a/b"), "stable");
        assert!(container_name("").starts_with("marina-"));
    }

    #[test]
    fn references_always_carry_a_tag() {
        assert_eq!(split_reference("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split_reference("repo/app:1.2"), ("repo/app".into(), "1.2".into()));
        assert_eq!(split_reference("host:5000/app"), ("host:5000/app".into(), "latest".into()));
        assert_eq!(split_reference("host:5000/app:2"), ("host:5000/app".into(), "2".into()));
        assert_eq!(split_reference("app@sha256:abc"), ("app".into(), "sha256:abc".into()));
    }

    #[test]
    fn translates_resources_ports_and_command() {
        let body = container_body(&spec(), None).expect("valid");
        let host = body.host_config.as_ref().expect("host config");
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_owned()]));
        let binding = &host.port_bindings.as_ref().expect("bindings")["8080/tcp"].as_ref().expect("some")[0];
        assert_eq!(binding.host_port.as_deref(), Some("31000"));
        assert_eq!(body.entrypoint, Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]));
        assert_eq!(body.cmd, Some(vec!["echo hi".to_owned()]));
        assert!(body.env.as_ref().expect("env").contains(&"A=1".to_owned()));
        assert!(host.restart_policy.is_none());
    }

    #[test]
    fn the_sandbox_is_mounted_where_mesos_mounts_it_and_the_workdir_stays_the_images() {
        let mut spec = spec();
        // What the agent passes: the host's path, which means nothing in the container.
        spec.env.insert("MARINA_SANDBOX".into(), "/tmp/app.1".into());
        spec.env.insert("MESOS_SANDBOX".into(), "/tmp/app.1".into());
        let body = container_body(&spec, None).expect("valid");
        let host = body.host_config.as_ref().expect("host config");
        let mount = Mount {
            target: Some("/mnt/mesos/sandbox".into()),
            source: Some("/tmp/app.1".into()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        };
        assert_eq!(host.mounts, Some(vec![mount]));
        assert_eq!(host.binds, None, "a Binds entry would create a missing source on the engine's host");
        assert_eq!(
            body.env,
            Some(vec![
                "A=1".to_owned(),
                "MESOS_SANDBOX=/mnt/mesos/sandbox".to_owned(),
                "MARINA_SANDBOX=/mnt/mesos/sandbox".to_owned(),
            ])
        );
        assert_eq!(body.working_dir, None, "the image's working directory");

        // A parameter may still choose the working directory, and not move the sandbox.
        spec.parameters = vec![("workdir".into(), "/mnt/mesos/sandbox".into())];
        let body = container_body(&spec, None).expect("valid");
        assert_eq!(body.working_dir.as_deref(), Some("/mnt/mesos/sandbox"));
        spec.parameters = vec![("env".into(), "MESOS_SANDBOX=/elsewhere".into())];
        assert!(matches!(container_body(&spec, None), Err(RuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn a_sandbox_the_engine_cannot_resolve_is_refused() {
        let mut relative = spec();
        relative.sandbox = PathBuf::from("sandboxes/app.1");
        match container_body(&relative, None) {
            Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("sandboxes/app.1"), "{message}"),
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
        let mut not_utf8 = spec();
        not_utf8.sandbox = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        assert!(matches!(container_body(&not_utf8, None), Err(RuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn argv_keeps_the_entrypoint() {
        let mut spec = spec();
        spec.command = Some(Command::Argv(vec!["echo".into(), "$HOME".into()]));
        let body = container_body(&spec, None).expect("valid");
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, Some(vec!["echo".to_owned(), "$HOME".to_owned()]));
        spec.command = Some(Command::Argv(Vec::new()));
        assert!(matches!(container_body(&spec, None), Err(RuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let mut no_network = spec();
        no_network.network = NetworkMode::None;
        assert!(matches!(container_body(&no_network, None), Err(RuntimeError::InvalidSpec(_))));
        let mut no_image = spec();
        no_image.image = None;
        assert!(matches!(container_body(&no_image, None), Err(RuntimeError::Unsupported { .. })));
        let mut wrong_label = spec();
        wrong_label.labels.insert(LABEL_TASK_ID.into(), "other".into());
        assert!(matches!(container_body(&wrong_label, None), Err(RuntimeError::InvalidSpec(_))));
        let mut nan = spec();
        nan.resources.cpus = f64::NAN;
        assert!(matches!(container_body(&nan, None), Err(RuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn output_rotates_in_files_and_other_drivers_are_left_alone() {
        let rotation = |engine_driver: &str| OutputRotation {
            rotation: LogRotation { max_bytes: 4096, keep: 2 },
            engine_driver: engine_driver.to_owned(),
        };
        let json_file = rotation("json-file");
        let log_config =
            |spec: &TaskSpec| container_body(spec, Some(&json_file)).expect("valid").host_config?.log_config;
        let log = log_config(&spec()).expect("a log config");
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let options = log.config.expect("options");
        assert_eq!((options["max-size"].as_str(), options["max-file"].as_str()), ("4096", "3"));

        let mut own_size = spec();
        own_size.parameters = vec![("log-opt".into(), "max-size=1m".into())];
        let options = log_config(&own_size).expect("a log config").config.expect("options");
        assert_eq!((options["max-size"].as_str(), options["max-file"].as_str()), ("1m", "3"));

        let mut journald = spec();
        journald.parameters = vec![("log-driver".into(), "journald".into())];
        let log = log_config(&journald).expect("a log config");
        assert_eq!((log.typ.as_deref(), log.config), (Some("journald"), None));
        assert_eq!(container_body(&spec(), None).expect("valid").host_config.expect("host").log_config, None);

        // An engine whose default driver ships output elsewhere keeps it; one that keeps
        // files of its own format rotates them.
        let engine_journald = rotation("journald");
        let body = container_body(&spec(), Some(&engine_journald)).expect("valid");
        assert_eq!(body.host_config.expect("host").log_config, None);
        let mut json_task = spec();
        json_task.parameters = vec![("log-driver".into(), "json-file".into())];
        let log = container_body(&json_task, Some(&engine_journald)).expect("valid").host_config.unwrap().log_config;
        assert_eq!(log.expect("a log config").config.expect("options")["max-file"], "3");
        let engine_local = rotation("local");
        let log = container_body(&spec(), Some(&engine_local)).expect("valid").host_config.unwrap().log_config.unwrap();
        assert_eq!((log.typ.as_deref(), log.config.expect("options")["max-size"].as_str()), (Some("local"), "4096"));
    }

    #[test]
    fn a_container_network_is_joined_by_name_and_its_host_ports_published() {
        let mut spec = spec();
        spec.network = NetworkMode::Container("dev-net_1.a".into());
        let body = container_body(&spec, None).expect("valid");
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_owned()]));
        let host = body.host_config.expect("host");
        assert_eq!(host.network_mode.as_deref(), Some("dev-net_1.a"));
        assert!(host.port_bindings.expect("bindings").contains_key("8080/tcp"));
        spec.ports.clear();
        assert_eq!(container_body(&spec, None).expect("valid").exposed_ports, None, "no host port, nothing published");
    }

    #[test]
    fn a_container_network_name_cannot_reach_another_namespace() {
        for name in ["container:marina-other", "host", "none", "", "-x", "a/b", "a b", &"n".repeat(129)] {
            let mut spec = spec();
            spec.network = NetworkMode::Container(name.to_owned());
            match container_body(&spec, None) {
                Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("network"), "{name}: {message}"),
                other => panic!("{name}: expected InvalidSpec, got {other:?}"),
            }
        }
    }

    #[test]
    fn host_networking_maps_nothing() {
        let mut spec = spec();
        spec.network = NetworkMode::Host;
        let body = container_body(&spec, None).expect("valid");
        assert_eq!(body.exposed_ports, None);
        assert_eq!(body.host_config.expect("host").port_bindings, None);
    }
}
