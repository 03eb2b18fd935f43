//! `marina-agent`: runs the tasks the master sends it, through a [`marina_runtime::Runtime`]
//! (Docker, containerd, host processes, or `sim`), and survives its own restart and any
//! master failover without touching them.
//!
//! - [`checkpoint`]: the work dir (agent id, tasks, unacknowledged updates);
//! - [`tasks`]: launching, watching, killing and re-adopting tasks;
//! - [`gc`]: removing the sandboxes of finished tasks;
//! - [`files`]: the sandbox files API (`/files/browse`, `/files/read`, `/files/download`);
//! - [`health`]: HTTP, TCP and command health checks;
//! - [`updates`]: at-least-once status updates;
//! - [`master_link`]: following the leading master;
//! - [`runtime`]: choosing and connecting the runtime;
//! - [`api`]: the agent's own gRPC API (state, task output).

mod api;
pub mod checkpoint;
mod config;
mod fetch;
mod files;
mod gc;
mod health;
mod master_link;
mod resources;
mod runtime;
pub mod tasks;
mod updates;

#[cfg(test)]
mod test_disk;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_coord_client::CoordClient;
use marina_daemon::config::ConfigError;
use marina_daemon::tls::{Role, Tls};
use marina_daemon::{Endpoint, Metrics, Shutdown};
use marina_proto::agent::v1::AgentInfo;
use marina_proto::agent::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::{AgentMeta, Checkpoint, CheckpointError};
use crate::config::TaskLogsConfig;
pub use crate::config::{Config, FetcherConfig, RuntimeChoice, Runtimes};
use crate::fetch::{Fetcher, FetcherSetupError};
use crate::gc::SandboxGc;
use crate::master_link::AttachedMaster;
use crate::tasks::{Identity, TaskSettings, Tasks};
use crate::updates::StatusUpdates;

use marina_proto::layout::MASTER_ELECTION_DIR;

/// How often checkpoints that failed are tried again: often enough that little waits in
/// memory once the disk has room, seldom enough to cost nothing while it has none.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] marina_daemon::config::ConfigError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("runtime: {0}")]
    Runtime(#[from] marina_runtime::RuntimeError),
    #[error("no runtime available: {0}")]
    NoRuntime(String),
    #[error("coord: {0}")]
    Coord(#[from] marina_coord_client::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] marina_daemon::tls::TlsError),
    #[error(transparent)]
    Fetcher(#[from] FetcherSetupError),
}

/// The agent's shared state.
pub struct Agent {
    pub tasks: Arc<Tasks>,
    pub updates: Arc<StatusUpdates>,
    checkpoint: Checkpoint,
    meta: Mutex<AgentMeta>,
    /// This agent as announced to masters (its id filled in once assigned).
    info: AgentInfo,
    pub update_retry: Duration,
    attached: watch::Receiver<AttachedMaster>,
    /// How much of a task's output one read returns.
    pub task_logs: TaskLogsConfig,
    pub gc: Arc<SandboxGc>,
    /// Commands refused because they came from a deposed master (an older epoch).
    stale_commands: std::sync::atomic::AtomicU64,
}

impl Agent {
    pub(crate) fn info(&self) -> AgentInfo {
        let mut info = self.info.clone();
        info.agent_id = self.meta.lock().expect("meta lock").agent_id.clone().unwrap_or_default();
        info
    }

    /// How many commands from deposed masters were refused.
    pub(crate) fn stale_commands(&self) -> u64 {
        self.stale_commands.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn highest_epoch(&self) -> u64 {
        self.meta.lock().expect("meta lock").highest_epoch
    }

    pub(crate) fn attached_master(&self) -> AttachedMaster {
        self.attached.borrow().clone()
    }

    /// Updates, acknowledgements and tasks whose checkpoint failed and waits to be written.
    pub(crate) fn checkpoint_backlog(&self) -> usize {
        self.updates.backlog() + self.tasks.backlog()
    }

    /// Whether a command from a master at `epoch` may be obeyed; remembers (durably) a new
    /// highest epoch.
    pub(crate) fn accept_epoch(&self, epoch: u64) -> bool {
        let mut meta = self.meta.lock().expect("meta lock");
        if epoch < meta.highest_epoch {
            self.stale_commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        if epoch > meta.highest_epoch {
            meta.highest_epoch = epoch;
            if let Err(error) = self.checkpoint.save_meta(&meta) {
                tracing::error!(%error, "cannot checkpoint the master epoch");
            }
        }
        true
    }

    /// The master registered us under `agent_id`.
    pub(crate) fn registered(&self, agent_id: &str) {
        let mut meta = self.meta.lock().expect("meta lock");
        if meta.agent_id.as_deref() != Some(agent_id) {
            meta.agent_id = Some(agent_id.to_owned());
            if let Err(error) = self.checkpoint.save_meta(&meta) {
                tracing::error!(%error, "cannot checkpoint the agent id");
            }
            self.tasks.set_agent_id(agent_id);
        }
    }
}

/// A running agent.
pub struct AgentHandle {
    pub local_address: SocketAddr,
    pub agent: Arc<Agent>,
    task: JoinHandle<std::io::Result<()>>,
}

impl AgentHandle {
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Tasks of a root agent run as `default_user` (or their app's user): that user must exist,
/// and must be able to reach the sandboxes (every directory above them searchable by
/// others). Found at start, with the key to change, rather than as tasks failing one by one.
fn check_task_users(default_user: &str, sandboxes: &std::path::Path) -> Result<(), ConfigError> {
    match nix::unistd::User::from_name(default_user) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(ConfigError::value("policy.default_user", format!("no user {default_user:?} on this host")));
        }
        Err(error) => {
            return Err(ConfigError::value("policy.default_user", format!("reading the user database: {error}")));
        }
    }
    for dir in sandboxes.ancestors() {
        let Ok(metadata) = std::fs::metadata(dir) else { continue };
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
        if mode & 0o001 == 0 {
            return Err(ConfigError::value(
                "work_dir",
                format!(
                    "tasks run as {default_user:?} (policy.default_user), who cannot reach their sandboxes: {} is not \
                     searchable by other users (mode {:o}); make it so (chmod o+x) or choose another work_dir",
                    dir.display(),
                    mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// Starts an agent on `listener` until `shutdown`. Tasks keep running when it stops.
pub async fn spawn(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<AgentHandle, AgentError> {
    config.validate()?;
    let tls = Tls::load(&config.tls)?;
    let local_address = listener.local_addr()?;
    let address = config.advertise.clone().unwrap_or_else(|| local_address.to_string());
    let hostname = config.hostname.clone().unwrap_or_else(resources::hostname);

    let (checkpoint, recovered) = Checkpoint::open(&config.work_dir)?;
    let runtime = runtime::select(&config).await?;
    // Only the process runtime runs command tasks, as their users.
    let kinds = runtime.kinds();
    let switches_users = kinds.contains(&marina_runtime::RuntimeKind::Process);
    // What the agent can run, for schedulers to place each task where it can run:
    // `docker,process`.
    let runtimes = kinds.iter().map(|kind| kind.as_str()).collect::<Vec<_>>().join(",");
    if switches_users && nix::unistd::geteuid().is_root() && !config.policy.allow_root {
        check_task_users(&config.policy.default_user, checkpoint.sandboxes())?;
    }
    let resources = resources::detect(&config)?;
    let mut attributes = config::parse_attributes(&config.attributes)?;
    // Schedulers place image tasks only where a runtime can run images, and commands only
    // where one runs host processes.
    if !attributes.iter().any(|a| a.name == "runtime") {
        attributes.push(marina_proto::agent::v1::Attribute { name: "runtime".into(), value: runtimes.clone() });
    }
    let info = AgentInfo {
        agent_id: String::new(),
        hostname: hostname.clone(),
        address: address.clone(),
        resources: Some(resources),
        attributes,
        runtime: runtimes.clone(),
        version: marina_daemon::VERSION.into(),
        // Set by the master from this agent's certificate.
        principal: String::new(),
    };
    let updates = Arc::new(StatusUpdates::new(checkpoint.clone(), recovered.updates));
    let addresses = resources::own_addresses(&address, &hostname).await;
    let identity = Identity { agent_id: recovered.meta.agent_id.clone().unwrap_or_default(), hostname, addresses };
    let settings = TaskSettings {
        default_grace: Duration::from_secs(config.kill_grace_seconds),
        output_limit: usize::try_from(config.task_logs.max_bytes).unwrap_or(usize::MAX),
        policy: config.policy.clone(),
        fetcher: Arc::new(Fetcher::new(&config.fetcher, &config.work_dir)?),
    };
    let tasks = Arc::new(Tasks::new(runtime.clone(), checkpoint.clone(), updates.clone(), identity, settings));
    tasks.recover(recovered.tasks).await?;
    let gc = Arc::new(SandboxGc::new(tasks.clone(), checkpoint.sandboxes().to_owned(), config.gc.clone()));
    let (attached_tx, attached) = watch::channel(AttachedMaster::default());
    let agent = Arc::new(Agent {
        tasks,
        updates,
        checkpoint,
        meta: Mutex::new(recovered.meta),
        info,
        update_retry: Duration::from_millis(config.update_retry_ms.max(10)),
        attached,
        task_logs: config.task_logs.clone(),
        gc: gc.clone(),
        stale_commands: Default::default(),
    });
    tokio::spawn(gc.run(shutdown.clone()));
    tokio::spawn(retry_checkpoints(agent.clone(), shutdown.clone()));

    let coord = CoordClient::with_tls(&config.coord, tls.clone());
    let observer = coord.observe_leader(MASTER_ELECTION_DIR).await?;
    tokio::spawn(master_link::run(agent.clone(), observer, tls.clone(), attached_tx, shutdown.clone()));

    let metrics = Metrics::new("agent");
    // The largest response is one task-log read at its maximum, which configuration
    // validation keeps within `server.max_encoding_message_bytes`.
    let (port, health) = Endpoint::new("agent", metrics.clone())
        .limits(config.server)
        .tls(tls)
        // What the agent runs and its tasks' output: for operators and the services that
        // show them.
        .allow("/marina.agent.v1.Agent/", &[Role::Operator, Role::Gateway, Role::Master])
        .allow("/state", &[Role::Operator, Role::Gateway, Role::Master])
        .allow("/files/", &[Role::Operator, Role::Gateway, Role::Master])
        .grpc(marina_daemon::bounded_grpc!(AgentServer::new(api::AgentApi::new(agent.clone())), config.server))
        .http(api::http_routes(agent.clone()))
        .http(files::routes(agent.checkpoint.sandboxes().to_owned()))
        .build()
        .await;
    health.set_serving(true).await;
    api::register_metrics(&metrics, agent.clone());
    tracing::info!(%address, %runtimes, work_dir = %config.work_dir.display(), "agent started");

    let task_agent = agent.clone();
    let task = tokio::spawn(async move {
        let served = marina_daemon::endpoint::serve(listener, port, shutdown).await;
        // Tasks keep running: a restarted agent re-adopts them.
        task_agent.tasks.detach_all();
        tracing::info!("agent stopped; its tasks keep running");
        served
    });
    Ok(AgentHandle { local_address, agent, task })
}

/// Writes again what failed to be checkpointed (a full disk, an I/O error): from the first
/// failure, every [`CHECKPOINT_RETRY`] until nothing waits; until `shutdown`. Idle while
/// checkpoints succeed (a thousand agents share a process in scale tests).
async fn retry_checkpoints(agent: Arc<Agent>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = agent.checkpoint.failed() => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECKPOINT_RETRY) => {}
                () = shutdown.cancelled() => return,
            }
            let waiting = agent.checkpoint_backlog();
            if waiting == 0 {
                break;
            }
            let retrying = agent.clone();
            let left =
                tokio::task::spawn_blocking(move || retrying.updates.retry_unsaved() + retrying.tasks.retry_unsaved())
                    .await
                    .unwrap_or(waiting);
            if left == 0 {
                tracing::info!(written = waiting, "checkpoints that had failed are written");
                break;
            }
        }
    }
}
