//! Marina's simulated runtime: accepts tasks and "runs" them without side effects, so scale
//! tests can put thousands of agents in one process, as kubemark's hollow nodes do. Never a
//! default; only chosen explicitly.
//!
//! - A task is `Running` from the moment `start` returns (after [`SimConfig::start_latency`])
//!   until it is stopped, which ends it as a process killed by SIGTERM would
//!   (`signal: Some(15)`), or until a test ends it with [`SimRuntime::exit_task`].
//! - A task whose shell command is exactly `exit N` (or `exit`) ends at once with code `N`, so
//!   tests can launch failing tasks through the agent unchanged.
//! - Images are "present" (`ensure_image` succeeds, pulling nothing), logs are empty, `exec`
//!   succeeds with no output.
//! - It costs a few hundred bytes per task: no thread, no tokio task and no timer per task;
//!   `wait` watches the task's state through a `tokio::sync::watch` channel.
//! - State lives in memory: an agent "restart" in a scale test re-adopts its tasks by keeping
//!   the same `SimRuntime` (an `Arc`) across it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use marina_runtime::{
    Capabilities, Command, ExecOutput, ExitStatus, ListedTask, LogStream, Result, Runtime, RuntimeError, RuntimeKind,
    TaskHandle, TaskSpec, TaskState,
};
use tokio::sync::watch;

const KIND: RuntimeKind = RuntimeKind::Sim;

/// What `stop` makes of a task: killed by SIGTERM.
const STOPPED: ExitStatus = ExitStatus { code: None, signal: Some(15), oom_killed: false };

/// How the simulated runtime behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// How long each `start` takes, to model a slow engine. Zero by default.
    pub start_latency: Duration,
    /// What it claims it can do. By default it takes image tasks (which is what a scale
    /// test's apps mostly are) and enforces nothing, since nothing runs.
    pub capabilities: Capabilities,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            start_latency: Duration::ZERO,
            capabilities: Capabilities { images: true, ..Capabilities::default() },
        }
    }
}

/// The simulated runtime. One per simulated agent.
#[derive(Debug)]
pub struct SimRuntime {
    config: SimConfig,
    /// Every task not yet removed, by task id.
    tasks: Mutex<HashMap<String, SimTask>>,
    /// Numbers handles, so incarnations of one task id are told apart.
    next_id: AtomicU64,
}

#[derive(Debug)]
struct SimTask {
    handle: TaskHandle,
    /// The spec's labels, sorted by key, for `list`: packed rather than a `BTreeMap`, whose
    /// first node alone is over 500 bytes (packing saved 450 of a hollow agent's 7,100
    /// bytes per task).
    labels: Box<[(Box<str>, Box<str>)]>,
    /// `Running` or `Exited`; `wait`ers subscribe to it.
    state: watch::Sender<TaskState>,
}

impl SimTask {
    fn label(&self, key: &str) -> Option<&str> {
        let index = self.labels.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(&self.labels[index].1)
    }

    fn is_running(&self) -> bool {
        matches!(*self.state.borrow(), TaskState::Running { .. })
    }

    /// Ends the task with `status` unless it has already ended; whether it did.
    fn exit(&self, status: ExitStatus) -> bool {
        self.state.send_if_modified(|state| match state {
            TaskState::Running { .. } | TaskState::Created => {
                *state = TaskState::Exited { status, finished_at: Some(SystemTime::now()) };
                true
            }
            TaskState::Exited { .. } | TaskState::NotFound => false,
        })
    }
}

impl SimRuntime {
    pub fn new(config: SimConfig) -> Self {
        SimRuntime { config, tasks: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1) }
    }

    /// Ends a running task with `status`, as if its process had exited: to simulate crashes
    /// and failures at scale. Returns whether the task was running.
    pub fn exit_task(&self, task_id: &str, status: ExitStatus) -> bool {
        self.tasks().get(task_id).is_some_and(|task| task.exit(status))
    }

    /// How many tasks the runtime holds (running or exited, not removed).
    pub fn task_count(&self) -> usize {
        self.tasks().len()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimTask>> {
        // Nothing panics while holding the lock, but a poisoned map is still a valid map.
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the task `handle` names (this incarnation of it), if the runtime has it.
    fn with_task<T>(&self, handle: &TaskHandle, f: impl FnOnce(&SimTask) -> T) -> Option<T> {
        self.tasks().get(&handle.task_id).filter(|task| task.handle.id == handle.id).map(f)
    }

    fn not_found(handle: &TaskHandle) -> RuntimeError {
        RuntimeError::NotFound { task_id: handle.task_id.clone() }
    }
}

impl Default for SimRuntime {
    fn default() -> Self {
        SimRuntime::new(SimConfig::default())
    }
}

/// The exit code of a shell command that is exactly `exit` or `exit N`, as `sh` would compute it.
fn immediate_exit(command: Option<&Command>) -> Option<i32> {
    let Some(Command::Shell(line)) = command else { return None };
    let rest = line.trim().strip_prefix("exit")?;
    if rest.is_empty() {
        return Some(0);
    }
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    rest.trim().parse::<i64>().ok().map(|code| i32::try_from(code.rem_euclid(256)).unwrap_or(0))
}

#[async_trait]
impl Runtime for SimRuntime {
    fn kind(&self) -> RuntimeKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        self.config.capabilities
    }

    async fn ensure_image(&self, _image: &str, _force_pull: bool) -> Result<()> {
        Ok(())
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskHandle> {
        // Refuse what every real runtime refuses, so a scale test catches a bad spec too.
        if spec.task_id.is_empty() {
            return Err(RuntimeError::InvalidSpec("the task id is empty".into()));
        }
        if spec.command.is_none() && spec.image.is_none() {
            return Err(RuntimeError::InvalidSpec("the task has neither a command nor an image".into()));
        }
        if !self.config.start_latency.is_zero() {
            tokio::time::sleep(self.config.start_latency).await;
        }
        let now = Some(SystemTime::now());
        let state = match immediate_exit(spec.command.as_ref()) {
            Some(code) => TaskState::Exited {
                status: ExitStatus { code: Some(code), signal: None, oom_killed: false },
                finished_at: now,
            },
            None => TaskState::Running { started_at: now, pid: None },
        };
        let mut tasks = self.tasks();
        if let Some(existing) = tasks.get(&spec.task_id).filter(|task| task.is_running()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "task {} is already running (handle {}); stop and remove it first",
                spec.task_id, existing.handle.id
            )));
        }
        let handle = TaskHandle {
            runtime: KIND,
            task_id: spec.task_id.clone(),
            id: format!("sim-{}", self.next_id.fetch_add(1, Ordering::Relaxed)),
            data: String::new(),
        };
        // A `BTreeMap` iterates in key order: the packed labels are sorted.
        let labels = spec.labels.iter().map(|(key, value)| (key.as_str().into(), value.as_str().into())).collect();
        let task = SimTask { handle: handle.clone(), labels, state: watch::Sender::new(state) };
        tasks.insert(spec.task_id.clone(), task);
        Ok(handle)
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskState> {
        Ok(self.with_task(handle, |task| task.state.borrow().clone()).unwrap_or(TaskState::NotFound))
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitStatus> {
        let mut state = self.with_task(handle, |task| task.state.subscribe()).ok_or_else(|| Self::not_found(handle))?;
        let exited = state.wait_for(|state| matches!(state, TaskState::Exited { .. })).await;
        match exited.as_deref() {
            Ok(TaskState::Exited { status, .. }) => Ok(*status),
            // Removed before it exited.
            _ => Err(Self::not_found(handle)),
        }
    }

    async fn stop(&self, handle: &TaskHandle, _grace: Duration) -> Result<()> {
        self.with_task(handle, |task| task.exit(STOPPED));
        Ok(())
    }

    async fn remove(&self, handle: &TaskHandle) -> Result<()> {
        let mut tasks = self.tasks();
        if tasks.get(&handle.task_id).is_some_and(|task| task.handle.id == handle.id) {
            tasks.remove(&handle.task_id);
        }
        Ok(())
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ListedTask>> {
        let tasks = self.tasks();
        let mut listed: Vec<ListedTask> = tasks
            .values()
            .filter(|task| labels.iter().all(|(key, value)| task.label(key) == Some(value.as_str())))
            .map(|task| ListedTask {
                handle: task.handle.clone(),
                labels: task.labels.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
                state: task.state.borrow().clone(),
            })
            .collect();
        listed.sort_by(|a, b| a.handle.task_id.cmp(&b.handle.task_id));
        Ok(listed)
    }

    async fn logs(&self, handle: &TaskHandle, _stream: LogStream, _tail: Option<usize>) -> Result<Bytes> {
        self.with_task(handle, |_| Bytes::new()).ok_or_else(|| Self::not_found(handle))
    }

    async fn exec(&self, handle: &TaskHandle, argv: &[String], _timeout: Duration) -> Result<ExecOutput> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidSpec("exec needs a command".into()));
        }
        let success = ExitStatus { code: Some(0), signal: None, oom_killed: false };
        self.with_task(handle, |_| ExecOutput { status: success, output: Bytes::new() })
            .ok_or_else(|| Self::not_found(handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_exit_command_exits_at_once() {
        let shell = |line: &str| immediate_exit(Some(&Command::Shell(line.into())));
        assert_eq!(shell("exit 3"), Some(3));
        assert_eq!(shell("  exit   42 "), Some(42));
        assert_eq!(shell("exit"), Some(0));
        assert_eq!(shell("exit 257"), Some(1), "as sh computes it");
        assert_eq!(shell("exit -1"), Some(255));
        assert_eq!(shell("exit3"), None);
        assert_eq!(shell("exit $CODE"), None);
        assert_eq!(shell("sleep 1; exit 3"), None);
        assert_eq!(shell("exec sleep 300"), None);
        assert_eq!(immediate_exit(Some(&Command::Argv(vec!["exit".into(), "3".into()]))), None);
        assert_eq!(immediate_exit(None), None);
    }
}
