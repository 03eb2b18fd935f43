//! The OCI runtime spec a task's container runs with — containerd has no defaults of its own
//! at the API level (its Go client builds the spec), so the whole spec is written here,
//! after containerd's and Docker's defaults: the standard mounts, a pid/ipc/uts/mount
//! namespace each, Docker's default capabilities, masked kernel paths, cgroup limits.
//!
//! The task's sandbox is bind-mounted read-write at [`SANDBOX_MOUNT`] (`/mnt/mesos/sandbox`,
//! Mesos' docker containerizer's path), where `MESOS_SANDBOX` and `MARINA_SANDBOX` point.
//!
//! Networking: containerd has no CNI set up here, so `Bridge` and `Host` both run in the
//! host's network namespace (the task binds the host ports it is given), with the host's
//! `/etc/hosts` and `/etc/resolv.conf`; `None` gets a network namespace of its own with only
//! a loopback interface. Container networks (`Container`) need CNI: refused as
//! [`RuntimeError::Unsupported`] (the gateways place such apps on Docker agents only).

use std::collections::BTreeMap;
use std::path::Path;

use marina_runtime::{Command, NetworkMode, RuntimeError, RuntimeKind, SANDBOX_MOUNT, SANDBOX_VARIABLES, TaskSpec};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::images::ContainerConfig;

/// containerd's longest identifier.
const MAX_IDENTIFIER: usize = 76;
/// The CFS period the cpu quota is expressed in (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// The PATH containerd gives processes whose image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set for unprivileged containers.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability runc 1.1 knows, for privileged containers.
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Kernel files an unprivileged container must not read (containerd's defaults).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Kernel files an unprivileged container may only read.
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// containerd's identifier rule: letters and digits, separated by single `.`, `_` or `-`,
/// at most 76 characters.
pub(crate) fn is_valid_identifier(id: &str) -> bool {
    let separator = |c: char| matches!(c, '.' | '_' | '-');
    !id.is_empty()
        && id.len() <= MAX_IDENTIFIER
        && id.chars().all(|c| c.is_ascii_alphanumeric() || separator(c))
        && !id.starts_with(separator)
        && !id.ends_with(separator)
        && !id.chars().zip(id.chars().skip(1)).any(|(a, b)| separator(a) && separator(b))
}

/// The container id of a task: the task id itself when containerd accepts it; otherwise its
/// valid characters plus a hash of the whole id, so distinct task ids never share one.
pub(crate) fn container_id(task_id: &str) -> String {
    if is_valid_identifier(task_id) {
        return task_id.to_owned();
    }
    let mut cleaned = String::new();
    for c in task_id.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' };
        let separator = !c.is_ascii_alphanumeric();
        if separator && (cleaned.is_empty() || cleaned.ends_with(['.', '_', '-'])) {
            continue;
        }
        cleaned.push(c);
    }
    let hash = format!("{:x}", Sha256::digest(task_id.as_bytes()));
    // 76 = 59 + '-' + 16 hex digits.
    let mut prefix: String = cleaned.chars().take(59).collect();
    while prefix.ends_with(['.', '_', '-']) {
        prefix.pop();
    }
    if prefix.is_empty() { format!("task-{}", &hash[..16]) } else { format!("{prefix}-{}", &hash[..16]) }
}

/// The cgroup a task's container runs in: `/<namespace>/<container id>`, as `ctr` does.
pub(crate) fn cgroups_path(namespace: &str, container_id: &str) -> String {
    format!("/{namespace}/{container_id}")
}

/// What the task runs: `Shell` through `/bin/sh -c`, `Argv` after the image's entrypoint,
/// nothing at all as the image's entrypoint and command.
pub(crate) fn process_args(command: Option<&Command>, image: &ContainerConfig) -> Result<Vec<String>, RuntimeError> {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let args = match command {
        Some(Command::Shell(line)) => vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()],
        Some(Command::Argv(argv)) => entrypoint.into_iter().chain(argv.iter().cloned()).collect(),
        None => entrypoint.into_iter().chain(image.cmd.clone().unwrap_or_default()).collect(),
    };
    if args.is_empty() {
        return Err(RuntimeError::InvalidSpec(
            "the task has no command and its image has neither an entrypoint nor a command".to_owned(),
        ));
    }
    Ok(args)
}

/// The image's environment with the task's on top (a task variable replaces the image's
/// of the same name in place), and a default PATH when neither sets one.
pub(crate) fn environment(image: &ContainerConfig, task: &BTreeMap<String, String>) -> Vec<String> {
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    for (key, value) in task {
        let entry = format!("{key}={value}");
        match env.iter_mut().find(|existing| existing.split_once('=').map_or(existing.as_str(), |(k, _)| k) == key) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
    if !env.iter().any(|entry| entry.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    env
}

/// The uid and gid the image's `USER` names. Only numeric users (and `root`) are supported:
/// resolving names needs the image's `/etc/passwd`, which would mean mounting its rootfs here.
pub(crate) fn user(image: &ContainerConfig) -> Result<(u32, u32), RuntimeError> {
    let user = image.user.as_deref().unwrap_or_default();
    if user.is_empty() || user == "root" || user == "0" {
        return Ok((0, 0));
    }
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let parse = |s: &str| s.parse::<u32>().ok();
    match (parse(uid), gid.map(parse)) {
        (Some(uid), None) => Ok((uid, uid)),
        (Some(uid), Some(Some(gid))) => Ok((uid, gid)),
        _ => Err(RuntimeError::Unsupported {
            runtime: RuntimeKind::Containerd,
            reason: format!("the image runs as user {user:?}; only numeric users (uid[:gid]) are supported"),
        }),
    }
}

/// The task's sandbox (`sandbox`: its absolute path on this host), bind-mounted read-write
/// at [`SANDBOX_MOUNT`]. Recursive and private, as Docker's binds are; executable, since
/// tasks run what they fetch into their sandbox. The mount lives in the container's own
/// mount namespace, which its shim keeps: the agent restarting does not touch it, and the
/// path stays the same for the agent that re-adopts the task.
fn sandbox_mount(sandbox: &Path) -> Result<Value, RuntimeError> {
    let source = sandbox.to_str().filter(|_| sandbox.is_absolute()).ok_or_else(|| {
        RuntimeError::InvalidSpec(format!(
            "the sandbox {} must be an absolute UTF-8 path to be mounted",
            sandbox.display()
        ))
    })?;
    Ok(json!({"destination": SANDBOX_MOUNT, "type": "bind", "source": source, "options": ["rbind", "rprivate", "rw"]}))
}

/// The complete OCI runtime spec of a task's container; `sandbox` is the absolute path of
/// the task's sandbox on this host.
pub(crate) fn runtime_spec(
    spec: &TaskSpec,
    sandbox: &Path,
    image: &ContainerConfig,
    container_id: &str,
    namespace: &str,
) -> Result<Value, RuntimeError> {
    let args = process_args(spec.command.as_ref(), image)?;
    let (uid, gid) = user(image)?;
    // The image's working directory, as under Mesos' docker containerizer, which mounts the
    // sandbox without entering it.
    let cwd = image.working_dir.clone().filter(|dir| dir.starts_with('/')).unwrap_or_else(|| "/".to_owned());
    let mut env = spec.env.clone();
    env.extend(SANDBOX_VARIABLES.map(|name| (name.to_owned(), SANDBOX_MOUNT.to_owned())));
    let capabilities = if spec.privileged { ALL_CAPABILITIES } else { DEFAULT_CAPABILITIES };

    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    let mut mounts = standard_mounts(spec.privileged);
    let mut hostname = None;
    match &spec.network {
        NetworkMode::Container(network) => {
            return Err(RuntimeError::Unsupported {
                runtime: RuntimeKind::Containerd,
                reason: format!("it has no CNI, so task {} cannot join the container network {network}", spec.task_id),
            });
        }
        NetworkMode::None => {
            namespaces.push(json!({"type": "network"}));
            hostname = Some(container_id.chars().take(63).collect::<String>());
        }
        // No CNI: the host's network, and so its name resolution.
        NetworkMode::Bridge | NetworkMode::Host => {
            for file in ["/etc/hosts", "/etc/resolv.conf"] {
                if Path::new(file).exists() {
                    mounts.push(json!({"destination": file, "type": "bind", "source": file,
                                       "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
                }
            }
        }
    }
    mounts.push(sandbox_mount(sandbox)?);

    let mut resources = serde_json::Map::new();
    resources.insert(
        "devices".into(),
        // runc adds the standard devices (null, zero, random, tty, ...) to an unprivileged
        // container on top of this deny-all rule.
        json!([{"allow": spec.privileged, "access": "rwm"}]),
    );
    if spec.resources.mem_mb > 0.0 {
        let bytes = (spec.resources.mem_mb * 1024.0 * 1024.0).round() as i64;
        resources.insert("memory".into(), json!({"limit": bytes}));
    }
    if spec.resources.cpus > 0.0 {
        let quota = ((spec.resources.cpus * CPU_PERIOD_US as f64).round() as u64).max(MIN_CPU_QUOTA_US);
        let shares = ((spec.resources.cpus * 1024.0).round() as u64).max(2);
        resources.insert("cpu".into(), json!({"quota": quota, "period": CPU_PERIOD_US, "shares": shares}));
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": cgroups_path(namespace, container_id),
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }

    let mut document = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": environment(image, &env),
            "cwd": cwd,
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": !spec.privileged,
        },
        "root": {"path": "rootfs", "readonly": false},
        "mounts": mounts,
        "linux": linux,
    });
    if let Some(hostname) = hostname {
        document["hostname"] = json!(hostname);
    }
    Ok(document)
}

/// containerd's default mounts: /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys, /run.
fn standard_mounts(privileged: bool) -> Vec<Value> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ]
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    use marina_runtime::Resources;

    use super::*;

    fn task(command: Option<Command>) -> TaskSpec {
        TaskSpec {
            task_id: "t".into(),
            sandbox: PathBuf::from("/tmp/t"),
            command,
            image: Some("busybox".into()),
            force_pull: false,
            env: BTreeMap::from([("PATH".into(), "/bin".into()), ("GREETING".into(), "hi".into())]),
            resources: Resources { cpus: 0.5, mem_mb: 64.0, disk_mb: 0.0 },
            ports: Vec::new(),
            network: NetworkMode::Bridge,
            privileged: false,
            labels: BTreeMap::new(),
            parameters: Vec::new(),
            user: None,
        }
    }

    fn image() -> ContainerConfig {
        ContainerConfig {
            env: Some(vec!["PATH=/usr/bin".into(), "LANG=C".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn valid_ids_are_kept_and_others_are_made_valid_and_distinct() {
        assert_eq!(container_id("app.instance-1_a"), "app.instance-1_a");
        let odd = container_id("app/with spaces//and:colons");
        assert!(is_valid_identifier(&odd), "{odd}");
        assert!(odd.starts_with("app-with-spaces-and-colons-"), "{odd}");
        assert_ne!(container_id("a/b"), container_id("a:b"));
        let long = container_id(&"x".repeat(200));
        assert!(is_valid_identifier(&long) && long.len() <= MAX_IDENTIFIER, "{long}");
        assert!(is_valid_identifier(&container_id("///")));
        assert!(!is_valid_identifier("a..b") && !is_valid_identifier("-a") && !is_valid_identifier(""));
    }

    #[test]
    fn commands_follow_marathon_semantics() {
        let image = image();
        assert_eq!(
            process_args(Some(&Command::Shell("echo hi".into())), &image).unwrap(),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(process_args(Some(&Command::Argv(vec!["--port".into()])), &image).unwrap(), ["/entry", "--port"]);
        assert_eq!(process_args(None, &image).unwrap(), ["/entry", "serve"]);
        assert!(process_args(None, &ContainerConfig::default()).is_err());
    }

    #[test]
    fn task_environment_overrides_the_image() {
        let env = environment(&image(), &task(None).env);
        assert_eq!(env, ["PATH=/bin", "LANG=C", "GREETING=hi"]);
        let env = environment(&ContainerConfig::default(), &BTreeMap::new());
        assert_eq!(env, [DEFAULT_PATH]);
    }

    #[test]
    fn users_must_be_numeric() {
        let with_user = |user: &str| ContainerConfig { user: Some(user.into()), ..Default::default() };
        assert_eq!(user(&with_user("")).unwrap(), (0, 0));
        assert_eq!(user(&with_user("1000")).unwrap(), (1000, 1000));
        assert_eq!(user(&with_user("1000:50")).unwrap(), (1000, 50));
        assert!(matches!(user(&with_user("nobody")), Err(RuntimeError::Unsupported { .. })));
    }

    #[test]
    fn the_sandbox_is_mounted_where_mesos_mounts_it_and_the_cwd_stays_the_images() {
        let mut task = task(None);
        // What the agent passes: the host's path, which means nothing in the container.
        task.env.insert("MARINA_SANDBOX".into(), "/var/lib/marina/agent/sandboxes/t".into());
        task.env.insert("MESOS_SANDBOX".into(), "/var/lib/marina/agent/sandboxes/t".into());
        let mut image = image();
        image.env.get_or_insert_with(Vec::new).push("MESOS_SANDBOX=/from/the/image".into());
        let sandbox = Path::new("/var/lib/marina/agent/sandboxes/t");
        let spec = runtime_spec(&task, sandbox, &image, "c1", "marina").unwrap();
        let mounts = spec["mounts"].as_array().unwrap();
        let at_sandbox: Vec<&Value> = mounts.iter().filter(|m| m["destination"] == "/mnt/mesos/sandbox").collect();
        let expected = json!({"destination": "/mnt/mesos/sandbox", "type": "bind",
                              "source": "/var/lib/marina/agent/sandboxes/t", "options": ["rbind", "rprivate", "rw"]});
        assert_eq!(at_sandbox, [&expected]);
        assert_eq!(mounts.last(), Some(at_sandbox[0]), "after the standard mounts, so nothing covers it");
        let env: Vec<&str> = spec["process"]["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(
            env,
            [
                "PATH=/bin",
                "LANG=C",
                "MESOS_SANDBOX=/mnt/mesos/sandbox",
                "GREETING=hi",
                "MARINA_SANDBOX=/mnt/mesos/sandbox"
            ]
        );
        assert_eq!(spec["process"]["cwd"], "/srv", "the image's working directory");
        let no_workdir = ContainerConfig { working_dir: None, ..image };
        assert_eq!(runtime_spec(&task, sandbox, &no_workdir, "c1", "marina").unwrap()["process"]["cwd"], "/");

        for unmountable in [Path::new("relative/t"), Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff"))] {
            match runtime_spec(&task, unmountable, &no_workdir, "c1", "marina") {
                Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("sandbox"), "{message}"),
                other => panic!("expected InvalidSpec, got {other:?}"),
            }
        }
    }

    #[test]
    fn limits_namespaces_and_privileges_reach_the_spec() {
        let spec = runtime_spec(&task(None), Path::new("/tmp/t"), &image(), "c1", "marina").unwrap();
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["cgroupsPath"], "/marina/c1");
        assert_eq!(spec["process"]["cwd"], "/srv");
        let namespaces: Vec<&str> =
            spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(!namespaces.contains(&"network"), "bridge runs in the host network");
        assert!(spec["linux"]["maskedPaths"].is_array());

        let mut isolated = task(None);
        isolated.network = NetworkMode::None;
        isolated.privileged = true;
        let spec = runtime_spec(&isolated, Path::new("/tmp/t"), &image(), "c1", "marina").unwrap();
        assert!(spec["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "network"));
        assert!(spec["linux"]["maskedPaths"].is_null());
        assert_eq!(spec["process"]["capabilities"]["bounding"].as_array().unwrap().len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn container_networks_are_refused_naming_the_network() {
        let mut joined = task(None);
        joined.network = NetworkMode::Container("dev".into());
        match runtime_spec(&joined, Path::new("/tmp/t"), &image(), "c1", "marina") {
            Err(RuntimeError::Unsupported { reason, .. }) => assert!(reason.contains("network dev"), "{reason}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}
