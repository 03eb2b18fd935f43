//! The tasks an agent runs: launching them through the runtime, watching them until they
//! end, killing them on request, reporting every transition as a status update, and
//! re-adopting them after the agent restarts.
//!
//! A task is checkpointed before anything is done for it, and again whenever its handle or
//! status changes, so a restarted agent knows every task it may have started.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_proto::agent::v1::{PortMapping, TaskCheckpoint, TaskInfo, TaskReport, TaskState, TaskStatus};
use marina_runtime::{
    Command, ExitStatus, LABEL_AGENT_ID, ListedTask, LogStream, NetworkMode, Protocol, Resources, Runtime,
    RuntimeError, TaskHandle, TaskSpec, TaskState as RuntimeState, marina_labels,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::Checkpoint;
use crate::health;
use crate::updates::StatusUpdates;

/// Reasons carried by status updates (Mesos' names, so schedulers can tell causes apart).
pub mod reason {
    pub const IMAGE_UNAVAILABLE: &str = "REASON_IMAGE_UNAVAILABLE";
    pub const LAUNCH_FAILED: &str = "REASON_CONTAINER_LAUNCH_FAILED";
    pub const COMMAND_EXITED: &str = "REASON_COMMAND_EXECUTOR_FAILED";
    pub const KILLED: &str = "REASON_TASK_KILLED";
    pub const HEALTH_CHECK_FAILED: &str = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED";
    pub const HEALTH_KILLED: &str = "REASON_HEALTH_CHECK_FAILED";
    pub const CONTAINER_GONE: &str = "REASON_CONTAINER_LOST";
    pub const TASK_UNKNOWN: &str = "REASON_TASK_UNKNOWN";
    pub const RECOVERED: &str = "REASON_AGENT_RESTARTED";
}

/// Who this agent is, as stamped on its status updates.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub hostname: String,
}

pub struct Tasks {
    runtime: Arc<dyn Runtime>,
    checkpoint: Checkpoint,
    updates: Arc<StatusUpdates>,
    identity: Mutex<Identity>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    default_grace: Duration,
}

/// One task.
pub struct Entry {
    pub info: TaskInfo,
    pub sandbox: PathBuf,
    state: Mutex<EntryState>,
    /// Cancelled when the task is killed before it started, or when the agent stops.
    cancel: CancellationToken,
}

struct EntryState {
    handle: Option<TaskHandle>,
    status: TaskStatus,
    killing: bool,
    /// Why the agent itself is killing it (health checks), if it is.
    kill_reason: Option<&'static str>,
}

pub fn is_terminal(state: TaskState) -> bool {
    state.is_terminal()
}

impl Entry {
    pub fn status(&self) -> TaskStatus {
        self.state.lock().expect("task lock").status.clone()
    }

    pub fn handle(&self) -> Option<TaskHandle> {
        self.state.lock().expect("task lock").handle.clone()
    }

    fn checkpoint_record(&self) -> TaskCheckpoint {
        let state = self.state.lock().expect("task lock");
        TaskCheckpoint {
            info: Some(self.info.clone()),
            status: Some(state.status.clone()),
            handle_json: state
                .handle
                .as_ref()
                .map(|h| serde_json::to_string(h).expect("handle serializes"))
                .unwrap_or_default(),
            sandbox: self.sandbox.display().to_string(),
            killing: state.killing,
        }
    }
}

impl Tasks {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        checkpoint: Checkpoint,
        updates: Arc<StatusUpdates>,
        identity: Identity,
        default_grace: Duration,
    ) -> Self {
        Self { runtime, checkpoint, updates, identity: Mutex::new(identity), entries: Mutex::default(), default_grace }
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    pub fn set_agent_id(&self, agent_id: &str) {
        self.identity.lock().expect("identity lock").agent_id = agent_id.to_owned();
    }

    pub fn get(&self, task_id: &str) -> Option<Arc<Entry>> {
        self.entries.lock().expect("tasks lock").get(task_id).cloned()
    }

    /// Every task with its latest status, for (re-)registration and the agent's state.
    pub fn reports(&self) -> Vec<TaskReport> {
        let entries: Vec<Arc<Entry>> = self.entries.lock().expect("tasks lock").values().cloned().collect();
        entries
            .iter()
            .map(|entry| TaskReport { task: Some(entry.info.clone()), status: Some(entry.status()) })
            .collect()
    }

    /// Starts tasks the master sent. A task id already known is not launched twice.
    /// `trace` is the launch's trace context: each task's work is a span of that trace.
    pub fn launch(self: &Arc<Self>, framework_id: &str, tasks: Vec<TaskInfo>, trace: &marina_daemon::trace::Carrier) {
        let mut entries = Vec::with_capacity(tasks.len());
        for mut info in tasks {
            if info.framework_id.is_empty() {
                info.framework_id = framework_id.to_owned();
            }
            if self.get(&info.task_id).is_some() || entries.iter().any(|e: &Arc<Entry>| e.info.task_id == info.task_id)
            {
                tracing::info!(task = %info.task_id, "launch of a known task ignored");
                continue;
            }
            let sandbox = match self.checkpoint.sandbox(&info.task_id) {
                Ok(sandbox) => sandbox,
                Err(error) => {
                    tracing::error!(task = %info.task_id, %error, "cannot create the sandbox");
                    continue;
                }
            };
            let status = self.base_status(&info, TaskState::TaskStaging);
            entries.push(Arc::new(Entry {
                info,
                sandbox,
                state: Mutex::new(EntryState { handle: None, status, killing: false, kill_reason: None }),
                cancel: CancellationToken::new(),
            }));
        }
        // All in one append: a launch of a hundred tasks is one sync, not a hundred.
        let records: Vec<_> = entries.iter().map(|entry| entry.checkpoint_record()).collect();
        if let Err(error) = self.checkpoint.save_tasks(&records) {
            tracing::error!(tasks = entries.len(), %error, "cannot checkpoint the tasks; not launching them");
            return;
        }
        for entry in entries {
            self.entries.lock().expect("tasks lock").insert(entry.info.task_id.clone(), entry.clone());
            let span =
                tracing::info_span!("agent.launch", task_id = %entry.info.task_id, trace_id = tracing::field::Empty);
            marina_daemon::trace::set_parent(&span, trace);
            let tasks = self.clone();
            tokio::spawn(async move {
                // Only the launch is a span of the trace that caused it: the supervision that
                // follows lasts as long as the task, and a span that never ends is never sent.
                if let Some(handle) = tasks.start(&entry).instrument(span).await {
                    tasks.monitor(entry, handle).await;
                }
            });
        }
    }

    fn base_status(&self, info: &TaskInfo, state: TaskState) -> TaskStatus {
        let identity = self.identity.lock().expect("identity lock").clone();
        TaskStatus {
            task_id: info.task_id.clone(),
            framework_id: info.framework_id.clone(),
            agent_id: identity.agent_id,
            state: state as i32,
            host: identity.hostname,
            ports: info.container.as_ref().map(|c| c.port_mappings.clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Records a transition and queues its status update.
    pub fn emit(&self, entry: &Entry, state: TaskState, reason: &str, message: impl Into<String>) {
        let status = {
            let mut guard = entry.state.lock().expect("task lock");
            let mut status = self.base_status(&entry.info, state);
            status.reason = reason.to_owned();
            status.message = message.into();
            status.healthy = guard.status.healthy;
            status.trace_context = marina_daemon::trace::carrier();
            status.container_id = guard.handle.as_ref().map(|h| h.id.clone()).unwrap_or_default();
            guard.status = status.clone();
            status
        };
        if let Err(error) = self.checkpoint.save_task(&entry.checkpoint_record()) {
            tracing::error!(task = %entry.info.task_id, %error, "cannot checkpoint the task");
        }
        tracing::info!(task = %entry.info.task_id, state = ?state, reason, detail = %status.message, "task status");
        if let Err(error) = self.updates.push(status) {
            tracing::error!(task = %entry.info.task_id, %error, "cannot checkpoint a status update");
        }
    }

    /// A health check result changed: re-announce RUNNING with the new `healthy` flag.
    pub fn set_health(&self, entry: &Entry, healthy: bool, message: &str) {
        {
            let mut guard = entry.state.lock().expect("task lock");
            if guard.status.healthy == Some(healthy) || guard.killing {
                return;
            }
            guard.status.healthy = Some(healthy);
        }
        let reason = if healthy { "" } else { reason::HEALTH_CHECK_FAILED };
        self.emit(entry, TaskState::TaskRunning, reason, message);
    }

    /// Starts a task: its image, then the runtime. `None` when it did not start (its status
    /// already says why).
    async fn start(&self, entry: &Entry) -> Option<TaskHandle> {
        self.emit(entry, TaskState::TaskStarting, "", "");
        let spec = match self.spec(entry) {
            Ok(spec) => spec,
            Err(error) => {
                self.emit(entry, TaskState::TaskError, reason::LAUNCH_FAILED, error);
                return None;
            }
        };
        if let Some(image) = &spec.image {
            let ensure = self
                .runtime
                .ensure_image(image, spec.force_pull)
                .instrument(tracing::info_span!("runtime.ensure_image", %image));
            let ensured = tokio::select! {
                ensured = ensure => Some(ensured),
                () = entry.cancel.cancelled() => None,
            };
            let Some(ensured) = ensured else {
                self.emit(entry, TaskState::TaskKilled, reason::KILLED, "killed before it started");
                return None;
            };
            if let Err(error) = ensured {
                let reason = if matches!(error, RuntimeError::ImageUnavailable { .. }) {
                    reason::IMAGE_UNAVAILABLE
                } else {
                    reason::LAUNCH_FAILED
                };
                self.emit(entry, TaskState::TaskFailed, reason, error.to_string());
                return None;
            }
        }
        if entry.cancel.is_cancelled() {
            self.emit(entry, TaskState::TaskKilled, reason::KILLED, "killed before it started");
            return None;
        }
        let start =
            self.runtime.start(&spec).instrument(tracing::info_span!("runtime.start", runtime = %self.runtime.kind()));
        let handle = match start.await {
            Ok(handle) => handle,
            Err(error) => {
                self.emit(entry, TaskState::TaskFailed, reason::LAUNCH_FAILED, error.to_string());
                return None;
            }
        };
        let killing = {
            let mut guard = entry.state.lock().expect("task lock");
            guard.handle = Some(handle.clone());
            guard.killing
        };
        self.emit(entry, TaskState::TaskRunning, "", "");
        if killing {
            let grace = self.grace(entry, None);
            if let Err(error) = self.runtime.stop(&handle, grace).await {
                tracing::warn!(task = %entry.info.task_id, %error, "stopping a task killed while starting");
            }
        }
        Some(handle)
    }

    /// Watches a started task (new or re-adopted) until it ends.
    async fn monitor(self: Arc<Self>, entry: Arc<Entry>, handle: TaskHandle) {
        let checks = health::spawn(self.clone(), entry.clone(), handle.clone());
        let exit = tokio::select! {
            exit = self.runtime.wait(&handle) => exit,
            // The agent is stopping: tasks keep running; the next agent re-adopts them.
            () = entry.cancel.cancelled() => { checks.cancel(); return; }
        };
        checks.cancel();
        self.keep_output(&entry, &handle).await;
        let (killing, kill_reason) = {
            let guard = entry.state.lock().expect("task lock");
            (guard.killing, guard.kill_reason)
        };
        match exit {
            Ok(_) if killing => {
                self.emit(&entry, TaskState::TaskKilled, kill_reason.unwrap_or(reason::KILLED), "killed")
            }
            Ok(status) if status.success() => self.emit(&entry, TaskState::TaskFinished, "", status.describe()),
            Ok(status) => self.emit(&entry, TaskState::TaskFailed, reason::COMMAND_EXITED, status.describe()),
            Err(error) => self.emit(&entry, TaskState::TaskFailed, reason::CONTAINER_GONE, error.to_string()),
        }
    }

    /// Saves a container runtime's output into the sandbox before the container goes.
    async fn keep_output(&self, entry: &Entry, handle: &TaskHandle) {
        for (stream, name) in [(LogStream::Stdout, "stdout"), (LogStream::Stderr, "stderr")] {
            let path = entry.sandbox.join(name);
            if path.exists() {
                continue;
            }
            if let Ok(bytes) = self.runtime.logs(handle, stream, None).await {
                let _ = std::fs::write(&path, &bytes);
            }
        }
    }

    fn grace(&self, entry: &Entry, requested: Option<u32>) -> Duration {
        match requested.filter(|s| *s > 0).or(Some(entry.info.kill_grace_period_seconds).filter(|s| *s > 0)) {
            Some(seconds) => Duration::from_secs(u64::from(seconds)),
            None => self.default_grace,
        }
    }

    /// Kills a task (SIGTERM, grace, SIGKILL). Unknown tasks are reported lost so the
    /// scheduler stops waiting for them.
    pub fn kill(self: &Arc<Self>, task_id: &str, framework_id: &str, grace_seconds: u32, reason: Option<&'static str>) {
        let Some(entry) = self.get(task_id) else {
            let info =
                TaskInfo { task_id: task_id.to_owned(), framework_id: framework_id.to_owned(), ..Default::default() };
            let mut status = self.base_status(&info, TaskState::TaskLost);
            status.reason = reason::TASK_UNKNOWN.into();
            status.message = "the agent does not know this task".into();
            if let Err(error) = self.updates.push(status) {
                tracing::error!(task = task_id, %error, "cannot checkpoint a status update");
            }
            return;
        };
        let (handle, already_killing, terminal) = {
            let mut guard = entry.state.lock().expect("task lock");
            let already = guard.killing;
            let terminal = is_terminal(guard.status.state());
            guard.killing = true;
            guard.kill_reason = guard.kill_reason.or(reason);
            (guard.handle.clone(), already, terminal)
        };
        if terminal {
            return;
        }
        if !already_killing {
            self.emit(&entry, TaskState::TaskKilling, reason.unwrap_or(""), "");
        }
        // A repeated kill stops again: the first attempt may have been cut short (the agent
        // restarted meanwhile); stopping is idempotent.
        match handle {
            None => entry.cancel.cancel(),
            Some(handle) => self.stop_in_background(handle, self.grace(&entry, Some(grace_seconds))),
        }
    }

    fn stop_in_background(&self, handle: TaskHandle, grace: Duration) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            if let Err(error) = runtime.stop(&handle, grace).await {
                tracing::warn!(task = %handle.task_id, %error, "stopping the task failed");
            }
        });
    }

    /// A status update was acknowledged: once a terminal task has nothing left to deliver,
    /// its container is removed and its checkpoint forgotten (its sandbox stays).
    pub async fn acknowledged(&self, status: &TaskStatus) {
        if !is_terminal(status.state()) || self.updates.has_pending(&status.task_id) {
            return;
        }
        let Some(entry) = self.entries.lock().expect("tasks lock").remove(&status.task_id) else { return };
        if let Some(handle) = entry.handle()
            && let Err(error) = self.runtime.remove(&handle).await
        {
            tracing::warn!(task = %status.task_id, %error, "removing the finished task's container");
        }
        if let Err(error) = self.checkpoint.remove_task(&status.task_id) {
            tracing::warn!(task = %status.task_id, %error, "forgetting the finished task");
        }
    }

    /// Stops watching tasks (the agent is shutting down); the tasks themselves keep running.
    pub fn detach_all(&self) {
        for entry in self.entries.lock().expect("tasks lock").values() {
            entry.cancel.cancel();
        }
    }

    fn spec(&self, entry: &Entry) -> Result<TaskSpec, String> {
        let info = &entry.info;
        let agent_id = self.identity.lock().expect("identity lock").agent_id.clone();
        let hostname = self.identity.lock().expect("identity lock").hostname.clone();
        let default_command = Default::default();
        let command_spec = info.command.as_ref().unwrap_or(&default_command);
        let command = if command_spec.shell && !command_spec.value.is_empty() {
            Some(Command::Shell(command_spec.value.clone()))
        } else if !command_spec.arguments.is_empty() || !command_spec.value.is_empty() {
            let mut argv = Vec::new();
            if !command_spec.value.is_empty() {
                argv.push(command_spec.value.clone());
            }
            argv.extend(command_spec.arguments.iter().cloned());
            Some(Command::Argv(argv))
        } else {
            None
        };
        let container = info.container.clone().unwrap_or_default();
        let image = (!container.image.is_empty()).then(|| normalize_image(&container.image));
        if command.is_none() && image.is_none() {
            return Err("the task has neither a command nor an image".into());
        }
        let mut env: BTreeMap<String, String> = command_spec.environment.clone().into_iter().collect();
        let ports: Vec<marina_runtime::PortMapping> = container
            .port_mappings
            .iter()
            .map(|mapping| marina_runtime::PortMapping {
                host_port: mapping.host_port as u16,
                container_port: if mapping.container_port == 0 { mapping.host_port } else { mapping.container_port }
                    as u16,
                protocol: if mapping.protocol.eq_ignore_ascii_case("udp") { Protocol::Udp } else { Protocol::Tcp },
                name: (!mapping.name.is_empty()).then(|| mapping.name.clone()),
            })
            .collect();
        add_task_environment(&mut env, info, &hostname, &entry.sandbox, &container.port_mappings);
        let network = match container.network.to_ascii_lowercase().as_str() {
            "" | "bridge" => NetworkMode::Bridge,
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            other => return Err(format!("unknown network mode {other:?} (bridge, host or none)")),
        };
        let mut labels: BTreeMap<String, String> = info.labels.clone().into_iter().collect();
        labels.extend(marina_labels(&info.task_id, &agent_id, &info.framework_id));
        let resources = info.resources.clone().unwrap_or_default();
        Ok(TaskSpec {
            task_id: info.task_id.clone(),
            sandbox: entry.sandbox.clone(),
            command,
            image,
            force_pull: container.force_pull,
            env,
            resources: Resources { cpus: resources.cpus, mem_mb: resources.mem_mb, disk_mb: resources.disk_mb },
            ports,
            network,
            privileged: container.privileged,
            labels,
            parameters: container.parameters.iter().map(|p| (p.key.clone(), p.value.clone())).collect(),
        })
    }

    /// After a restart: takes back every checkpointed task. Running ones are re-adopted
    /// (never relaunched), ones that ended meanwhile get their terminal update, ones the
    /// runtime no longer knows are reported failed; unknown containers carrying this agent's
    /// label are left alone and logged.
    pub async fn recover(self: &Arc<Self>, records: Vec<TaskCheckpoint>) -> Result<(), RuntimeError> {
        let agent_id = self.identity.lock().expect("identity lock").agent_id.clone();
        let listed: Vec<ListedTask> = if agent_id.is_empty() {
            Vec::new()
        } else {
            self.runtime.list(&BTreeMap::from([(LABEL_AGENT_ID.to_owned(), agent_id)])).await?
        };
        let mut listed: HashMap<String, ListedTask> =
            listed.into_iter().map(|task| (task.handle.task_id.clone(), task)).collect();
        for record in records {
            let Some(info) = record.info else { continue };
            let status = record.status.unwrap_or_default();
            let mut handle: Option<TaskHandle> =
                (!record.handle_json.is_empty()).then(|| serde_json::from_str(&record.handle_json).ok()).flatten();
            let found = listed.remove(&info.task_id);
            if handle.is_none() {
                // Started, but the agent died before checkpointing the handle.
                handle = found.as_ref().map(|task| task.handle.clone());
            }
            let entry = Arc::new(Entry {
                sandbox: PathBuf::from(&record.sandbox),
                state: Mutex::new(EntryState {
                    handle: handle.clone(),
                    status: status.clone(),
                    killing: record.killing,
                    kill_reason: None,
                }),
                cancel: CancellationToken::new(),
                info,
            });
            self.entries.lock().expect("tasks lock").insert(entry.info.task_id.clone(), entry.clone());
            if is_terminal(status.state()) {
                // Its terminal update is pending (the acknowledgement forgets the task), or the
                // agent died after checkpointing the task but before queueing the update, or
                // after the acknowledgement but before forgetting the task. Sending the same
                // update again covers both: a duplicate is acknowledged like the original.
                if !self.updates.has_pending(&entry.info.task_id)
                    && let Err(error) = self.updates.push(status)
                {
                    tracing::error!(task = %entry.info.task_id, %error, "cannot checkpoint a status update");
                }
                continue;
            }
            let state = match &handle {
                Some(handle) => match &found {
                    Some(task) => task.state.clone(),
                    None => self.runtime.inspect(handle).await.unwrap_or(RuntimeState::NotFound),
                },
                None => RuntimeState::NotFound,
            };
            match (state, handle) {
                (RuntimeState::Running { .. } | RuntimeState::Created, Some(handle)) => {
                    tracing::info!(task = %entry.info.task_id, container = %handle.id, "re-adopted a running task");
                    if status.state() != TaskState::TaskRunning {
                        self.emit(&entry, TaskState::TaskRunning, reason::RECOVERED, "");
                    }
                    if record.killing {
                        // Killed before the restart, but still running: finish the kill.
                        self.stop_in_background(handle.clone(), self.grace(&entry, None));
                    }
                    let tasks = self.clone();
                    tokio::spawn(async move { tasks.monitor(entry, handle).await });
                }
                (RuntimeState::Exited { status: exit, .. }, Some(handle)) => {
                    self.keep_output(&entry, &handle).await;
                    self.report_exit(&entry, exit, record.killing);
                }
                (_, _) => self.emit(
                    &entry,
                    TaskState::TaskFailed,
                    reason::CONTAINER_GONE,
                    "the task was not found in the runtime after the agent restarted",
                ),
            }
        }
        for (task_id, task) in listed {
            tracing::warn!(task = %task_id, container = %task.handle.id, "a container with this agent's label has no checkpoint; leaving it alone");
        }
        Ok(())
    }

    fn report_exit(&self, entry: &Entry, exit: ExitStatus, killing: bool) {
        if killing {
            self.emit(entry, TaskState::TaskKilled, reason::KILLED, "killed");
        } else if exit.success() {
            self.emit(entry, TaskState::TaskFinished, reason::RECOVERED, exit.describe());
        } else {
            self.emit(entry, TaskState::TaskFailed, reason::RECOVERED, exit.describe());
        }
    }

    /// For the health checker: the task's port at `index`, or `fixed`.
    pub fn check_port(entry: &Entry, index: u32, fixed: u32) -> Option<u16> {
        if fixed > 0 {
            return u16::try_from(fixed).ok();
        }
        let mappings: Vec<PortMapping> =
            entry.info.container.as_ref().map(|c| c.port_mappings.clone()).unwrap_or_default();
        mappings.get(index as usize).and_then(|m| u16::try_from(m.host_port).ok())
    }
}

/// Marathon's 2014 image syntax `docker:///repo/name` names `repo/name`.
pub fn normalize_image(image: &str) -> String {
    image.strip_prefix("docker:///").or_else(|| image.strip_prefix("docker://")).unwrap_or(image).to_owned()
}

/// The environment Mesos and Marathon give a task: where it is and which ports it has.
fn add_task_environment(
    env: &mut BTreeMap<String, String>,
    info: &TaskInfo,
    hostname: &str,
    sandbox: &std::path::Path,
    mappings: &[PortMapping],
) {
    env.insert("HOST".into(), hostname.to_owned());
    env.insert("MARINA_TASK_ID".into(), info.task_id.clone());
    env.insert("MESOS_TASK_ID".into(), info.task_id.clone());
    env.insert("MARINA_SANDBOX".into(), sandbox.display().to_string());
    let mut ports = Vec::new();
    for (index, mapping) in mappings.iter().enumerate() {
        env.insert(format!("PORT{index}"), mapping.host_port.to_string());
        if !mapping.name.is_empty() {
            env.insert(
                format!("PORT_{}", mapping.name.to_ascii_uppercase().replace('-', "_")),
                mapping.host_port.to_string(),
            );
        }
        ports.push(mapping.host_port.to_string());
    }
    if let Some(first) = mappings.first() {
        env.insert("PORT".into(), first.host_port.to_string());
    }
    env.insert("PORTS".into(), ports.join(","));
}

#[cfg(test)]
mod tests {
    use super::normalize_image;

    #[test]
    fn the_2014_image_syntax_is_understood() {
        assert_eq!(normalize_image("docker:///libmesos/ubuntu"), "libmesos/ubuntu");
        assert_eq!(normalize_image("busybox:1.36"), "busybox:1.36");
    }
}
