//! The operator's container policy ([`marina_proto::policy`]) applied to an app: where it
//! asks for more than the policy allows, at Marathon's paths. The agents enforce the same
//! policy at every launch; checking it here refuses such an app with a 422 instead of
//! accepting one that no agent would run.

use marina_proto::policy::ContainerPolicy;
use serde_json::Value;

use super::definition::AppDefinition;
use super::violation::Violation;

/// Where a change to `app` (from `previous`) breaks `policy`. What the change keeps as it was
/// is not held against it: an app stored before the policy was tightened can still be
/// scaled or changed otherwise.
pub fn check_policy(policy: &ContainerPolicy, app: &AppDefinition, previous: Option<&AppDefinition>) -> Vec<Violation> {
    if previous.is_some_and(|p| p.container == app.container && p.user == app.user) {
        return Vec::new();
    }
    let mut violations = Vec::new();
    let docker = app.container.as_ref().and_then(|c| c.docker.as_ref());
    if let Some(docker) = docker {
        let parameters = docker.parameters.iter().map(|p| (p.key.as_str(), p.value.as_str()));
        for violation in policy.check_container(docker.privileged, parameters) {
            let path = match violation.field.strip_prefix("parameters/") {
                Some(index) => format!("/container/docker/parameters({index})"),
                None => format!("/container/docker/{}", violation.field),
            };
            violations.push(Violation::new(path, violation.reason));
        }
    }
    let volumes = app.container.iter().flat_map(|c| c.volumes.iter().enumerate());
    for (index, volume) in volumes {
        let host_path = volume.get("hostPath").and_then(Value::as_str).unwrap_or_default();
        if let Some(reason) = policy.check_host_volume(host_path) {
            violations.push(Violation::new(format!("/container/volumes({index})/hostPath"), reason));
        }
    }
    // A command task runs as its `user` on the process runtime: root only if allowed. (Whether
    // a task without one would run as root depends on the agent, which decides that.)
    let command_task = docker.is_none_or(|d| d.image.is_empty());
    if command_task && let Err(violation) = policy.task_user(app.user.as_deref(), false) {
        violations.push(Violation::new("/user", violation.reason));
    }
    violations
}
