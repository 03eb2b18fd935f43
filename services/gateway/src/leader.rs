//! The leading gateway's state for one leadership term: apps, their instances, deployments,
//! launch backoff, and the decisions that drive them — applied through the master.
//!
//! Everything is behind one mutex, never held across an `await`; coord writes are fenced
//! by the gateway's epoch and happen outside it. Deployments are serialized by a separate
//! async lock, so two concurrent API calls cannot both claim an app.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_coord_client::Error as CoordError;
use marina_proto::agent::v1::{TaskInfo, TaskState, TaskStatus};
use marina_proto::master::v1 as master;
use marina_proto::master::v1::scheduler_client::SchedulerClient;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::{self, AppDefinition, PathId, Timestamp};
use crate::config::Config;
use crate::engine::{self, InstanceView, is_terminal};
use crate::events::EventBus;
use crate::metrics::{GatewayMetrics, LeaderStats};
use crate::model;
use crate::placement::{self, Demand, OfferView, Placement, Reject};
use crate::readiness::{Probe, Prober, ReadinessResult};
use crate::store::{self, Batch, Store};

/// What is persisted of an instance: enough to find it again after a failover.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Every instance by task id, indexed by app, and which apps changed since the last
/// convergence round: the engine and placement look at one app's instances at a time, and
/// both scanning every instance per app and deciding for every app per round are quadratic
/// at scale (100,000 tasks in thousands of apps).
#[derive(Default)]
struct Instances {
    /// By task id. Hashed: at 100,000 instances whose ids share long prefixes, a B-tree's
    /// lookups were a tenth of the gateway's CPU in string comparisons.
    all: HashMap<String, Instance>,
    by_app: HashMap<String, BTreeSet<String>>,
    /// Apps whose instances (or definition, see [`Instances::touch`]) changed since the last
    /// convergence round: the next round decides for them.
    dirty: HashSet<String>,
}

impl Instances {
    fn insert(&mut self, instance: Instance) {
        let app_id = instance.record.app_id.clone();
        let task_id = instance.record.task_id.clone();
        if let Some(previous) = self.all.insert(task_id.clone(), instance)
            && previous.record.app_id != app_id
        {
            self.unindex(&previous.record.app_id, &task_id);
        }
        self.by_app.entry(app_id.clone()).or_default().insert(task_id);
        self.dirty.insert(app_id);
    }

    fn remove(&mut self, task_id: &str) -> Option<Instance> {
        let instance = self.all.remove(task_id)?;
        self.unindex(&instance.record.app_id, task_id);
        self.dirty.insert(instance.record.app_id.clone());
        Some(instance)
    }

    fn unindex(&mut self, app_id: &str, task_id: &str) {
        if let Some(tasks) = self.by_app.get_mut(app_id) {
            tasks.remove(task_id);
            if tasks.is_empty() {
                self.by_app.remove(app_id);
            }
        }
    }

    fn get(&self, task_id: &str) -> Option<&Instance> {
        self.all.get(task_id)
    }

    /// A change through this marks the instance's app for the next convergence round.
    fn get_mut(&mut self, task_id: &str) -> Option<&mut Instance> {
        let instance = self.all.get_mut(task_id)?;
        if !self.dirty.contains(&instance.record.app_id) {
            self.dirty.insert(instance.record.app_id.clone());
        }
        Some(instance)
    }

    fn values(&self) -> impl Iterator<Item = &Instance> {
        self.all.values()
    }

    fn len(&self) -> usize {
        self.all.len()
    }

    /// The instances of one app, in task id order.
    fn of_app<'a>(&'a self, app_id: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_app.get(app_id).into_iter().flatten().filter_map(|task_id| self.all.get(task_id))
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

/// The reason an agent gives when it kills a task its health checks found failing.
const HEALTH_KILLED_REASON: &str = "REASON_HEALTH_CHECK_FAILED";

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

/// The longest pause between two convergence rounds (see `converge_loop`).
const CONVERGE_GAP: Duration = Duration::from_millis(5);

/// How often the readiness loop looks for due probes (each check has its own interval).
const READINESS_TICK: Duration = Duration::from_millis(250);

#[derive(Default)]
struct State {
    apps: BTreeMap<String, AppEntry>,
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
}

/// The link to the master while subscribed.
#[derive(Clone)]
pub struct MasterSession {
    pub client: SchedulerClient<marina_daemon::trace::TracedChannel>,
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
    fn from_coord(error: CoordError, epoch: u64) -> Self {
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
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    pub task_id: String,
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
        let now = Instant::now();
        for (_, record) in store.load::<InstanceRecord>(store::INSTANCES).await? {
            // Until reconciliation says otherwise, a recorded instance holds its slot.
            state.instances.insert(Instance::staging(record, now));
        }
        tracing::info!(
            epoch,
            apps = state.apps.len(),
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

    // ----- changing ---------------------------------------------------------------------------

    /// Carries out a set of app changes as one deployment. `target == None` deletes.
    pub async fn deploy(self: &Arc<Self>, changes: Vec<Change>, force: bool) -> Result<Deployed, DeployError> {
        self.deploy_derived(force, |_| Ok::<_, DeployError>(changes)).await
    }

    /// Like [`Leader::deploy`], for changes derived from the apps as they are: `derive` runs
    /// under the deployment lock, so what it reads (the app a partial update or a scale
    /// starts from, whether an id is taken) is what the deployment replaces. Two concurrent
    /// partial updates of one app thus both apply, the second on top of the first.
    pub async fn deploy_derived<E: From<DeployError>>(
        self: &Arc<Self>,
        force: bool,
        derive: impl FnOnce(&Self) -> Result<Vec<Change>, E>,
    ) -> Result<Deployed, E> {
        let serialized = self.deploy_lock.clone().lock_owned().await;
        let changes = derive(self)?;
        // Once its batch is on its way to coord, a deployment must also be recorded here:
        // a caller that goes away (a client that disconnects, a request past the port's
        // timeout) drops this future, and must not leave the apps committed in coord but
        // unknown to this leader until the next one. So the commit runs on its own task,
        // holding the deployment lock until it is done.
        let leader = self.clone();
        let commit = tokio::spawn(
            async move {
                let _serialized = serialized;
                leader.deploy_serialized(changes, force).await
            }
            // Still the request's work: its trace goes on to the master and agents.
            .in_current_span(),
        );
        match commit.await {
            Ok(result) => Ok(result?),
            // The panic has already failed the service (its hook); the caller unwinds too.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(DeployError::Unavailable("the gateway is shutting down".into()).into()),
        }
    }

    /// The deployment itself; the caller holds `deploy_lock`.
    async fn deploy_serialized(&self, changes: Vec<Change>, force: bool) -> Result<Deployed, DeployError> {
        let now = Timestamp::now();
        let version = now.to_string();
        let deployment_id = marina_daemon::ids::uuid();
        let (deployment, batch, superseded) = {
            let state = self.lock();
            let affected: HashSet<&String> = changes.iter().map(|change| &change.id).collect();
            let locking: Vec<String> = state
                .deployments
                .values()
                .filter(|d| d.affected_apps.iter().any(|app| affected.contains(app)))
                .map(|d| d.id.clone())
                .collect();
            if !locking.is_empty() && !force {
                return Err(DeployError::Locked(locking));
            }
            let mut targets = BTreeMap::new();
            let mut originals = BTreeMap::new();
            let mut actions: Vec<(Action, Vec<String>)> = Vec::new();
            let mut batch = Batch::default();
            let mut assigned: Vec<u16> = Vec::new();
            for Change { id, target, restart } in changes {
                let previous = state.apps.get(&id).filter(|e| !e.deleting).map(|e| e.definition.clone());
                let action = match (&previous, &target) {
                    (None, None) => return Err(DeployError::NotFound(id)),
                    (None, Some(_)) => "StartApplication",
                    (Some(_), None) => "StopApplication",
                    (Some(old), Some(new)) if !restart && app::is_scale_only(old, new) => "ScaleApplication",
                    (Some(_), Some(_)) => "RestartApplication",
                };
                let node = store::node_name(&id);
                let stamped = match target {
                    Some(mut definition) => {
                        let violations = self.config.limits.check_change(&definition, previous.as_ref());
                        if !violations.is_empty() {
                            return Err(DeployError::Invalid(violations));
                        }
                        // Ports declared 0 get service ports no other app holds (nor one
                        // assigned earlier in this deployment); an update keeps its own.
                        let taken: std::collections::BTreeSet<u16> = state
                            .apps
                            .iter()
                            .filter(|(other, entry)| {
                                other.as_str() != id && !entry.deleting && !targets.contains_key(other.as_str())
                            })
                            .flat_map(|(_, entry)| entry.definition.service_ports())
                            .chain(assigned.iter().copied())
                            .collect();
                        definition.assign_service_ports(previous.as_ref(), &taken, app::SERVICE_PORTS).map_err(
                            |error| {
                                DeployError::Invalid(vec![app::Violation::new("/portDefinitions", error.to_string())])
                            },
                        )?;
                        assigned.extend(definition.service_ports());
                        Some(definition)
                    }
                    None => None,
                };
                let stamped = stamped.map(|mut definition| {
                    app::stamp(&mut definition, now, previous.as_ref());
                    if restart && let Some(info) = definition.version_info.as_mut() {
                        info.last_config_change_at = now;
                    }
                    definition
                });
                match &stamped {
                    Some(definition) => {
                        let json = definition.to_json();
                        batch.put(format!("{}/{node}", store::APPS), &json);
                        batch.put(format!("{}/{node}/{}", store::VERSIONS, model::version(definition)), &json);
                    }
                    None => batch.delete(format!("{}/{node}", store::APPS)),
                }
                let dependencies = stamped
                    .as_ref()
                    .map(|d| d.dependencies.iter().map(|p| p.to_string()).collect())
                    .unwrap_or_default();
                targets.insert(id.clone(), stamped.map(|d| d.to_json()));
                originals.insert(id.clone(), previous.map(|d| d.to_json()));
                actions.push((Action { action: action.into(), app: id }, dependencies));
            }
            let steps = order_steps(actions);
            let deployment = Deployment {
                id: deployment_id.clone(),
                version: version.clone(),
                affected_apps: targets.keys().cloned().collect(),
                steps,
                current_step: 0,
                targets,
                originals,
            };
            batch.put(format!("{}/{}", store::DEPLOYMENTS, deployment.id), &deployment);
            for superseded in &locking {
                batch.delete(format!("{}/{superseded}", store::DEPLOYMENTS));
            }
            (deployment, batch, locking)
        };
        self.apply(batch).await?;
        let plan = {
            let mut state = self.lock();
            for id in &superseded {
                state.deployments.remove(id);
            }
            for (id, target) in &deployment.targets {
                let target = target.as_ref().and_then(parse_stored);
                match (target, state.apps.get_mut(id)) {
                    (Some(definition), Some(entry)) => {
                        entry.definition = definition;
                        entry.deleting = false;
                    }
                    (Some(definition), None) => {
                        state.apps.insert(id.clone(), AppEntry { definition, active: None, deleting: false });
                    }
                    (None, Some(entry)) => entry.deleting = true,
                    (None, None) => {}
                }
                state.backoff.remove(id);
                state.instances.touch(id);
            }
            activate_step(&mut state, &deployment, 0);
            let trace = marina_daemon::trace::carrier();
            for id in &deployment.affected_apps {
                state.traces.insert(id.clone(), trace.clone());
            }
            state.deployments.insert(deployment.id.clone(), deployment.clone());
            deployment_json(&deployment, &state)
        };
        for id in &superseded {
            self.events
                .publish("deployment_failed", json!({ "id": id, "reason": "superseded by a forced deployment" }));
        }
        self.events.publish("deployment_info", json!({ "plan": plan, "currentStep": step_json(&deployment, 0) }));
        self.converge_now.notify_one();
        // Versions beyond Marathon's limit go, off the request path.
        let store = self.store.clone();
        let kept: Vec<String> =
            deployment.targets.iter().filter(|(_, target)| target.is_some()).map(|(id, _)| id.clone()).collect();
        tokio::spawn(async move {
            for id in kept {
                if let Err(error) = store.prune_versions(&id, store::MAX_VERSIONS).await {
                    tracing::warn!(app = %id, %error, "pruning old versions failed; the next deployment retries");
                }
            }
        });
        Ok(Deployed { deployment_id: deployment.id, version })
    }

    /// Cancels a deployment: by default a rollback deployment restores the previous
    /// definitions; with `force` the deployment just stops where it is.
    pub async fn cancel_deployment(self: &Arc<Self>, id: &str, force: bool) -> Result<Option<Deployed>, DeployError> {
        let deployment =
            self.lock().deployments.get(id).cloned().ok_or_else(|| DeployError::NoDeployment(id.to_owned()))?;
        if force {
            let mut batch = Batch::default();
            batch.delete(format!("{}/{id}", store::DEPLOYMENTS));
            self.apply(batch).await?;
            let plan = {
                let mut state = self.lock();
                state.deployments.remove(id);
                deployment_json(&deployment, &state)
            };
            self.events.publish("deployment_failed", json!({ "id": id, "plan": plan, "reason": "canceled" }));
            return Ok(None);
        }
        let plan = deployment_json(&deployment, &self.lock());
        // Previous definitions come back; apps this deployment created are deleted.
        let rollback = self
            .deploy_derived(true, |leader| {
                let state = leader.lock();
                Ok::<_, DeployError>(
                    deployment
                        .originals
                        .iter()
                        .map(|(app_id, original)| Change::to(app_id, original.as_ref().and_then(parse_stored)))
                        .filter(|change| {
                            change.target.is_some() || state.apps.get(&change.id).is_some_and(|e| !e.deleting)
                        })
                        .collect(),
                )
            })
            .await?;
        self.events.publish("deployment_failed", json!({ "id": id, "plan": plan, "reason": "rolled back" }));
        Ok(Some(rollback))
    }

    /// Kills tasks: those of `app_id` (all of them when `task_ids` is empty), or, with no
    /// app, exactly `task_ids` — an empty list then kills nothing, never every task of every
    /// app. With `scale`, the app's instance count drops so they are not replaced (a
    /// deployment); otherwise they are replaced.
    pub async fn kill_tasks(
        self: &Arc<Self>,
        app_id: Option<&str>,
        task_ids: &[String],
        host: Option<&str>,
        scale: bool,
        force: bool,
    ) -> Result<(Vec<Instance>, Option<Deployed>), DeployError> {
        if app_id.is_none() && task_ids.is_empty() {
            return Ok((Vec::new(), None));
        }
        let chosen: Vec<Instance> = {
            let state = self.lock();
            if let Some(app_id) = app_id
                && state.apps.get(app_id).is_none_or(|e| e.deleting)
            {
                return Err(DeployError::NotFound(app_id.to_owned()));
            }
            state
                .instances
                .values()
                .filter(|i| app_id.is_none_or(|app| i.record.app_id == app))
                .filter(|i| task_ids.is_empty() || task_ids.contains(&i.record.task_id))
                .filter(|i| host.is_none_or(|host| i.record.host == host))
                .filter(|i| !is_terminal(i.state))
                .cloned()
                .collect()
        };
        let mut deployed = None;
        if scale {
            let mut per_app: BTreeMap<String, i64> = BTreeMap::new();
            for instance in &chosen {
                *per_app.entry(instance.record.app_id.clone()).or_default() += 1;
            }
            if !per_app.is_empty() {
                // Scaled from the definition under the deployment lock, so a concurrent
                // update is kept rather than overwritten.
                let scaled = self.deploy_derived(force, |leader| {
                    let state = leader.lock();
                    Ok::<_, DeployError>(
                        per_app
                            .into_iter()
                            .filter_map(|(id, count)| {
                                let mut scaled = state.apps.get(&id).filter(|e| !e.deleting)?.definition.clone();
                                scaled.instances = (scaled.instances - count).max(0);
                                Some(Change::to(&id, Some(scaled)))
                            })
                            .collect(),
                    )
                });
                deployed = Some(scaled.await?);
            }
        }
        let ids: Vec<String> = chosen.iter().map(|i| i.record.task_id.clone()).collect();
        {
            let mut state = self.lock();
            for id in &ids {
                if let Some(instance) = state.instances.get_mut(id) {
                    instance.killing = true;
                    instance.kill_sent = Some(Instant::now());
                }
            }
        }
        self.send_kills(&ids).await;
        self.converge_now.notify_one();
        Ok((chosen, deployed))
    }

    async fn send_kills(&self, task_ids: &[String]) {
        let session = self.master.borrow().clone();
        let Some(session) = session else { return };
        let agents: HashMap<String, String> = {
            let state = self.lock();
            task_ids
                .iter()
                .filter_map(|id| Some((id.clone(), state.instances.get(id)?.record.agent_id.clone())))
                .collect()
        };
        for task_id in task_ids {
            let request = master::KillRequest {
                framework_id: session.framework_id.clone(),
                task_id: task_id.clone(),
                agent_id: agents.get(task_id).cloned().unwrap_or_default(),
                grace_period_seconds: 0,
            };
            if let Err(status) = session.client.clone().kill(request).await {
                tracing::warn!(task = %task_id, %status, "kill not delivered; will retry");
            }
        }
    }

    // ----- readiness ----------------------------------------------------------------------------

    /// Probes the readiness checks of new instances as they become due (see
    /// [`crate::readiness`]); each probe runs on its own, so a slow one delays no other.
    async fn readiness_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(READINESS_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.ended.cancelled() => return,
            }
            for probe in self.due_probes(Instant::now()) {
                let leader = self.clone();
                tokio::spawn(async move {
                    let result = leader.prober.probe(&probe).await;
                    leader.record_readiness(result);
                });
            }
        }
    }

    /// Running instances of an app's current config with a readiness check, not ready yet,
    /// whose next probe is due; each gets its next due time.
    fn due_probes(&self, now: Instant) -> Vec<Probe> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut due = Vec::new();
        for (app_id, entry) in &state.apps {
            let Some(active) = entry.active.as_ref().filter(|a| !a.readiness_checks.is_empty()) else { continue };
            let config_version = model::config_version(active);
            let interval = Duration::from_secs(u64::from(active.readiness_checks[0].interval_seconds.max(1)));
            let Some(task_ids) = state.instances.by_app.get(app_id) else { continue };
            for task_id in task_ids {
                let Some(instance) = state.instances.all.get_mut(task_id) else { continue };
                let waiting = instance.record.config_version == config_version
                    && instance.state == TaskState::TaskRunning
                    && !instance.killing
                    && instance.unreachable_since.is_none()
                    && !instance.readiness.as_ref().is_some_and(|r| r.ready)
                    && instance.next_probe.is_none_or(|next| next <= now);
                if !waiting {
                    continue;
                }
                let record = &instance.record;
                if let Some(probe) = Probe::of(active, &record.task_id, &record.host, &record.ports) {
                    instance.next_probe = Some(marina_daemon::time::deadline(now, interval));
                    due.push(probe);
                }
            }
        }
        due
    }

    fn record_readiness(&self, result: ReadinessResult) {
        let mut state = self.lock();
        let Some(instance) = state.instances.get_mut(&result.task_id) else { return };
        let became_ready = result.ready && !instance.readiness.as_ref().is_some_and(|r| r.ready);
        let app_id = instance.record.app_id.clone();
        instance.readiness = Some(result);
        if became_ready {
            tracing::info!(app = %app_id, task = %instance.record.task_id, "instance ready");
            state.instances.touch(&app_id);
            drop(state);
            self.converge_now.notify_one();
        }
    }

    // ----- convergence ------------------------------------------------------------------------

    async fn converge_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.converge_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.converge_now.notified() => {}
                () = self.ended.cancelled() => return,
            }
            let round = Instant::now();
            self.converge().await;
            // Rounds are triggered by every status update. After a round that took a while
            // (a busy cluster), a pause as long (at most CONVERGE_GAP) lets the burst of
            // updates meanwhile share the next round instead of each paying for one; an
            // idle cluster's rounds take microseconds and pause as little.
            tokio::time::sleep(round.elapsed().min(CONVERGE_GAP)).await;
        }
    }

    /// One round: decide launches and kills for the apps that changed since the last round
    /// (for every app once per [`FULL_ROUND_EVERY`]), advance deployments.
    pub async fn converge(&self) {
        let now = Instant::now();
        let launch_timeout = Duration::from_millis(self.config.task_launch_timeout_ms);
        let (kills, batch, events, removed_apps) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let mut kills = Vec::new();
            let mut undecidable = Vec::new();
            let full = state.next_full_round.is_none_or(|due| now >= due);
            let changed = std::mem::take(&mut state.instances.dirty);
            let ids: Vec<String> = if full {
                state.next_full_round = Some(now + FULL_ROUND_EVERY);
                // Apps gone since are in `changed` (and dropped below); the rest is every app.
                state
                    .apps
                    .keys()
                    .cloned()
                    .chain(changed.into_iter().filter(|id| !state.apps.contains_key(id)))
                    .collect()
            } else {
                changed.into_iter().collect()
            };
            for id in ids {
                let Some(entry) = state.apps.get(&id) else {
                    state.pending.remove(&id);
                    state.queue.remove(&id);
                    state.converged.remove(&id);
                    state.failures.remove(&id);
                    continue;
                };
                // A decision is pure: if one app's definition makes it panic, that app is
                // marked and waits, and every other app is still decided for (a definition
                // that broke this leader would break the next one too).
                let decided = marina_daemon::shutdown::contain(|| {
                    let plan = entry.active.as_ref().map(model::plan);
                    let views: Vec<InstanceView> = state.instances.of_app(&id).map(Instance::view).collect();
                    engine::decide(plan.as_ref(), &views, now)
                });
                let decision = match decided {
                    Ok(decision) => decision,
                    Err(panic) => {
                        state.pending.remove(&id);
                        state.converged.remove(&id);
                        undecidable.push((id, panic));
                        continue;
                    }
                };
                kills.extend(decision.kill);
                if decision.launch > 0 {
                    // Apps in backoff stay pending (and show in /v2/queue with their delay);
                    // offers are only used for them once the delay expires.
                    let stats = state.queue.entry(id.clone()).or_default();
                    stats.since.get_or_insert_with(Timestamp::now);
                    state.pending.insert(id.clone(), decision.launch);
                } else {
                    state.queue.remove(&id);
                    state.pending.remove(&id);
                }
                if decision.converged {
                    state.converged.insert(id);
                } else {
                    state.converged.remove(&id);
                }
            }
            for (id, panic) in undecidable {
                let failure = TaskFailure {
                    task_id: String::new(),
                    state: TaskState::TaskError,
                    message: format!("the gateway cannot converge this app: {panic}"),
                    host: String::new(),
                    agent_id: String::new(),
                    version: state.apps.get(&id).map(|e| model::version(&e.definition)).unwrap_or_default(),
                    timestamp: Timestamp::now(),
                };
                back_off(state, &id, failure, now);
            }
            if full {
                // Launches that never started, and kills that were not acknowledged.
                for instance in state.instances.values() {
                    let stuck = matches!(instance.state, TaskState::TaskStaging | TaskState::TaskStarting)
                        && now.duration_since(instance.launched_at) > launch_timeout;
                    let retry_kill = instance.killing
                        && instance.kill_sent.is_some_and(|sent| now.duration_since(sent) > Duration::from_secs(10));
                    if (stuck && !instance.killing) || retry_kill {
                        kills.push(instance.record.task_id.clone());
                    }
                }
            }
            kills.sort();
            kills.dedup();
            for id in &kills {
                if let Some(instance) = state.instances.get_mut(id) {
                    instance.killing = true;
                    instance.kill_sent = Some(now);
                }
            }
            let converged = std::mem::take(&mut state.converged);
            let (batch, events, removed_apps) = advance_deployments(state, &converged);
            state.converged = converged;
            (kills, batch, events, removed_apps)
        };
        if !kills.is_empty() {
            tracing::info!(count = kills.len(), "killing tasks to converge");
            self.send_kills(&kills).await;
        }
        if !batch.is_empty() {
            if let Err(error) = self.apply(batch).await {
                tracing::warn!(%error, "recording deployment progress failed; will retry");
                return;
            }
            let mut state = self.lock();
            for id in &removed_apps {
                state.apps.remove(id);
                state.backoff.remove(id);
                state.instances.touch(id);
            }
        }
        for (event_type, json) in events {
            self.events.publish(event_type, json);
        }
    }

    /// Whether some app waits for resources (so offers are wanted).
    pub fn wants_offers(&self) -> bool {
        let state = self.lock();
        let now = Instant::now();
        state.pending.iter().any(|(id, count)| {
            *count > 0 && state.backoff.get(id).and_then(|b| b.until).is_none_or(|until| until <= now)
        })
    }

    // ----- offers and updates ------------------------------------------------------------------

    /// Uses offers for waiting instances: records the instances, then accepts; declines the
    /// rest.
    pub async fn handle_offers(&self, offers: Vec<master::Offer>) {
        let session = self.master.borrow().clone();
        let Some(session) = session else { return };
        let now = Instant::now();
        let (launches, records) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let mut views: Vec<OfferView> = offers
                .iter()
                .map(|offer| {
                    let resources = offer.resources.clone().unwrap_or_default();
                    OfferView {
                        offer_id: offer.offer_id.clone(),
                        agent_id: offer.agent_id.clone(),
                        hostname: offer.hostname.clone(),
                        attributes: offer.attributes.iter().map(|a| (a.name.clone(), a.value.clone())).collect(),
                        cpus: resources.cpus,
                        mem: resources.mem_mb,
                        disk: resources.disk_mb,
                        ports: resources.ports,
                    }
                })
                .collect();
            let agent_attributes: HashMap<String, Vec<(String, String)>> =
                views.iter().map(|v| (v.agent_id.clone(), v.attributes.clone())).collect();
            let mut demands: Vec<Demand<'_>> = Vec::new();
            for (id, count) in &state.pending {
                if *count == 0 || state.backoff.get(id).and_then(|b| b.until).is_some_and(|until| until > now) {
                    continue;
                }
                let Some(app) = state.apps.get(id).and_then(|e| e.active.as_ref()) else { continue };
                // Where the app runs matters only to its constraints.
                let placed: Vec<Placement> = if app.constraints.is_empty() {
                    Vec::new()
                } else {
                    state
                        .instances
                        .of_app(id)
                        .filter(|i| !is_terminal(i.state))
                        .map(|i| Placement {
                            hostname: i.record.host.clone(),
                            attributes: agent_attributes.get(&i.record.agent_id).cloned().unwrap_or_default(),
                        })
                        .collect()
                };
                let constraints = app.constraints.clone();
                let runtimes = model::runtimes(app);
                demands.push(Demand {
                    app_id: id.clone(),
                    count: *count,
                    cpus: app.cpus,
                    mem: app.mem,
                    disk: app.disk,
                    port_count: model::port_needs(app).len(),
                    fixed_ports: model::port_needs(app),
                    constraints: Box::new(move |offer: &OfferView, placed: &[Placement]| {
                        let runtime_ok = runtimes.is_none_or(|allowed| {
                            offer
                                .attributes
                                .iter()
                                .find(|(name, _)| name == "runtime")
                                .is_none_or(|(_, value)| allowed.contains(&value.as_str()))
                        });
                        if constraints.is_empty() {
                            return runtime_ok;
                        }
                        let candidate = app::AgentView { hostname: &offer.hostname, attributes: &offer.attributes };
                        let placed: Vec<app::AgentView<'_>> = placed
                            .iter()
                            .map(|p| app::AgentView { hostname: &p.hostname, attributes: &p.attributes })
                            .collect();
                        runtime_ok && constraints.iter().all(|c| c.satisfied(&candidate, &placed))
                    }),
                    placed,
                });
            }
            let (placed, stats) = placement::place(&mut demands, &mut views);
            drop(demands);
            for (app_id, round) in stats {
                let entry = state.queue.entry(app_id).or_default();
                entry.processed += round.processed;
                entry.unused += round.processed - round.used;
                if round.used > 0 {
                    entry.last_used_at = Some(Timestamp::now());
                }
                if round.processed > round.used {
                    entry.last_unused_at = Some(Timestamp::now());
                }
                for (reason, count) in round.rejected {
                    *entry.rejected.entry(reason).or_default() += count;
                }
            }
            let mut launches: BTreeMap<String, Vec<TaskInfo>> = BTreeMap::new();
            let mut records = Vec::new();
            // Versions are worked out once per app, not per instance.
            let mut versions: HashMap<String, (String, String)> = HashMap::new();
            for placed in placed {
                let Some(app) = state.apps.get(&placed.app_id).and_then(|e| e.active.as_ref()) else { continue };
                let task_id = app.id.task_id(&marina_daemon::ids::uuid());
                let (version, config_version) = versions
                    .entry(placed.app_id.clone())
                    .or_insert_with(|| (model::version(app), model::config_version(app)))
                    .clone();
                let record = InstanceRecord {
                    task_id: task_id.clone(),
                    app_id: placed.app_id.clone(),
                    version,
                    config_version,
                    agent_id: placed.agent_id.clone(),
                    host: placed.hostname.clone(),
                    ports: placed.host_ports.clone(),
                    staged_at: now_ts(),
                };
                if let Some(count) = state.pending.get_mut(&placed.app_id) {
                    *count = count.saturating_sub(1);
                }
                launches.entry(placed.offer_id.clone()).or_default().push(model::task_info(
                    app,
                    &task_id,
                    &placed.host_ports,
                ));
                state.instances.insert(Instance::staging(record.clone(), now));
                records.push(record);
            }
            // Each accept is traced as part of the deployment that asked for its tasks.
            let launches: BTreeMap<String, (Vec<TaskInfo>, marina_daemon::trace::Carrier)> = launches
                .into_iter()
                .map(|(offer, tasks)| {
                    let trace = tasks.iter().find_map(|task| state.traces.get(&task.name).cloned()).unwrap_or_default();
                    (offer, (tasks, trace))
                })
                .collect();
            (launches, records)
        };
        let mut launches = launches;
        if let Err(error) = self.record_instances(&records, &mut launches).await {
            tracing::warn!(%error, "cannot record instances; not launching them");
            {
                let mut state = self.lock();
                for record in &records {
                    state.instances.remove(&record.task_id);
                }
            }
            let all: Vec<String> = offers.iter().map(|o| o.offer_id.clone()).collect();
            self.decline(&session, all, 1.0).await;
            return;
        }
        let unused: Vec<String> =
            offers.iter().map(|o| o.offer_id.clone()).filter(|id| !launches.contains_key(id)).collect();
        let launched: usize = launches.values().map(|(tasks, _)| tasks.len()).sum();
        let accepts = launches.into_iter().map(|(offer_id, (tasks, trace))| {
            let mut client = session.client.clone();
            let framework_id = session.framework_id.clone();
            // A child of the offers it uses, unless a request caused it: then it joins that
            // request's trace, linked to the offers.
            let span = tracing::info_span!("gateway.launch", offer = %offer_id, tasks = tasks.len(), trace_id = tracing::field::Empty);
            if !trace.is_empty() {
                span.follows_from(tracing::Span::current());
                marina_daemon::trace::set_parent(&span, &trace);
            }
            async move {
                let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
                let request = master::AcceptRequest {
                    framework_id,
                    offer_ids: vec![offer_id],
                    launch: tasks,
                    filters: Some(master::Filters { refuse_seconds: 0.0 }),
                };
                client.accept(request).await.err().map(|status| (ids, status))
            }
            .instrument(span)
        });
        let failed: Vec<(Vec<String>, tonic::Status)> =
            futures::future::join_all(accepts).await.into_iter().flatten().collect();
        let refused: usize = failed.iter().map(|(ids, _)| ids.len()).sum();
        self.metrics.tasks_launched.inc_by((launched - refused) as u64);
        self.metrics.launches_refused.inc_by(refused as u64);
        // Apps whose tasks the master found wrong, with one of the failures: they back off
        // (and show why) instead of being refused again at once, round after round — once
        // per round, however many of their tasks were refused.
        let mut wrong: BTreeMap<String, TaskFailure> = BTreeMap::new();
        for (ids, status) in failed {
            tracing::warn!(tasks = ids.len(), %status, "launch refused by the master; the instances will be replaced");
            if status.code() == tonic::Code::InvalidArgument {
                let state = self.lock();
                for instance in ids.iter().filter_map(|id| state.instances.get(id)) {
                    wrong
                        .entry(instance.record.app_id.clone())
                        .or_insert_with(|| launch_failure(&instance.record, status.message()));
                }
            }
            self.forget_instances(&ids).await;
        }
        if !wrong.is_empty() {
            let mut state = self.lock();
            let now = Instant::now();
            for (app_id, failure) in wrong {
                back_off(&mut state, &app_id, failure, now);
            }
        }
        if !unused.is_empty() {
            let refuse = if self.wants_offers() { 1.0 } else { 5.0 };
            self.decline(&session, unused, refuse).await;
        }
        self.converge_now.notify_one();
    }

    /// Records the instances about to be launched. If coord refuses what some app's records
    /// hold (a path or value it does not take), only that app's launches are dropped — it
    /// backs off, marked with coord's reason — and the others go ahead; any other failure
    /// is returned, and nothing is launched.
    async fn record_instances(
        &self,
        records: &[InstanceRecord],
        launches: &mut BTreeMap<String, (Vec<TaskInfo>, marina_daemon::trace::Carrier)>,
    ) -> Result<(), DeployError> {
        let batch_of = |records: &mut dyn Iterator<Item = &InstanceRecord>| {
            let mut batch = Batch::default();
            for record in records {
                batch.put(format!("{}/{}", store::INSTANCES, record.task_id), record);
            }
            batch
        };
        match self.apply(batch_of(&mut records.iter())).await {
            Err(DeployError::Refused(_)) => {}
            other => return other,
        }
        let mut by_app: BTreeMap<&str, Vec<&InstanceRecord>> = BTreeMap::new();
        for record in records {
            by_app.entry(record.app_id.as_str()).or_default().push(record);
        }
        let attempts = by_app.into_iter().map(|(app_id, records)| async move {
            (app_id, records.clone(), self.apply(batch_of(&mut records.into_iter())).await)
        });
        let mut refused: HashSet<String> = HashSet::new();
        for (app_id, app_records, result) in futures::future::join_all(attempts).await {
            match result {
                Ok(()) => {}
                Err(DeployError::Refused(reason)) => {
                    tracing::error!(app = %app_id, %reason, "coord refuses this app's instance records; it backs off");
                    let mut state = self.lock();
                    let now = Instant::now();
                    for record in &app_records {
                        state.instances.remove(&record.task_id);
                        refused.insert(record.task_id.clone());
                    }
                    let reason = format!("cannot record the instance: {reason}");
                    back_off(&mut state, app_id, launch_failure(app_records[0], &reason), now);
                }
                Err(error) => return Err(error),
            }
        }
        for (tasks, _) in launches.values_mut() {
            tasks.retain(|task| !refused.contains(&task.task_id));
        }
        launches.retain(|_, (tasks, _)| !tasks.is_empty());
        Ok(())
    }

    async fn decline(&self, session: &MasterSession, offer_ids: Vec<String>, refuse_seconds: f64) {
        let request = master::DeclineRequest {
            framework_id: session.framework_id.clone(),
            offer_ids,
            filters: Some(master::Filters { refuse_seconds }),
        };
        let _ = session.client.clone().decline(request).await;
    }

    async fn forget_instances(&self, ids: &[String]) {
        let mut batch = Batch::default();
        {
            let mut state = self.lock();
            for id in ids {
                state.instances.remove(id);
                batch.delete(format!("{}/{id}", store::INSTANCES));
            }
        }
        if let Err(error) = self.apply(batch).await {
            tracing::warn!(%error, "forgetting instances failed");
        }
    }

    /// A status update from the master. Returns once it is applied (so it may be
    /// acknowledged).
    pub async fn handle_update(&self, status: TaskStatus) -> Result<(), DeployError> {
        self.metrics.status_updates.inc();
        let state_of = status.state();
        let now = Instant::now();
        let mut batch = Batch::default();
        let mut events: Vec<(&'static str, Value)> = Vec::new();
        let mut kill_orphan = false;
        {
            let mut guard = self.lock();
            let state = &mut *guard;
            match state.instances.get_mut(&status.task_id) {
                None => {
                    if !is_terminal(state_of) {
                        // A task we do not know: adopt it if its app exists, kill it otherwise.
                        let app_id = PathId::app_id_of_task(&status.task_id).map(|p| p.to_string());
                        match app_id.as_ref().and_then(|id| state.apps.get(id).map(|e| (id.clone(), e))) {
                            Some((id, entry)) if !entry.deleting => {
                                let definition = entry.active.clone().unwrap_or_else(|| entry.definition.clone());
                                let record = InstanceRecord {
                                    task_id: status.task_id.clone(),
                                    app_id: id,
                                    version: model::version(&definition),
                                    config_version: model::config_version(&definition),
                                    agent_id: status.agent_id.clone(),
                                    host: status.host.clone(),
                                    ports: status.ports.iter().map(|p| p.host_port).collect(),
                                    staged_at: now_ts(),
                                };
                                batch.put(format!("{}/{}", store::INSTANCES, record.task_id), &record);
                                tracing::info!(task = %status.task_id, "adopted a task this gateway had no record of");
                                state.instances.insert(Instance {
                                    state: state_of,
                                    healthy: status.healthy,
                                    message: status.message.clone(),
                                    ..Instance::staging(record, now)
                                });
                            }
                            _ => kill_orphan = true,
                        }
                    }
                }
                Some(instance) => {
                    let previous_health = instance.healthy;
                    let previous_state = instance.state;
                    instance.state = state_of;
                    instance.message = status.message.clone();
                    if status.healthy.is_some() {
                        instance.healthy = status.healthy;
                    }
                    if !status.host.is_empty() {
                        instance.record.host = status.host.clone();
                    }
                    if !status.agent_id.is_empty() {
                        instance.record.agent_id = status.agent_id.clone();
                    }
                    instance.unreachable_since = match state_of {
                        TaskState::TaskUnreachable => instance.unreachable_since.or(Some(now)),
                        _ => None,
                    };
                    if state_of == TaskState::TaskRunning && instance.started_at.is_none() {
                        instance.started_at = Some(now_ts());
                    }
                    let app_id = instance.record.app_id.clone();
                    let watched = self.events.is_watched();
                    if watched {
                        events.push((
                            "status_update_event",
                            json!({
                                "slaveId": instance.record.agent_id,
                                "taskId": status.task_id,
                                "taskStatus": state_of.as_str_name(),
                                "message": status.message,
                                "appId": app_id,
                                "host": instance.record.host,
                                "ipAddresses": [],
                                "ports": instance.record.ports,
                                "version": instance.record.version,
                            }),
                        ));
                    }
                    if watched && previous_state != state_of {
                        events.push((
                            "instance_changed_event",
                            json!({
                                "instanceId": status.task_id,
                                "condition": condition_name(state_of),
                                "runSpecId": app_id,
                                "agentId": instance.record.agent_id,
                                "host": instance.record.host,
                                "runSpecVersion": instance.record.version,
                            }),
                        ));
                    }
                    if status.reason == HEALTH_KILLED_REASON && is_terminal(state_of) {
                        events.push((
                            "unhealthy_instance_kill_event",
                            json!({
                                "appId": app_id,
                                "taskId": status.task_id,
                                "instanceId": status.task_id,
                                "version": instance.record.version,
                                "reason": status.message,
                                "host": instance.record.host,
                                "slaveId": instance.record.agent_id,
                            }),
                        ));
                    }
                    if instance.healthy != previous_health
                        && let Some(alive) = instance.healthy
                    {
                        events.push((
                            "health_status_changed_event",
                            json!({
                                "appId": app_id,
                                "taskId": status.task_id,
                                "instanceId": status.task_id,
                                "version": instance.record.version,
                                "alive": alive,
                            }),
                        ));
                        if !alive {
                            events.push((
                                "failed_health_check_event",
                                json!({
                                    "appId": app_id, "taskId": status.task_id, "instanceId": status.task_id,
                                }),
                            ));
                        }
                    }
                    if is_terminal(state_of) {
                        let killed_by_us = instance.killing;
                        let failed = matches!(
                            state_of,
                            TaskState::TaskFailed
                                | TaskState::TaskError
                                | TaskState::TaskLost
                                | TaskState::TaskGone
                                | TaskState::TaskDropped
                                | TaskState::TaskUnknown
                        );
                        let failure = TaskFailure {
                            task_id: status.task_id.clone(),
                            state: state_of,
                            message: status.message.clone(),
                            host: instance.record.host.clone(),
                            agent_id: instance.record.agent_id.clone(),
                            version: instance.record.version.clone(),
                            timestamp: Timestamp::now(),
                        };
                        state.instances.remove(&status.task_id);
                        batch.delete(format!("{}/{}", store::INSTANCES, status.task_id));
                        if failed && !killed_by_us {
                            back_off(state, &app_id, failure, now);
                        }
                    } else if state_of == TaskState::TaskRunning && instance.healthy != Some(false) {
                        state.backoff.remove(&app_id);
                    }
                }
            }
        }
        if kill_orphan {
            tracing::warn!(task = %status.task_id, "killing a task of no known app");
            let session = self.master.borrow().clone();
            if let Some(session) = session {
                let request = master::KillRequest {
                    framework_id: session.framework_id.clone(),
                    task_id: status.task_id.clone(),
                    agent_id: status.agent_id.clone(),
                    grace_period_seconds: 0,
                };
                let _ = session.client.clone().kill(request).await;
            }
        }
        self.apply(batch).await?;
        for (event_type, json) in events {
            self.events.publish(event_type, json);
        }
        self.converge_now.notify_one();
        Ok(())
    }

    /// What to reconcile: every instance with the agent it was placed on.
    pub fn reconcile_list(&self) -> Vec<(String, String)> {
        self.lock().instances.values().map(|i| (i.record.task_id.clone(), i.record.agent_id.clone())).collect()
    }
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

/// Orders actions into steps: an app comes after the apps it depends on (when they are
/// part of the same deployment), as Marathon does.
fn order_steps(actions: Vec<(Action, Vec<String>)>) -> Vec<Vec<Action>> {
    let ids: HashSet<String> = actions.iter().map(|(a, _)| a.app.clone()).collect();
    let mut depth: HashMap<String, usize> = HashMap::new();
    fn depth_of(
        app: &str,
        deps: &HashMap<String, Vec<String>>,
        ids: &HashSet<String>,
        memo: &mut HashMap<String, usize>,
        seen: &mut HashSet<String>,
    ) -> usize {
        if let Some(d) = memo.get(app) {
            return *d;
        }
        if !seen.insert(app.to_owned()) {
            return 0; // a cycle: validation rejects these; do not loop
        }
        let d = deps
            .get(app)
            .map(|list| {
                list.iter()
                    .filter(|dep| ids.contains(*dep))
                    .map(|dep| depth_of(dep, deps, ids, memo, seen) + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        memo.insert(app.to_owned(), d);
        d
    }
    let deps: HashMap<String, Vec<String>> = actions.iter().map(|(a, d)| (a.app.clone(), d.clone())).collect();
    for (action, _) in &actions {
        let mut seen = HashSet::new();
        depth_of(&action.app, &deps, &ids, &mut depth, &mut seen);
    }
    let steps = depth.values().copied().max().unwrap_or(0) + 1;
    let mut ordered: Vec<Vec<Action>> = vec![Vec::new(); steps];
    for (action, _) in actions {
        let d = depth[&action.app];
        ordered[d].push(action);
    }
    ordered.retain(|step| !step.is_empty());
    ordered
}

/// Makes the apps of step `index` converge to their targets.
fn activate_step(state: &mut State, deployment: &Deployment, index: usize) {
    let Some(step) = deployment.steps.get(index) else { return };
    for action in step {
        let target = deployment.targets.get(&action.app).cloned().flatten().and_then(|v| parse_stored(&v));
        if let Some(entry) = state.apps.get_mut(&action.app) {
            entry.active = target;
        }
        state.instances.touch(&action.app);
    }
}

/// Advances deployments whose current step converged; returns the coord writes, events,
/// and apps to forget once written.
fn advance_deployments(
    state: &mut State,
    converged: &HashSet<String>,
) -> (Batch, Vec<(&'static str, Value)>, Vec<String>) {
    let mut batch = Batch::default();
    let mut events = Vec::new();
    let mut removed_apps = Vec::new();
    let step_converged = |state: &State, step: &[Action]| {
        step.iter().all(|action| converged.contains(&action.app) || !state.apps.contains_key(&action.app))
    };
    // Only deployments whose current step converged are copied and advanced: with thousands
    // in progress, copying each every round costs more than everything else.
    let ready: Vec<String> = state
        .deployments
        .iter()
        .filter(|(_, d)| d.steps.get(d.current_step).is_some_and(|step| step_converged(state, step)))
        .map(|(id, _)| id.clone())
        .collect();
    for id in ready {
        let mut deployment = state.deployments[&id].clone();
        let mut advanced = false;
        while let Some(step) = deployment.steps.get(deployment.current_step) {
            if !step_converged(state, step) {
                break;
            }
            for action in step {
                if action.action == "StopApplication" && state.apps.get(&action.app).is_some_and(|e| e.deleting) {
                    let node = store::node_name(&action.app);
                    batch.delete(format!("{}/{node}", store::VERSIONS));
                    removed_apps.push(action.app.clone());
                    events.push(("app_terminated_event", json!({ "appId": action.app })));
                }
            }
            events.push(("deployment_step_success", json!({ "plan": deployment_json(&deployment, state), "currentStep": step_json(&deployment, deployment.current_step) })));
            deployment.current_step += 1;
            advanced = true;
            activate_step(state, &deployment, deployment.current_step);
        }
        if !advanced {
            continue;
        }
        if deployment.current_step >= deployment.steps.len() {
            for app in &deployment.affected_apps {
                state.traces.remove(app);
            }
            batch.delete(format!("{}/{id}", store::DEPLOYMENTS));
            events.push(("deployment_success", json!({ "id": id, "plan": deployment_json(&deployment, state) })));
            state.deployments.remove(&id);
        } else {
            batch.put(format!("{}/{id}", store::DEPLOYMENTS), &deployment);
            state.deployments.insert(id, deployment);
        }
    }
    (batch, events, removed_apps)
}

pub fn step_json(deployment: &Deployment, index: usize) -> Value {
    let actions = deployment.steps.get(index).cloned().unwrap_or_default();
    json!({ "actions": actions.iter().map(|a| json!({ "action": a.action, "app": a.app })).collect::<Vec<_>>() })
}

/// The readiness of the app's instances of the config it converges to, for a deployment's
/// `currentActions`.
fn readiness_results(state: &State, app_id: &str) -> Vec<Value> {
    let Some(active) = state.apps.get(app_id).and_then(|entry| entry.active.as_ref()) else { return Vec::new() };
    let config_version = model::config_version(active);
    state
        .instances
        .of_app(app_id)
        .filter(|i| i.record.config_version == config_version && !is_terminal(i.state))
        .filter_map(|i| i.readiness.as_ref().map(ReadinessResult::to_json))
        .collect()
}

/// Marathon's JSON for a deployment plan.
fn deployment_json(deployment: &Deployment, state: &State) -> Value {
    json!({
        "id": deployment.id,
        "version": deployment.version,
        "affectedApps": deployment.affected_apps,
        "steps": deployment.steps.iter().map(|step| json!({ "actions": step.iter().map(|a| json!({ "action": a.action, "app": a.app })).collect::<Vec<_>>() })).collect::<Vec<_>>(),
        "currentActions": deployment.steps.get(deployment.current_step).map(|step| step.iter().map(|a| json!({ "action": a.action, "app": a.app, "readinessCheckResults": readiness_results(state, &a.app) })).collect::<Vec<_>>()).unwrap_or_default(),
        "currentStep": (deployment.current_step + 1).min(deployment.steps.len()),
        "totalSteps": deployment.steps.len(),
    })
}
