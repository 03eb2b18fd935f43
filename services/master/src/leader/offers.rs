//! Offers: what frameworks accept (checked against the offers, then launched) or decline
//! (with a refusal filter), and the allocation rounds that make offers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use marina_proto::agent::v1::{Resources, TaskInfo, TaskState};
use marina_proto::master::v1::{self as pb, master_message, scheduler_event};
use marina_proto::resources::{add, contains_port, covers_scalars, subtract};
use tokio::time::Instant;

use super::{AgentStatus, Inner, LeaderState, OfferRecord, TaskRecord, is_terminal, master_status};
use crate::allocator::{self, Candidate, FreeAgent};
use crate::config::Config;
use crate::error::MasterError;

/// The longest a framework's refusal of an agent lasts: a year (any longer asks for never,
/// and a deadline that far would overflow the clock's arithmetic).
pub const MAX_REFUSE: Duration = Duration::from_secs(365 * 86_400);

impl LeaderState {
    /// Launches tasks on accepted offers, after checking them against the offers.
    pub(crate) fn accept(&self, request: pb::AcceptRequest) -> Result<(), MasterError> {
        let started = Instant::now();
        let refuse = self.refusal(request.filters.as_ref())?;
        let mut inner = self.lock();
        self.subscribed(&inner, &request.framework_id)?;
        if request.offer_ids.is_empty() {
            return Err(MasterError::Invalid("accept names no offers".into()));
        }
        let mut agent_id: Option<String> = None;
        let mut offered = Resources::default();
        for offer_id in &request.offer_ids {
            let offer = inner.offers.get(offer_id).ok_or_else(|| MasterError::OfferGone(offer_id.clone()))?;
            if offer.framework_id != request.framework_id {
                return Err(MasterError::OfferOfAnother(offer_id.clone()));
            }
            if agent_id.as_ref().is_some_and(|id| *id != offer.agent_id) {
                return Err(MasterError::Invalid("accepted offers must all be from the same agent".into()));
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
            return Err(MasterError::LaunchRefused(message));
        }
        let inner = &mut *inner;
        let Some(agent) = inner.agents.get_mut(&agent_id) else {
            return Err(MasterError::AgentAway { agent_id, why: "gone" });
        };
        let Some((_, link)) = agent.link.clone() else {
            return Err(MasterError::AgentAway { agent_id, why: "not connected" });
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

    pub(crate) fn decline(&self, request: pb::DeclineRequest) -> Result<(), MasterError> {
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

    pub(super) async fn allocation_loop(self: Arc<Self>) {
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
    pub(super) fn allocate(&self) {
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
        let Ledger { total, mut free_agents, mut candidates } = ledger(inner);
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

    pub(super) fn rescind(&self, inner: &mut Inner, offer_id: &str) {
        let Some(offer) = inner.offers.remove(offer_id) else { return };
        self.metrics.offers_rescinded.inc();
        if let Some((_, stream)) = inner.frameworks.get(&offer.framework_id).and_then(|f| f.stream.as_ref()) {
            let rescind = pb::Rescind { offer_id: offer_id.to_owned() };
            let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Rescind(rescind)));
        }
    }
}

/// What an allocation round works from, as the books stand: the cluster's total, what each
/// agent offerable now has free, and each framework that takes offers with what it holds.
pub(super) struct Ledger {
    /// Every active, linked agent's resources.
    pub total: Resources,
    /// Each active, linked agent: its resources less what its live tasks use and what is
    /// offered of it already.
    pub free_agents: Vec<FreeAgent>,
    /// Each subscribed, unsuppressed framework: what it runs plus what it has been offered
    /// (its share for DRF), and the agents it refuses for now.
    pub candidates: Vec<Candidate>,
}

/// The books for an allocation round. Pure but for the agents' usage caches (worked out
/// again where tasks changed): no offer is made or rescinded here.
pub(super) fn ledger(inner: &mut Inner) -> Ledger {
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
    let candidates = inner
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
    Ledger { total, free_agents, candidates }
}

/// How long a refusal of `refuse_seconds` lasts: not a number, infinite or negative is an
/// error; longer than [`MAX_REFUSE`] is [`MAX_REFUSE`].
pub fn refusal(refuse_seconds: f64) -> Result<Duration, MasterError> {
    if !refuse_seconds.is_finite() || refuse_seconds < 0.0 {
        return Err(MasterError::Invalid(format!(
            "filters.refuse_seconds must be a finite number of seconds, at least 0; got {refuse_seconds}"
        )));
    }
    Ok(marina_daemon::time::seconds(refuse_seconds).min(MAX_REFUSE))
}

/// Checks tasks against the resources of the accepted offers.
pub(super) fn validate_launch(
    inner: &Inner,
    agent_id: &str,
    offered: &Resources,
    tasks: &[TaskInfo],
) -> Result<(), String> {
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
    use marina_proto::agent::v1::{AgentInfo, Range, TaskStatus};

    use super::super::{AgentRecord, FrameworkRecord};
    use super::*;

    fn resources(cpus: f64, mem_mb: f64) -> Resources {
        Resources { cpus, mem_mb, disk_mb: 0.0, ports: vec![Range { begin: 31000, end: 31009 }] }
    }

    fn agent(id: &str, status: AgentStatus, linked: bool) -> AgentRecord {
        let info = AgentInfo { agent_id: id.into(), resources: Some(resources(4.0, 4096.0)), ..Default::default() };
        let link = linked.then(|| (1, tokio::sync::mpsc::unbounded_channel().0));
        AgentRecord::new(info, status, link, HashMap::new(), crate::leader::Stalls::default().heard_now())
    }

    fn task(id: &str, framework: &str, cpus: f64, state: TaskState) -> (String, TaskRecord) {
        let info = TaskInfo {
            task_id: id.into(),
            framework_id: framework.into(),
            resources: Some(Resources { cpus, mem_mb: 256.0, disk_mb: 0.0, ports: Vec::new() }),
            ..Default::default()
        };
        let status = TaskStatus { task_id: id.into(), state: state as i32, ..Default::default() };
        (id.to_owned(), TaskRecord { info, status })
    }

    fn framework(id: &str, subscribed: bool, suppressed: bool) -> FrameworkRecord {
        let info = pb::FrameworkInfo { framework_id: id.into(), name: id.into(), ..Default::default() };
        let stream = subscribed.then(|| (1, tokio::sync::mpsc::channel(1).0));
        FrameworkRecord { info, stream, suppressed, refused: HashMap::new() }
    }

    /// The books: only active, linked agents count and are offerable; what live tasks use
    /// and what is already offered is not free; a framework's share is what it runs plus
    /// what it holds in offers; frameworks not subscribed or suppressed get nothing.
    #[test]
    fn the_ledger_counts_what_runs_and_what_is_offered() {
        let mut inner = Inner::default();
        let mut busy = agent("busy", AgentStatus::Active, true);
        busy.tasks
            .extend([task("t1", "web", 1.0, TaskState::TaskRunning), task("t2", "web", 0.5, TaskState::TaskFinished)]);
        inner.agents.insert("busy".into(), busy);
        inner.agents.insert("offered".into(), agent("offered", AgentStatus::Active, true));
        inner.agents.insert("draining".into(), agent("draining", AgentStatus::Draining, true));
        inner.agents.insert("unlinked".into(), agent("unlinked", AgentStatus::Active, false));
        let mut batch = framework("batch", true, false);
        batch.refused.insert("busy".into(), Instant::now() + Duration::from_secs(60));
        inner.frameworks.extend([
            ("web".to_owned(), framework("web", true, false)),
            ("batch".to_owned(), batch),
            ("gone".to_owned(), framework("gone", false, false)),
            ("quiet".to_owned(), framework("quiet", true, true)),
        ]);
        let offer = OfferRecord {
            framework_id: "batch".into(),
            agent_id: "offered".into(),
            resources: resources(3.0, 1024.0),
            created: Instant::now(),
        };
        inner.offers.insert("o1".into(), offer);

        let Ledger { total, free_agents, candidates } = ledger(&mut inner);
        assert_eq!((total.cpus, total.mem_mb), (8.0, 8192.0), "two offerable agents");
        let free: HashMap<&str, &Resources> = free_agents.iter().map(|a| (a.agent_id.as_str(), &a.free)).collect();
        assert_eq!(free.len(), 2, "neither a draining nor an unlinked agent is offered: {free:?}");
        assert_eq!((free["busy"].cpus, free["busy"].mem_mb), (3.0, 3840.0), "the finished task frees its share");
        assert_eq!((free["offered"].cpus, free["offered"].mem_mb), (1.0, 3072.0));
        assert!(free["offered"].ports.is_empty(), "the offered ports are not free");
        let held: HashMap<&str, &Candidate> = candidates.iter().map(|c| (c.framework_id.as_str(), c)).collect();
        assert_eq!(held.keys().copied().collect::<HashSet<_>>(), HashSet::from(["web", "batch"]));
        assert_eq!(held["web"].allocated.cpus, 1.0, "what it runs");
        assert_eq!(held["batch"].allocated.cpus, 3.0, "what it was offered");
        assert!(held["batch"].refused.contains("busy"));
    }
}
