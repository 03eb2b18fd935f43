//! Marina's process runtime: tasks as plain host processes, as Mesos' command tasks are. The
//! agent's default when no container engine is reachable.
//!
//! # Design
//! Each task runs under its own [`marina-supervise`](supervisor) process, started in a
//! process group of its own; the supervisor starts the task in a second group, forwards
//! SIGTERM/SIGINT to it, reaps it and writes how it ended to the state directory (see
//! [`supervisor`] for the whole protocol). The runtime keeps one record per task in its state
//! directory (layout in `store.rs`): labels, sandbox, environment, and the supervisor's and
//! the task's pid *with their start times*, so a reused pid is never mistaken for the task.
//! Nothing about a task lives only in the agent's memory, so the agent can die (even by
//! SIGKILL) and a new [`ProcessRuntime`] on the same `state_dir` re-adopts every task:
//! `list`, `inspect`, `wait`, `stop`, `logs` and `exec` work as before, and a task that ended
//! while no agent ran is reported with the exit status its supervisor recorded.
//!
//! - `wait` on a task this instance started resolves when its supervisor is reaped (no
//!   polling); on a re-adopted task, which is not our child, it polls the exit record and the
//!   supervisor's liveness every [`POLL_INTERVAL`].
//! - `stop` signals the *task's* group: SIGTERM, then SIGKILL after the grace period. The
//!   supervisor is never in that group, so it always lives to record the status.
//! - If a supervisor itself is killed, its task keeps running: it is reported `Running` while
//!   its main process lives, can still be stopped (its group is still signalled), and ends as
//!   `Exited` with an unknown status, since nobody could see how it ended. Its output went
//!   through the supervisor, so its next write fails (`SIGPIPE`).
//! - A task's `stdout` and `stderr` in its sandbox are rotated by its supervisor at
//!   [`ProcessConfig::log_rotation`] ([`rotate`]); `logs` reads the current file.
//! - Supervisors this instance starts are its children, and it reaps them (one small tokio
//!   task each). Re-adopted supervisors are reaped by whoever inherited them (init).
//!
//! # What it does not do
//! - Images ([`RuntimeError::Unsupported`]): it runs host commands.
//! - Port mapping: a task binds the host ports the agent gives it (`PORT0`, … in its env);
//!   `container_port` is ignored.
//! - CPU and memory limits without cgroups: they are enforced through cgroup v1 where the
//!   agent can make cgroups below its own ([`cgroup`]: root with writable cgroup mounts),
//!   and [`Capabilities`] says whether they are. Elsewhere (an unprivileged agent, cgroup v2
//!   without a delegated subtree) they are not, and are not claimed; `RLIMIT_AS` is not a
//!   memory limit.
//! - Network isolation: tasks share the host's network, so `NetworkMode::None` and container
//!   networks (`NetworkMode::Container`) are refused; `Bridge` (the runtime's default) and
//!   `Host` both mean the host's network.
//! - Privileges: a task runs as its spec's `user` (its sandbox handed to that user, its
//!   supplementary groups dropped), else as the agent's user; the agent decides who may be
//!   asked for (its container policy). `privileged` changes nothing.
//! - Linux only: liveness and pid-reuse defence read `/proc`.

pub mod cgroup;
pub mod rotate;
pub mod supervisor;

mod procfs;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use marina_runtime::{
    Capabilities, Command, ExecOutput, ExitStatus, ListedTask, LogRotation, LogStream, NetworkMode, Result, Runtime,
    RuntimeError, RuntimeKind, TaskHandle, TaskSpec, TaskState,
};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::watch;

use crate::procfs::{ProcessIdentity, signal_group};
use crate::store::{RECORD_FORMAT, Store, TaskRecord};
use crate::supervisor::{Handshake, Invocation};

pub use crate::supervisor::SUPERVISOR_BIN;

/// How often `wait` looks at a re-adopted task (one this instance did not start).
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a supervisor may take to report that its task runs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `stop` waits for a task to die after SIGKILL before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// `exec` keeps this much output; the rest is read and dropped.
const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// `PATH` for tasks whose spec sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const KIND: RuntimeKind = RuntimeKind::Process;

/// How the process runtime is set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// Where the runtime keeps what it knows about each task. Must survive the agent's
    /// restart (put it in the agent's work dir), and belong to one agent.
    pub state_dir: PathBuf,
    /// The `marina-supervise` binary (see [`default_supervisor`]).
    pub supervisor: PathBuf,
    /// How each task's `stdout` and `stderr` rotate (its supervisor rotates them).
    pub log_rotation: LogRotation,
}

impl ProcessConfig {
    /// A config with the supervisor found by [`default_supervisor`] and the default rotation.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self> {
        Ok(ProcessConfig {
            state_dir: state_dir.into(),
            supervisor: default_supervisor()?,
            log_rotation: LogRotation::default(),
        })
    }
}

/// A short stable name for a state directory (FNV-1a of its path): the cgroup scope of the
/// runtime using it.
fn scope(state_dir: &Path) -> String {
    let path = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_owned());
    let hash =
        path.as_os_str().as_encoded_bytes().iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// Finds `marina-supervise` next to the running executable, or in its parent directory (test
/// executables live in `target/<profile>/deps`, binaries in `target/<profile>`).
pub fn default_supervisor() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().map_err(|e| RuntimeError::backend(KIND, format!("locating our executable: {e}")))?;
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join(SUPERVISOR_BIN)).collect();
    candidates.iter().find(|path| path.is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = candidates.iter().map(|path| path.display().to_string()).collect();
        RuntimeError::backend(
            KIND,
            format!(
                "the {SUPERVISOR_BIN} binary is not installed next to {} (looked for {})",
                exe.display(),
                looked.join(", ")
            ),
        )
    })
}

/// The process runtime. Cheap to share behind an `Arc`; every method may run concurrently.
#[derive(Debug)]
pub struct ProcessRuntime {
    /// The state directory: one record and, once ended, one exit record per task.
    store: Store,
    /// The `marina-supervise` binary.
    supervisor: PathBuf,
    /// Supervisors this instance started, by task id: so `wait` can await their reaping
    /// instead of polling.
    children: Mutex<HashMap<String, Supervised>>,
    /// Where task cgroups (limits) are made; `None` where this machine does not allow it.
    cgroups: Option<cgroup::Cgroups>,
    /// Passed to each supervisor.
    log_rotation: LogRotation,
}

/// A supervisor this instance started and reaps.
#[derive(Debug)]
struct Supervised {
    /// The handle id of the task it supervises, telling incarnations of a task id apart.
    handle_id: String,
    /// Turns `true` once the supervisor has been reaped.
    reaped: watch::Receiver<bool>,
}

impl ProcessRuntime {
    /// Opens (creating if needed) the state directory and checks the supervisor is there.
    /// Tasks recorded there by an earlier instance are re-adopted: no call is needed.
    pub fn new(config: ProcessConfig) -> Result<Self> {
        let executable = std::fs::metadata(&config.supervisor)
            .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            return Err(RuntimeError::backend(
                KIND,
                format!(
                    "the supervisor {} is missing or not executable (build it with `cargo build -p marina-runtime-process --bins`)",
                    config.supervisor.display()
                ),
            ));
        }
        let store = Store::open(&config.state_dir).map_err(|e| {
            RuntimeError::backend(KIND, format!("opening the state directory {}: {e}", config.state_dir.display()))
        })?;
        // One scope per state directory: agents sharing a machine never share a cgroup.
        let cgroups = match cgroup::Cgroups::probe(&scope(&config.state_dir)) {
            Ok(cgroups) => Some(cgroups),
            Err(reason) => {
                tracing::info!(%reason, "cpu and memory limits are not enforced for host processes");
                None
            }
        };
        Ok(ProcessRuntime {
            store,
            supervisor: config.supervisor,
            children: Mutex::new(HashMap::new()),
            cgroups,
            log_rotation: config.log_rotation,
        })
    }

    /// Runs `f` on the state directory off the async workers.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> io::Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(result) => result.map_err(|e| RuntimeError::backend(KIND, e)),
            Err(e) => Err(RuntimeError::backend(KIND, e)),
        }
    }

    /// The record of the incarnation `handle` names, if the runtime knows it.
    async fn find(&self, handle: &TaskHandle) -> Result<Option<TaskRecord>> {
        let handle = handle.clone();
        self.blocking(move |store| find(store, &handle)).await
    }

    /// Like [`Self::find`], for operations that need the task.
    async fn record(&self, handle: &TaskHandle) -> Result<TaskRecord> {
        self.find(handle).await?.ok_or_else(|| RuntimeError::NotFound { task_id: handle.task_id.clone() })
    }

    async fn state(&self, handle: &TaskHandle) -> Result<TaskState> {
        let handle = handle.clone();
        self.blocking(move |store| match find(store, &handle)? {
            Some(record) => observe(store, &record),
            None => Ok(TaskState::NotFound),
        })
        .await
    }

    /// Signals the task's group unless it has ended; `false` when there was nothing to signal.
    async fn signal(&self, record: &TaskRecord, signal: Signal) -> Result<bool> {
        let record = record.clone();
        self.blocking(move |store| {
            if store.load_exit(&record.task_id)?.is_some() {
                return Ok(false);
            }
            // Only while the supervisor or the task's main process lives is the group surely
            // still the task's: after that its pid may name someone else's group.
            if !record.supervisor.is_alive() && !record.task.is_alive() {
                return Ok(false);
            }
            signal_group(record.task.pid, signal)?;
            Ok(true)
        })
        .await
    }

    fn reaped(&self, handle: &TaskHandle) -> Option<watch::Receiver<bool>> {
        let children = self.children.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        children.get(&handle.task_id).filter(|child| child.handle_id == handle.id).map(|child| child.reaped.clone())
    }

    fn forget_child(&self, task_id: &str) {
        self.children.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(task_id);
    }

    /// Starts the supervisor, and reads its handshake. Reaps it in the background whatever
    /// happens.
    async fn launch(
        &self,
        spec: &TaskSpec,
        invocation: &Invocation,
        env: &BTreeMap<String, String>,
    ) -> Result<Launched> {
        // The supervisor's own messages go where the task's errors go.
        let stderr = OpenOptions::new()
            .append(true)
            .create(true)
            .open(spec.sandbox.join("stderr"))
            .map_err(|e| RuntimeError::InvalidSpec(format!("sandbox {}: {e}", spec.sandbox.display())))?;
        let mut command = tokio::process::Command::new(&self.supervisor);
        command
            .args(invocation.to_args())
            .env_clear()
            .envs(env)
            .current_dir(&spec.sandbox)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| RuntimeError::backend(KIND, format!("starting {}: {e}", self.supervisor.display())))?;
        let stdout = child.stdout.take();
        // Our unreaped child: its stat is readable even if it has already exited.
        let identity = child
            .id()
            .ok_or_else(|| io::Error::other("it was reaped at once"))
            .and_then(|pid| ProcessIdentity::of(pid).map(|identity| (pid, identity)));
        let (reaped_tx, reaped) = watch::channel(false);
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = reaped_tx.send(true);
        });
        let (pid, supervisor) =
            identity.map_err(|e| RuntimeError::backend(KIND, format!("reading the supervisor's start time: {e}")))?;
        let handshake = match stdout {
            Some(stdout) => tokio::time::timeout(HANDSHAKE_TIMEOUT, read_handshake(stdout)).await,
            None => Ok(Err("its stdout was not captured".to_owned())),
        };
        match handshake {
            Ok(Ok(Handshake::Started { task })) => Ok(Launched { supervisor, task, reaped }),
            Ok(Ok(Handshake::Failed { error })) => Err(RuntimeError::InvalidSpec(error)),
            failed => {
                let why = match failed {
                    Ok(Err(why)) => why,
                    _ => format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
                };
                // A supervisor that cannot tell what it started cannot be trusted with it.
                let _ = signal_group(pid, Signal::SIGKILL);
                Err(RuntimeError::backend(KIND, format!("the supervisor (pid {pid}) did not start the task: {why}")))
            }
        }
    }
}

/// What [`ProcessRuntime::launch`] started.
struct Launched {
    supervisor: ProcessIdentity,
    task: ProcessIdentity,
    reaped: watch::Receiver<bool>,
}

async fn read_handshake(stdout: tokio::process::ChildStdout) -> Result<Handshake, String> {
    let mut line = String::new();
    match BufReader::new(stdout).read_line(&mut line).await {
        Ok(0) => Err("it exited without a word (see the sandbox's stderr)".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("unreadable handshake {line:?}: {e}")),
        Err(e) => Err(format!("reading its handshake: {e}")),
    }
}

/// The record of the incarnation `handle` names.
fn find(store: &Store, handle: &TaskHandle) -> io::Result<Option<TaskRecord>> {
    Ok(store.load(&handle.task_id)?.filter(|record| record.is_named_by(handle)))
}

/// What a recorded task is doing now.
fn observe(store: &Store, record: &TaskRecord) -> io::Result<TaskState> {
    let exited =
        |exit: store::ExitRecord| TaskState::Exited { status: exit.status(), finished_at: Some(exit.finished_at) };
    if let Some(exit) = store.load_exit(&record.task_id)? {
        return Ok(exited(exit));
    }
    let running = TaskState::Running { started_at: Some(record.started_at), pid: Some(record.task.pid) };
    if record.supervisor.is_alive() {
        return Ok(running);
    }
    // The supervisor records the status, then exits: look again now that it is gone.
    if let Some(exit) = store.load_exit(&record.task_id)? {
        return Ok(exited(exit));
    }
    // The supervisor died without recording: its task may still run, orphaned.
    if record.task.is_alive() {
        return Ok(running);
    }
    Ok(TaskState::Exited { status: ExitStatus { code: None, signal: None, oom_killed: false }, finished_at: None })
}

/// The program and arguments to run, once the spec is known to be one this runtime can run.
fn command_line(spec: &TaskSpec) -> Result<(OsString, Vec<OsString>)> {
    let unsupported = |reason: String| RuntimeError::Unsupported { runtime: KIND, reason };
    if spec.task_id.is_empty() {
        return Err(RuntimeError::InvalidSpec("the task id is empty".into()));
    }
    if let Some(image) = &spec.image {
        return Err(unsupported(format!("it runs host commands, not images (the task asks for image {image})")));
    }
    match &spec.network {
        NetworkMode::None => {
            return Err(unsupported(
                "tasks share the host's network, so network mode `none` cannot be honoured".into(),
            ));
        }
        NetworkMode::Container(network) => {
            return Err(unsupported(format!(
                "tasks share the host's network, so they cannot join the container network {network}"
            )));
        }
        NetworkMode::Bridge | NetworkMode::Host => {}
    }
    if !spec.parameters.is_empty() {
        let names: Vec<&str> = spec.parameters.iter().map(|(name, _)| name.as_str()).collect();
        return Err(unsupported(format!("it takes no backend parameters (got {})", names.join(", "))));
    }
    if !spec.sandbox.is_absolute() {
        return Err(RuntimeError::InvalidSpec(format!(
            "the sandbox {} is not an absolute path",
            spec.sandbox.display()
        )));
    }
    let has_nul = |s: &str| s.contains('\0');
    let argv: Vec<String> = match &spec.command {
        None => return Err(RuntimeError::InvalidSpec("a process task needs a command".into())),
        Some(Command::Shell(line)) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        Some(Command::Argv(argv)) if argv.is_empty() => {
            return Err(RuntimeError::InvalidSpec("the task's argv is empty".into()));
        }
        Some(Command::Argv(argv)) => argv.clone(),
    };
    if argv.iter().any(|arg| has_nul(arg)) {
        return Err(RuntimeError::InvalidSpec("the task's command contains a NUL byte".into()));
    }
    if let Some(name) = spec.env.iter().find(|(k, v)| k.is_empty() || k.contains('=') || has_nul(k) || has_nul(v)) {
        return Err(RuntimeError::InvalidSpec(format!("environment variable {:?} is not valid", name.0)));
    }
    let mut argv = argv.into_iter().map(OsString::from);
    let program = argv.next().unwrap_or_default();
    Ok((program, argv.collect()))
}

/// The (uid, gid) of `user`: a name, or a numeric uid (with no account, its group is its own
/// number).
pub fn user_ids(user: &str) -> std::result::Result<(u32, u32), String> {
    let entry = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match (entry, user.parse::<u32>()) {
        (Ok(Some(entry)), _) => Ok((entry.uid.as_raw(), entry.gid.as_raw())),
        (Ok(None), Ok(uid)) => Ok((uid, uid)),
        (Ok(None), Err(_)) => Err("no such user on this host".into()),
        (Err(e), _) => Err(format!("reading the user database: {e}")),
    }
}

/// The (uid, gid) of `user` (a name, or a numeric uid), to whom the `sandbox` is handed so
/// the task can write in it (as Mesos' `switch_user` does).
fn switch_to(user: &str, sandbox: &Path) -> Result<(u32, u32)> {
    let invalid = |why: String| RuntimeError::InvalidSpec(format!("running the task as {user:?}: {why}"));
    let (uid, gid) = user_ids(user).map_err(invalid)?;
    let owner = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
    nix::unistd::chown(sandbox, owner.0, owner.1)
        .map_err(|e| invalid(format!("giving it the sandbox {}: {e}", sandbox.display())))?;
    Ok((uid, gid))
}

/// The task's whole environment: defaults, the spec's, then the sandbox variables (which the
/// spec cannot override, as they must tell the truth). The agent's own environment is not
/// inherited: tasks see the same environment whoever started the agent.
fn task_env(spec: &TaskSpec) -> Result<BTreeMap<String, String>> {
    let sandbox = spec
        .sandbox
        .to_str()
        .ok_or_else(|| RuntimeError::InvalidSpec(format!("the sandbox {} is not UTF-8", spec.sandbox.display())))?;
    let mut env =
        BTreeMap::from([("PATH".to_owned(), DEFAULT_PATH.to_owned()), ("HOME".to_owned(), sandbox.to_owned())]);
    env.extend(spec.env.clone());
    env.insert("MESOS_SANDBOX".into(), sandbox.into());
    env.insert("MARINA_SANDBOX".into(), sandbox.into());
    Ok(env)
}

/// The last `tail` bytes (all with `None`) of a log file; nothing if it was never written.
fn read_log(path: &Path, tail: Option<usize>) -> io::Result<Vec<u8>> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = tail.map_or(0, |tail| len.saturating_sub(u64::try_from(tail).unwrap_or(u64::MAX)));
    file.seek(SeekFrom::Start(start))?;
    // The file may grow meanwhile: stop at the length measured, so `tail` holds.
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads `reader` to its end, keeping the first [`EXEC_OUTPUT_LIMIT`] bytes.
async fn read_capped(mut reader: impl tokio::io::AsyncRead + Unpin) -> io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut chunk = vec![0; 8192];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = EXEC_OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: false,
            port_mapping: false,
            cpu_limit: self.cgroups.is_some(),
            memory_limit: self.cgroups.is_some(),
            network_isolation: false,
        }
    }

    async fn ensure_image(&self, image: &str, _force_pull: bool) -> Result<()> {
        Err(RuntimeError::Unsupported { runtime: KIND, reason: format!("it runs host commands, not images ({image})") })
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskHandle> {
        let (program, args) = command_line(spec)?;
        let env = task_env(spec)?;
        if !spec.sandbox.is_dir() {
            return Err(RuntimeError::InvalidSpec(format!(
                "the sandbox {} is not a directory",
                spec.sandbox.display()
            )));
        }
        let user = match &spec.user {
            Some(user) => Some(switch_to(user, &spec.sandbox)?),
            None => None,
        };
        let task_id = spec.task_id.clone();
        let previous = self
            .blocking(move |store| match store.load(&task_id)? {
                Some(record) => Ok(Some((observe(store, &record)?, record))),
                None => Ok(None),
            })
            .await?;
        if let Some((TaskState::Running { .. }, record)) = previous {
            return Err(RuntimeError::InvalidSpec(format!(
                "task {} is already running (handle {}); stop and remove it first",
                spec.task_id,
                record.handle().id
            )));
        }
        self.forget_child(&spec.task_id);
        let task_id = spec.task_id.clone();
        self.blocking(move |store| store.prepare(&task_id)).await?;

        let cgroups = match &self.cgroups {
            Some(cgroups) => {
                let key = store::key(&spec.task_id);
                let (cpus, mem_mb) = (spec.resources.cpus, spec.resources.mem_mb);
                tokio::task::spawn_blocking({
                    let cgroups = cgroups.clone();
                    move || cgroups.create(&key, cpus, mem_mb)
                })
                .await
                .map_err(|e| RuntimeError::backend(KIND, e.to_string()))?
                .map_err(|e| RuntimeError::backend(KIND, format!("making the task's cgroups: {e}")))?
            }
            None => Vec::new(),
        };
        let invocation = Invocation {
            exit_file: self.store.exit_path(&spec.task_id),
            cgroups: cgroups.clone(),
            rotation: self.log_rotation,
            user,
            program,
            args,
        };
        let launched = match self.launch(spec, &invocation, &env).await {
            Ok(launched) => launched,
            Err(e) => {
                let task_id = spec.task_id.clone();
                let _ = self.blocking(move |store| store.remove(&task_id)).await;
                let _ = tokio::task::spawn_blocking(move || cgroup::remove(&cgroups)).await;
                return Err(e);
            }
        };
        let record = TaskRecord {
            format: RECORD_FORMAT,
            task_id: spec.task_id.clone(),
            labels: spec.labels.clone(),
            sandbox: spec.sandbox.clone(),
            env,
            supervisor: launched.supervisor,
            task: launched.task,
            started_at: SystemTime::now(),
        };
        let saved = record.clone();
        if let Err(e) = self.blocking(move |store| store.save(&saved)).await {
            // A task the runtime cannot remember would run untracked forever.
            let _ = signal_group(record.task.pid, Signal::SIGKILL);
            return Err(e);
        }
        let handle = record.handle();
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(spec.task_id.clone(), Supervised { handle_id: handle.id.clone(), reaped: launched.reaped });
        tracing::info!(task_id = %spec.task_id, supervisor = record.supervisor.pid, pid = record.task.pid, "task started");
        Ok(handle)
    }

    async fn inspect(&self, handle: &TaskHandle) -> Result<TaskState> {
        self.state(handle).await
    }

    async fn wait(&self, handle: &TaskHandle) -> Result<ExitStatus> {
        if let Some(mut reaped) = self.reaped(handle) {
            // Our child: its reaping is the moment its status is on disk.
            let _ = reaped.wait_for(|reaped| *reaped).await;
        }
        loop {
            match self.state(handle).await? {
                TaskState::Exited { status, .. } => return Ok(status),
                TaskState::NotFound => return Err(RuntimeError::NotFound { task_id: handle.task_id.clone() }),
                TaskState::Created | TaskState::Running { .. } => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    async fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<()> {
        let Some(record) = self.find(handle).await? else { return Ok(()) };
        if !self.signal(&record, Signal::SIGTERM).await? {
            return Ok(());
        }
        if tokio::time::timeout(grace, self.wait(handle)).await.is_ok() {
            return Ok(());
        }
        tracing::info!(task_id = %handle.task_id, ?grace, "the task outlived its grace period: killing it");
        self.signal(&record, Signal::SIGKILL).await?;
        match tokio::time::timeout(KILL_TIMEOUT, self.wait(handle)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(RuntimeError::Timeout { operation: "stop", after: grace.saturating_add(KILL_TIMEOUT) }),
        }
    }

    /// Forgets the task (its record and exit status; the sandbox is the agent's). A task
    /// still running is killed first: forgetting it would leave it running untracked.
    async fn remove(&self, handle: &TaskHandle) -> Result<()> {
        if let TaskState::Running { .. } = self.state(handle).await? {
            self.stop(handle, Duration::ZERO).await?;
        }
        let Some(record) = self.find(handle).await? else { return Ok(()) };
        self.forget_child(&record.task_id);
        // The supervisor removes them; this is for one that was killed itself.
        if let Some(cgroups) = &self.cgroups {
            let dirs = cgroups.dirs(&store::key(&record.task_id));
            let _ = tokio::task::spawn_blocking(move || cgroup::remove(&dirs)).await;
        }
        self.blocking(move |store| store.remove(&record.task_id)).await
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<ListedTask>> {
        let labels = labels.clone();
        self.blocking(move |store| {
            let mut listed = Vec::new();
            for record in store.load_all()? {
                if labels.iter().all(|(key, value)| record.labels.get(key) == Some(value)) {
                    let state = observe(store, &record)?;
                    listed.push(ListedTask { handle: record.handle(), labels: record.labels, state });
                }
            }
            listed.sort_by(|a, b| a.handle.task_id.cmp(&b.handle.task_id));
            Ok(listed)
        })
        .await
    }

    async fn logs(&self, handle: &TaskHandle, stream: LogStream, tail: Option<usize>) -> Result<Bytes> {
        let record = self.record(handle).await?;
        let path = record.sandbox.join(match stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        });
        self.blocking(move |_| read_log(&path, tail)).await.map(Bytes::from)
    }

    async fn exec(&self, handle: &TaskHandle, argv: &[String], timeout: Duration) -> Result<ExecOutput> {
        let Some((program, args)) = argv.split_first() else {
            return Err(RuntimeError::InvalidSpec("exec needs a command".into()));
        };
        let record = self.record(handle).await?;
        // One pipe for both streams, so the output interleaves as a terminal would show it.
        let backend = |e: io::Error| RuntimeError::backend(KIND, format!("exec: {e}"));
        let (reader, writer) = io::pipe().map_err(backend)?;
        let mut child = {
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .env_clear()
                .envs(&record.env)
                .current_dir(&record.sandbox)
                .stdin(Stdio::null())
                .stdout(writer.try_clone().map_err(backend)?)
                .stderr(writer)
                .process_group(0)
                .kill_on_drop(true);
            match command.spawn() {
                Ok(child) => child,
                // As container runtimes report it: a failed check, not a failed runtime.
                Err(e) => {
                    let code = if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 };
                    let status = ExitStatus { code: Some(code), signal: None, oom_killed: false };
                    return Ok(ExecOutput {
                        status,
                        output: Bytes::from(format!("cannot execute {program:?}: {e}\n")),
                    });
                }
            }
            // `command`, holding our copies of the pipe's write end, is dropped here, so the
            // read below ends when the command's side closes.
        };
        let pgid = child.id();
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(backend)?;
        let run = async {
            let exited = async {
                let status = child.wait().await;
                // What it left behind would hold the pipe open.
                if let Some(pgid) = pgid {
                    let _ = signal_group(pgid, Signal::SIGKILL);
                }
                status
            };
            tokio::join!(exited, read_capped(output))
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((status, output)) => {
                let status = status.map_err(backend)?;
                let status = ExitStatus { code: status.code(), signal: status.signal(), oom_killed: false };
                Ok(ExecOutput { status, output: Bytes::from(output.map_err(backend)?) })
            }
            Err(_) => {
                if let Some(pgid) = pgid {
                    let _ = signal_group(pgid, Signal::SIGKILL);
                }
                Err(RuntimeError::Timeout { operation: "exec", after: timeout })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: Option<Command>) -> TaskSpec {
        TaskSpec {
            task_id: "t".into(),
            sandbox: "/sandbox".into(),
            command,
            image: None,
            force_pull: false,
            env: BTreeMap::from([("PATH".into(), "/opt/bin".into()), ("MARINA_SANDBOX".into(), "/lie".into())]),
            resources: Default::default(),
            ports: Vec::new(),
            network: NetworkMode::Bridge,
            privileged: false,
            labels: BTreeMap::new(),
            parameters: Vec::new(),
            user: None,
        }
    }

    #[test]
    fn shell_commands_run_under_sh_and_argv_as_given() {
        let (program, args) = command_line(&spec(Some(Command::Shell("exit 3".into())))).expect("shell");
        assert_eq!((program.as_os_str(), args), ("/bin/sh".as_ref(), vec!["-c".into(), "exit 3".into()]));
        let argv = Command::Argv(vec!["sleep".into(), "1".into()]);
        let (program, args) = command_line(&spec(Some(argv))).expect("argv");
        assert_eq!((program.as_os_str(), args), ("sleep".as_ref(), vec![OsString::from("1")]));
    }

    #[test]
    fn specs_this_runtime_cannot_honour_are_refused() {
        let shell = Some(Command::Shell("true".into()));
        let unsupported = |spec: TaskSpec| matches!(command_line(&spec), Err(RuntimeError::Unsupported { .. }));
        assert!(unsupported(TaskSpec { image: Some("busybox".into()), ..spec(shell.clone()) }));
        assert!(unsupported(TaskSpec { network: NetworkMode::None, ..spec(shell.clone()) }));
        assert!(unsupported(TaskSpec { network: NetworkMode::Container("dev".into()), ..spec(shell.clone()) }));
        assert!(unsupported(TaskSpec { parameters: vec![("memory-swap".into(), "1g".into())], ..spec(shell.clone()) }));
        let invalid = |spec: TaskSpec| matches!(command_line(&spec), Err(RuntimeError::InvalidSpec(_)));
        assert!(invalid(spec(None)));
        assert!(invalid(spec(Some(Command::Argv(Vec::new())))));
        assert!(invalid(TaskSpec { sandbox: "relative".into(), ..spec(shell.clone()) }));
        assert!(invalid(TaskSpec { task_id: String::new(), ..spec(shell.clone()) }));
        assert!(invalid(spec(Some(Command::Shell("a\0b".into())))));
        let mut bad_env = spec(shell);
        bad_env.env.insert("A=B".into(), "c".into());
        assert!(invalid(bad_env));
    }

    #[test]
    fn the_environment_has_defaults_the_spec_overrides_and_truthful_sandbox_variables() {
        let env = task_env(&spec(None)).expect("env");
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["HOME"], "/sandbox");
        assert_eq!(env["MESOS_SANDBOX"], "/sandbox");
        assert_eq!(env["MARINA_SANDBOX"], "/sandbox", "the spec cannot move the sandbox");
    }

    #[test]
    fn logs_tail_the_last_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        assert!(read_log(&path, None).expect("missing log").is_empty());
        std::fs::write(&path, b"hello world").expect("write");
        assert_eq!(read_log(&path, None).expect("all"), b"hello world");
        assert_eq!(read_log(&path, Some(5)).expect("tail"), b"world");
        assert_eq!(read_log(&path, Some(500)).expect("long tail"), b"hello world");
        assert!(read_log(&path, Some(0)).expect("empty tail").is_empty());
    }
}
