//! Everything a master does while it leads, for one leadership term (one epoch): the agent
//! registry, frameworks, tasks as the agents report them, offers and their allocation,
//! status routing and reconciliation.
//!
//! The state lives behind one mutex that is never held across an `await`; coord writes
//! (fenced by the epoch) happen outside it. When leadership is lost, [`LeaderState`] is
//! dropped with every agent link and scheduler stream it holds: their clients reconnect to
//! the next leader.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_coord_client::{Error as CoordError, Fence};
use marina_proto::agent::v1::{AgentInfo, Resources, TaskInfo, TaskReport, TaskState, TaskStatus};
use marina_proto::master::v1::{self as pb, master_message, scheduler_event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::allocator::{self, Candidate, FreeAgent};
use crate::config::Config;
use crate::metrics::MasterMetrics;
use crate::registry::Registry;
use crate::resources::{add, contains_port, covers_scalars, subtract};

/// The longest a framework's refusal of an agent lasts: a year (any longer asks for never,
/// and a deadline that far would overflow the clock's arithmetic).
pub const MAX_REFUSE: Duration = Duration::from_secs(365 * 86_400);

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

struct AgentRecord {
    info: AgentInfo,
    status: AgentStatus,
    link: Option<(u64, AgentSender)>,
    last_heartbeat: Instant,
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
    fn new(
        info: AgentInfo,
        status: AgentStatus,
        link: Option<(u64, AgentSender)>,
        tasks: HashMap<String, TaskRecord>,
    ) -> Self {
        Self { info, status, link, last_heartbeat: Instant::now(), tasks, usage: None }
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
    pub async fn start(
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
            let record = AgentRecord::new(info, AgentStatus::Reregistering, None, HashMap::new());
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
    pub fn end(&self) {
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
    fn refusal(&self, filters: Option<&pb::Filters>) -> Result<Duration, Status> {
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

    pub fn next_stream_id(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    // ----- agents --------------------------------------------------------------------------

    /// An agent attached and registered (new) or re-registered (known, with its tasks).
    /// Returns its id; the `Registered` message has been queued on `link`.
    pub async fn register_agent(
        &self,
        register: pb::Register,
        link: AgentSender,
        link_id: u64,
    ) -> Result<String, Status> {
        let mut info = register.info.ok_or_else(|| Status::invalid_argument("register without agent info"))?;
        check_agent(&info).map_err(|problem| Status::invalid_argument(format!("agent info refused: {problem}")))?;
        if register.highest_epoch > self.epoch {
            return Err(Status::failed_precondition(format!(
                "the agent obeyed epoch {} already; this master's epoch {} is older",
                register.highest_epoch, self.epoch
            )));
        }
        let new = info.agent_id.is_empty();
        if new {
            info.agent_id = marina_daemon::ids::prefixed("agent");
        }
        let changed = {
            let inner = self.lock();
            inner.agents.get(&info.agent_id).is_none_or(|known| known.info != info)
        };
        if changed && let Err(error) = self.registry.put_agent(&info).await {
            self.check_deposed(&error);
            return Err(Status::unavailable(format!("cannot record the agent: {error}")));
        }
        let agent_id = info.agent_id.clone();
        let registered = pb::Registered {
            agent_id: agent_id.clone(),
            heartbeat_interval_ms: self.config.agent_ping_interval_ms,
            master_id: self.master_id.clone(),
        };
        let _ = link.send(self.agent_message(master_message::Kind::Registered(registered)));
        let mut guard = self.lock();
        let inner = &mut *guard;
        let previous = inner.agents.remove(&agent_id);
        for task_id in previous.iter().flat_map(|p| p.tasks.keys()) {
            inner.task_index.remove(task_id, &agent_id);
        }
        let was_unreachable = previous.as_ref().is_some_and(|p| p.status == AgentStatus::Unreachable);
        let draining = previous.as_ref().is_some_and(|p| p.status == AgentStatus::Draining);
        let mut tasks: HashMap<String, TaskRecord> = HashMap::new();
        for TaskReport { task, status } in register.tasks {
            let (Some(mut task), Some(status)) = (task, status) else { continue };
            // What the agent runs is what it runs, and is kept (left out, a running task
            // would be reported gone and replaced beside itself); but resources that are not
            // numbers (an agent from before the checks) must not enter the accounts' sums.
            if let Some(resources) = &task.resources
                && let Err(problem) = marina_proto::checks::check_resources("resources", resources)
            {
                tracing::warn!(agent = %info.agent_id, task = ?task.task_id, %problem, "a reported task's resources are not counted");
                task.resources = None;
            }
            tasks.insert(task.task_id.clone(), TaskRecord { info: task, status });
        }
        // Tasks this master launched that the agent does not report were never started
        // there (the launch was lost with the connection): they are gone.
        let mut lost = Vec::new();
        if let Some(previous) = &previous {
            for (task_id, record) in &previous.tasks {
                if !tasks.contains_key(task_id) && !is_terminal(record.status.state()) {
                    lost.push(master_status(
                        task_id,
                        &record.info.framework_id,
                        &agent_id,
                        TaskState::TaskGone,
                        "the agent re-registered without this task",
                    ));
                }
            }
        }
        let status = if draining { AgentStatus::Draining } else { AgentStatus::Active };
        tracing::info!(agent = %agent_id, new, tasks = tasks.len(), address = %info.address, "agent registered");
        let forward: Vec<TaskStatus> =
            if was_unreachable { tasks.values().map(|t| reconciled(&t.status)).collect() } else { Vec::new() };
        for task_id in tasks.keys() {
            inner.task_index.add(task_id, &agent_id);
        }
        inner.agents.insert(agent_id.clone(), AgentRecord::new(info, status, Some((link_id, link)), tasks));
        // Explicit reconciliations that waited for this agent.
        let pending = inner.pending_reconcile.remove(&agent_id).unwrap_or_default();
        let mut answers = Vec::new();
        for (framework_id, task_id) in pending {
            answers.push(self.reconcile_one(inner, &framework_id, &task_id, &agent_id));
        }
        for status in forward.into_iter().chain(lost).chain(answers) {
            self.forward_update(inner, status);
        }
        Ok(agent_id)
    }

    pub fn heartbeat(&self, agent_id: &str, link_id: u64) {
        let mut inner = self.lock();
        if let Some(agent) = inner.agents.get_mut(agent_id)
            && agent.link.as_ref().is_some_and(|(id, _)| *id == link_id)
        {
            agent.last_heartbeat = Instant::now();
        }
    }

    pub fn agent_disconnected(&self, agent_id: &str, link_id: u64) {
        let mut inner = self.lock();
        if let Some(agent) = inner.agents.get_mut(agent_id)
            && agent.link.as_ref().is_some_and(|(id, _)| *id == link_id)
        {
            tracing::info!(agent = agent_id, "agent link closed; waiting for it to reconnect");
            agent.link = None;
        }
        // Offers on an agent that cannot be reached cannot be used.
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.agent_id == agent_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            self.rescind(&mut inner, &offer_id);
        }
    }

    /// A status update from an agent: recorded, then routed to its framework.
    pub fn status_update(&self, agent_id: &str, mut status: TaskStatus) {
        self.metrics.status_updates.inc();
        // Routing continues the trace the agent sent the update in; the framework gets this
        // span's context.
        let span = tracing::info_span!(
            parent: None,
            "master.status_update",
            task_id = %status.task_id,
            state = status.state().as_str_name(),
        );
        marina_daemon::trace::set_parent(&span, &status.trace_context);
        let _routing = span.enter();
        status.trace_context = marina_daemon::trace::carrier();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(agent) = inner.agents.get_mut(agent_id) else { return };
        match agent.tasks.get_mut(&status.task_id) {
            Some(task) => {
                // Only a task that ends (or comes back) changes what the agent has in use.
                if is_terminal(task.status.state()) != is_terminal(status.state()) {
                    agent.usage = None;
                }
                task.status = status.clone();
            }
            None => {
                agent.tasks_changed();
                let info = TaskInfo {
                    task_id: status.task_id.clone(),
                    framework_id: status.framework_id.clone(),
                    ..Default::default()
                };
                agent.tasks.insert(status.task_id.clone(), TaskRecord { info, status: status.clone() });
                inner.task_index.add(&status.task_id, agent_id);
            }
        }
        self.forward_update(inner, status);
    }

    /// Sends a status to its framework's stream, if it is connected (an unacknowledged
    /// update is resent by the agent later; a status of the master's own, such as a
    /// reconciliation answer, is not: the scheduler's next reconciliation asks again).
    ///
    /// A status is never dropped from a connected stream: one that does not fit (the
    /// scheduler stopped reading, or asked for more answers at once than its queue holds,
    /// `scheduler_queue_events`) ends the subscription instead. The scheduler sees its
    /// stream end once it has read what is queued, subscribes again and reconciles — so
    /// even the master's own statuses, which nobody would resend, reach it.
    fn forward_update(&self, inner: &mut Inner, status: TaskStatus) {
        let Some(framework) = inner.frameworks.get_mut(&status.framework_id) else { return };
        let Some((stream_id, stream)) = &framework.stream else { return };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
            stream.try_send(self.scheduler_event(scheduler_event::Kind::Update(status)))
        {
            let (framework_id, stream_id) = (framework.info.framework_id.clone(), *stream_id);
            self.metrics.scheduler_overflows.inc();
            tracing::error!(
                framework = %framework_id,
                queued = self.config.scheduler_queue_events,
                "the scheduler's event queue is full: ending its subscription (it subscribes again and reconciles)"
            );
            self.end_subscription(inner, &framework_id, stream_id);
        }
    }

    // ----- frameworks ----------------------------------------------------------------------

    /// Subscribes (or re-subscribes) a framework; its stream replaces any previous one.
    pub async fn subscribe(
        &self,
        mut info: pb::FrameworkInfo,
        stream: SchedulerSender,
        stream_id: u64,
    ) -> Result<String, Status> {
        if info.name.trim().is_empty() {
            return Err(Status::invalid_argument("framework name must not be empty"));
        }
        if info.framework_id.is_empty() {
            info.framework_id = marina_daemon::ids::prefixed("framework");
        }
        let changed = self.lock().frameworks.get(&info.framework_id).is_none_or(|known| known.info != info);
        if changed && let Err(error) = self.registry.put_framework(&info).await {
            self.check_deposed(&error);
            return Err(Status::unavailable(format!("cannot record the framework: {error}")));
        }
        let framework_id = info.framework_id.clone();
        let subscribed = pb::Subscribed {
            framework_id: framework_id.clone(),
            heartbeat_interval_ms: self.config.scheduler_heartbeat_ms,
            master_id: self.master_id.clone(),
        };
        let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Subscribed(subscribed)));
        let mut inner = self.lock();
        let previous = inner.frameworks.remove(&framework_id);
        if let Some((_, old)) = previous.as_ref().and_then(|p| p.stream.as_ref()) {
            let error = pb::Error { message: "superseded by a new subscription of the same framework".into() };
            let _ = old.try_send(self.scheduler_event(scheduler_event::Kind::Error(error)));
        }
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.framework_id == framework_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            inner.offers.remove(&offer_id);
        }
        tracing::info!(framework = %framework_id, name = %info.name, "framework subscribed");
        inner.frameworks.insert(
            framework_id.clone(),
            FrameworkRecord { info, stream: Some((stream_id, stream)), suppressed: false, refused: HashMap::new() },
        );
        Ok(framework_id)
    }

    pub fn scheduler_disconnected(&self, framework_id: &str, stream_id: u64) {
        let mut inner = self.lock();
        if self.end_subscription(&mut inner, framework_id, stream_id) {
            tracing::info!(framework = framework_id, "framework disconnected");
        }
    }

    /// Forgets the framework's stream `stream_id` (if still its current one) and the offers
    /// made on it; true if it was.
    fn end_subscription(&self, inner: &mut Inner, framework_id: &str, stream_id: u64) -> bool {
        let Some(framework) = inner.frameworks.get_mut(framework_id) else { return false };
        if framework.stream.as_ref().is_none_or(|(id, _)| *id != stream_id) {
            return false;
        }
        framework.stream = None;
        inner.offers.retain(|_, offer| offer.framework_id != framework_id);
        true
    }

    fn subscribed(&self, inner: &Inner, framework_id: &str) -> Result<(), Status> {
        match inner.frameworks.get(framework_id) {
            Some(framework) if framework.stream.is_some() => Ok(()),
            Some(_) => Err(Status::failed_precondition(format!("framework {framework_id} is not subscribed"))),
            None => Err(Status::not_found(format!("framework {framework_id} is not known"))),
        }
    }

    /// Launches tasks on accepted offers, after checking them against the offers.
    pub fn accept(&self, request: pb::AcceptRequest) -> Result<(), Status> {
        let started = Instant::now();
        let refuse = self.refusal(request.filters.as_ref())?;
        let mut inner = self.lock();
        self.subscribed(&inner, &request.framework_id)?;
        if request.offer_ids.is_empty() {
            return Err(Status::invalid_argument("accept names no offers"));
        }
        let mut agent_id: Option<String> = None;
        let mut offered = Resources::default();
        for offer_id in &request.offer_ids {
            let offer = inner.offers.get(offer_id).ok_or_else(|| {
                Status::not_found(format!("offer {offer_id} is not outstanding (rescinded or already used)"))
            })?;
            if offer.framework_id != request.framework_id {
                return Err(Status::permission_denied(format!("offer {offer_id} was made to another framework")));
            }
            if agent_id.as_ref().is_some_and(|id| *id != offer.agent_id) {
                return Err(Status::invalid_argument("accepted offers must all be from the same agent"));
            }
            agent_id = Some(offer.agent_id.clone());
            offered = add(&offered, &offer.resources);
        }
        let agent_id = agent_id.expect("at least one offer");
        // The offers are used up whatever happens next: resources not launched on return to
        // the pool (subject to the refuse filter).
        for offer_id in &request.offer_ids {
            inner.offers.remove(offer_id);
        }
        if !refuse.is_zero()
            && let Some(framework) = inner.frameworks.get_mut(&request.framework_id)
        {
            framework.refused.insert(agent_id.clone(), Instant::now() + refuse);
        }
        if let Err(message) = validate_launch(&inner, &agent_id, &offered, &request.launch) {
            return Err(Status::invalid_argument(format!("launch refused: {message}")));
        }
        let inner = &mut *inner;
        let Some(agent) = inner.agents.get_mut(&agent_id) else {
            return Err(Status::unavailable(format!("agent {agent_id} is gone")));
        };
        let Some((_, link)) = agent.link.clone() else {
            return Err(Status::unavailable(format!("agent {agent_id} is not connected")));
        };
        let mut tasks = Vec::with_capacity(request.launch.len());
        for mut task in request.launch {
            task.framework_id = request.framework_id.clone();
            let mut status = master_status(&task.task_id, &task.framework_id, &agent_id, TaskState::TaskStaging, "");
            status.host = agent.info.hostname.clone();
            status.ports = task.container.as_ref().map(|c| c.port_mappings.clone()).unwrap_or_default();
            agent.tasks.insert(task.task_id.clone(), TaskRecord { info: task.clone(), status });
            inner.task_index.add(&task.task_id, &agent_id);
            tasks.push(task);
        }
        if !tasks.is_empty() {
            agent.tasks_changed();
        }
        self.metrics.tasks_launched.inc_by(tasks.len() as u64);
        let launch = pb::LaunchTasks {
            framework_id: request.framework_id.clone(),
            tasks,
            trace_context: marina_daemon::trace::carrier(),
        };
        let _ = link.send(self.agent_message(master_message::Kind::Launch(launch)));
        self.metrics.accept_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    pub fn decline(&self, request: pb::DeclineRequest) -> Result<(), Status> {
        let refuse = self.refusal(request.filters.as_ref())?;
        let mut inner = self.lock();
        self.subscribed(&inner, &request.framework_id)?;
        for offer_id in &request.offer_ids {
            let Some(offer) = inner.offers.get(offer_id) else { continue };
            if offer.framework_id != request.framework_id {
                continue;
            }
            let agent_id = offer.agent_id.clone();
            inner.offers.remove(offer_id);
            if !refuse.is_zero()
                && let Some(framework) = inner.frameworks.get_mut(&request.framework_id)
            {
                framework.refused.insert(agent_id, Instant::now() + refuse);
            }
        }
        Ok(())
    }

    pub fn kill(&self, request: pb::KillRequest) -> Result<(), Status> {
        let mut inner = self.lock();
        self.subscribed(&inner, &request.framework_id)?;
        let found = inner
            .task_index
            .agents(&request.task_id)
            .iter()
            .filter(|id| request.agent_id.is_empty() || **id == request.agent_id)
            .find_map(|id| inner.agents.get(id).map(|agent| (id.clone(), agent.status, agent.link.clone())));
        let answer = match found {
            Some((_, _, Some((_, link)))) => {
                let kill = pb::KillTask {
                    task_id: request.task_id.clone(),
                    framework_id: request.framework_id.clone(),
                    grace_period_seconds: request.grace_period_seconds,
                };
                let _ = link.send(self.agent_message(master_message::Kind::Kill(kill)));
                None
            }
            Some((agent_id, AgentStatus::Unreachable, None)) => Some(master_status(
                &request.task_id,
                &request.framework_id,
                &agent_id,
                TaskState::TaskUnreachable,
                "the task's agent is unreachable; it will be killed if the agent returns",
            )),
            // Connected again shortly: the scheduler retries kills it does not see complete.
            Some((_, _, None)) => None,
            None => Some(master_status(
                &request.task_id,
                &request.framework_id,
                &request.agent_id,
                TaskState::TaskUnknown,
                "the master does not know this task",
            )),
        };
        if let Some(status) = answer {
            self.forward_update(&mut inner, status);
        }
        Ok(())
    }

    /// Acknowledgements of status updates: each goes to its agent (which then forgets the
    /// update); a terminal task whose last update is acknowledged is forgotten here too.
    pub fn acknowledge(&self, request: pb::AcknowledgeRequest) -> Result<(), Status> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        self.subscribed(inner, &request.framework_id)?;
        let single = (!request.task_id.is_empty()).then_some(pb::UpdateAcknowledgement {
            agent_id: request.agent_id,
            task_id: request.task_id,
            uuid: request.uuid,
        });
        let mut unknown_agent = None;
        for ack in single.into_iter().chain(request.more) {
            let Some(agent) = inner.agents.get_mut(&ack.agent_id) else {
                unknown_agent = Some(ack.agent_id);
                continue;
            };
            // A terminal task whose last update is acknowledged is done with.
            if agent
                .tasks
                .get(&ack.task_id)
                .is_some_and(|task| task.status.uuid == ack.uuid && is_terminal(task.status.state()))
            {
                agent.tasks.remove(&ack.task_id);
                agent.tasks_changed();
                inner.task_index.remove(&ack.task_id, &ack.agent_id);
            }
            if let Some((_, link)) = &agent.link {
                let update = pb::AcknowledgeUpdate { task_id: ack.task_id, uuid: ack.uuid };
                let _ = link.send(self.agent_message(master_message::Kind::Acknowledge(update)));
            }
        }
        match unknown_agent {
            Some(agent_id) => Err(Status::not_found(format!("agent {agent_id} is not known"))),
            None => Ok(()),
        }
    }

    pub fn reconcile(&self, request: pb::ReconcileRequest) -> Result<(), Status> {
        let mut inner = self.lock();
        self.subscribed(&inner, &request.framework_id)?;
        let framework_id = request.framework_id.clone();
        let answers: Vec<TaskStatus> = if request.tasks.is_empty() {
            // Implicit: everything the master knows of this framework.
            inner
                .agents
                .values()
                .flat_map(|agent| agent.tasks.values())
                .filter(|task| task.info.framework_id == framework_id || task.status.framework_id == framework_id)
                .map(|task| reconciled(&task.status))
                .collect()
        } else {
            let mut answers = Vec::new();
            for task in request.tasks {
                let waiting = !task.agent_id.is_empty()
                    && inner.agents.get(&task.agent_id).is_some_and(|a| a.status == AgentStatus::Reregistering)
                    && !inner.agents[&task.agent_id].tasks.contains_key(&task.task_id);
                if waiting {
                    inner
                        .pending_reconcile
                        .entry(task.agent_id.clone())
                        .or_default()
                        .push((framework_id.clone(), task.task_id));
                } else {
                    answers.push(self.reconcile_one(&inner, &framework_id, &task.task_id, &task.agent_id));
                }
            }
            answers
        };
        for status in answers {
            self.forward_update(&mut inner, status);
        }
        Ok(())
    }

    /// The latest state of one task, as reconciliation reports it.
    fn reconcile_one(&self, inner: &Inner, framework_id: &str, task_id: &str, agent_hint: &str) -> TaskStatus {
        for (agent_id, agent) in &inner.agents {
            if !agent_hint.is_empty() && agent_id != agent_hint {
                continue;
            }
            if let Some(task) = agent.tasks.get(task_id) {
                if agent.status == AgentStatus::Unreachable {
                    return master_status(
                        task_id,
                        framework_id,
                        agent_id,
                        TaskState::TaskUnreachable,
                        "agent unreachable",
                    );
                }
                return reconciled(&task.status);
            }
        }
        match inner.agents.get(agent_hint).map(|agent| agent.status) {
            Some(AgentStatus::Unreachable | AgentStatus::Reregistering) => master_status(
                task_id,
                framework_id,
                agent_hint,
                TaskState::TaskUnreachable,
                "the task's agent is unreachable",
            ),
            Some(_) => master_status(
                task_id,
                framework_id,
                agent_hint,
                TaskState::TaskGone,
                "the agent does not run this task",
            ),
            None => master_status(
                task_id,
                framework_id,
                agent_hint,
                TaskState::TaskUnknown,
                "the master does not know this task",
            ),
        }
    }

    pub fn revive(&self, framework_id: &str) -> Result<(), Status> {
        let mut inner = self.lock();
        self.subscribed(&inner, framework_id)?;
        let framework = inner.frameworks.get_mut(framework_id).expect("checked above");
        framework.suppressed = false;
        framework.refused.clear();
        self.allocate_soon.notify_one();
        Ok(())
    }

    pub fn suppress(&self, framework_id: &str) -> Result<(), Status> {
        let mut inner = self.lock();
        self.subscribed(&inner, framework_id)?;
        inner.frameworks.get_mut(framework_id).expect("checked above").suppressed = true;
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.framework_id == framework_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            self.rescind(&mut inner, &offer_id);
        }
        Ok(())
    }

    /// Removes a framework: its tasks are killed and its record deleted.
    pub async fn teardown(&self, framework_id: &str) -> Result<(), Status> {
        {
            let inner = self.lock();
            if !inner.frameworks.contains_key(framework_id) {
                return Err(Status::not_found(format!("framework {framework_id} is not known")));
            }
        }
        if let Err(error) = self.registry.remove_framework(framework_id).await {
            self.check_deposed(&error);
            return Err(Status::unavailable(format!("cannot remove the framework: {error}")));
        }
        let mut inner = self.lock();
        for agent in inner.agents.values() {
            let Some((_, link)) = &agent.link else { continue };
            for task in agent.tasks.values().filter(|t| t.info.framework_id == framework_id) {
                let kill = pb::KillTask {
                    task_id: task.info.task_id.clone(),
                    framework_id: framework_id.to_owned(),
                    grace_period_seconds: 0,
                };
                let _ = link.send(self.agent_message(master_message::Kind::Kill(kill)));
            }
        }
        if let Some(framework) = inner.frameworks.remove(framework_id)
            && let Some((_, stream)) = framework.stream
        {
            let error = pb::Error { message: "the framework was torn down".into() };
            let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Error(error)));
        }
        inner.offers.retain(|_, offer| offer.framework_id != framework_id);
        Ok(())
    }

    // ----- operators -----------------------------------------------------------------------

    /// Stops offering an agent and kills its tasks so their schedulers move them.
    pub fn drain(&self, agent_id: &str) -> Result<(), Status> {
        let mut inner = self.lock();
        let Some(agent) = inner.agents.get_mut(agent_id) else {
            return Err(Status::not_found(format!("agent {agent_id} is not known")));
        };
        agent.status = AgentStatus::Draining;
        if let Some((_, link)) = &agent.link {
            for task in agent.tasks.values().filter(|t| !is_terminal(t.status.state())) {
                let kill = pb::KillTask {
                    task_id: task.info.task_id.clone(),
                    framework_id: task.info.framework_id.clone(),
                    grace_period_seconds: 0,
                };
                let _ = link.send(self.agent_message(master_message::Kind::Kill(kill)));
            }
        }
        let offers: Vec<String> =
            inner.offers.iter().filter(|(_, o)| o.agent_id == agent_id).map(|(id, _)| id.clone()).collect();
        for offer_id in offers {
            self.rescind(&mut inner, &offer_id);
        }
        tracing::info!(agent = agent_id, "agent draining");
        Ok(())
    }

    pub fn state(&self) -> pb::MasterState {
        let inner = self.lock();
        let agents = inner
            .agents
            .values()
            .map(|agent| pb::AgentSummary {
                info: Some(agent.info.clone()),
                status: agent.status.as_str().into(),
                used: Some(used(agent)),
                last_heartbeat: now_seconds() - agent.last_heartbeat.elapsed().as_secs_f64(),
            })
            .collect();
        let frameworks = inner
            .frameworks
            .values()
            .map(|framework| pb::FrameworkSummary {
                info: Some(framework.info.clone()),
                connected: framework.stream.is_some(),
                tasks: inner
                    .agents
                    .values()
                    .flat_map(|a| a.tasks.values())
                    .filter(|t| t.info.framework_id == framework.info.framework_id && !is_terminal(t.status.state()))
                    .count() as u64,
            })
            .collect();
        let tasks = inner.agents.values().flat_map(|a| a.tasks.values()).map(|t| t.status.clone()).collect();
        pb::MasterState {
            master_id: self.master_id.clone(),
            leader_address: self.address.clone(),
            epoch: self.epoch,
            elected: true,
            agents,
            frameworks,
            tasks,
        }
    }

    // ----- loops ---------------------------------------------------------------------------

    async fn allocation_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Config::ms(self.config.allocation_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.allocate_soon.notified() => {}
                () = self.ended.cancelled() => return,
            }
            let started = Instant::now();
            self.allocate();
            self.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    /// One allocation round (see [`crate::allocator`]), plus expiry of old offers.
    fn allocate(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        let timeout = Config::ms(self.config.offer_timeout_ms);
        let expired: Vec<String> = inner
            .offers
            .iter()
            .filter(|(_, o)| now.duration_since(o.created) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for offer_id in expired {
            self.rescind(&mut inner, &offer_id);
        }
        for framework in inner.frameworks.values_mut() {
            framework.refused.retain(|_, until| *until > now);
        }
        let inner = &mut *inner;
        let mut offered_per_agent: HashMap<&str, Resources> = HashMap::new();
        let mut offered_per_framework: HashMap<&str, Resources> = HashMap::new();
        for offer in inner.offers.values() {
            let agent = offered_per_agent.entry(&offer.agent_id).or_default();
            *agent = add(agent, &offer.resources);
            let framework = offered_per_framework.entry(&offer.framework_id).or_default();
            *framework = add(framework, &offer.resources);
        }
        let mut total = Resources::default();
        let mut free_agents = Vec::new();
        let mut running_per_framework: HashMap<String, Resources> = HashMap::new();
        for (agent_id, agent) in inner.agents.iter_mut() {
            let usage = agent.usage();
            for (framework_id, resources) in &usage.per_framework {
                let entry = running_per_framework.entry(framework_id.clone()).or_default();
                *entry = add(entry, resources);
            }
            let used = usage.used.clone();
            if agent.status != AgentStatus::Active || agent.link.is_none() {
                continue;
            }
            let agent_total = agent.info.resources.clone().unwrap_or_default();
            total = add(&total, &agent_total);
            let mut free = subtract(&agent_total, &used);
            if let Some(offered) = offered_per_agent.get(agent_id.as_str()) {
                free = subtract(&free, offered);
            }
            free_agents.push(FreeAgent { agent_id: agent_id.clone(), free });
        }
        let mut candidates: Vec<Candidate> = inner
            .frameworks
            .values()
            .filter(|f| f.stream.is_some() && !f.suppressed)
            .map(|f| {
                let id = f.info.framework_id.as_str();
                let running = running_per_framework.get(id).cloned().unwrap_or_default();
                let offered = offered_per_framework.get(id).cloned().unwrap_or_default();
                Candidate {
                    framework_id: id.to_owned(),
                    allocated: add(&running, &offered),
                    refused: f.refused.keys().cloned().collect::<HashSet<_>>(),
                }
            })
            .collect();
        if candidates.is_empty() || free_agents.is_empty() {
            return;
        }
        // Spread offers: start the round at a different agent each time.
        let shift = fastrand::usize(..free_agents.len());
        free_agents.rotate_left(shift);
        let decisions = allocator::allocate(&free_agents, &mut candidates, &total);
        if decisions.is_empty() {
            return;
        }
        // Rounds that offer something are traced (each its own trace; the launches that use
        // the offers link to it).
        let round = tracing::info_span!(
            parent: None,
            "master.offer_round",
            offers = decisions.len(),
            decide_us = now.elapsed().as_micros() as u64,
        );
        let _round = round.enter();
        let trace_context = marina_daemon::trace::carrier();
        let free: HashMap<String, Resources> = free_agents.into_iter().map(|a| (a.agent_id, a.free)).collect();
        let mut batches: HashMap<String, Vec<pb::Offer>> = HashMap::new();
        for (agent_id, framework_id) in decisions {
            let agent = &inner.agents[&agent_id];
            let offer = pb::Offer {
                offer_id: marina_daemon::ids::prefixed("offer"),
                framework_id: framework_id.clone(),
                agent_id: agent_id.clone(),
                hostname: agent.info.hostname.clone(),
                resources: Some(free[&agent_id].clone()),
                attributes: agent.info.attributes.clone(),
            };
            batches.entry(framework_id).or_default().push(offer);
        }
        for (framework_id, offers) in batches {
            let Some((_, stream)) = inner.frameworks.get(&framework_id).and_then(|f| f.stream.clone()) else {
                continue;
            };
            let records: Vec<(String, OfferRecord)> = offers
                .iter()
                .map(|offer| {
                    let record = OfferRecord {
                        framework_id: framework_id.clone(),
                        agent_id: offer.agent_id.clone(),
                        resources: offer.resources.clone().unwrap_or_default(),
                        created: now,
                    };
                    (offer.offer_id.clone(), record)
                })
                .collect();
            let count = offers.len();
            let event = scheduler_event::Kind::Offers(pb::Offers { offers, trace_context: trace_context.clone() });
            if stream.try_send(self.scheduler_event(event)).is_ok() {
                self.metrics.offers_made.inc_by(count as u64);
                inner.offers.extend(records);
            }
        }
    }

    fn rescind(&self, inner: &mut Inner, offer_id: &str) {
        let Some(offer) = inner.offers.remove(offer_id) else { return };
        self.metrics.offers_rescinded.inc();
        if let Some((_, stream)) = inner.frameworks.get(&offer.framework_id).and_then(|f| f.stream.as_ref()) {
            let rescind = pb::Rescind { offer_id: offer_id.to_owned() };
            let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Rescind(rescind)));
        }
    }

    /// Agents that stopped heartbeating, and agents that did not come back after the
    /// failover, become unreachable; their tasks are reported `TASK_UNREACHABLE`.
    async fn liveness_loop(self: Arc<Self>) {
        let interval = Config::ms(self.config.agent_ping_interval_ms);
        let timeout = interval * self.config.max_agent_ping_timeouts;
        let mut tick = tokio::time::interval(interval.min(Duration::from_millis(500)));
        let mut last_hold_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.ended.cancelled() => return,
            }
            let now = Instant::now();
            let mut inner = self.lock();
            let mut newly_unreachable = Vec::new();
            let hold = mass_silence_hold(inner.agents.values().map(|a| (a.status, a.last_heartbeat)), now, timeout);
            if hold && last_hold_warning.is_none_or(|at| now.duration_since(at) > Duration::from_secs(5)) {
                last_hold_warning = Some(now);
                tracing::warn!(
                    "most agents are silent at once: more likely this master is overloaded or cut off than \
                     they all failed; not marking them unreachable yet"
                );
            }
            for (agent_id, agent) in inner.agents.iter_mut() {
                let silent = matches!(agent.status, AgentStatus::Active | AgentStatus::Draining)
                    && now.duration_since(agent.last_heartbeat) > timeout
                    && !hold;
                let never_back = agent.status == AgentStatus::Reregistering && now > self.reregister_deadline;
                if silent || never_back {
                    tracing::warn!(agent = %agent_id, silent, never_back, "agent unreachable");
                    agent.status = AgentStatus::Unreachable;
                    agent.link = None;
                    newly_unreachable.push(agent_id.clone());
                }
            }
            for agent_id in newly_unreachable {
                let statuses: Vec<TaskStatus> = inner.agents[&agent_id]
                    .tasks
                    .values()
                    .filter(|task| !is_terminal(task.status.state()))
                    .map(|task| {
                        master_status(
                            &task.info.task_id,
                            &task.info.framework_id,
                            &agent_id,
                            TaskState::TaskUnreachable,
                            "agent unreachable",
                        )
                    })
                    .collect();
                let pending = inner.pending_reconcile.remove(&agent_id).unwrap_or_default();
                let answers = pending.into_iter().map(|(framework_id, task_id)| {
                    master_status(
                        &task_id,
                        &framework_id,
                        &agent_id,
                        TaskState::TaskUnreachable,
                        "agent did not re-register",
                    )
                });
                let offers: Vec<String> =
                    inner.offers.iter().filter(|(_, o)| o.agent_id == agent_id).map(|(id, _)| id.clone()).collect();
                for offer_id in offers {
                    self.rescind(&mut inner, &offer_id);
                }
                for status in statuses.into_iter().chain(answers) {
                    self.forward_update(&mut inner, status);
                }
            }
            self.metrics.observe_agents(inner.agents.values().map(|agent| agent.status));
            self.metrics.observe_tasks(inner.agents.values().flat_map(|a| a.tasks.values()).map(|t| t.status.state()));
            self.metrics.frameworks.set(inner.frameworks.values().filter(|f| f.stream.is_some()).count() as i64);
            self.metrics.offers_outstanding.set(inner.offers.len() as i64);
        }
    }

    async fn scheduler_heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Config::ms(self.config.scheduler_heartbeat_ms));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.ended.cancelled() => return,
            }
            let inner = self.lock();
            for framework in inner.frameworks.values() {
                if let Some((_, stream)) = &framework.stream {
                    let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Heartbeat(pb::Heartbeat {})));
                }
            }
        }
    }
}

/// A reconciliation answer: not acknowledged, and part of the reconciliation's trace (not
/// of whatever produced the status first).
fn reconciled(status: &TaskStatus) -> TaskStatus {
    let mut status = status.clone();
    status.uuid.clear();
    status.trace_context = marina_daemon::trace::carrier();
    status
}

/// Clusters at least this big get the mass-silence hold.
const MASS_SILENCE_MIN_AGENTS: usize = 10;

/// True if more than half of at least [`MASS_SILENCE_MIN_AGENTS`] live agents fell silent at
/// once, and none for longer than three timeouts. That many failing together is less likely
/// than this master being starved or cut off from them (as Kubernetes' node controller
/// reasons for its zones): marking them all unreachable would have every scheduler replace
/// every task at once. Past three timeouts the silence is believed.
fn mass_silence_hold(agents: impl Iterator<Item = (AgentStatus, Instant)>, now: Instant, timeout: Duration) -> bool {
    let (mut live, mut silent, mut longest) = (0, 0, Duration::ZERO);
    for (status, last_heartbeat) in agents {
        if !matches!(status, AgentStatus::Active | AgentStatus::Draining) {
            continue;
        }
        live += 1;
        let silence = now.duration_since(last_heartbeat);
        if silence > timeout {
            silent += 1;
            longest = longest.max(silence);
        }
    }
    live >= MASS_SILENCE_MIN_AGENTS && silent * 2 > live && longest <= timeout * 3
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

/// How long a refusal of `refuse_seconds` lasts: not a number, infinite or negative is an
/// error; longer than [`MAX_REFUSE`] is [`MAX_REFUSE`].
pub fn refusal(refuse_seconds: f64) -> Result<Duration, Status> {
    if !refuse_seconds.is_finite() || refuse_seconds < 0.0 {
        return Err(Status::invalid_argument(format!(
            "filters.refuse_seconds must be a finite number of seconds, at least 0; got {refuse_seconds}"
        )));
    }
    Ok(marina_daemon::time::seconds(refuse_seconds).min(MAX_REFUSE))
}

/// Most attributes an agent may advertise; each is matched by constraints for every offer.
const MAX_AGENT_ATTRIBUTES: usize = 1000;

/// Longest hostname, address, attribute name or value an agent may give (bytes).
const MAX_AGENT_STRING: usize = 1024;

/// What an agent describes of itself is used for placement arithmetic, offers and paths:
/// its id, resources and attributes must be bounded.
pub fn check_agent(info: &AgentInfo) -> Result<(), String> {
    use marina_proto::checks;
    if !info.agent_id.is_empty() {
        checks::check_id(&info.agent_id).map_err(|error| format!("agent id {:?} {error}", info.agent_id))?;
    }
    checks::check_resources("resources", &info.resources.clone().unwrap_or_default())?;
    if info.attributes.len() > MAX_AGENT_ATTRIBUTES {
        return Err(format!("{} attributes; at most {MAX_AGENT_ATTRIBUTES} are allowed", info.attributes.len()));
    }
    let strings = [("hostname", &info.hostname), ("address", &info.address), ("runtime", &info.runtime)];
    let attributes =
        info.attributes.iter().flat_map(|a| [("an attribute name", &a.name), ("an attribute value", &a.value)]);
    for (what, value) in strings.into_iter().chain(attributes) {
        if value.len() > MAX_AGENT_STRING || value.chars().any(char::is_control) {
            return Err(format!("{what} is longer than {MAX_AGENT_STRING} bytes or holds control characters"));
        }
    }
    Ok(())
}

/// Checks tasks against the resources of the accepted offers.
fn validate_launch(inner: &Inner, agent_id: &str, offered: &Resources, tasks: &[TaskInfo]) -> Result<(), String> {
    let mut asked = Resources::default();
    let mut ports = HashSet::new();
    let mut ids = HashSet::new();
    for task in tasks {
        marina_proto::checks::check_task(task)?;
        if !ids.insert(task.task_id.as_str()) {
            return Err(format!("task id {} appears twice", task.task_id));
        }
        let live_somewhere = inner.task_index.agents(&task.task_id).iter().any(|agent_id| {
            inner
                .agents
                .get(agent_id)
                .and_then(|agent| agent.tasks.get(&task.task_id))
                .is_some_and(|t| !is_terminal(t.status.state()))
        });
        if live_somewhere {
            return Err(format!("task {} is already running", task.task_id));
        }
        let resources = task.resources.clone().unwrap_or_default();
        asked = add(&asked, &Resources { ports: Vec::new(), ..resources });
        for mapping in task.container.as_ref().map(|c| c.port_mappings.as_slice()).unwrap_or_default() {
            let port = u64::from(mapping.host_port);
            if !contains_port(&offered.ports, port) {
                return Err(format!("task {}: host port {port} is not in the offer", task.task_id));
            }
            if !ports.insert(port) {
                return Err(format!("task {}: host port {port} is used twice", task.task_id));
            }
        }
    }
    covers_scalars(offered, &asked)
        .map_err(|shortfall| format!("the tasks exceed the offers on agent {agent_id}: {shortfall}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_agents_silent_at_once_is_held_for_a_while() {
        let timeout = Duration::from_secs(5);
        let now = Instant::now() + Duration::from_secs(60);
        let agents = |silent: usize, total: usize, silence: u64| {
            (0..total).map(move |i| {
                let quiet = if i < silent { Duration::from_secs(silence) } else { Duration::from_secs(1) };
                (AgentStatus::Active, now - quiet)
            })
        };
        assert!(mass_silence_hold(agents(7, 10, 6), now, timeout), "7 of 10 silent: held");
        assert!(!mass_silence_hold(agents(5, 10, 6), now, timeout), "half is not most");
        assert!(!mass_silence_hold(agents(7, 10, 16), now, timeout), "past three timeouts the silence is believed");
        assert!(!mass_silence_hold(agents(3, 3, 6), now, timeout), "small clusters are not held");
        let unreachable_ones = agents(7, 10, 6).map(|(_, at)| (AgentStatus::Unreachable, at));
        assert!(!mass_silence_hold(unreachable_ones, now, timeout), "only live agents count");
    }
}
