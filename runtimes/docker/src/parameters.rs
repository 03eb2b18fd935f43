//! Marathon's `container.docker.parameters`: `docker run` long options passed through as
//! key/value pairs (`{"key": "memory-swap", "value": "256m"}` is `--memory-swap=256m`).
//!
//! Only the subset in [`SUPPORTED_PARAMETERS`] is understood. Anything else is refused with
//! `InvalidSpec` naming the key instead of being ignored: a dropped swap limit or capability
//! would make the task run differently from what its owner asked for. Options that Marina
//! owns itself (`network`, `restart`, `publish`, `name`, `memory`, `cpus`, ...) are not in the
//! subset because the task spec already says them; `volume` is left out because bind-mounting
//! arbitrary host paths needs an operator policy first.

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use marina_runtime::RuntimeError;

/// The `docker.parameters` keys the Docker runtime understands (short aliases included);
/// any other key fails the task's start with `InvalidSpec` naming it.
///
/// | key | value | becomes |
/// |-----|-------|---------|
/// | `env` / `e` | `NAME=value` | an environment variable (after the spec's own; not `MESOS_SANDBOX` or `MARINA_SANDBOX`, which say where the sandbox is mounted) |
/// | `label` / `l` | `key=value` | a container label (not `marina.*`) |
/// | `user` / `u`, `workdir` / `w`, `hostname` / `h` | text | `User`, `WorkingDir`, `Hostname` |
/// | `init`, `read-only` | `true`/`false` (empty = true) | `Init`, `ReadonlyRootfs` |
/// | `memory-swap` | size (`256m`) or `-1` | `MemorySwap` |
/// | `memory-reservation`, `shm-size` | size | `MemoryReservation`, `ShmSize` |
/// | `cpu-shares` / `c`, `pids-limit` | integer | `CpuShares`, `PidsLimit` |
/// | `cap-add`, `cap-drop`, `dns`, `dns-search`, `add-host`, `security-opt` | text, repeatable | the lists of the same name |
/// | `sysctl` | `key=value` | `Sysctls` |
/// | `ulimit` | `name=soft[:hard]` | `Ulimits` |
/// | `tmpfs` | `path[:options]` | `Tmpfs` |
/// | `log-driver` / `log-opt` | driver / `key=value` | `LogConfig` |
pub const SUPPORTED_PARAMETERS: &[&str] = &[
    "env",
    "e",
    "label",
    "l",
    "user",
    "u",
    "workdir",
    "w",
    "hostname",
    "h",
    "init",
    "read-only",
    "memory-swap",
    "memory-reservation",
    "shm-size",
    "cpu-shares",
    "c",
    "pids-limit",
    "cap-add",
    "cap-drop",
    "dns",
    "dns-search",
    "add-host",
    "security-opt",
    "sysctl",
    "ulimit",
    "tmpfs",
    "log-driver",
    "log-opt",
];

/// Applies every parameter to the create request, in order (later ones win, as with flags).
pub(crate) fn apply(
    parameters: &[(String, String)],
    body: &mut ContainerCreateBody,
    host: &mut HostConfig,
) -> Result<(), RuntimeError> {
    for (key, value) in parameters {
        apply_one(key, value, body, host)?;
    }
    Ok(())
}

fn apply_one(
    key: &str,
    value: &str,
    body: &mut ContainerCreateBody,
    host: &mut HostConfig,
) -> Result<(), RuntimeError> {
    let invalid = |why: &str| RuntimeError::InvalidSpec(format!("docker parameter {key}={value:?}: {why}"));
    match key {
        "env" | "e" => {
            let (name, _) = value.split_once('=').ok_or_else(|| invalid("expected NAME=value"))?;
            if name.is_empty() {
                return Err(invalid("empty variable name"));
            }
            if marina_runtime::SANDBOX_VARIABLES.contains(&name) {
                return Err(invalid(&format!("{name} says where the sandbox is mounted; the runtime sets it")));
            }
            body.env.get_or_insert_with(Vec::new).push(value.to_owned());
        }
        "label" | "l" => {
            let (name, label) = value.split_once('=').unwrap_or((value, ""));
            if name.is_empty() {
                return Err(invalid("empty label key"));
            }
            if name.starts_with("marina.") {
                return Err(invalid("marina.* labels are set by Marina itself"));
            }
            body.labels.get_or_insert_with(Default::default).insert(name.to_owned(), label.to_owned());
        }
        "user" | "u" => body.user = Some(value.to_owned()),
        "workdir" | "w" => body.working_dir = Some(value.to_owned()),
        "hostname" | "h" => body.hostname = Some(value.to_owned()),
        "init" => host.init = Some(parse_bool(value).ok_or_else(|| invalid("expected true or false"))?),
        "read-only" => host.readonly_rootfs = Some(parse_bool(value).ok_or_else(|| invalid("expected true or false"))?),
        "memory-swap" => {
            let bytes = if value.trim() == "-1" { Some(-1) } else { parse_size(value) };
            host.memory_swap = Some(bytes.ok_or_else(|| invalid("expected a size such as 256m, or -1"))?);
        }
        "memory-reservation" => {
            host.memory_reservation = Some(parse_size(value).ok_or_else(|| invalid("expected a size such as 256m"))?);
        }
        "shm-size" => host.shm_size = Some(parse_size(value).ok_or_else(|| invalid("expected a size such as 64m"))?),
        "cpu-shares" | "c" => host.cpu_shares = Some(value.trim().parse().map_err(|_| invalid("expected an integer"))?),
        "pids-limit" => host.pids_limit = Some(value.trim().parse().map_err(|_| invalid("expected an integer"))?),
        "cap-add" => host.cap_add.get_or_insert_with(Vec::new).push(value.to_owned()),
        "cap-drop" => host.cap_drop.get_or_insert_with(Vec::new).push(value.to_owned()),
        "dns" => host.dns.get_or_insert_with(Vec::new).push(value.to_owned()),
        "dns-search" => host.dns_search.get_or_insert_with(Vec::new).push(value.to_owned()),
        "add-host" => host.extra_hosts.get_or_insert_with(Vec::new).push(value.to_owned()),
        "security-opt" => host.security_opt.get_or_insert_with(Vec::new).push(value.to_owned()),
        "sysctl" => {
            let (name, setting) = value.split_once('=').ok_or_else(|| invalid("expected key=value"))?;
            host.sysctls.get_or_insert_with(Default::default).insert(name.to_owned(), setting.to_owned());
        }
        "ulimit" => host
            .ulimits
            .get_or_insert_with(Vec::new)
            .push(parse_ulimit(value).ok_or_else(|| invalid("expected name=soft[:hard]"))?),
        "tmpfs" => {
            let (path, options) = value.split_once(':').unwrap_or((value, ""));
            if !path.starts_with('/') {
                return Err(invalid("expected an absolute path"));
            }
            host.tmpfs.get_or_insert_with(Default::default).insert(path.to_owned(), options.to_owned());
        }
        "log-driver" => host.log_config.get_or_insert_with(HostConfigLogConfig::default).typ = Some(value.to_owned()),
        "log-opt" => {
            let (name, setting) = value.split_once('=').ok_or_else(|| invalid("expected key=value"))?;
            let log = host.log_config.get_or_insert_with(HostConfigLogConfig::default);
            log.config.get_or_insert_with(Default::default).insert(name.to_owned(), setting.to_owned());
        }
        _ => {
            return Err(RuntimeError::InvalidSpec(format!(
                "unsupported docker parameter {key:?} (supported: {})",
                SUPPORTED_PARAMETERS.join(", ")
            )));
        }
    }
    Ok(())
}

/// `docker run` flag semantics: an empty value means the flag is set.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Docker's `RAMInBytes`: a number with an optional binary unit (`b`, `k`, `m`, `g`, `t`, `p`,
/// optionally followed by `b` or `ib`), case-insensitive: `512m`, `1.5g`, `64MiB`, `1024`.
pub(crate) fn parse_size(value: &str) -> Option<i64> {
    let value = value.trim().to_ascii_lowercase();
    let digits_end = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let number: f64 = value[..digits_end].parse().ok()?;
    let unit = value[digits_end..].trim_start();
    let unit = unit.strip_suffix("ib").or_else(|| unit.strip_suffix('b')).unwrap_or(unit);
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    let bytes = number * 1024f64.powi(power);
    (bytes.is_finite() && bytes < i64::MAX as f64).then_some(bytes as i64)
}

fn parse_ulimit(value: &str) -> Option<ResourcesUlimits> {
    let (name, limits) = value.split_once('=')?;
    if name.is_empty() {
        return None;
    }
    let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
    Some(ResourcesUlimits {
        name: Some(name.to_owned()),
        soft: Some(soft.trim().parse().ok()?),
        hard: Some(hard.trim().parse().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(pairs: &[(&str, &str)]) -> Result<(ContainerCreateBody, HostConfig), RuntimeError> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let (mut body, mut host) = (ContainerCreateBody::default(), HostConfig::default());
        apply(&pairs, &mut body, &mut host)?;
        Ok((body, host))
    }

    #[test]
    fn sizes_follow_docker_units() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("2 kb"), Some(2048));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5x"), None);
    }

    #[test]
    fn supported_parameters_land_where_docker_run_puts_them() {
        let (body, host) = applied(&[
            ("label", "team=core"),
            ("env", "X=1"),
            ("memory-swap", "-1"),
            ("ulimit", "nofile=1024:2048"),
            ("init", ""),
            ("log-opt", "max-size=1m"),
        ])
        .expect("valid");
        assert_eq!(body.labels.expect("labels")["team"], "core");
        assert_eq!(body.env, Some(vec!["X=1".to_owned()]));
        assert_eq!(host.memory_swap, Some(-1));
        assert_eq!(host.init, Some(true));
        let ulimit = &host.ulimits.expect("ulimits")[0];
        assert_eq!((ulimit.soft, ulimit.hard), (Some(1024), Some(2048)));
        assert_eq!(host.log_config.expect("log").config.expect("opts")["max-size"], "1m");
    }

    #[test]
    fn unknown_and_malformed_parameters_are_refused_by_name() {
        match applied(&[("volume", "/:/host")]) {
            Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains("\"volume\""), "{message}"),
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
        assert!(matches!(applied(&[("memory-swap", "lots")]), Err(RuntimeError::InvalidSpec(_))));
        assert!(matches!(applied(&[("label", "marina.task_id=x")]), Err(RuntimeError::InvalidSpec(_))));
        assert!(matches!(applied(&[("env", "NOVALUE")]), Err(RuntimeError::InvalidSpec(_))));
        for variable in ["MESOS_SANDBOX", "MARINA_SANDBOX"] {
            match applied(&[("env", &format!("{variable}=/elsewhere"))]) {
                Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains(variable), "{message}"),
                other => panic!("{variable} must stay the runtime's, got {other:?}"),
            }
        }
    }
}
