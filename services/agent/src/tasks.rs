//! The tasks an agent runs: launching them through the runtime, watching them until they
//! end, killing them on request, reporting every transition as a status update, and
//! re-adopting them after the agent restarts.
//!
//! A task is checkpointed before anything is done for it, and again whenever its handle or
//! status changes, so a restarted agent knows every task it may have started. A task is
//! checked ([`marina_proto::checks::check_task`]) before that: one that fails is answered
//! `TASK_ERROR` and nothing of it reaches the disk. A launch that cannot be checkpointed is
//! answered `TASK_FAILED` and nothing of it starts; a later checkpoint that fails is kept in
//! memory and written again ([`Tasks::retry_unsaved`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_proto::agent::v1::{PortMapping, TaskCheckpoint, TaskInfo, TaskReport, TaskState, TaskStatus};
use marina_proto::policy::ContainerPolicy;
use marina_proto::reason;
use marina_runtime::{
    Command, ExitStatus, LABEL_AGENT_ID, ListedTask, LogStream, NetworkMode, Protocol, Resources, Runtime,
    RuntimeError, TaskAddresses, TaskHandle, TaskSpec, TaskState as RuntimeState, marina_labels,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::fetch::Fetcher;
use crate::health;
use crate::updates::StatusUpdates;

/// Who this agent is, as stamped on its status updates.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent_id: String,
    pub hostname: String,
    /// The agent's own IP address(es): those of the tasks that share its network.
    pub addresses: Vec<IpAddr>,
}

pub struct Tasks {
    runtime: Arc<dyn Runtime>,
    checkpoint: Checkpoint,
    updates: Arc<StatusUpdates>,
    identity: Mutex<Identity>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    default_grace: Duration,
    /// Tasks whose latest checkpoint (a save, or forgetting one) failed: written again by
    /// [`Tasks::retry_unsaved`].
    unsaved: Mutex<HashSet<String>>,
    /// The most of a container's output [`Tasks::keep_output`] copies into its sandbox.
    output_limit: usize,
    /// What tasks may ask of the host, checked at every launch.
    policy: ContainerPolicy,
    /// Whether the agent runs as root (then process tasks run as the policy's user).
    is_root: bool,
    /// Downloads tasks' `fetch` URIs into their sandboxes.
    fetcher: Arc<Fetcher>,
}

/// How the agent runs tasks, from its configuration.
pub struct TaskSettings {
    /// SIGTERM → this long → SIGKILL, for tasks that do not set their own.
    pub default_grace: Duration,
    /// The most of an image task's output kept in its sandbox once it ends.
    pub output_limit: usize,
    pub policy: ContainerPolicy,
    pub fetcher: Arc<Fetcher>,
}

/// One task.
pub struct Entry {
    pub info: TaskInfo,
    pub sandbox: PathBuf,
    state: Mutex<EntryState>,
    /// Stops the launch: cancelled when the task is killed before it started, or when the
    /// agent stops.
    cancel: CancellationToken,
    /// Stops watching the started task: cancelled only when the agent stops (the task runs
    /// on, to be re-adopted). Not `cancel`: a kill that came while the runtime was starting
    /// the task cancels that, and the task — stopped as soon as it started — must still be
    /// watched to its end, or its exit is never reported and it stays RUNNING for ever.
    detached: CancellationToken,
}

struct EntryState {
    handle: Option<TaskHandle>,
    status: TaskStatus,
    /// Where the task is reached (see [`Tasks::addresses_of`]), once it runs: in each of its
    /// status updates from then on, and so in its checkpoint.
    ip_addresses: Vec<String>,
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

    /// The task's network mode as its `ContainerSpec` names it (lowercase; empty: the
    /// default, a bridge).
    fn network(&self) -> String {
        self.info.container.as_ref().map(|c| c.network.to_ascii_lowercase()).unwrap_or_default()
    }

    /// The first of the task's IP addresses, once it runs.
    pub fn ip_address(&self) -> Option<IpAddr> {
        self.state.lock().expect("task lock").ip_addresses.first().and_then(|address| address.parse().ok())
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
        settings: TaskSettings,
    ) -> Self {
        Self {
            runtime,
            checkpoint,
            updates,
            identity: Mutex::new(identity),
            entries: Mutex::default(),
            default_grace: settings.default_grace,
            unsaved: Mutex::default(),
            output_limit: settings.output_limit,
            policy: settings.policy,
            is_root: nix::unistd::geteuid().is_root(),
            fetcher: settings.fetcher,
        }
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
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

    /// The sandboxes of the tasks the agent knows (not yet acknowledged terminal): the ones
    /// garbage collection leaves alone. `act` runs with the tasks locked, so no launch can
    /// claim a sandbox it is about to remove.
    pub fn with_known_sandboxes<T>(&self, act: impl FnOnce(&HashSet<PathBuf>) -> T) -> T {
        let entries = self.entries.lock().expect("tasks lock");
        let sandboxes: HashSet<PathBuf> = entries.values().map(|entry| entry.sandbox.clone()).collect();
        act(&sandboxes)
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
            // The master checked the task already; the agent checks again before anything of
            // it reaches its disk or its processes, which are the ones at stake (a task id
            // becomes a path, an environment a system call's argument).
            let checked = marina_proto::checks::check_task(&info)
                .and_then(|()| self.checkpoint.sandbox_path(&info.task_id).map_err(|error| error.to_string()));
            let sandbox = match checked {
                Ok(sandbox) => sandbox,
                Err(problem) => {
                    self.refuse(&info, problem);
                    continue;
                }
            };
            if self.get(&info.task_id).is_some() || entries.iter().any(|e: &Arc<Entry>| e.info.task_id == info.task_id)
            {
                tracing::info!(task = %info.task_id, "launch of a known task ignored");
                continue;
            }
            let status = self.base_status(&info, TaskState::TaskStaging);
            entries.push(Arc::new(Entry {
                info,
                sandbox,
                state: Mutex::new(EntryState {
                    handle: None,
                    status,
                    ip_addresses: Vec::new(),
                    killing: false,
                    kill_reason: None,
                }),
                cancel: CancellationToken::new(),
                detached: CancellationToken::new(),
            }));
        }
        if entries.is_empty() {
            return;
        }
        // All in one append: a launch of a hundred tasks is one sync, not a hundred.
        let records: Vec<_> = entries.iter().map(|entry| entry.checkpoint_record()).collect();
        if let Err(error) = self.checkpoint.save_tasks(&records) {
            // A task started without its checkpoint could be orphaned by a restart: none is.
            tracing::error!(tasks = entries.len(), %error, "cannot checkpoint the launch; failing its tasks");
            for entry in entries {
                let mut status = self.base_status(&entry.info, TaskState::TaskFailed);
                status.reason = reason::LAUNCH_FAILED.to_owned();
                status.message = format!("cannot checkpoint the launch: {error}");
                self.updates.push(status);
            }
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
                // Each phase is boxed, so the task holds only the one running: a spawned
                // future is as large as its largest state, and the launch's (fetching,
                // building the spec) held beside every running task for its whole life was
                // 1.3 KB of the 8.4 KB a hollow agent held per task.
                let started = Box::pin(tasks.start(&entry).instrument(span)).await;
                if let Some(handle) = started {
                    Box::pin(tasks.monitor(entry, handle)).await;
                }
            });
        }
    }

    /// Answers a task that fails the checks `TASK_ERROR`, naming the problem; nothing of it
    /// is written, not even the answer.
    fn refuse(&self, info: &TaskInfo, problem: String) {
        // Debug-formatted: the id is what is wrong, and may hold anything.
        tracing::warn!(task = ?info.task_id, %problem, "refusing an invalid task");
        let mut status = self.base_status(info, TaskState::TaskError);
        status.reason = reason::TASK_INVALID.to_owned();
        status.message = problem;
        self.updates.push_unsaved(status);
    }

    /// Checkpoints `entry` as it is now; a failure is remembered and written again later.
    /// Every checkpoint write holds `unsaved` from reading the task to writing it, so the
    /// writes of one task land in the order of its changes, and a retry never writes back a
    /// state that is stale or a task the agent has forgotten.
    fn save(&self, entry: &Entry) {
        let task_id = &entry.info.task_id;
        let mut unsaved = self.unsaved.lock().expect("unsaved lock");
        match self.checkpoint.save_task(&entry.checkpoint_record()) {
            Ok(()) => {
                unsaved.remove(task_id);
            }
            Err(error) => {
                tracing::error!(task = %task_id, %error, "cannot checkpoint the task; writing it once the disk allows");
                unsaved.insert(task_id.clone());
            }
        }
    }

    /// Writes the tasks whose checkpoint failed as they are now (or forgets them, if the
    /// agent has meanwhile), stopping at the first failure. Returns how many are left.
    pub fn retry_unsaved(&self) -> usize {
        let waiting: Vec<String> = self.unsaved.lock().expect("unsaved lock").iter().cloned().collect();
        for task_id in waiting {
            // Under the lock, as every checkpoint write (see `save`): the task is read as it
            // is at the write, and one written meanwhile is not written again.
            let mut unsaved = self.unsaved.lock().expect("unsaved lock");
            if !unsaved.contains(&task_id) {
                continue;
            }
            let written: Result<(), CheckpointError> = match self.get(&task_id) {
                Some(entry) => self.checkpoint.save_task(&entry.checkpoint_record()),
                None => self.checkpoint.remove_task(&task_id),
            };
            if written.is_err() {
                break;
            }
            unsaved.remove(&task_id);
        }
        self.backlog()
    }

    /// How many tasks wait to be checkpointed.
    pub fn backlog(&self) -> usize {
        self.unsaved.lock().expect("unsaved lock").len()
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
            status.ip_addresses = guard.ip_addresses.clone();
            guard.status = status.clone();
            status
        };
        self.save(entry);
        tracing::info!(task = %entry.info.task_id, state = ?state, reason, detail = %status.message, "task status");
        self.updates.push(status);
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
        // Made now, not at the launch: a launch that cannot be checkpointed leaves nothing.
        if let Err(error) = self.checkpoint.create_sandbox(&entry.sandbox) {
            self.emit(entry, TaskState::TaskFailed, reason::LAUNCH_FAILED, format!("cannot make the sandbox: {error}"));
            return None;
        }
        self.emit(entry, TaskState::TaskStarting, "", "");
        let spec = match self.spec(entry) {
            Ok(spec) => spec,
            Err(error) => {
                self.emit(entry, TaskState::TaskError, reason::LAUNCH_FAILED, error);
                return None;
            }
        };
        if !entry.info.fetch.is_empty() && !self.fetch(entry, &spec).await {
            return None;
        }
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
        let addresses = self.addresses_of(entry, &handle).await;
        let killing = {
            let mut guard = entry.state.lock().expect("task lock");
            guard.handle = Some(handle.clone());
            guard.ip_addresses = addresses.unwrap_or_default();
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

    /// Where a started task is reached: its own addresses (a container's on its bridge or
    /// container network), else — sharing the host's network — the agent's; none for a task
    /// without a network. `None` when the runtime could not say (logged).
    async fn addresses_of(&self, entry: &Entry, handle: &TaskHandle) -> Option<Vec<String>> {
        if entry.network() == "none" {
            return Some(Vec::new());
        }
        let addresses = match self.runtime.addresses(handle).await {
            Ok(TaskAddresses::Own(own)) => own,
            Ok(TaskAddresses::Host) => self.identity.lock().expect("identity lock").addresses.clone(),
            Err(error) => {
                tracing::warn!(task = %entry.info.task_id, %error, "cannot read the task's addresses");
                return None;
            }
        };
        Some(addresses.iter().map(ToString::to_string).collect())
    }

    /// Fetches the task's URIs into its sandbox, handing them to the user a command task
    /// runs as. `false` when the task must not start (its status already says why).
    async fn fetch(&self, entry: &Entry, spec: &TaskSpec) -> bool {
        let owner = match spec.user.as_deref().filter(|_| self.is_root) {
            Some(user) => match marina_runtime_process::user_ids(user) {
                Ok(ids) => Some(ids),
                Err(why) => {
                    let message = format!("running the task as {user:?}: {why}");
                    self.emit(entry, TaskState::TaskFailed, reason::LAUNCH_FAILED, message);
                    return false;
                }
            },
            None => None,
        };
        let fetch = self
            .fetcher
            .fetch_all(&entry.info.fetch, &entry.sandbox, owner)
            .instrument(tracing::info_span!("agent.fetch", uris = entry.info.fetch.len()));
        let fetched = tokio::select! {
            fetched = fetch => fetched,
            () = entry.cancel.cancelled() => {
                self.emit(entry, TaskState::TaskKilled, reason::KILLED, "killed before it started");
                return false;
            }
        };
        match fetched {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(task = %entry.info.task_id, %error, "fetch failed");
                self.emit(entry, TaskState::TaskFailed, reason::LAUNCH_FAILED, error.to_string());
                false
            }
        }
    }

    /// Watches a started task (new or re-adopted) until it ends.
    async fn monitor(self: Arc<Self>, entry: Arc<Entry>, handle: TaskHandle) {
        let checks = health::spawn(self.clone(), entry.clone(), handle.clone());
        let exit = tokio::select! {
            exit = self.runtime.wait(&handle) => exit,
            // The agent is stopping: tasks keep running; the next agent re-adopts them.
            () = entry.detached.cancelled() => { checks.cancel(); return; }
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

    /// Saves the end of a container runtime's output (at most `output_limit` bytes a
    /// stream, what one rotated file holds) into the sandbox before the container goes.
    async fn keep_output(&self, entry: &Entry, handle: &TaskHandle) {
        for (stream, name) in [(LogStream::Stdout, "stdout"), (LogStream::Stderr, "stderr")] {
            let path = entry.sandbox.join(name);
            if path.exists() {
                continue;
            }
            if let Ok(bytes) = self.runtime.logs(handle, stream, Some(self.output_limit)).await
                && let Err(error) = std::fs::write(&path, &bytes)
            {
                tracing::warn!(task = %entry.info.task_id, path = %path.display(), %error, "cannot keep the task's output");
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
            self.updates.push(status);
            return;
        };
        // A kill names a task of its framework (the master checks this too): another
        // framework's task of the same id is left alone.
        if !framework_id.is_empty() && !entry.info.framework_id.is_empty() && entry.info.framework_id != framework_id {
            tracing::warn!(task = %task_id, framework = %framework_id, owner = %entry.info.framework_id, "a kill of another framework's task refused");
            return;
        }
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
        let mut unsaved = self.unsaved.lock().expect("unsaved lock");
        match self.checkpoint.remove_task(&status.task_id) {
            // Whatever of it waited to be written no longer matters.
            Ok(()) => unsaved.remove(&status.task_id),
            Err(error) => {
                tracing::warn!(task = %status.task_id, %error, "cannot forget the finished task; trying again later");
                unsaved.insert(status.task_id.clone())
            }
        };
    }

    /// Stops watching tasks (the agent is shutting down); the tasks themselves keep running.
    pub fn detach_all(&self) {
        for entry in self.entries.lock().expect("tasks lock").values() {
            entry.cancel.cancel();
            entry.detached.cancel();
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
        let parameters = container.parameters.iter().map(|p| (p.key.as_str(), p.value.as_str()));
        let mut violations = self.policy.check_container(container.privileged, parameters);
        // Image tasks run as their image says; command tasks as the policy decides.
        let user = match image {
            Some(_) => None,
            None => {
                let asked = Some(command_spec.user.as_str()).filter(|user| !user.is_empty());
                self.policy.task_user(asked, self.is_root).unwrap_or_else(|violation| {
                    violations.push(violation);
                    None
                })
            }
        };
        if !violations.is_empty() {
            let each: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(format!("the agent's container policy refuses the task: {}", each.join("; ")));
        }
        let mut env: BTreeMap<String, String> = command_spec.environment.clone().into_iter().collect();
        let ports: Vec<marina_runtime::PortMapping> = container
            .port_mappings
            .iter()
            .map(|mapping| marina_runtime::PortMapping {
                // Ports within 0..=65535: checked at the launch.
                host_port: u16::try_from(mapping.host_port).unwrap_or_default(),
                container_port: u16::try_from(if mapping.container_port == 0 {
                    mapping.host_port
                } else {
                    mapping.container_port
                })
                .unwrap_or_default(),
                protocol: if mapping.protocol.eq_ignore_ascii_case("udp") { Protocol::Udp } else { Protocol::Tcp },
                name: (!mapping.name.is_empty()).then(|| mapping.name.clone()),
            })
            .collect();
        add_task_environment(&mut env, info, &hostname, &entry.sandbox, &container.port_mappings);
        let network = match container.network.to_ascii_lowercase().as_str() {
            "" | "bridge" => NetworkMode::Bridge,
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            "container" if container.network_name.is_empty() => {
                return Err("a container network needs a name (Marathon's networks[].name)".into());
            }
            "container" => NetworkMode::Container(container.network_name.clone()),
            other => return Err(format!("unknown network mode {other:?} (bridge, host, none or container)")),
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
            user,
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
                    ip_addresses: status.ip_addresses.clone(),
                    killing: record.killing,
                    kill_reason: None,
                }),
                cancel: CancellationToken::new(),
                detached: CancellationToken::new(),
                info,
            });
            self.entries.lock().expect("tasks lock").insert(entry.info.task_id.clone(), entry.clone());
            if is_terminal(status.state()) {
                // Its terminal update is pending (the acknowledgement forgets the task), or the
                // agent died after checkpointing the task but before queueing the update, or
                // after the acknowledgement but before forgetting the task. Sending the same
                // update again covers both: a duplicate is acknowledged like the original.
                if !self.updates.has_pending(&entry.info.task_id) {
                    self.updates.push(status);
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
                    // Read again: the checkpoint may predate them (the agent died before the
                    // RUNNING update), and the agent's own address may have changed.
                    let addresses = self.addresses_of(&entry, &handle).await.filter(|a| !a.is_empty());
                    let moved = addresses.as_ref().is_some_and(|addresses| *addresses != status.ip_addresses);
                    if let Some(addresses) = addresses {
                        entry.state.lock().expect("task lock").ip_addresses = addresses;
                    }
                    if status.state() != TaskState::TaskRunning || moved {
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

    /// For the health checker: where the task's port at `index`, or `fixed`, is reached. On
    /// a container network that is the task's own address and the container port (a fixed
    /// port is one there: Marathon checks IP-per-task apps at their address); elsewhere the
    /// agent's loopback and the host port.
    pub fn check_target(entry: &Entry, index: u32, fixed: u32) -> Option<(IpAddr, u16)> {
        let mappings: Vec<PortMapping> =
            entry.info.container.as_ref().map(|c| c.port_mappings.clone()).unwrap_or_default();
        if entry.network() == "container" {
            let port = if fixed > 0 { fixed } else { mappings.get(index as usize)?.container_port };
            return Some((entry.ip_address()?, u16::try_from(port).ok().filter(|port| *port > 0)?));
        }
        let port = if fixed > 0 { fixed } else { mappings.get(index as usize)?.host_port };
        Some((IpAddr::V4(Ipv4Addr::LOCALHOST), u16::try_from(port).ok()?))
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
    use std::path::Path;

    use marina_proto::agent::v1::{CommandSpec, ContainerSpec};
    use marina_runtime_sim::{SimConfig, SimRuntime};

    use super::*;
    use crate::config::FetcherConfig;
    use crate::test_disk::SmallDisk;

    #[test]
    fn the_2014_image_syntax_is_understood() {
        assert_eq!(normalize_image("docker:///libmesos/ubuntu"), "libmesos/ubuntu");
        assert_eq!(normalize_image("busybox:1.36"), "busybox:1.36");
    }

    /// An agent's tasks on `work_dir`, running on the simulated runtime.
    fn agent_tasks(work_dir: &Path) -> (Arc<Tasks>, Arc<StatusUpdates>, Arc<SimRuntime>) {
        agent_tasks_on(work_dir, SimConfig::default())
    }

    /// [`agent_tasks`] on a simulated runtime configured as `sim`.
    fn agent_tasks_on(work_dir: &Path, sim: SimConfig) -> (Arc<Tasks>, Arc<StatusUpdates>, Arc<SimRuntime>) {
        let (checkpoint, _) = Checkpoint::open(work_dir).unwrap();
        let updates = Arc::new(StatusUpdates::new(checkpoint.clone(), Vec::new()));
        let runtime = Arc::new(SimRuntime::new(sim));
        let identity = Identity {
            agent_id: "agent-1".into(),
            hostname: "host".into(),
            addresses: vec!["192.0.2.7".parse().unwrap()],
        };
        let policy = ContainerPolicy { allow_root: true, ..ContainerPolicy::default() };
        let fetcher = Arc::new(Fetcher::new(&FetcherConfig::default(), work_dir).unwrap());
        let settings = TaskSettings { default_grace: Duration::from_secs(1), output_limit: 1024, policy, fetcher };
        let tasks = Tasks::new(runtime.clone(), checkpoint, updates.clone(), identity, settings);
        (Arc::new(tasks), updates, runtime)
    }

    fn task(task_id: &str) -> TaskInfo {
        TaskInfo {
            task_id: task_id.to_owned(),
            command: Some(CommandSpec { shell: true, value: "sleep 600".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn started(runtime: &SimRuntime) -> usize {
        runtime.list(&BTreeMap::new()).await.unwrap().len()
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        marina_runtime::conformance::eventually(Duration::from_secs(10), what, || {
            let holds = done();
            async move { holds.then_some(()) }
        })
        .await
    }

    /// Defense in depth: whatever the master let through, a task that breaks the rules is
    /// answered TASK_ERROR naming the problem, and nothing of it (sandbox, checkpoint, process)
    /// comes to be.
    #[tokio::test]
    async fn invalid_tasks_are_refused_and_nothing_of_them_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, updates, runtime) = agent_tasks(dir.path());
        let journal = dir.path().join("meta/journal");
        let journal_before = std::fs::metadata(&journal).unwrap().len();
        let mut bad_env = task("env");
        bad_env.command.as_mut().unwrap().environment.insert("A=B".into(), "x".into());
        let mut nul = task("nul");
        nul.command.as_mut().unwrap().value = "echo a\0b".into();
        let refused = [
            (task(".."), "'..'"),
            (task("a/b"), "'/'"),
            (task(""), "empty"),
            (task(&"x".repeat(256)), "256 bytes"),
            (bad_env, "A=B"),
            (nul, "NUL"),
            // A valid id, but too long for a file name once escaped.
            (task(&":".repeat(100)), "300 bytes"),
        ];
        let infos: Vec<TaskInfo> = refused.iter().map(|(info, _)| info.clone()).collect();
        tasks.launch("framework-1", infos, &Default::default());

        let answers = updates.deliverable();
        assert_eq!(answers.len(), refused.len(), "{answers:?}");
        for ((info, problem), answer) in refused.iter().zip(&answers) {
            assert_eq!(answer.task_id, info.task_id);
            assert_eq!((answer.state(), answer.reason.as_str()), (TaskState::TaskError, reason::TASK_INVALID));
            assert!(answer.message.contains(problem), "{problem}: {}", answer.message);
            assert!(tasks.get(&info.task_id).is_none());
        }
        assert!(entries(&dir.path().join("sandboxes")).is_empty(), "no sandbox");
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), journal_before, "no checkpoint");
        assert_eq!(started(&runtime).await, 0, "nothing started");
        // (The fetch cache is made when the agent starts.)
        assert!(entries(dir.path()).iter().all(|name| ["meta", "sandboxes", "fetch-cache"].contains(&name.as_str())));
    }

    /// A launch whose checkpoint fails (a full disk, for real) is answered TASK_FAILED naming
    /// the error and the file, leaves no sandbox and starts nothing; with room again, the
    /// same task launches.
    #[tokio::test]
    async fn a_launch_that_cannot_be_checkpointed_fails_and_starts_nothing() {
        let disk = SmallDisk::mount(256 * 1024);
        let (tasks, updates, runtime) = agent_tasks(disk.path());
        let filler = disk.fill();
        let mut big = task("web.1");
        // Bigger than what is left of the journal's last page.
        big.labels.insert("note".into(), "x".repeat(16 * 1024));
        tasks.launch("framework-1", vec![big.clone()], &Default::default());

        let answers = updates.deliverable();
        assert_eq!(answers.len(), 1);
        let journal = disk.path().join("meta/journal");
        let expected =
            format!("cannot checkpoint the launch: No space left on device (os error 28) at {}", journal.display());
        assert_eq!((answers[0].state(), answers[0].message.as_str()), (TaskState::TaskFailed, expected.as_str()));
        assert_eq!(answers[0].reason, reason::LAUNCH_FAILED);
        assert!(tasks.get("web.1").is_none());
        assert!(entries(&disk.path().join("sandboxes")).is_empty(), "no sandbox");
        assert_eq!(started(&runtime).await, 0, "nothing started");

        std::fs::remove_file(filler).unwrap();
        updates.acknowledge("web.1", &answers[0].uuid);
        tasks.launch("framework-1", vec![big], &Default::default());
        let entry = tasks.get("web.1").expect("launched");
        wait_for("the task to run", || entry.status().state() == TaskState::TaskRunning).await;
        assert_eq!(entries(&disk.path().join("sandboxes")), ["web.1"]);
    }

    /// Found by `marina-bench chaos`: a kill that came while the runtime was starting the
    /// task stopped it once started, but no longer watched it, so its exit was never
    /// reported: it stayed RUNNING on the agent for ever, every later kill ignored (it was
    /// "already being killed"), and the gateway's deployment waited on it for good.
    #[tokio::test]
    async fn a_task_killed_while_the_runtime_starts_it_is_stopped_and_reported_killed() {
        let dir = tempfile::tempdir().unwrap();
        let slow = SimConfig { start_latency: Duration::from_millis(300), ..SimConfig::default() };
        let (tasks, _updates, runtime) = agent_tasks_on(dir.path(), slow);
        // Twenty at once: whether the lost exit showed depended on which of two ready
        // branches a `select!` took, so one task would catch the bug only half the time.
        let ids: Vec<String> = (1..=20).map(|n| format!("web.{n}")).collect();
        tasks.launch("framework-1", ids.iter().map(|id| task(id)).collect(), &Default::default());
        let entries: Vec<Arc<Entry>> = ids.iter().map(|id| tasks.get(id).expect("launched")).collect();
        // STARTING is announced right before the runtime is asked to start a task, with
        // nothing awaited in between: on this (current-thread) runtime, once it shows, the
        // start is under way.
        wait_for("every start to begin", || entries.iter().all(|e| e.status().state() == TaskState::TaskStarting))
            .await;
        for id in &ids {
            tasks.kill(id, "framework-1", 0, None);
        }
        wait_for("every task to be reported killed", || {
            entries.iter().all(|e| e.status().state() == TaskState::TaskKilled)
        })
        .await;
        for entry in &entries {
            let handle = entry.handle().expect("it did start");
            assert!(runtime.wait(&handle).await.is_ok(), "and it is stopped in the runtime");
        }
    }

    /// A task sharing the host's network is reached at the agent's address (the sim runtime,
    /// like the process runtime, has no network of its own), from its RUNNING update on and
    /// in its checkpoint; a task without a network has none.
    #[tokio::test]
    async fn a_running_tasks_addresses_are_in_its_updates_and_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, updates, _runtime) = agent_tasks(dir.path());
        let network = |task_id: &str, network: &str, name: &str| TaskInfo {
            container: Some(ContainerSpec { network: network.into(), network_name: name.into(), ..Default::default() }),
            ..task(task_id)
        };
        let launched = vec![task("web.1"), network("web.2", "none", ""), network("web.3", "host", "")];
        tasks.launch("framework-1", launched, &Default::default());
        for task_id in ["web.1", "web.2", "web.3"] {
            let entry = tasks.get(task_id).expect("launched");
            wait_for("the task to run", || entry.status().state() == TaskState::TaskRunning).await;
        }
        let addresses = |task_id: &str| tasks.get(task_id).unwrap().status().ip_addresses;
        assert_eq!((addresses("web.1"), addresses("web.3")), (vec!["192.0.2.7".into()], vec!["192.0.2.7".into()]));
        assert!(addresses("web.2").is_empty());
        // Every update of web.1 in order: each is sent once the one before is acknowledged.
        let mut sent = Vec::new();
        while let Some(next) = updates.deliverable().into_iter().find(|u| u.task_id == "web.1") {
            updates.acknowledge("web.1", &next.uuid);
            sent.push(next);
        }
        let running = sent.iter().find(|u| u.state() == TaskState::TaskRunning).unwrap();
        assert_eq!(running.ip_addresses, ["192.0.2.7"]);
        let starting = sent.iter().find(|u| u.state() == TaskState::TaskStarting).unwrap();
        assert!(starting.ip_addresses.is_empty(), "not before it runs");
        // Health changes re-announce RUNNING: with the addresses still.
        tasks.set_health(&tasks.get("web.1").unwrap(), false, "sick");
        assert_eq!(addresses("web.1"), ["192.0.2.7"]);

        let (_, recovered) = Checkpoint::open(dir.path()).unwrap();
        let record = recovered.tasks.iter().find(|t| t.info.as_ref().unwrap().task_id == "web.1").unwrap();
        assert_eq!(record.status.as_ref().unwrap().ip_addresses, ["192.0.2.7"]);
    }

    #[test]
    fn health_checks_reach_a_container_network_task_at_its_own_address() {
        let info = |network: &str| TaskInfo {
            container: Some(ContainerSpec {
                network: network.into(),
                network_name: "dev".into(),
                port_mappings: vec![PortMapping { host_port: 31000, container_port: 8080, ..Default::default() }],
                ..Default::default()
            }),
            ..task("web.1")
        };
        let entry = |network: &str, addresses: &[&str]| Entry {
            info: info(network),
            sandbox: PathBuf::from("/tmp/web.1"),
            state: Mutex::new(EntryState {
                handle: None,
                status: TaskStatus::default(),
                ip_addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                killing: false,
                kill_reason: None,
            }),
            cancel: CancellationToken::new(),
            detached: CancellationToken::new(),
        };
        let at = |address: &str, port| Some((address.parse::<IpAddr>().unwrap(), port));
        let joined = entry("container", &["172.18.0.5"]);
        assert_eq!(Tasks::check_target(&joined, 0, 0), at("172.18.0.5", 8080));
        assert_eq!(Tasks::check_target(&joined, 0, 9090), at("172.18.0.5", 9090), "a fixed port is a container port");
        assert_eq!(Tasks::check_target(&entry("container", &[]), 0, 0), None, "no address yet");
        let bridged = entry("bridge", &["172.17.0.3"]);
        assert_eq!(Tasks::check_target(&bridged, 0, 0), at("127.0.0.1", 31000), "the mapped host port");
        assert_eq!(Tasks::check_target(&bridged, 1, 0), None);
    }

    /// A task checkpoint that fails on a full disk is kept and written once there is room:
    /// after a restart, the task's state is the one it reached while the disk was full.
    #[tokio::test]
    async fn a_task_checkpoint_that_failed_is_written_later() {
        let disk = SmallDisk::mount(256 * 1024);
        let (tasks, updates, _runtime) = agent_tasks(disk.path());
        let mut big = task("web.2");
        big.labels.insert("note".into(), "x".repeat(16 * 1024));
        tasks.launch("framework-1", vec![big], &Default::default());
        let entry = tasks.get("web.2").expect("launched");
        wait_for("the task to run", || entry.status().state() == TaskState::TaskRunning).await;

        let filler = disk.fill();
        tasks.kill("web.2", "framework-1", 0, None);
        wait_for("the task to be killed", || entry.status().state() == TaskState::TaskKilled).await;
        assert_eq!(tasks.backlog(), 1, "its checkpoint waits");
        assert_eq!(tasks.retry_unsaved(), 1, "no room yet");
        let (_, recovered) = Checkpoint::open(disk.path()).unwrap();
        assert_eq!(recovered.tasks[0].status.as_ref().unwrap().state(), TaskState::TaskRunning, "as last written");

        std::fs::remove_file(filler).unwrap();
        assert_eq!(tasks.retry_unsaved(), 0);
        updates.retry_unsaved();
        let (_, recovered) = Checkpoint::open(disk.path()).unwrap();
        assert_eq!(recovered.tasks[0].status.as_ref().unwrap().state(), TaskState::TaskKilled);
        let states: Vec<TaskState> = recovered.updates.iter().map(|u| u.status.as_ref().unwrap().state()).collect();
        assert!(states.contains(&TaskState::TaskKilled), "the KILLED update was written too: {states:?}");
    }
}
