//! The leading gateway's state for one leadership term: apps, their instances, deployments,
//! launch backoff, and the decisions that drive them — applied through the master.
//!
//! Everything is behind one mutex, never held across an `await`; coord writes are fenced
//! by the gateway's epoch and happen outside it. Deployments are serialized by a separate
//! async lock, so two concurrent API calls cannot both claim an app.
//!
//! By concern, each a file of `impl Leader` over the state defined here (which also answers
//! the reads the apps service makes). Each decision is a pure function over the state that
//! returns [`effects::Effects`] (kills, coord writes, events, declines), unit-tested without
//! a cluster; `Leader::execute` is the one place that carries effects out:
//! - `deployments`: planning a change (`plan_tree`), taking a committed one in (`adopt`),
//!   cancellation, and steps advancing as apps converge (`advance_deployments`);
//! - `groups`: Marathon's group tree — what a group request changes (`replace`, `create`,
//!   `remove`, `scale`), and the tree at a past version (`Tree::undo`);
//! - `convergence`: the rounds that decide what to launch and kill (`round`, over
//!   [`crate::engine`]);
//! - `offers`: placing waiting instances on offers (`decide`, over [`crate::placement`]),
//!   recording them, accepting, and what refused launches mean (`after_accepts`);
//! - `updates`: status updates from the master (`transition`);
//! - `kills`: tasks killed on request (`mark_killing`); `probing`: readiness probes of new
//!   instances.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_coord_client::Error as CoordError;
use marina_proto::agent::v1::TaskState;
use marina_proto::master::v1::operator_client::OperatorClient;
use marina_proto::master::v1::scheduler_client::SchedulerClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{AppDefinition, PathId, Timestamp};
use crate::config::Config;
use crate::engine::{self, InstanceView};
use crate::events::EventBus;
use crate::metrics::{GatewayMetrics, LeaderStats};
use crate::placement::Reject;
use crate::readiness::{Prober, ReadinessResult};
use crate::store::{self, Batch, Store};

mod convergence;
mod deployment_json;
mod deployments;
mod effects;
#[cfg(test)]
mod fixtures;
mod groups;
mod kills;
mod offers;
mod planning;
mod probing;
mod updates;

use self::deployment_json::deployment_json;
pub use self::deployments::{Origin, Outcome, TreeRequest};
pub use self::groups::{GroupNode, GroupOp, GroupRecord, GroupUpdate};

/// What is persisted of an instance: enough to find it again after a failover.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub task_id: String,
    pub app_id: String,
    pub version: String,
    pub config_version: String,
    pub agent_id: String,
    pub host: String,
    pub ports: Vec<u32>,
    pub staged_at: String,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub record: InstanceRecord,
    pub state: TaskState,
    pub healthy: Option<bool>,
    pub killing: bool,
    kill_sent: Option<Instant>,
    launched_at: Instant,
    pub started_at: Option<String>,
    unreachable_since: Option<Instant>,
    pub message: String,
    /// The last readiness probe's outcome (instances of a config with a readiness check).
    pub readiness: Option<ReadinessResult>,
    next_probe: Option<Instant>,
    /// Its health checks' results so far (Marathon's `healthCheckResults`).
    pub health: Health,
    /// Where the task is reached, as its agent reported it (Marathon's `ipAddresses`): kept
    /// from its status updates, and learnt again from reconciliation after a failover.
    pub ip_addresses: Vec<String>,
}

impl Instance {
    /// A task just launched (or recorded and not yet reconciled): staging, holding its slot.
    fn staging(record: InstanceRecord, launched_at: Instant) -> Self {
        Instance {
            record,
            state: TaskState::TaskStaging,
            healthy: None,
            killing: false,
            kill_sent: None,
            launched_at,
            started_at: None,
            unreachable_since: None,
            message: String::new(),
            readiness: None,
            next_probe: None,
            health: Health::default(),
            ip_addresses: Vec::new(),
        }
    }

    fn view(&self) -> InstanceView<'_> {
        InstanceView {
            task_id: &self.record.task_id,
            config_version: &self.record.config_version,
            state: self.state,
            healthy: self.healthy,
            ready: self.readiness.as_ref().is_some_and(|r| r.ready),
            killing: self.killing,
            launched_at: self.launched_at,
            unreachable_since: self.unreachable_since,
        }
    }
}

/// What a task's health checks found, as its agent reports them (`TaskStatus.healthy`, on
/// each change): Marathon's `Health`. Kept in memory, as Marathon keeps it: after a failover
/// the next reports fill it again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub first_success: Option<Timestamp>,
    pub last_success: Option<Timestamp>,
    pub last_failure: Option<Timestamp>,
    pub last_failure_cause: Option<String>,
    /// Failures since the last success. The agent reports a change of health, not every
    /// check, so a run of failures counts once here (the agent itself counts them towards
    /// `maxConsecutiveFailures`).
    pub consecutive_failures: u32,
}

impl Health {
    /// Marathon's rule: alive if the last success is later than the last failure.
    pub fn alive(&self) -> bool {
        self.last_success.is_some_and(|success| self.last_failure.is_none_or(|failure| success > failure))
    }

    /// A check passed at `at`.
    pub fn succeeded(&mut self, at: Timestamp) {
        self.first_success.get_or_insert(at);
        self.last_success = Some(at);
        self.consecutive_failures = 0;
    }

    /// A check failed at `at`, for `cause`.
    pub fn failed(&mut self, at: Timestamp, cause: &str) {
        self.last_failure = Some(at);
        self.last_failure_cause = Some(cause.to_owned());
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Action {
    pub action: String,
    pub app: String,
}

/// A deployment in progress: ordered steps of actions, and the definitions before and after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub version: String,
    pub affected_apps: Vec<String>,
    pub steps: Vec<Vec<Action>>,
    /// Index of the step being carried out.
    pub current_step: usize,
    /// App JSON after the deployment (`None`: the app is deleted).
    pub targets: BTreeMap<String, Option<Value>>,
    /// App JSON before (`None`: the app did not exist), for rollback.
    pub originals: BTreeMap<String, Option<Value>>,
    /// The groups the deployment changed, as they were (`None`: created by it), for
    /// rollback. (Absent from deployments stored before groups were kept.)
    #[serde(default)]
    pub group_originals: BTreeMap<String, Option<GroupRecord>>,
}

pub struct AppEntry {
    /// The definition as stored and shown (the target of any deployment).
    pub definition: AppDefinition,
    /// What the engine converges to now; `None`: run nothing (deleted, or its deployment
    /// step not reached yet).
    pub active: Option<AppDefinition>,
    /// Deleted: hidden from the API, kept until its instances are gone.
    pub deleting: bool,
}

#[derive(Debug, Clone, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

/// Why an app waits, for `/v2/queue`.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub since: Option<Timestamp>,
    pub processed: u64,
    pub unused: u64,
    pub rejected: BTreeMap<Reject, u64>,
    pub last_unused_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// Every instance, kept by app and then by task id, with each task's app for lookups by
/// task id; and which apps changed since the last convergence round: the engine and
/// placement look at one app's instances at a time, and both scanning every instance per app
/// and deciding for every app per round are quadratic at scale (100,000 tasks in thousands
/// of apps). One app's instances sit together: reading them costs no hashing (looking each
/// up by task id was a fifth of the gateway's CPU in the placement benchmark, most of it
/// cache misses in convergence rounds).
#[derive(Default)]
struct Instances {
    by_app: HashMap<String, BTreeMap<String, Instance>>,
    /// Each task's app. Hashed: at 100,000 instances whose ids share long prefixes, a
    /// B-tree's lookups were a tenth of the gateway's CPU in string comparisons.
    app_of: HashMap<String, String>,
    /// Apps whose instances (or definition, see [`Instances::touch`]) changed since the last
    /// convergence round: the next round decides for them.
    dirty: HashSet<String>,
}

impl Instances {
    fn insert(&mut self, instance: Instance) {
        let app_id = instance.record.app_id.clone();
        let task_id = instance.record.task_id.clone();
        if let Some(previous_app) = self.app_of.insert(task_id.clone(), app_id.clone())
            && previous_app != app_id
        {
            self.unindex(&previous_app, &task_id);
            self.dirty.insert(previous_app);
        }
        self.by_app.entry(app_id.clone()).or_default().insert(task_id, instance);
        self.dirty.insert(app_id);
    }

    fn remove(&mut self, task_id: &str) -> Option<Instance> {
        let app_id = self.app_of.remove(task_id)?;
        let instance = self.unindex(&app_id, task_id);
        self.dirty.insert(app_id);
        instance
    }

    fn unindex(&mut self, app_id: &str, task_id: &str) -> Option<Instance> {
        let tasks = self.by_app.get_mut(app_id)?;
        let instance = tasks.remove(task_id);
        if tasks.is_empty() {
            self.by_app.remove(app_id);
        }
        instance
    }

    fn get(&self, task_id: &str) -> Option<&Instance> {
        self.by_app.get(self.app_of.get(task_id)?)?.get(task_id)
    }

    /// A change through this marks the instance's app for the next convergence round.
    fn get_mut(&mut self, task_id: &str) -> Option<&mut Instance> {
        let app_id = self.app_of.get(task_id)?;
        let instance = self.by_app.get_mut(app_id)?.get_mut(task_id)?;
        if !self.dirty.contains(app_id) {
            self.dirty.insert(app_id.clone());
        }
        Some(instance)
    }

    fn values(&self) -> impl Iterator<Item = &Instance> {
        self.by_app.values().flat_map(BTreeMap::values)
    }

    fn len(&self) -> usize {
        self.app_of.len()
    }

    /// The instances of one app, in task id order.
    fn of_app<'a>(&'a self, app_id: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_app.get(app_id).into_iter().flat_map(BTreeMap::values)
    }

    /// The instances of one app, to change what the engine does not decide on (the app is
    /// not marked for the next round).
    fn of_app_mut<'a>(&'a mut self, app_id: &str) -> impl Iterator<Item = &'a mut Instance> + 'a {
        self.by_app.get_mut(app_id).into_iter().flat_map(BTreeMap::values_mut)
    }

    /// The app's definition (or anything else the engine decides on) changed.
    fn touch(&mut self, app_id: &str) {
        if !self.dirty.contains(app_id) {
            self.dirty.insert(app_id.to_owned());
        }
    }
}

/// Convergence decides for the apps that changed; every this often it decides for every app
/// and looks for stuck launches and unanswered kills, as a safety net and for what changes
/// with time alone (unreachable tolerances).
const FULL_ROUND_EVERY: Duration = Duration::from_secs(1);

/// Marathon's name for an instance's condition (`instance_changed_event`).
fn condition_name(state: TaskState) -> &'static str {
    match state {
        TaskState::TaskStaging => "Staging",
        TaskState::TaskStarting => "Starting",
        TaskState::TaskRunning => "Running",
        TaskState::TaskKilling => "Killing",
        TaskState::TaskFinished => "Finished",
        TaskState::TaskFailed => "Failed",
        TaskState::TaskKilled => "Killed",
        TaskState::TaskError => "Error",
        TaskState::TaskLost | TaskState::TaskGone => "Gone",
        TaskState::TaskUnreachable => "Unreachable",
        TaskState::TaskDropped => "Dropped",
        TaskState::TaskUnknown | TaskState::Unspecified => "Unknown",
    }
}

/// See [`Leader::agent_of_task`].
fn agent_of_task(state: &State, task_id: &str) -> Option<String> {
    if let Some(instance) = state.instances.get(task_id) {
        return Some(instance.record.agent_id.clone());
    }
    state.failures.values().find(|failure| failure.task_id == task_id).map(|failure| failure.agent_id.clone())
}

/// The longest pause between two convergence rounds (see `converge_loop`).
const CONVERGE_GAP: Duration = Duration::from_millis(5);

/// How often the readiness loop looks for due probes (each check has its own interval).
const READINESS_TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
struct State {
    apps: BTreeMap<String, AppEntry>,
    /// Every group, by id, the root (`/`) included (see [`groups`]).
    groups: BTreeMap<String, GroupRecord>,
    instances: Instances,
    /// Apps that ran exactly as declared at their last decision (deployments advance on it).
    converged: HashSet<String>,
    /// When the next convergence round covers every app.
    next_full_round: Option<Instant>,
    deployments: BTreeMap<String, Deployment>,
    backoff: HashMap<String, Backoff>,
    /// Instances to launch per app, as last decided.
    pending: HashMap<String, u32>,
    /// The trace context of the request behind each app's deployment in progress: its
    /// launches join that trace.
    traces: HashMap<String, marina_daemon::trace::Carrier>,
    queue: HashMap<String, QueueStats>,
    /// Each app's last failed launch (`lastTaskFailure`).
    failures: HashMap<String, TaskFailure>,
    /// Apps whose last failure changed since it was last written to coord (the next
    /// convergence round writes it: a failure is shown at once, and kept across a
    /// failover from then on).
    failures_unwritten: BTreeSet<String>,
}

/// The link to the master while subscribed.
#[derive(Clone)]
pub struct MasterSession {
    pub client: SchedulerClient<marina_daemon::trace::TracedChannel>,
    /// The master's operator API on the same connection: its registry of agents (where a
    /// task's sandbox files are served).
    pub operator: OperatorClient<marina_daemon::trace::TracedChannel>,
    pub framework_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("App '{0}' does not exist")]
    NotFound(String),
    #[error("An app with id [{0}] already exists.")]
    Exists(String),
    #[error(
        "App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/<DEPLOYMENT_ID>'."
    )]
    Locked(Vec<String>),
    #[error("DeploymentPlan {0} does not exist")]
    NoDeployment(String),
    /// The change breaks a rule or a limit: Marathon's 422 with every problem at its path.
    #[error("invalid app definition: {}", crate::app::describe(.0))]
    Invalid(Vec<crate::app::Violation>),
    /// Coord refused what the change would write (a path or a value it does not take).
    #[error("coord refused the change: {0}")]
    Refused(String),
    /// This gateway lost its leadership while carrying out the change.
    #[error("this gateway no longer leads (epoch {epoch} was deposed); retry, and the new leader answers")]
    Deposed { epoch: u64 },
    /// Coord could not be reached, or could not commit.
    #[error("coord is unavailable: {0}")]
    Unavailable(String),
}

impl DeployError {
    /// What a failed coord write means for the caller.
    pub(crate) fn from_coord(error: CoordError, epoch: u64) -> Self {
        match error {
            CoordError::Deposed { .. } => DeployError::Deposed { epoch },
            CoordError::InvalidArgument(message) => DeployError::Refused(message),
            CoordError::Unavailable(_)
            | CoordError::NoQuorum(_)
            | CoordError::Indeterminate(_)
            | CoordError::SessionExpired(_)
            | CoordError::Other { .. } => DeployError::Unavailable(error.to_string()),
            // Unconditional puts and recursive deletes meet none of these; if one does, it
            // is the cluster's state, not the request, that is wrong.
            CoordError::NodeExists(_)
            | CoordError::NoNode(_)
            | CoordError::BadVersion(_)
            | CoordError::NotEmpty(_)
            | CoordError::Compacted(_) => DeployError::Unavailable(error.to_string()),
        }
    }
}

/// Why an app's last launch failed: Marathon's `lastTaskFailure` (a task that failed, a
/// launch the master refused, or a definition the leader could not converge).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskFailure {
    pub task_id: String,
    #[serde(with = "task_state_name")]
    pub state: TaskState,
    pub message: String,
    pub host: String,
    pub agent_id: String,
    pub version: String,
    pub timestamp: Timestamp,
}

/// One app change of a deployment.
pub struct Change {
    pub id: String,
    /// `None` deletes the app.
    pub target: Option<AppDefinition>,
    /// Replace every instance even if the configuration did not change (`/restart`).
    pub restart: bool,
}

impl Change {
    pub fn to(id: &str, target: Option<AppDefinition>) -> Self {
        Self { id: id.to_owned(), target, restart: false }
    }
}

/// The outcome of a change: the deployment carrying it out.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    #[serde(rename = "deploymentId")]
    pub deployment_id: String,
    pub version: String,
}

pub struct Leader {
    pub epoch: u64,
    pub address: String,
    pub store: Store,
    pub events: EventBus,
    config: Config,
    state: Mutex<State>,
    /// Serializes deployments; owned by the task that commits one (see `deploy_derived`).
    deploy_lock: Arc<tokio::sync::Mutex<()>>,
    pub converge_now: Notify,
    pub master: watch::Sender<Option<MasterSession>>,
    pub ended: CancellationToken,
    deposed: CancellationToken,
    metrics: GatewayMetrics,
    prober: Prober,
    /// The gateway's shutdown: failed when the leader state is found poisoned.
    shutdown: marina_daemon::Shutdown,
}

fn now_ts() -> String {
    Timestamp::now().to_string()
}

impl Leader {
    /// `gateway` takes over (for `epoch`, writing through `store`): loads apps, deployments
    /// and instances from coord.
    pub async fn start(
        gateway: &crate::Gateway,
        epoch: u64,
        store: Store,
        deposed: CancellationToken,
    ) -> Result<Arc<Self>, CoordError> {
        let mut state = State::default();
        for (name, json) in store.load::<Value>(store::APPS).await? {
            match parse_stored(&json) {
                Some(definition) => {
                    let id = definition.id.to_string();
                    state.apps.insert(id, AppEntry { active: Some(definition.clone()), definition, deleting: false });
                }
                None => tracing::error!(app = %name, "stored app definition unreadable; skipped"),
            }
        }
        for (_, deployment) in store.load::<Deployment>(store::DEPLOYMENTS).await? {
            // Apps of steps not reached yet still run their original definitions; deleted
            // apps are kept (hidden) until their instances are gone.
            for (index, step) in deployment.steps.iter().enumerate() {
                for action in step {
                    let original =
                        deployment.originals.get(&action.app).cloned().flatten().and_then(|v| parse_stored(&v));
                    let target = deployment.targets.get(&action.app).cloned().flatten().and_then(|v| parse_stored(&v));
                    let reached = index <= deployment.current_step;
                    match (target, state.apps.get_mut(&action.app)) {
                        (Some(_), Some(entry)) if !reached => entry.active = original,
                        (None, _) => {
                            let shown = original.clone().unwrap_or_else(|| AppDefinition::new(PathId::root()));
                            let active = if reached { None } else { original };
                            state
                                .apps
                                .insert(action.app.clone(), AppEntry { definition: shown, active, deleting: true });
                        }
                        _ => {}
                    }
                }
            }
            state.deployments.insert(deployment.id.clone(), deployment);
        }
        for (_, group) in store.load::<GroupRecord>(store::GROUPS).await? {
            state.groups.insert(group.id.clone(), group);
        }
        // Groups of apps stored before groups were kept exist too.
        groups::add_implicit_groups(&mut state);
        for (_, failure) in store.load::<StoredFailure>(store::FAILURES).await? {
            state.failures.insert(failure.app_id.clone(), failure.failure);
        }
        let now = Instant::now();
        for (_, record) in store.load::<InstanceRecord>(store::INSTANCES).await? {
            // Until reconciliation says otherwise, a recorded instance holds its slot.
            state.instances.insert(Instance::staging(record, now));
        }
        tracing::info!(
            epoch,
            apps = state.apps.len(),
            groups = state.groups.len(),
            deployments = state.deployments.len(),
            instances = state.instances.len(),
            "gateway leading: state loaded"
        );
        let leader = Arc::new(Self {
            epoch,
            address: gateway.member.address.clone(),
            store,
            events: gateway.events.clone(),
            config: gateway.config.clone(),
            state: Mutex::new(state),
            deploy_lock: Arc::new(tokio::sync::Mutex::new(())),
            converge_now: Notify::new(),
            master: watch::channel(None).0,
            ended: CancellationToken::new(),
            deposed,
            metrics: gateway.metrics.clone(),
            prober: Prober::default(),
            shutdown: gateway.shutdown.clone(),
        });
        tokio::spawn(leader.clone().converge_loop());
        tokio::spawn(leader.clone().readiness_loop());
        Ok(leader)
    }

    pub fn end(&self) {
        self.ended.cancel();
    }
}

impl marina_coord_client::Term for Leader {
    fn end(&self) {
        Leader::end(self);
    }
}

impl Leader {
    /// The state, or — if a panic poisoned it — a leader that steps down at once and a
    /// service that stops (see [`marina_daemon::Shutdown::fail`]): state a panic left half
    /// changed must not be acted on, and holding the leadership without acting would stall
    /// every app.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(_) => {
                self.deposed.cancel();
                self.shutdown.fail("the gateway's leader state is poisoned (a panic while it was changed)");
                panic!("gateway leader state poisoned");
            }
        }
    }

    fn check_deposed(&self, error: &CoordError) {
        if matches!(error, CoordError::Deposed { .. }) {
            tracing::error!(epoch = self.epoch, "a fenced write found the leadership gone: stepping down");
            self.deposed.cancel();
        }
    }

    async fn apply(&self, batch: Batch) -> Result<(), DeployError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.store.apply(batch).await.map_err(|error| {
            self.check_deposed(&error);
            DeployError::from_coord(error, self.epoch)
        })
    }

    // ----- reading --------------------------------------------------------------------------

    /// Every (visible) app with its instances.
    pub fn apps(&self) -> Vec<(AppDefinition, Vec<Instance>, Vec<String>)> {
        let state = self.lock();
        state
            .apps
            .iter()
            .filter(|(_, entry)| !entry.deleting)
            .map(|(id, entry)| (entry.definition.clone(), instances_of(&state, id), deployments_of(&state, id)))
            .collect()
    }

    /// Every (visible) app's definition, in id order.
    pub fn definitions(&self) -> Vec<AppDefinition> {
        self.lock().apps.values().filter(|entry| !entry.deleting).map(|entry| entry.definition.clone()).collect()
    }

    pub fn app(&self, id: &str) -> Option<(AppDefinition, Vec<Instance>, Vec<String>)> {
        let state = self.lock();
        let entry = state.apps.get(id).filter(|e| !e.deleting)?;
        Some((entry.definition.clone(), instances_of(&state, id), deployments_of(&state, id)))
    }

    /// Every instance, in task id order.
    pub fn instances(&self) -> Vec<Instance> {
        let mut instances: Vec<Instance> = self.lock().instances.values().cloned().collect();
        instances.sort_unstable_by(|a, b| a.record.task_id.cmp(&b.record.task_id));
        instances
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        self.lock().deployments.values().cloned().collect()
    }

    /// Marathon's JSON of every deployment in progress, with its readiness results.
    pub fn deployments_json(&self) -> Vec<Value> {
        let state = self.lock();
        state.deployments.values().map(|deployment| deployment_json(deployment, &state)).collect()
    }

    /// Counts for the metrics.
    pub fn stats(&self) -> LeaderStats {
        let state = self.lock();
        LeaderStats {
            apps: state.apps.values().filter(|entry| !entry.deleting).count(),
            deployments: state.deployments.len(),
            launch_queue: state.pending.values().map(|&count| count as usize).sum(),
            master_connected: self.master.borrow().is_some(),
        }
    }

    /// How many instances are in each task state.
    pub fn instance_states(&self) -> Vec<(&'static str, usize)> {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for instance in self.lock().instances.values() {
            *counts.entry(instance.state.as_str_name()).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Apps waiting for resources: (app, count waiting, delay left, stats).
    pub fn queue(&self) -> Vec<(AppDefinition, u32, Duration, QueueStats)> {
        let state = self.lock();
        let now = Instant::now();
        state
            .pending
            .iter()
            .filter(|(_, count)| **count > 0)
            .filter_map(|(id, count)| {
                let entry = state.apps.get(id)?;
                let delay = state
                    .backoff
                    .get(id)
                    .and_then(|b| b.until)
                    .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
                Some((entry.definition.clone(), *count, delay, state.queue.get(id).cloned().unwrap_or_default()))
            })
            .collect()
    }

    /// The agent a task runs on: a known instance's, or — for a task that is over — the
    /// agent of its app's last failure, if that was this task (its sandbox is still there
    /// until the agent collects it).
    pub fn agent_of_task(&self, task_id: &str) -> Option<String> {
        agent_of_task(&self.lock(), task_id)
    }

    /// The app's last failed launch, if any.
    pub fn last_failure(&self, app_id: &str) -> Option<TaskFailure> {
        self.lock().failures.get(app_id).cloned()
    }

    pub fn reset_delay(&self, app_id: &str) -> bool {
        let mut state = self.lock();
        if !state.apps.contains_key(app_id) {
            return false;
        }
        state.backoff.remove(app_id);
        drop(state);
        self.converge_now.notify_one();
        true
    }
}

/// Reads a stored (validated and stamped when it was stored) app definition, without
/// validating it again: a rule tightened later must not lose stored apps.
fn parse_stored(json: &Value) -> Option<AppDefinition> {
    serde_json::from_value(json.clone()).ok()
}

fn instances_of(state: &State, app_id: &str) -> Vec<Instance> {
    state.instances.of_app(app_id).cloned().collect()
}

fn deployments_of(state: &State, app_id: &str) -> Vec<String> {
    state.deployments.values().filter(|d| d.affected_apps.iter().any(|a| a == app_id)).map(|d| d.id.clone()).collect()
}

/// A launch of `record`'s task that failed before it ran, for `lastTaskFailure`.
fn launch_failure(record: &InstanceRecord, reason: &str) -> TaskFailure {
    TaskFailure {
        task_id: record.task_id.clone(),
        state: TaskState::TaskError,
        message: reason.to_owned(),
        host: record.host.clone(),
        agent_id: record.agent_id.clone(),
        version: record.version.clone(),
        timestamp: Timestamp::now(),
    }
}

/// Counts a failed launch of `app_id` against it: its next launch waits out the backoff its
/// definition asks for, and `failure` is what `lastTaskFailure` shows.
fn back_off(state: &mut State, app_id: &str, failure: TaskFailure, now: Instant) {
    tracing::info!(app = %app_id, task = %failure.task_id, reason = %failure.message, "launch failed; backing off");
    let app = state.apps.get(app_id).and_then(|e| e.active.as_ref());
    let backoff = state.backoff.entry(app_id.to_owned()).or_default();
    backoff.failures = backoff.failures.saturating_add(1);
    if let Some(app) = app {
        let delay = engine::backoff_delay(
            app.backoff_seconds as f64,
            app.backoff_factor,
            app.max_launch_delay_seconds as f64,
            backoff.failures,
        );
        backoff.until = Some(marina_daemon::time::deadline(now, delay));
    }
    state.failures.insert(app_id.to_owned(), failure);
    state.failures_unwritten.insert(app_id.to_owned());
}

/// The failures not written to coord yet, as writes (each app's under its node).
fn write_failures(state: &mut State, batch: &mut Batch) {
    for app_id in std::mem::take(&mut state.failures_unwritten) {
        let path = format!("{}/{}", store::FAILURES, store::node_name(&app_id));
        match state.failures.get(&app_id) {
            Some(failure) => batch.put(path, &StoredFailure { app_id, failure: failure.clone() }),
            None => batch.delete(path),
        }
    }
}

/// An app's last failure as kept in coord.
#[derive(Serialize, Deserialize)]
struct StoredFailure {
    app_id: String,
    #[serde(flatten)]
    failure: TaskFailure,
}

/// A task state as its proto name (`TASK_FAILED`) in stored records.
mod task_state_name {
    use marina_proto::agent::v1::TaskState;

    pub fn serialize<S: serde::Serializer>(state: &TaskState, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(state.as_str_name())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<TaskState, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(deserializer)?;
        TaskState::from_str_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown task state {name}")))
    }
}
