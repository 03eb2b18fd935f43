//! A task's life as a containerd container: snapshot + container record + task (one runc
//! container under a shim), and how containerd's answers map onto Marina's states.
//!
//! The container id is the task id (made valid for containerd when it is not), the
//! snapshot key is the container id, and the container record carries what the handle
//! needs (task id, sandbox) in an extension, so `list` rebuilds the very handle `start`
//! returned. The task's stdout and stderr are files in its sandbox. With a logging binary
//! configured (`marina-supervise`), the shim hands both streams to it (a `binary://` URI)
//! and it writes them rotated, as the process runtime's supervisor does; without one, the
//! shim appends to an existing regular file given as a plain path (a `file://` URI would
//! send both streams to one file), unrotated.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest,
    GetContainerRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest, WaitResponse,
};
use containerd_client::types::v1::Status as ProcessStatus;
use marina_runtime::logs::ShimLogger;
use marina_runtime::{ExitStatus, ListedTask, LogStream, RuntimeError, RuntimeKind, TaskHandle, TaskSpec, TaskState};
use prost_types::Any;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::ContainerdRuntime;
use crate::images::Images;
use crate::rpc::{Containerd, backend_error, is_already_exists, is_not_found, rpc_error};
use crate::spec;
use tracing::Instrument;

/// The type containerd and its shims decode a container's spec as (JSON).
pub(crate) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The container extension holding [`TaskData`].
const TASK_EXTENSION: &str = "marina.task";
const TASK_DATA_TYPE_URL: &str = "marina.dev/containerd/TaskData";
/// How long a task gets to die after SIGKILL before `stop` gives up.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// containerd's "we do not know how it exited" status (its shim lost the process).
const UNKNOWN_EXIT: u32 = 255;

/// What the handle carries besides the container id, serialized into `TaskHandle::data`
/// and stored with the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskData {
    pub task_id: String,
    /// Where the task's `stdout` and `stderr` files are.
    pub sandbox: PathBuf,
}

/// Where the shim sends a task's output: file paths, or a logging binary's URI.
struct Stdio {
    stdout: String,
    stderr: String,
}

/// How a signal (as a number) is sent.
pub(crate) const SIGTERM: u32 = 15;
pub(crate) const SIGKILL: u32 = 9;

/// Whether a kill reached a process.
pub(crate) enum Killed {
    Sent,
    /// No such task or process, or it has already exited.
    Gone,
}

impl ContainerdRuntime {
    pub(crate) async fn start_task(&self, spec: &TaskSpec) -> Result<TaskHandle, RuntimeError> {
        let image = spec.image.as_deref().ok_or_else(|| {
            RuntimeError::InvalidSpec("the containerd runtime runs images: the task has no image".to_owned())
        })?;
        if !spec.parameters.is_empty() {
            tracing::warn!(task_id = %spec.task_id, parameters = ?spec.parameters, "containerd ignores runtime parameters");
        }
        let id = spec::container_id(&spec.task_id);
        let ready = self.images().ready(image).await?;
        let sandbox = std::path::absolute(&spec.sandbox)
            .map_err(|e| RuntimeError::InvalidSpec(format!("sandbox {}: {e}", spec.sandbox.display())))?;
        let oci = spec::runtime_spec(spec, &sandbox, &ready.config, &id, self.cd.namespace())?;
        let (stdout, stderr) = (sandbox.join("stdout"), sandbox.join("stderr"));
        for file in [&stdout, &stderr] {
            // The shim opens these for appending but does not create them.
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .await
                .map_err(|e| backend_error(format!("start {id}: creating {}: {e}", file.display())))?;
        }
        let stdio = match &self.config.log_binary {
            Some(binary) => {
                let uri = ShimLogger { dir: sandbox.clone(), rotation: self.config.log_rotation }.uri(binary);
                Stdio { stdout: uri.clone(), stderr: uri }
            }
            None => {
                Stdio { stdout: stdout.to_string_lossy().into_owned(), stderr: stderr.to_string_lossy().into_owned() }
            }
        };
        let data = TaskData { task_id: spec.task_id.clone(), sandbox };
        let data = serde_json::to_string(&data).map_err(|e| backend_error(format!("start {id}: {e}")))?;

        // The snapshot exists before the container record that keeps it: hold a lease.
        let lease = self.cd.lease("start").await?;
        let created = self
            .create_container(lease.client(), &id, &ready, oci, &spec.labels, &data)
            .instrument(tracing::info_span!("containerd.create_container"))
            .await;
        lease.release().await;
        created?;

        match self.create_and_start_task(&id, stdio).instrument(tracing::info_span!("containerd.start_task")).await {
            Ok(pid) => {
                tracing::debug!(task_id = %spec.task_id, container = %id, pid, "task started");
                Ok(TaskHandle { runtime: RuntimeKind::Containerd, task_id: spec.task_id.clone(), id, data })
            }
            Err(error) => {
                if let Err(cleanup) = self.remove_container(&id).await {
                    tracing::warn!(container = %id, error = %cleanup, "could not clean up after a failed start");
                }
                Err(error)
            }
        }
    }

    async fn create_container(
        &self,
        cd: &Containerd,
        id: &str,
        image: &crate::images::ReadyImage,
        oci: serde_json::Value,
        labels: &BTreeMap<String, String>,
        data: &str,
    ) -> Result<(), RuntimeError> {
        self.prepare_rootfs(cd, id, &image.chain_id).await?;
        let container = Container {
            id: id.to_owned(),
            labels: labels.clone().into_iter().collect(),
            image: image.name.clone(),
            runtime: Some(ContainerRuntime { name: self.config.runtime.clone(), options: None }),
            spec: Some(Any { type_url: SPEC_TYPE_URL.to_owned(), value: oci.to_string().into_bytes() }),
            snapshotter: self.config.snapshotter.clone(),
            snapshot_key: id.to_owned(),
            extensions: HashMap::from([(
                TASK_EXTENSION.to_owned(),
                Any { type_url: TASK_DATA_TYPE_URL.to_owned(), value: data.as_bytes().to_vec() },
            )]),
            ..Default::default()
        };
        let request = CreateContainerRequest { container: Some(container) };
        if let Err(status) = cd.containers().create(cd.request(request)).await {
            self.remove_snapshot(id).await?;
            return Err(if is_already_exists(&status) {
                backend_error(format!("container create {id}: a container with this id already exists"))
            } else {
                rpc_error("container create", id, &status)
            });
        }
        Ok(())
    }

    /// A writable snapshot on top of the image, keyed by the container id. A snapshot left by
    /// a start that died before creating its container is replaced.
    async fn prepare_rootfs(&self, cd: &Containerd, id: &str, parent: &str) -> Result<(), RuntimeError> {
        for attempt in 0..2 {
            let prepare = PrepareSnapshotRequest {
                snapshotter: self.config.snapshotter.clone(),
                key: id.to_owned(),
                parent: parent.to_owned(),
                labels: HashMap::new(),
            };
            match cd.snapshots().prepare(cd.request(prepare)).await {
                Ok(_) => return Ok(()),
                Err(status) if is_already_exists(&status) && attempt == 0 => {
                    if self.container(id).await?.is_some() {
                        return Err(backend_error(format!(
                            "snapshot prepare {id}: a container with this id already exists"
                        )));
                    }
                    tracing::info!(container = %id, "replacing a snapshot left by an earlier failed start");
                    self.remove_snapshot(id).await?;
                }
                Err(status) => return Err(rpc_error("snapshot prepare", id, &status)),
            }
        }
        Err(backend_error(format!("snapshot prepare {id}: the key stays taken")))
    }

    async fn create_and_start_task(&self, id: &str, stdio: Stdio) -> Result<u32, RuntimeError> {
        let cd = &self.cd;
        let mounts = MountsRequest { snapshotter: self.config.snapshotter.clone(), key: id.to_owned() };
        let rootfs = cd
            .snapshots()
            .mounts(cd.request(mounts))
            .await
            .map_err(|s| rpc_error("snapshot mounts", id, &s))?
            .into_inner()
            .mounts;
        let create = CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            ..Default::default()
        };
        cd.tasks().create(cd.request(create)).await.map_err(|s| rpc_error("task create", id, &s))?;
        let start = StartRequest { container_id: id.to_owned(), exec_id: String::new() };
        let started = cd.tasks().start(cd.request(start)).await.map_err(|s| rpc_error("task start", id, &s))?;
        Ok(started.into_inner().pid)
    }

    /// The container record, or `None` when there is none.
    pub(crate) async fn container(&self, id: &str) -> Result<Option<Container>, RuntimeError> {
        match self.cd.containers().get(self.cd.request(GetContainerRequest { id: id.to_owned() })).await {
            Ok(answer) => Ok(answer.into_inner().container),
            Err(status) if is_not_found(&status) => Ok(None),
            Err(status) => Err(rpc_error("container get", id, &status)),
        }
    }

    pub(crate) async fn inspect_task(&self, handle: &TaskHandle) -> Result<TaskState, RuntimeError> {
        match self.container(&handle.id).await? {
            Some(container) => self.task_state(&container).await,
            None => Ok(TaskState::NotFound),
        }
    }

    /// The state of a container's task. A container without a task had its task deleted
    /// (or containerd lost it): it has exited, how is unknown.
    async fn task_state(&self, container: &Container) -> Result<TaskState, RuntimeError> {
        let id = &container.id;
        let request = GetRequest { container_id: id.clone(), exec_id: String::new() };
        let process = match self.cd.tasks().get(self.cd.request(request)).await {
            Ok(answer) => answer.into_inner().process,
            Err(status) if is_not_found(&status) => None,
            Err(status) => return Err(rpc_error("task get", id, &status)),
        };
        let Some(process) = process else {
            return Ok(TaskState::Exited { status: unknown_exit(), finished_at: None });
        };
        Ok(match process.status() {
            ProcessStatus::Created => TaskState::Created,
            ProcessStatus::Running | ProcessStatus::Paused | ProcessStatus::Pausing => TaskState::Running {
                // start creates the container and starts its task in one go.
                started_at: container.created_at.and_then(|t| SystemTime::try_from(t).ok()),
                pid: Some(process.pid),
            },
            ProcessStatus::Stopped => TaskState::Exited {
                status: self.exit_status(id, process.exit_status),
                finished_at: process.exited_at.and_then(|t| SystemTime::try_from(t).ok()),
            },
            ProcessStatus::Unknown => {
                return Err(backend_error(format!("task get {id}: containerd reports an unknown state")));
            }
        })
    }

    /// Maps containerd's exit status (the shim reports a death by signal N as 128 + N, like
    /// a shell) and tells an out-of-memory kill by the task's cgroup.
    fn exit_status(&self, id: &str, status: u32) -> ExitStatus {
        if status > 128 && status < 128 + 65 {
            let signal = (status - 128) as i32;
            let oom_killed = signal == SIGKILL as i32 && oom_kills(&spec::cgroups_path(self.cd.namespace(), id)) > 0;
            ExitStatus { code: None, signal: Some(signal), oom_killed }
        } else if status == UNKNOWN_EXIT {
            unknown_exit()
        } else {
            ExitStatus { code: Some(status as i32), signal: None, oom_killed: false }
        }
    }

    pub(crate) async fn wait_task(&self, handle: &TaskHandle) -> Result<ExitStatus, RuntimeError> {
        match self.wait_process(&handle.id, "").await {
            Ok(answer) => Ok(self.exit_status(&handle.id, answer.exit_status)),
            Err(status) if is_not_found(&status) => match self.container(&handle.id).await? {
                Some(_) => Ok(unknown_exit()),
                None => Err(RuntimeError::NotFound { task_id: handle.task_id.clone() }),
            },
            Err(status) => Err(rpc_error("task wait", &handle.id, &status)),
        }
    }

    /// Resolves when the process (`exec_id` empty: the task) has exited.
    pub(crate) async fn wait_process(&self, id: &str, exec_id: &str) -> Result<WaitResponse, tonic::Status> {
        let request = WaitRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() };
        Ok(self.cd.tasks().wait(self.cd.request(request)).await?.into_inner())
    }

    pub(crate) async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<Killed, RuntimeError> {
        let request = KillRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned(), signal, all };
        match self.cd.tasks().kill(self.cd.request(request)).await {
            Ok(_) => Ok(Killed::Sent),
            // "process already finished" and "no running task" both answer NotFound.
            Err(status) if is_not_found(&status) => Ok(Killed::Gone),
            Err(status) => Err(rpc_error(&format!("task kill (signal {signal})"), id, &status)),
        }
    }

    pub(crate) async fn stop_task(&self, handle: &TaskHandle, grace: Duration) -> Result<(), RuntimeError> {
        let id = &handle.id;
        if let Killed::Gone = self.kill(id, "", SIGTERM, false).await? {
            return Ok(());
        }
        if let Ok(waited) = tokio::time::timeout(grace, self.wait_process(id, "")).await {
            return waited.map(drop).or_else(|status| gone_or(status, "task wait", id));
        }
        tracing::debug!(container = %id, ?grace, "the task outlived its grace period; killing it");
        self.kill_and_wait(id).await
    }

    /// SIGKILL to every process of the task, then its exit.
    async fn kill_and_wait(&self, id: &str) -> Result<(), RuntimeError> {
        if let Killed::Gone = self.kill(id, "", SIGKILL, true).await? {
            return Ok(());
        }
        match tokio::time::timeout(KILL_TIMEOUT, self.wait_process(id, "")).await {
            Ok(waited) => waited.map(drop).or_else(|status| gone_or(status, "task wait", id)),
            Err(_) => Err(RuntimeError::Timeout {
                operation: "stop (waiting for the task to die after SIGKILL)",
                after: KILL_TIMEOUT,
            }),
        }
    }

    pub(crate) async fn remove_task(&self, handle: &TaskHandle) -> Result<(), RuntimeError> {
        self.remove_container(&handle.id).await
    }

    /// Deletes the task (killing it if it still runs), the container and its snapshot;
    /// what is already gone is skipped.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let cd = &self.cd;
        // A task that has not exited cannot be deleted (containerd 1.6 answers `Unknown:
        // cannot delete a running process`, not a precondition code): kill it first.
        let request = GetRequest { container_id: id.to_owned(), exec_id: String::new() };
        let process = match cd.tasks().get(cd.request(request)).await {
            Ok(answer) => answer.into_inner().process,
            Err(status) if is_not_found(&status) => None,
            Err(status) => return Err(rpc_error("task get", id, &status)),
        };
        if let Some(process) = process {
            if process.status() != ProcessStatus::Stopped {
                self.kill_and_wait(id).await?;
            }
            let delete = DeleteTaskRequest { container_id: id.to_owned() };
            match cd.tasks().delete(cd.request(delete)).await {
                Ok(_) => {}
                Err(status) if is_not_found(&status) => {}
                Err(status) => return Err(rpc_error("task delete", id, &status)),
            }
        }
        let snapshotter = match self.container(id).await? {
            Some(container) => {
                match cd.containers().delete(cd.request(DeleteContainerRequest { id: id.to_owned() })).await {
                    Ok(_) => {}
                    Err(status) if is_not_found(&status) => {}
                    Err(status) => return Err(rpc_error("container delete", id, &status)),
                }
                container.snapshotter
            }
            None => self.config.snapshotter.clone(),
        };
        self.remove_snapshot_in(&snapshotter, id).await
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
        self.remove_snapshot_in(&self.config.snapshotter.clone(), key).await
    }

    async fn remove_snapshot_in(&self, snapshotter: &str, key: &str) -> Result<(), RuntimeError> {
        let remove = RemoveSnapshotRequest { snapshotter: snapshotter.to_owned(), key: key.to_owned() };
        match self.cd.snapshots().remove(self.cd.request(remove)).await {
            Ok(_) => Ok(()),
            Err(status) if is_not_found(&status) => Ok(()),
            Err(status) => Err(rpc_error("snapshot remove", key, &status)),
        }
    }

    pub(crate) async fn list_tasks(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ListedTask>, RuntimeError> {
        let request = ListContainersRequest { filters: label_filter(labels).into_iter().collect() };
        let containers = self
            .cd
            .containers()
            .list(self.cd.request(request))
            .await
            .map_err(|s| rpc_error("container list", &format!("in namespace {}", self.cd.namespace()), &s))?
            .into_inner()
            .containers;
        let mut listed = Vec::new();
        for container in containers {
            // Only containers Marina started carry its extension.
            let Some(data) = container.extensions.get(TASK_EXTENSION) else { continue };
            let Ok(data_text) = String::from_utf8(data.value.clone()) else { continue };
            let Ok(task) = serde_json::from_str::<TaskData>(&data_text) else { continue };
            let state = match self.task_state(&container).await {
                Ok(state) => state,
                // Removed while we were listing.
                Err(_) if self.container(&container.id).await?.is_none() => continue,
                Err(error) => return Err(error),
            };
            listed.push(ListedTask {
                handle: TaskHandle {
                    runtime: RuntimeKind::Containerd,
                    task_id: task.task_id,
                    id: container.id.clone(),
                    data: data_text,
                },
                labels: container.labels.into_iter().collect(),
                state,
            });
        }
        Ok(listed)
    }

    /// What the handle carries; read from the container when the handle has no data
    /// (a handle made from an id alone).
    pub(crate) async fn task_data(&self, handle: &TaskHandle) -> Result<TaskData, RuntimeError> {
        if !handle.data.is_empty() {
            return serde_json::from_str(&handle.data).map_err(|e| {
                RuntimeError::InvalidSpec(format!(
                    "task {}: the handle's data is not this backend's: {e}",
                    handle.task_id
                ))
            });
        }
        let container = self.container(&handle.id).await?;
        let data = container.as_ref().and_then(|c| c.extensions.get(TASK_EXTENSION));
        let data = data.ok_or_else(|| RuntimeError::NotFound { task_id: handle.task_id.clone() })?;
        serde_json::from_slice(&data.value)
            .map_err(|e| backend_error(format!("container {}: task data: {e}", handle.id)))
    }

    pub(crate) async fn task_logs(
        &self,
        handle: &TaskHandle,
        stream: LogStream,
        tail: Option<usize>,
    ) -> Result<bytes::Bytes, RuntimeError> {
        let data = self.task_data(handle).await?;
        let path = data.sandbox.join(match stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        });
        read_tail(&path, tail).await
    }

    pub(crate) fn images(&self) -> Images<'_> {
        Images { cd: &self.cd, snapshotter: &self.config.snapshotter }
    }
}

/// `Ok` when containerd says the process is gone, the error otherwise.
fn gone_or(status: tonic::Status, operation: &str, id: &str) -> Result<(), RuntimeError> {
    if is_not_found(&status) { Ok(()) } else { Err(rpc_error(operation, id, &status)) }
}

fn unknown_exit() -> ExitStatus {
    ExitStatus { code: None, signal: None, oom_killed: false }
}

/// containerd's filter for "carries all these labels": `labels."k"=="v"` terms joined by
/// commas (AND). Keys and values are quoted: Marina's keys contain dots.
fn label_filter(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.is_empty() {
        return None;
    }
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    Some(labels.iter().map(|(k, v)| format!("labels.{}=={}", quote(k), quote(v))).collect::<Vec<_>>().join(","))
}

/// How many processes the kernel killed for memory in a cgroup (v1 `memory.oom_control`, v2
/// `memory.events`); 0 when it cannot tell. The cgroup lives until the task is deleted.
fn oom_kills(cgroup: &str) -> u64 {
    let relative = cgroup.trim_start_matches('/');
    let candidates = [
        Path::new("/sys/fs/cgroup/memory").join(relative).join("memory.oom_control"),
        Path::new("/sys/fs/cgroup").join(relative).join("memory.events"),
    ];
    for file in candidates {
        if let Ok(text) = std::fs::read_to_string(&file) {
            return text
                .lines()
                .find_map(|line| line.strip_prefix("oom_kill "))
                .and_then(|count| count.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

/// The last `tail` bytes of a file (all of it without `tail`); nothing when it does not exist.
pub(crate) async fn read_tail(path: &Path, tail: Option<usize>) -> Result<bytes::Bytes, RuntimeError> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(bytes::Bytes::new()),
        Err(e) => return Err(backend_error(format!("reading {}: {e}", path.display()))),
    };
    let io = |e: std::io::Error| backend_error(format!("reading {}: {e}", path.display()));
    if let Some(tail) = tail {
        let length = file.metadata().await.map_err(io)?.len();
        file.seek(std::io::SeekFrom::Start(length.saturating_sub(tail as u64))).await.map_err(io)?;
        let mut data = Vec::with_capacity(tail.min(length as usize));
        file.take(tail as u64).read_to_end(&mut data).await.map_err(io)?;
        return Ok(data.into());
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data).await.map_err(io)?;
    Ok(data.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_quote_keys_and_values() {
        let labels = BTreeMap::from([
            ("marina.agent_id".to_owned(), "agent-1".to_owned()),
            ("odd".to_owned(), "say \"hi\"".to_owned()),
        ]);
        assert_eq!(label_filter(&labels).unwrap(), r#"labels."marina.agent_id"=="agent-1",labels."odd"=="say \"hi\"""#);
        assert_eq!(label_filter(&BTreeMap::new()), None);
    }

    #[tokio::test]
    async fn tails_are_the_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, b"hello world").unwrap();
        assert_eq!(read_tail(&path, Some(5)).await.unwrap(), "world");
        assert_eq!(read_tail(&path, Some(100)).await.unwrap(), "hello world");
        assert_eq!(read_tail(&path, None).await.unwrap(), "hello world");
        assert!(read_tail(&dir.path().join("missing"), None).await.unwrap().is_empty());
    }
}
