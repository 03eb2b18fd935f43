//! Reasons a task status update carries (`TaskStatus.reason`): Mesos' names, so schedulers
//! (the gateway, or any framework written for Mesos) can tell causes apart. Agents set them;
//! schedulers act on them (the gateway knows a health kill by its reason).

pub const IMAGE_UNAVAILABLE: &str = "REASON_IMAGE_UNAVAILABLE";
pub const LAUNCH_FAILED: &str = "REASON_CONTAINER_LAUNCH_FAILED";
pub const COMMAND_EXITED: &str = "REASON_COMMAND_EXECUTOR_FAILED";
pub const KILLED: &str = "REASON_TASK_KILLED";
/// A running task's health changed (RUNNING again, with the new `healthy`).
pub const HEALTH_CHECK_FAILED: &str = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED";
/// The agent killed the task because its health checks failed.
pub const HEALTH_KILLED: &str = "REASON_HEALTH_CHECK_FAILED";
pub const CONTAINER_GONE: &str = "REASON_CONTAINER_LOST";
pub const TASK_UNKNOWN: &str = "REASON_TASK_UNKNOWN";
/// The task breaks the rules every door checks (its id, resources, ports, environment).
pub const TASK_INVALID: &str = "REASON_TASK_INVALID";
/// Found again by an agent that restarted.
pub const RECOVERED: &str = "REASON_AGENT_RESTARTED";
