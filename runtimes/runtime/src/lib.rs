//! The `Runtime` trait: everything the Marina agent needs from whatever runs its tasks,
//! without knowing which backend it is (Docker, containerd, host processes, or the `sim`
//! runtime for scale tests).
//!
//! Shaped after Nomad's driver interface and Kubernetes' CRI:
//! - [`Runtime::start`] creates and starts a task and returns an opaque [`TaskHandle`] the
//!   agent checkpoints, so that after its own restart it can [`Runtime::inspect`] and keep
//!   managing the same container or process (re-adoption, never a relaunch);
//! - [`Runtime::stop`] and [`Runtime::remove`] are idempotent;
//! - [`Runtime::list`] finds what carries Marina's labels, for recovery;
//! - optional abilities are reported in [`Capabilities`], never faked.
//!
//! Every task carries the labels [`LABEL_TASK_ID`], [`LABEL_AGENT_ID`] and
//! [`LABEL_FRAMEWORK_ID`].

pub mod conformance;
pub mod logs;
mod set;

pub use set::RuntimeSet;

pub use crate::logs::LogRotation;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub const LABEL_TASK_ID: &str = "marina.task_id";
pub const LABEL_AGENT_ID: &str = "marina.agent_id";
pub const LABEL_FRAMEWORK_ID: &str = "marina.framework_id";

/// Which backend a runtime is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Docker,
    Containerd,
    Process,
    Sim,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Containerd => "containerd",
            RuntimeKind::Process => "process",
            RuntimeKind::Sim => "sim",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Runs tasks from images (`TaskSpec::image`).
    pub images: bool,
    /// Maps host ports to container ports (otherwise tasks bind the host ports they are given).
    pub port_mapping: bool,
    /// Enforces `cpus` as a limit.
    pub cpu_limit: bool,
    /// Enforces `mem_mb` as a limit.
    pub memory_limit: bool,
    /// Network modes other than the host's.
    pub network_isolation: bool,
}

/// The command a task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `/bin/sh -c <line>` (Marathon's `cmd`).
    Shell(String),
    /// An argument vector (Marathon's `args`); for image tasks, appended to the image's
    /// entrypoint when `use_entrypoint` holds, replacing its command.
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// One port of a task: the host port the agent allocated, and the port inside the
/// container (for runtimes without port mapping, the task uses `host_port` itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The runtime's default: a bridge network with port mappings where supported.
    #[default]
    Bridge,
    Host,
    None,
    /// The named network the operator made (Marathon's `container` network mode, Docker's
    /// user-defined networks): the task gets an address of its own there, and its container
    /// ports are reachable at it. Runtimes that cannot join one refuse the task
    /// ([`RuntimeError::Unsupported`]); one whose network does not exist fails it with
    /// [`RuntimeError::NetworkUnavailable`].
    Container(String),
}

/// Resources a task asks for; backends with the capability enforce them as limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: f64,
    pub mem_mb: f64,
    pub disk_mb: f64,
}

/// Where an image task's container sees its sandbox (bind-mounted read-write): Mesos'
/// docker containerizer's path, which Marathon apps expect to find in `MESOS_SANDBOX`.
pub const SANDBOX_MOUNT: &str = "/mnt/mesos/sandbox";

/// The variables that say where the sandbox is. The agent sets them to the host's path, which
/// means nothing inside a container: only a container runtime knows where the container sees
/// it, so it sets them to [`SANDBOX_MOUNT`] whatever the task's or the image's environment
/// says.
pub const SANDBOX_VARIABLES: [&str; 2] = ["MESOS_SANDBOX", "MARINA_SANDBOX"];

/// Everything needed to start one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    /// The task's own directory on the agent: logs of runtimes that write files, the
    /// working directory of process tasks; image runtimes bind-mount it read-write at
    /// `/mnt/mesos/sandbox` (Mesos' docker containerizer's path), leaving the image's working
    /// directory. Created by the agent before `start`.
    pub sandbox: PathBuf,
    /// `None` with an image runs the image's own command.
    pub command: Option<Command>,
    /// Image reference; required by image runtimes, refused by the process runtime.
    pub image: Option<String>,
    /// Pull even if the image is present.
    pub force_pull: bool,
    /// The task's environment. `MESOS_SANDBOX` and `MARINA_SANDBOX` are the runtime's: it
    /// sets them to where the task sees its sandbox, whatever they say here.
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub ports: Vec<PortMapping>,
    pub network: NetworkMode,
    pub privileged: bool,
    /// Always includes the `marina.*` labels.
    pub labels: BTreeMap<String, String>,
    /// Backend-specific options passed through (Marathon's `docker.parameters`).
    pub parameters: Vec<(String, String)>,
    /// Who a command task runs as (a user name or numeric uid; the process runtime switches
    /// to it, as Mesos' `switch_user` did); `None`: the agent's own user. Image runtimes run
    /// the image's user and are never given one.
    pub user: Option<String>,
}

/// What the agent checkpoints to find a task again after its own restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskHandle {
    pub runtime: RuntimeKind,
    pub task_id: String,
    /// Container id, or the backend's own identity of the process.
    pub id: String,
    /// Anything else the backend needs (serialized by the backend, opaque to the agent).
    #[serde(default)]
    pub data: String,
}

/// Where a started task is reached (see [`Runtime::addresses`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskAddresses {
    /// It shares the host's network: the host's (the agent's) address is the task's.
    Host,
    /// Addresses of its own: its container's on a bridge or container network. Empty when it
    /// has none (no network, or not running any more).
    Own(Vec<IpAddr>),
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, if it exited on its own.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Killed for exceeding its memory limit.
    pub oom_killed: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn describe(&self) -> String {
        match (self.code, self.signal, self.oom_killed) {
            (_, _, true) => "killed: out of memory".into(),
            (Some(code), _, _) => format!("exited with code {code}"),
            (None, Some(signal), _) => format!("killed by signal {signal}"),
            (None, None, _) => "exited (status unknown)".into(),
        }
    }
}

/// A task's current state as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Created but not running yet.
    Created,
    Running {
        started_at: Option<SystemTime>,
        pid: Option<u32>,
    },
    Exited {
        status: ExitStatus,
        finished_at: Option<SystemTime>,
    },
    /// The runtime does not know it (removed, or never existed).
    NotFound,
}

/// A task found by [`Runtime::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedTask {
    pub handle: TaskHandle,
    pub labels: BTreeMap<String, String>,
    pub state: TaskState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// The output of a command run next to a task (command health checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub output: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not present and could not be pulled (no registry answered, or it does not
    /// exist there). The message names the image.
    #[error("image {image} is not available: {reason}")]
    ImageUnavailable { image: String, reason: String },
    /// The container network the task joins does not exist (they are the operator's to
    /// make). The message names the network.
    #[error("network {network} is not available: {reason}")]
    NetworkUnavailable { network: String, reason: String },
    /// The spec asks for something this backend cannot do.
    #[error("{runtime} runtime cannot run this task: {reason}")]
    Unsupported { runtime: RuntimeKind, reason: String },
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    #[error("task {task_id} is not known to the runtime")]
    NotFound { task_id: String },
    /// The backend (engine daemon, socket, OS call) failed.
    #[error("{runtime}: {message}")]
    Backend { runtime: RuntimeKind, message: String },
    #[error("{operation} timed out after {after:?}")]
    Timeout { operation: &'static str, after: Duration },
}

impl RuntimeError {
    pub fn backend(runtime: RuntimeKind, message: impl std::fmt::Display) -> Self {
        RuntimeError::Backend { runtime, message: message.to_string() }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// One backend. Every method may be called concurrently for different tasks.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// Every runtime it runs tasks with (several for a [`RuntimeSet`]).
    fn kinds(&self) -> Vec<RuntimeKind> {
        vec![self.kind()]
    }

    fn capabilities(&self) -> Capabilities;

    /// Makes `image` present locally, pulling it if missing (or always with `force_pull`).
    /// Fails with [`RuntimeError::ImageUnavailable`] — never hangs — when no registry has it.
    async fn ensure_image(&self, image: &str, force_pull: bool) -> Result<()>;

    /// Creates and starts the task. The image must be present (see `ensure_image`).
    async fn start(&self, spec: &TaskSpec) -> Result<TaskHandle>;

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskState>;

    /// Where a started task is reached. A runtime without network isolation says
    /// [`TaskAddresses::Host`] for every task.
    async fn addresses(&self, handle: &TaskHandle) -> Result<TaskAddresses> {
        let _ = handle;
        Ok(TaskAddresses::Host)
    }

    /// Resolves when the task has exited, with how.
    async fn wait(&self, handle: &TaskHandle) -> Result<ExitStatus>;

    /// Asks the task to stop (SIGTERM), then kills it (SIGKILL) after `grace`. Idempotent:
    /// stopping an exited or unknown task succeeds.
    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<()>;

    /// Removes what the task left (container, filesystem). Idempotent.
    async fn remove(&self, handle: &TaskHandle) -> Result<()>;

    /// Every task carrying all the given labels (running or not).
    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ListedTask>>;

    /// The last `tail` bytes (all when `None`) of the task's output.
    async fn logs(&self, handle: &TaskHandle, stream: LogStream, tail: Option<usize>) -> Result<Bytes>;

    /// Runs `argv` next to the task (inside its container for container runtimes), for
    /// command health checks.
    async fn exec(&self, handle: &TaskHandle, argv: &[String], timeout: Duration) -> Result<ExecOutput>;
}

/// The labels every Marina task carries.
pub fn marina_labels(task_id: &str, agent_id: &str, framework_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_TASK_ID.to_owned(), task_id.to_owned()),
        (LABEL_AGENT_ID.to_owned(), agent_id.to_owned()),
        (LABEL_FRAMEWORK_ID.to_owned(), framework_id.to_owned()),
    ])
}
