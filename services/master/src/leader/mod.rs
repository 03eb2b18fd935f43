//! Everything a master does while it leads, for one leadership term (one epoch): the agent
//! registry, frameworks, tasks as the agents report them, offers and their allocation,
//! status routing and reconciliation.
//!
//! The state lives behind one mutex that is never held across an `await`; coord writes
//! (fenced by the epoch) happen outside it. When leadership is lost, [`LeaderState`] is
//! dropped with every agent link and scheduler stream it holds: their clients reconnect to
//! the next leader.
//!
//! By concern, each a file of `impl LeaderState` over the state defined here:
//! - `agents`: registration, heartbeats, links, status updates, what an agent may claim;
//! - `frameworks`: subscriptions, kills, acknowledgements, reconciliation, teardown;
//! - `offers`: accept and decline (checked against the offers), refusals, allocation rounds:
//!   the books (`ledger`, pure and unit-tested), then DRF ([`crate::allocator`]), then sending;
//! - `liveness`: unreachable agents (with the mass-silence hold), scheduler heartbeats;
//! - `operators`: draining, the cluster's state.
//!
//! Requests are refused with [`crate::MasterError`], which becomes a gRPC status in one place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_coord_client::{Error as CoordError, Fence};
use marina_proto::agent::v1::{AgentInfo, Resources, TaskInfo, TaskState, TaskStatus};
use marina_proto::master::v1::{self as pb, master_message, scheduler_event};
use marina_proto::resources::add;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::Config;
use crate::error::MasterError;
use crate::metrics::MasterMetrics;
use crate::registry::Registry;

mod agents;
mod frameworks;
mod liveness;
mod offers;
mod operators;

pub use self::agents::check_agent;
use self::liveness::{Heard, Stalls};
pub use self::offers::{MAX_REFUSE, refusal};

pub type AgentSender = mpsc::UnboundedSender<Result<pb::MasterMessage, Status>>;
pub type SchedulerSender = mpsc::Sender<Result<pb::SchedulerEvent, Status>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    /// Known from the registry; waiting for it to come back after a failover.
    Reregistering,
    Active,
    Unreachable,
    Draining,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Reregistering => "reregistering",
            AgentStatus::Active => "active",
            AgentStatus::Unreachable => "unreachable",
            AgentStatus::Draining => "draining",
        }
    }
}

struct TaskRecord {
    info: TaskInfo,
    status: TaskStatus,
}

impl TaskRecord {
    /// Whether the task is `framework_id`'s. Task ids name tasks within a framework (as in
    /// Mesos): another framework's task of the same id is not this one's to kill,
    /// acknowledge or ask about. A task whose framework is not known (none was recorded)
    /// is anyone's, as before frameworks were recorded.
    fn belongs_to(&self, framework_id: &str) -> bool {
        let owner = if self.info.framework_id.is_empty() { &self.status.framework_id } else { &self.info.framework_id };
        owner.is_empty() || owner == framework_id
    }
}

struct AgentRecord {
    info: AgentInfo,
    status: AgentStatus,
    link: Option<(u64, AgentSender)>,
    /// When a message last came on its link (any message is a sign of life).
    heard: Heard,
    tasks: HashMap<String, TaskRecord>,
    /// What the live tasks use, worked out again only after `tasks` changed: every
    /// allocation round (10 a second) needs it for every agent, and summing 100,000 tasks
    /// each time would be most of the master's work.
    usage: Option<Usage>,
}

/// What an agent's live tasks use: in all (ports included), and per framework.
#[derive(Clone, Default)]
struct Usage {
    used: Resources,
    per_framework: HashMap<String, Resources>,
}

impl AgentRecord {
    /// `heard`: now, as [`Stalls::heard_now`] marks it.
    fn new(
        info: AgentInfo,
        status: AgentStatus,
        link: Option<(u64, AgentSender)>,
        tasks: HashMap<String, TaskRecord>,
        heard: Heard,
    ) -> Self {
        Self { info, status, link, heard, tasks, usage: None }
    }

    /// A task was added, removed or changed state.
    fn tasks_changed(&mut self) {
        self.usage = None;
    }

    fn usage(&mut self) -> &Usage {
        self.usage.get_or_insert_with(|| {
            let mut per_framework: HashMap<String, Resources> = HashMap::new();
            for task in self.tasks.values().filter(|t| !is_terminal(t.status.state())) {
                let entry = per_framework.entry(task.info.framework_id.clone()).or_default();
                *entry = add(entry, task.info.resources.as_ref().unwrap_or(&Resources::default()));
            }
            Usage { used: used_by(&self.tasks), per_framework }
        })
    }
}

/// Which agents hold a record of each task id: every launched task is checked against the
/// tasks of every agent, and scanning them all per task is quadratic at scale.
#[derive(Default)]
struct TaskIndex(HashMap<String, Vec<String>>);

impl TaskIndex {
    fn add(&mut self, task_id: &str, agent_id: &str) {
        let agents = self.0.entry(task_id.to_owned()).or_default();
        if !agents.iter().any(|a| a == agent_id) {
            agents.push(agent_id.to_owned());
        }
    }

    fn remove(&mut self, task_id: &str, agent_id: &str) {
        if let Some(agents) = self.0.get_mut(task_id) {
            agents.retain(|a| a != agent_id);
            if agents.is_empty() {
                self.0.remove(task_id);
            }
        }
    }

    fn agents(&self, task_id: &str) -> &[String] {
        self.0.get(task_id).map_or(&[], Vec::as_slice)
    }
}

struct FrameworkRecord {
    info: pb::FrameworkInfo,
    stream: Option<(u64, SchedulerSender)>,
    suppressed: bool,
    /// Agents this framework refused, until when.
    refused: HashMap<String, Instant>,
}

struct OfferRecord {
    framework_id: String,
    agent_id: String,
    resources: Resources,
    created: Instant,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, AgentRecord>,
    frameworks: HashMap<String, FrameworkRecord>,
    offers: HashMap<String, OfferRecord>,
    /// Explicit reconciliations of tasks on agents not yet re-registered:
    /// agent id → (framework id, task id).
    pending_reconcile: HashMap<String, Vec<(String, String)>>,
    /// Kept in step with every agent's `tasks`.
    task_index: TaskIndex,
    /// How long this master was too busy to hear its agents: not counted as their silence.
    stalls: Stalls,
}

pub struct LeaderState {
    pub epoch: u64,
    pub master_id: String,
    pub address: String,
    config: Config,
    registry: Registry,
    inner: Mutex<Inner>,
    /// Cancelled when this leadership ends.
    pub ended: CancellationToken,
    /// Signalled (by the election) when a fenced write finds the leadership gone.
    deposed: CancellationToken,
    metrics: MasterMetrics,
    /// The master's shutdown: failed when the state is found poisoned.
    shutdown: marina_daemon::Shutdown,
    next_stream: AtomicU64,
    reregister_deadline: Instant,
    /// Runs an allocation round now rather than at the next tick (a framework revived: it
    /// waits for offers).
    allocate_soon: tokio::sync::Notify,
}

impl marina_coord_client::Term for LeaderState {
    fn end(&self) {
        LeaderState::end(self);
    }
}

fn is_terminal(state: TaskState) -> bool {
    state.is_terminal()
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A status the master itself generates (reconciliation, unreachable agents): no uuid, so
/// it is not acknowledged.
fn master_status(task_id: &str, framework_id: &str, agent_id: &str, state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        task_id: task_id.to_owned(),
        framework_id: framework_id.to_owned(),
        agent_id: agent_id.to_owned(),
        state: state as i32,
        message: message.to_owned(),
        timestamp: now_seconds(),
        ..Default::default()
    }
}

impl LeaderState {
    /// `master` takes over (for `epoch`, writing under `fence`): loads the registry from
    /// coord and starts the leader's loops.
    pub(crate) async fn start(
        master: &crate::Master,
        epoch: u64,
        fence: Fence,
        deposed: CancellationToken,
    ) -> Result<Arc<Self>, CoordError> {
        let config = master.config.clone();
        let registry = Registry::new(master.coord.clone(), fence);
        let agents = registry.agents().await?;
        let frameworks = registry.frameworks().await?;
        let now = Instant::now();
        let mut inner = Inner::default();
        for info in agents {
            let heard = inner.stalls.heard_now();
            let record = AgentRecord::new(info, AgentStatus::Reregistering, None, HashMap::new(), heard);
            inner.agents.insert(record.info.agent_id.clone(), record);
        }
        for info in frameworks {
            let record = FrameworkRecord { info, stream: None, suppressed: false, refused: HashMap::new() };
            inner.frameworks.insert(record.info.framework_id.clone(), record);
        }
        tracing::info!(
            epoch,
            agents = inner.agents.len(),
            frameworks = inner.frameworks.len(),
            "leading: registry loaded"
        );
        let state = Arc::new(Self {
            epoch,
            master_id: master.id.clone(),
            address: master.member.address.clone(),
            reregister_deadline: marina_daemon::time::deadline(now, Config::ms(config.agent_reregister_timeout_ms)),
            config,
            registry,
            inner: Mutex::new(inner),
            ended: CancellationToken::new(),
            deposed,
            metrics: master.metrics.clone(),
            shutdown: master.shutdown.clone(),
            next_stream: AtomicU64::new(1),
            allocate_soon: tokio::sync::Notify::new(),
        });
        tokio::spawn(state.clone().allocation_loop());
        tokio::spawn(state.clone().liveness_loop());
        tokio::spawn(state.clone().scheduler_heartbeat_loop());
        Ok(state)
    }

    /// Ends this leadership: every link and stream closes (their clients reconnect to the
    /// next leader).
    pub(crate) fn end(&self) {
        self.ended.cancel();
        self.metrics.elected.set(0);
        // Dropping everything is right even for state a panic left half changed.
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.agents.clear();
        inner.task_index = TaskIndex::default();
        inner.frameworks.clear();
        inner.offers.clear();
    }

    /// The state, or — if a panic poisoned it — a leader that steps down at once and a
    /// service that stops (see [`marina_daemon::Shutdown::fail`]): state a panic left half
    /// changed must not be acted on, and a leader that holds on without acting stalls the
    /// whole cluster.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(_) => {
                self.deposed.cancel();
                self.shutdown.fail("the master's leader state is poisoned (a panic while it was changed)");
                panic!("master leader state poisoned");
            }
        }
    }

    /// How long a framework's refusal of an agent lasts: `filters.refuse_seconds`, or the
    /// configured default. Not a number, infinite or negative is an error; longer than
    /// [`MAX_REFUSE`] is [`MAX_REFUSE`] (Mesos, too, clamps it to its longest duration).
    fn refusal(&self, filters: Option<&pb::Filters>) -> Result<Duration, MasterError> {
        refusal(filters.map_or(self.config.default_refuse_seconds, |f| f.refuse_seconds))
    }

    fn agent_message(&self, kind: master_message::Kind) -> Result<pb::MasterMessage, Status> {
        Ok(pb::MasterMessage { epoch: self.epoch, kind: Some(kind) })
    }

    fn scheduler_event(&self, kind: scheduler_event::Kind) -> Result<pb::SchedulerEvent, Status> {
        Ok(pb::SchedulerEvent { epoch: self.epoch, kind: Some(kind) })
    }

    /// A fenced write failed: this master no longer leads.
    fn check_deposed(&self, error: &CoordError) {
        if matches!(error, CoordError::Deposed { .. }) {
            tracing::error!(epoch = self.epoch, "a fenced write found the leadership gone: stepping down");
            self.deposed.cancel();
        }
    }

    pub(crate) fn next_stream_id(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }
}

/// What an agent's live tasks use, ports included.
fn used(agent: &AgentRecord) -> Resources {
    match &agent.usage {
        Some(usage) => usage.used.clone(),
        None => used_by(&agent.tasks),
    }
}

fn used_by(tasks: &HashMap<String, TaskRecord>) -> Resources {
    let mut used = Resources::default();
    for task in tasks.values().filter(|t| !is_terminal(t.status.state())) {
        let mut resources = task.info.resources.clone().unwrap_or_default();
        resources.ports = task
            .info
            .container
            .as_ref()
            .map(|c| {
                c.port_mappings
                    .iter()
                    .map(|m| marina_proto::agent::v1::Range {
                        begin: u64::from(m.host_port),
                        end: u64::from(m.host_port),
                    })
                    .collect()
            })
            .unwrap_or_default();
        used = add(&used, &resources);
    }
    used
}

/// A reconciliation answer: not acknowledged, and part of the reconciliation's trace (not
/// of whatever produced the status first).
fn reconciled(status: &TaskStatus) -> TaskStatus {
    let mut status = status.clone();
    status.uuid.clear();
    status.trace_context = marina_daemon::trace::carrier();
    status
}
