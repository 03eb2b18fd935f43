//! The container policy: what a task may ask of its host beyond the default confinement.
//!
//! By default a task gets none of it: no `privileged`, no added capabilities, no security
//! option that loosens confinement (only `no-new-privileges`, which tightens it), no
//! sysctls, no devices, no host pid/ipc/uts/userns namespace, no host-path volume, and on the
//! process runtime never root. Host networking stays allowed: it is Marathon's default. The
//! operator allows each explicitly, in the agent's configuration (which enforces it, at
//! every launch) and the gateway's (which refuses an app asking for more with a 422 naming
//! the field, so an app that no agent would run is never accepted). One check serves both,
//! so they cannot disagree.

use serde::{Deserialize, Serialize};

/// What an operator allows containers. Every field defaults to the safe choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerPolicy {
    /// `privileged` containers (root on the host, in effect).
    pub allow_privileged: bool,
    /// Capabilities `cap-add` may add (`NET_ADMIN`, with or without `CAP_`), or `ALL`.
    pub allowed_capabilities: Vec<String>,
    /// `security-opt` values beyond `no-new-privileges` (seccomp, AppArmor and SELinux
    /// profiles, which can disable confinement).
    pub allow_security_options: bool,
    /// `sysctl` settings.
    pub allow_sysctls: bool,
    /// Host devices.
    pub allow_devices: bool,
    /// The host's pid, ipc, uts or user namespace.
    pub allow_host_namespaces: bool,
    /// Volumes and mounts of host paths.
    pub allow_host_volumes: bool,
    /// Process tasks as root (an app whose `user` is root; and, when the agent runs as
    /// root, tasks with no `user`, which otherwise run as `default_user`).
    pub allow_root: bool,
    /// Who a process task with no `user` runs as when the agent runs as root.
    pub default_user: String,
}

impl Default for ContainerPolicy {
    fn default() -> Self {
        ContainerPolicy {
            allow_privileged: false,
            allowed_capabilities: Vec::new(),
            allow_security_options: false,
            allow_sysctls: false,
            allow_devices: false,
            allow_host_namespaces: false,
            allow_host_volumes: false,
            allow_root: false,
            default_user: "nobody".into(),
        }
    }
}

/// Where a request breaks the policy, and which setting would allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field: `privileged`, `parameters/{index}` (a `docker run` option), `user`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl ContainerPolicy {
    /// The violations of a container asking for `privileged` and the `docker run` options
    /// `parameters` (key, value), in order.
    pub fn check_container<'a>(
        &self,
        privileged: bool,
        parameters: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<Violation> {
        let mut violations = Vec::new();
        if privileged && !self.allow_privileged {
            violations.push(Violation {
                field: "privileged".into(),
                reason: refused("privileged containers", "allow_privileged"),
            });
        }
        for (index, (key, value)) in parameters.into_iter().enumerate() {
            if let Some(reason) = self.parameter(key, value) {
                violations.push(Violation { field: format!("parameters/{index}"), reason });
            }
        }
        violations
    }

    /// Why the `docker run` option `--key=value` is refused, if it is.
    fn parameter(&self, key: &str, value: &str) -> Option<String> {
        let key = key.trim().trim_start_matches('-').to_ascii_lowercase();
        let value = value.trim();
        match key.as_str() {
            "privileged" if !self.allow_privileged && value != "false" => {
                Some(refused("privileged containers", "allow_privileged"))
            }
            "cap-add" if !self.capability_allowed(value) => {
                Some(refused(&format!("adding the capability {value:?}"), "allowed_capabilities"))
            }
            "security-opt" if !self.allow_security_options && !tightens(value) => Some(refused(
                &format!("the security option {value:?} (only no-new-privileges is allowed by default)"),
                "allow_security_options",
            )),
            "sysctl" if !self.allow_sysctls => Some(refused("sysctls", "allow_sysctls")),
            "device" | "device-cgroup-rule" if !self.allow_devices => Some(refused("host devices", "allow_devices")),
            "pid" | "ipc" | "uts" | "userns" | "cgroupns" if !self.allow_host_namespaces && value == "host" => {
                Some(refused(&format!("the host's {key} namespace"), "allow_host_namespaces"))
            }
            "volume" | "v" | "mount" | "volumes-from" if !self.allow_host_volumes => {
                Some(refused("volumes and mounts of host paths", "allow_host_volumes"))
            }
            _ => None,
        }
    }

    fn capability_allowed(&self, capability: &str) -> bool {
        let name = |c: &str| c.trim().to_ascii_uppercase().trim_start_matches("CAP_").to_owned();
        let wanted = name(capability);
        self.allowed_capabilities.iter().any(|allowed| {
            let allowed = name(allowed);
            allowed == "ALL" || allowed == wanted
        })
    }

    /// The violation of a container volume of a host path (`hostPath`), if it is one.
    pub fn check_host_volume(&self, host_path: &str) -> Option<String> {
        (!self.allow_host_volumes && !host_path.is_empty())
            .then(|| refused(&format!("the host path {host_path:?}"), "allow_host_volumes"))
    }

    /// Who a process task runs as: its app's `user`, else [`ContainerPolicy::default_user`]
    /// when the agent is root (`agent_is_root`); `None` runs it as the agent's own user.
    /// Refused if that is root and root is not allowed.
    pub fn task_user(&self, user: Option<&str>, agent_is_root: bool) -> Result<Option<String>, Violation> {
        let user = user.map(str::trim).filter(|u| !u.is_empty());
        let chosen = match user {
            Some(user) => Some(user.to_owned()),
            None if agent_is_root && !self.allow_root => Some(self.default_user.clone()),
            None => None,
        };
        let root = match &chosen {
            Some(user) => user == "root" || user == "0",
            None => agent_is_root,
        };
        if root && !self.allow_root {
            return Err(Violation { field: "user".into(), reason: refused("running tasks as root", "allow_root") });
        }
        Ok(chosen)
    }
}

/// `no-new-privileges` only tightens confinement (the one security option allowed anyway).
fn tightens(option: &str) -> bool {
    matches!(option, "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true")
}

/// "not allowed by the container policy: privileged containers (the operator allows them
/// with `policy.allow_privileged`)".
fn refused(what: &str, setting: &str) -> String {
    format!("not allowed by the container policy: {what} (the operator allows it with `policy.{setting}`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(policy: &ContainerPolicy, privileged: bool, parameters: &[(&str, &str)]) -> Vec<String> {
        policy.check_container(privileged, parameters.iter().copied()).into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn by_default_nothing_beyond_confinement_is_allowed() {
        let policy = ContainerPolicy::default();
        let asks = [
            ("cap-add", "NET_ADMIN"),
            ("security-opt", "seccomp=unconfined"),
            ("security-opt", "no-new-privileges"),
            ("sysctl", "net.core.somaxconn=1024"),
            ("device", "/dev/fuse"),
            ("pid", "host"),
            ("ipc", "private"),
            ("volume", "/:/host"),
            ("memory-swap", "256m"),
        ];
        let refused = violations(&policy, true, &asks);
        assert_eq!(
            refused,
            [
                "privileged",
                "parameters/0",
                "parameters/1",
                "parameters/3",
                "parameters/4",
                "parameters/5",
                "parameters/7"
            ]
        );
        let reason = &policy.check_container(true, []).remove(0).reason;
        assert!(reason.contains("policy.allow_privileged"), "{reason}");
    }

    #[test]
    fn each_permission_allows_only_its_own_kind() {
        let policy = ContainerPolicy {
            allow_privileged: true,
            allowed_capabilities: vec!["cap_net_admin".into()],
            allow_sysctls: true,
            ..ContainerPolicy::default()
        };
        assert!(violations(&policy, true, &[("cap-add", "NET_ADMIN"), ("sysctl", "a=b")]).is_empty());
        assert_eq!(
            violations(&policy, false, &[("cap-add", "SYS_ADMIN"), ("pid", "host")]),
            ["parameters/0", "parameters/1"]
        );
        let all = ContainerPolicy { allowed_capabilities: vec!["ALL".into()], ..ContainerPolicy::default() };
        assert!(violations(&all, false, &[("cap-add", "SYS_ADMIN")]).is_empty());
    }

    #[test]
    fn process_tasks_run_as_their_user_or_nobody_and_never_as_root_unless_allowed() {
        let policy = ContainerPolicy::default();
        assert_eq!(policy.task_user(Some("www-data"), true), Ok(Some("www-data".into())));
        assert_eq!(policy.task_user(None, true), Ok(Some("nobody".into())));
        assert_eq!(policy.task_user(None, false), Ok(None), "an unprivileged agent runs tasks as itself");
        assert!(policy.task_user(Some("root"), true).is_err());
        assert!(policy.task_user(Some("0"), false).is_err());
        let root = ContainerPolicy { allow_root: true, ..ContainerPolicy::default() };
        assert_eq!(root.task_user(None, true), Ok(None), "as the agent's user: root");
        assert_eq!(root.task_user(Some("root"), true), Ok(Some("root".into())));
    }

    #[test]
    fn host_volumes_need_permission() {
        assert!(ContainerPolicy::default().check_host_volume("/var/run/docker.sock").is_some());
        assert!(ContainerPolicy::default().check_host_volume("").is_none());
        let allowed = ContainerPolicy { allow_host_volumes: true, ..ContainerPolicy::default() };
        assert!(allowed.check_host_volume("/data").is_none());
    }
}
